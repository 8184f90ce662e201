//! The containerVM's configuration as VIC's VCH writes it and VIC's tether reads and writes it,
//! field for field (VIC `lib/config/executor` and `lib/tether/config.go`), with the key each field
//! lives under. See [`crate::extraconfig`] for how keys are formed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::extraconfig::{
    self, map, optional, slice, slice_with, Bytes, CodecError, Node, Path, Source, Visitor,
};

/// Identity shared by the executor, sessions, endpoints and networks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Common {
    pub id: String,
    pub name: String,
    pub execution_environment: String,
}

impl Node for Common {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("id"), &mut self.id)?;
        v.scalar(&at.field("name"), &mut self.name)?;
        v.scalar(
            &at.field("ExecutionEnvironment"),
            &mut self.execution_environment,
        )
    }
}

/// The whole containerVM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorConfig {
    /// `guestinfo.vice./common/…`; `id` is the container ID, also the primary session's ID.
    pub common: Common,
    /// `guestinfo.vice./diagnostics/debug`
    pub debug_level: i32,
    /// `guestinfo.vice./sessions`: persistent sessions (the container's command).
    pub sessions: BTreeMap<String, SessionConfig>,
    /// `guestinfo.vice./execs@non-persistent`: `docker exec` sessions.
    pub execs: BTreeMap<String, SessionConfig>,
    /// `guestinfo.vice./mounts`: volumes by name.
    pub mounts: BTreeMap<String, MountSpec>,
    /// `guestinfo.vice./networks`: endpoints by network name.
    pub networks: BTreeMap<String, NetworkEndpoint>,
    /// `guestinfo.vice./key`: the SSH host key, PEM (VIC: PKCS#1 RSA, 512 bits).
    pub key: Bytes,
    /// `guestinfo.vice./asymrouting`
    pub asymmetric_routing: bool,
    /// `guestinfo.vice./hostname`
    pub hostname: String,
    /// `guestinfo.vice./domainname`
    pub domainname: String,
    /// `guestinfo.vice./tether/…`: this tether's extensions, written only when set (VIC's tether
    /// and VCH ignore them).
    pub tether: Option<TetherExtensions>,
}

/// Extension keys under `guestinfo.vice./tether/`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TetherExtensions {
    /// `/tether/debugshell`: serve SSH `session` channels (a shell in the container) on the attach
    /// connection.
    pub debug_shell: bool,
    /// `/tether/authorizedkey`: an OpenSSH public key line; when set, only this client key may
    /// attach (and `none` is refused).
    pub authorized_key: String,
}

impl Node for TetherExtensions {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("debugshell"), &mut self.debug_shell)?;
        v.scalar(&at.field("authorizedkey"), &mut self.authorized_key)
    }
}

impl Node for ExecutorConfig {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        self.common.visit(v, &at.field("common"))?;
        v.scalar(
            &at.field("diagnostics").field("debug"),
            &mut self.debug_level,
        )?;
        map(v, &at.field("sessions"), &mut self.sessions)?;
        map(v, &at.field("execs").non_persistent(), &mut self.execs)?;
        map(v, &at.field("mounts"), &mut self.mounts)?;
        map(v, &at.field("networks"), &mut self.networks)?;
        v.scalar(&at.field("key"), &mut self.key)?;
        v.scalar(&at.field("asymrouting"), &mut self.asymmetric_routing)?;
        v.scalar(&at.field("hostname"), &mut self.hostname)?;
        v.scalar(&at.field("domainname"), &mut self.domainname)?;
        optional(v, &at.field("tether"), &mut self.tether)
    }
}

/// Which of the executor's two session maps a session lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// `sessions`: the container's own process (and any other persistent session).
    Session,
    /// `execs`: a `docker exec`, non-persistent.
    Exec,
}

impl SessionKind {
    /// The path of session `id` of this kind, for encoding or decoding just that session.
    pub fn path(self, id: &str) -> Path {
        match self {
            SessionKind::Session => Path::root().field("sessions").entry(id),
            SessionKind::Exec => Path::root().field("execs").non_persistent().entry(id),
        }
    }
}

/// One process tree root: the container's command or an exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    pub common: Common,
    pub detail: Detail,
    pub diagnostics: Diagnostics,
    pub cmd: Cmd,
    /// `.status`: the exit code (VIC wrote -1 for a signal death; we write 128+N).
    pub exit_status: i32,
    /// `.started`: `""` not yet launched, `"true"` launched, anything else the launch error.
    pub started: String,
    pub attach: bool,
    pub open_stdin: bool,
    /// `.runblock`: wait for an attach client's `unblock` before starting.
    pub run_block: bool,
    pub active: bool,
    pub tty: bool,
    pub restart: bool,
    pub stop_signal: String,
    /// `/User` as the VCH writes it (VIC's tether reads `/user`: lookups are case-insensitive).
    pub user: String,
    /// `/Group`, likewise.
    pub group: String,
}

impl Node for SessionConfig {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        self.common.visit(v, &at.field("common"))?;
        self.detail.visit(v, &at.field("detail").rw())?;
        self.diagnostics.visit(v, &at.field("diagnostics"))?;
        self.cmd.visit(v, &at.field("cmd"))?;
        v.scalar(&at.field("status").rw(), &mut self.exit_status)?;
        v.scalar(&at.field("started").rw(), &mut self.started)?;
        v.scalar(&at.field("attach"), &mut self.attach)?;
        v.scalar(&at.field("openstdin"), &mut self.open_stdin)?;
        v.scalar(&at.field("runblock").rw(), &mut self.run_block)?;
        v.scalar(&at.field("active"), &mut self.active)?;
        v.scalar(&at.field("tty"), &mut self.tty)?;
        v.scalar(&at.field("restart"), &mut self.restart)?;
        v.scalar(&at.field("stopSignal"), &mut self.stop_signal)?;
        v.scalar(&at.field("User"), &mut self.user)?;
        v.scalar(&at.field("Group"), &mut self.group)
    }
}

/// `.detail.*`: times in Unix seconds (UTC); 0 = never.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Detail {
    pub create_time: i64,
    pub start_time: i64,
    pub stop_time: i64,
}

impl Node for Detail {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("createtime").rw(), &mut self.create_time)?;
        v.scalar(&at.field("starttime").rw(), &mut self.start_time)?;
        v.scalar(&at.field("stoptime").rw(), &mut self.stop_time)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Diagnostics {
    /// `/diagnostics/debug`
    pub debug_level: i32,
    /// `.diagnostics.resurrections`: how often a restartable session was relaunched.
    pub resurrection_count: i32,
    /// `.diagnostics.exitlogs|i`: kept as read; VIC's tether never writes entries.
    pub exit_logs: Vec<ExitLog>,
    /// `/diagnostics/syslog`: remote syslog for the session's output.
    pub syslog: Option<SyslogConfig>,
}

impl Node for Diagnostics {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("debug"), &mut self.debug_level)?;
        v.scalar(
            &at.field("resurrections").rw(),
            &mut self.resurrection_count,
        )?;
        slice(
            v,
            &at.field("exitlogs").rw(),
            &mut self.exit_logs,
            |v, p, e| e.visit(v, p),
        )?;
        optional(v, &at.field("syslog"), &mut self.syslog)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitLog {
    /// Go's `time.Time` text, kept verbatim so that it re-encodes unchanged.
    pub time: String,
    pub exit_status: i32,
    pub message: String,
}

impl Node for ExitLog {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("Time").rw(), &mut self.time)?;
        v.scalar(&at.field("ExitStatus").rw(), &mut self.exit_status)?;
        v.scalar(&at.field("Message").rw(), &mut self.message)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyslogConfig {
    pub network: String,
    pub raddr: String,
}

impl Node for SyslogConfig {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("Network"), &mut self.network)?;
        v.scalar(&at.field("RAddr"), &mut self.raddr)
    }
}

/// `/cmd/*`: what to run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cmd {
    pub path: String,
    /// Including `args[0]`.
    pub args: Vec<String>,
    /// `K=V` entries; the whole environment of the process (plus `HOME`).
    pub env: Vec<String>,
    pub dir: String,
}

impl Node for Cmd {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("Path"), &mut self.path)?;
        v.strings(&at.field("Args"), &mut self.args)?;
        v.strings(&at.field("Env"), &mut self.env)?;
        v.scalar(&at.field("Dir"), &mut self.dir)
    }
}

/// A volume: `source` is `label:` (Path = the disk label) or `nfs:` (Host + Path).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountSpec {
    pub source: Url,
    /// `/dest`: the mount point in the container.
    pub path: String,
    pub mode: String,
    /// 1 = never copy, 2 = copy the image's content into an empty volume on first mount.
    pub copy_mode: i32,
}

impl Node for MountSpec {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        self.source.visit(v, &at.field("source"))?;
        v.scalar(&at.field("dest"), &mut self.path)?;
        v.scalar(&at.field("mode"), &mut self.mode)?;
        v.scalar(&at.field("copymode"), &mut self.copy_mode)
    }
}

/// Go's `url.URL`, flattened by field name as VIC's encoder does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Url {
    pub scheme: String,
    pub opaque: String,
    pub host: String,
    pub path: String,
    pub raw_path: String,
    pub force_query: bool,
    pub raw_query: String,
    pub fragment: String,
}

impl Node for Url {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("Scheme"), &mut self.scheme)?;
        v.scalar(&at.field("Opaque"), &mut self.opaque)?;
        v.scalar(&at.field("Host"), &mut self.host)?;
        v.scalar(&at.field("Path"), &mut self.path)?;
        v.scalar(&at.field("RawPath"), &mut self.raw_path)?;
        v.scalar(&at.field("ForceQuery"), &mut self.force_query)?;
        v.scalar(&at.field("RawQuery"), &mut self.raw_query)?;
        v.scalar(&at.field("Fragment"), &mut self.fragment)
    }
}

/// An address with its mask (Go's `net.IPNet`); both may be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpNet {
    pub ip: Option<IpAddr>,
    pub mask: Option<IpAddr>,
}

impl IpNet {
    /// `ip` with a mask of `prefix` bits in its family.
    pub fn with_prefix(ip: IpAddr, prefix: u8) -> Self {
        let mask = match ip {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(
                u32::MAX
                    .checked_shl(32 - u32::from(prefix.min(32)))
                    .unwrap_or(0),
            )),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::MAX
                    .checked_shl(128 - u32::from(prefix.min(128)))
                    .unwrap_or(0),
            )),
        };
        Self {
            ip: Some(ip),
            mask: Some(mask),
        }
    }

    /// The mask's length in bits, in the address's family (a v4 mask that Go wrote in 16-byte
    /// form counts its last 32 bits); `None` without a mask, or with a v4 mask on a v6 address.
    pub fn prefix(&self) -> Option<u8> {
        let ones = match (self.ip, self.mask?) {
            (Some(IpAddr::V4(_)), IpAddr::V6(m)) => (u128::from(m) as u32).leading_ones(),
            (Some(IpAddr::V6(_)), IpAddr::V4(_)) => return None,
            (_, IpAddr::V4(m)) => u32::from(m).leading_ones(),
            (_, IpAddr::V6(m)) => u128::from(m).leading_ones(),
        };
        Some(ones as u8)
    }
}

impl Node for IpNet {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("IP"), &mut self.ip)?;
        v.scalar(&at.field("Mask"), &mut self.mask)
    }
}

/// A network endpoint: one vNIC's membership of one network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkEndpoint {
    /// `/Common`: `id` is the vNIC's PCI slot number in decimal; `name` the interface name wanted.
    pub common: Common,
    /// `/static`: the address was given by the user.
    #[serde(rename = "static")]
    pub static_ip: bool,
    /// `/ip`: absent or unspecified means DHCP; `0.0.0.0` means managed outside the guest.
    pub ip: Option<IpNet>,
    /// `.assigned`: the address the guest actually has (written by the tether).
    pub assigned: IpNet,
    pub network: ContainerNetwork,
    /// `/ports`: docker port specs `host:ctr/proto`.
    pub ports: Vec<String>,
    /// `/internal`: internal networks are applied first.
    pub internal: bool,
}

impl Node for NetworkEndpoint {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        self.common.visit(v, &at.field("Common"))?;
        v.scalar(&at.field("static"), &mut self.static_ip)?;
        optional(v, &at.field("ip"), &mut self.ip)?;
        self.assigned.visit(v, &at.field("assigned").rw())?;
        self.network.visit(v, &at.field("network"))?;
        v.strings(&at.field("ports"), &mut self.ports)?;
        v.scalar(&at.field("internal"), &mut self.internal)
    }
}

impl NetworkEndpoint {
    /// The keys the guest writes back for the endpoint of network `name`: its read-write fields
    /// (the assigned address, gateway and name servers, the network's type), in VIC's spelling.
    pub fn state(&self, name: &str) -> Vec<(String, String)> {
        extraconfig::encode(self, &Path::root().field("networks").entry(name))
            .into_iter()
            .filter(|(k, _)| !extraconfig::is_read_only_key(k))
            .collect()
    }
}

/// The network (scope) an endpoint belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerNetwork {
    pub common: Common,
    /// `.network.type`: `bridge`, `external`, …
    #[serde(rename = "type")]
    pub network_type: String,
    /// `/destinations|i`: routes through the gateway (non-default networks).
    pub destinations: Vec<IpNet>,
    pub gateway: IpNet,
    /// `/default`: install the default route through this network's gateway.
    pub default: bool,
    /// `/dns|i`
    pub nameservers: Vec<IpAddr>,
    /// `/pools|i`: address ranges, used as firewall source ranges.
    pub pools: Vec<IpRange>,
    /// `/TrustLevel`: 0 unspecified, 1 published, 2 open, 3 closed, 4 outbound, 5 peers.
    pub trust_level: i32,
    /// `.network.assigned`: what the guest ended up with (written by the tether).
    pub assigned: NetworkAssigned,
    /// `networks|<n>/network/aliases~` (hidden: only the host sees it): the container's other
    /// names on this network.
    pub aliases: Vec<String>,
}

impl Node for ContainerNetwork {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        self.common.visit(v, &at.field("Common"))?;
        v.scalar(&at.field("type").rw(), &mut self.network_type)?;
        slice(
            v,
            &at.field("destinations"),
            &mut self.destinations,
            |v, p, e| e.visit(v, p),
        )?;
        self.gateway.visit(v, &at.field("gateway"))?;
        v.scalar(&at.field("default"), &mut self.default)?;
        ip_list(v, &at.field("dns"), &mut self.nameservers)?;
        slice(v, &at.field("pools"), &mut self.pools, |v, p, e| {
            e.visit(v, p)
        })?;
        v.scalar(&at.field("TrustLevel"), &mut self.trust_level)?;
        self.assigned.visit(v, &at.field("assigned").rw())?;
        v.strings(&at.field("aliases").hidden(), &mut self.aliases)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAssigned {
    pub gateway: IpNet,
    pub nameservers: Vec<IpAddr>,
}

impl Node for NetworkAssigned {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        self.gateway.visit(v, &at.field("gateway"))?;
        ip_list(v, &at.field("dns"), &mut self.nameservers)
    }
}

/// A slice of addresses, each under `|i`.
fn ip_list(v: &mut dyn Visitor, at: &Path, ips: &mut Vec<IpAddr>) -> Result<(), CodecError> {
    let blank = || IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    slice_with(v, at, ips, blank, |v, p, ip| v.scalar(p, ip))
}

/// An inclusive address range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpRange {
    pub first: Option<IpAddr>,
    pub last: Option<IpAddr>,
}

impl Node for IpRange {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("first"), &mut self.first)?;
        v.scalar(&at.field("last"), &mut self.last)
    }
}

impl ExecutorConfig {
    /// Every key of the config as VIC's VCH writes it, sorted.
    pub fn encode(&self) -> BTreeMap<String, String> {
        extraconfig::encode(self, &Path::root())
    }

    /// Decodes a config from `source`, merging into `self`. Returns the decoder's warnings.
    pub fn decode_from(&mut self, source: &mut dyn Source) -> Result<Vec<String>, CodecError> {
        extraconfig::decode(self, &Path::root(), source)
    }

    /// Decodes a fresh config from `source`.
    pub fn decode(source: &mut dyn Source) -> Result<(Self, Vec<String>), CodecError> {
        let mut cfg = Self::default();
        let warnings = cfg.decode_from(source)?;
        Ok((cfg, warnings))
    }

    /// Forgets the execs `source` no longer lists. The decoder keeps map entries that are not
    /// listed (as VIC's does); for execs that would keep every exec ever run, and a host that
    /// removes a finished exec's keys means it gone.
    pub fn forget_unlisted_execs(&mut self, source: &mut dyn Source) -> Result<(), CodecError> {
        /// A map entry read for its name alone.
        #[derive(Default)]
        struct Name;
        impl Node for Name {
            fn visit(&mut self, _: &mut dyn Visitor, _: &Path) -> Result<(), CodecError> {
                Ok(())
            }
        }
        let mut listed: BTreeMap<String, Name> = BTreeMap::new();
        let mut dec = extraconfig::Decoder::new(source);
        map(
            &mut dec,
            &Path::root().field("execs").non_persistent(),
            &mut listed,
        )?;
        self.execs.retain(|id, _| listed.contains_key(id));
        Ok(())
    }

    /// The primary session: the one with the container's ID, else the only session there is.
    pub fn primary_id(&self) -> Option<&str> {
        let id = &self.common.id;
        if self.sessions.contains_key(id) {
            return Some(id);
        }
        match self.sessions.len() {
            1 => self.sessions.keys().next().map(String::as_str),
            _ => None,
        }
    }

    /// The session or exec `id`, and which map it is in.
    pub fn session(&self, id: &str) -> Option<(SessionKind, &SessionConfig)> {
        self.sessions
            .get(id)
            .map(|s| (SessionKind::Session, s))
            .or_else(|| self.execs.get(id).map(|s| (SessionKind::Exec, s)))
    }
}

impl SessionConfig {
    /// The keys of this session, stored as `id` of `kind`.
    pub fn encode(&self, kind: SessionKind, id: &str) -> BTreeMap<String, String> {
        extraconfig::encode(self, &kind.path(id))
    }
}

#[cfg(test)]
mod tests;
