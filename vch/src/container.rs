//! A containerVM's state on the host: one directory per container under the state root, holding
//! its guestinfo (`config.vmx`, VIC's keys; the tether's writes land there), its disk (a qcow2
//! overlay on the image), `tether.debug`, `output.log`, the supervisor's sockets and log, and
//! `meta.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tether_proto::config::{Cmd, Common, ExecutorConfig, SessionConfig, TetherExtensions};
use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::vmx::VmxFile;

use crate::network::{NetMode, PortSpec};

/// The record `<dir>/<name>/<file>` (JSON) of a network or volume; a missing one is
/// `no such <what>: <name>`.
pub fn load_record<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    file: &str,
    what: &str,
) -> anyhow::Result<T> {
    let text = std::fs::read(dir.join(name).join(file))
        .map_err(|_| anyhow::anyhow!("no such {what}: {name}"))?;
    Ok(serde_json::from_slice(&text)?)
}

/// Every record `load` reads from the entries of `dir` (those it cannot read are skipped),
/// sorted by `key`: the networks and volumes of a state root.
pub fn load_each<T, K: Ord>(
    dir: &Path,
    load: impl Fn(&str) -> anyhow::Result<T>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut v: Vec<T> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| load(&e.file_name().to_string_lossy()).ok())
        .collect();
    v.sort_by_key(|t| key(t));
    v
}

/// The state root: `$VCH_STATE`, else `$XDG_STATE_HOME/vch`, else `~/.local/state/vch`.
pub fn state_root() -> PathBuf {
    if let Some(p) = std::env::var_os("VCH_STATE") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("XDG_STATE_HOME") {
        return Path::new(&p).join("vch");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".local/state/vch")
}

/// How the VM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// `-kernel vmlinux -initrd` (PVH entry, the fast path).
    Kernel,
    /// `-cdrom bootstrap.iso`, as on VMware.
    Iso,
}

/// The line the tether attaches on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachLine {
    /// COM1, a network serial port with the VM as the TCP client (VIC's).
    #[default]
    Serial,
    /// virtio-vsock to the host (CID 2), through a vhost-user backend (`vhost-device-vsock`).
    Vsock,
}

/// The vsock port the tether connects to on the host.
pub const VSOCK_PORT: u32 = 2377;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub image: PathBuf,
    /// The image as the user named it (docker's `Image`); empty for a disk named by path.
    #[serde(default)]
    pub image_ref: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub boot: BootMode,
    pub memory_mib: u32,
    /// Extra words for the kernel command line (the `-kernel` path only).
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub attach_line: AttachLine,
    #[serde(default)]
    pub net: NetMode,
    #[serde(default)]
    pub publish: Vec<PortSpec>,
    #[serde(default)]
    pub host_ports: Vec<crate::network::HostPort>,
    /// The bridge networks it is on (`vch network`).
    #[serde(default)]
    pub networks: Vec<crate::bridge::Attachment>,
    /// Its volumes, in the order of their disks (pvscsi targets 1, 2, ...).
    #[serde(default)]
    pub volumes: Vec<crate::volume::VolumeUse>,
    /// When it was made (RFC 3339).
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Seconds `stop` waits before SIGKILL (10 when absent).
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// Removed when it ends (docker's `--rm`, done by whoever serves the Docker API).
    #[serde(default)]
    pub auto_remove: bool,
}

impl Meta {
    /// The disks of its volumes, in order (NFS volumes have none).
    pub fn volume_disks(&self, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
        self.volumes
            .iter()
            .filter(|u| u.nfs.is_none())
            .map(|u| Ok(crate::volume::Volume::load(root, &u.name)?.disk(root)))
            .collect()
    }

    /// The container's NICs (see [`crate::network::nics`]).
    pub fn nics(&self) -> Vec<crate::network::Nic> {
        let bridges: Vec<String> = self.networks.iter().map(|a| a.network.clone()).collect();
        crate::network::nics(
            &self.id,
            self.net,
            &self.publish,
            &self.host_ports,
            &bridges,
        )
    }
}

pub struct Container {
    pub dir: PathBuf,
    pub meta: Meta,
}

/// What `vch run` asks for.
#[derive(Clone, Debug, Default)]
pub struct RunSpec {
    pub name: Option<String>,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    pub attached: bool,
    pub debug: i32,
    pub debug_shell: bool,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A new random ID (64 hex digits, as docker's).
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    ssh::random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A session as VIC's VCH writes it for a container's command or an exec.
pub fn session(id: &str, name: &str, spec: &RunSpec) -> SessionConfig {
    let mut env = vec![DEFAULT_PATH.to_string()];
    if spec.tty {
        env.push("TERM=xterm".into());
    }
    for e in &spec.env {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    SessionConfig {
        common: Common {
            id: id.to_string(),
            name: name.to_string(),
            ..Common::default()
        },
        cmd: Cmd {
            path: spec.command[0].clone(),
            args: spec.command.clone(),
            env,
            dir: spec.workdir.clone().unwrap_or_else(|| "/".into()),
        },
        attach: spec.attached,
        open_stdin: spec.interactive,
        // Attached: the process waits for the client, so that no output is missed.
        run_block: spec.attached,
        active: true,
        tty: spec.tty,
        stop_signal: "TERM".into(),
        user: spec.user.clone().unwrap_or_default(),
        ..SessionConfig::default()
    }
}

/// The executor config of a new container.
pub fn executor_config(id: &str, name: &str, spec: &RunSpec) -> ExecutorConfig {
    let mut c = ExecutorConfig::default();
    c.common.id = id.to_string();
    c.common.name = name.to_string();
    c.debug_level = spec.debug;
    c.hostname = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    c.sessions.insert(id.to_string(), session(id, name, spec));
    if spec.debug_shell {
        c.tether = Some(TetherExtensions {
            debug_shell: true,
            ..TetherExtensions::default()
        });
    }
    c
}

impl Container {
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.vmx")
    }
    pub fn ctl_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }
    pub fn gi_socket(&self) -> PathBuf {
        self.dir.join("gi.sock")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn debug_log(&self) -> PathBuf {
        self.dir.join("tether.debug")
    }
    pub fn output_log(&self) -> PathBuf {
        self.dir.join("output.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    /// When it was last booted (RFC 3339, the host's clock).
    pub fn started_at_file(&self) -> PathBuf {
        self.dir.join("started.at")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("supervisor.pid")
    }
    /// The vhost-user socket QEMU and the vsock backend share.
    pub fn vhost_socket(&self) -> PathBuf {
        self.dir.join("vhu.sock")
    }
    /// The backend's host side: a guest connection to port P arrives on `<this>_P`.
    pub fn vsock_uds(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    /// Makes the state directory, the guestinfo file and the disk overlay.
    pub fn create(root: &Path, meta: Meta, config: &ExecutorConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        if Self::all(root)?.iter().any(|c| c.meta.name == meta.name) {
            bail!("the name {:?} is in use", meta.name);
        }
        let dir = root.join(&meta.id);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let c = Self { dir, meta };
        let mut kv = KeyValues::new();
        for (k, v) in config.encode() {
            kv.insert(k, v);
        }
        VmxFile::create(c.config_file(), kv)?;
        let image = std::fs::canonicalize(&c.meta.image)
            .with_context(|| format!("the image {}", c.meta.image.display()))?;
        let written = crate::qcow2::vmdk_size(&image)
            .and_then(|size| crate::qcow2::create_overlay(&c.disk(), &image, "vmdk", size));
        if let Err(e) = written {
            // An image laid out otherwise: qemu-img knows them all.
            tracing::debug!("the disk by qemu-img: {e}");
            let out = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b"])
                .arg(&image)
                .arg(c.disk())
                .output()
                .context("running qemu-img")?;
            if !out.status.success() {
                bail!(
                    "qemu-img create: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        std::fs::write(c.dir.join("meta.json"), serde_json::to_vec_pretty(&c.meta)?)?;
        Ok(c)
    }

    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let meta: Meta = serde_json::from_slice(
            &std::fs::read(dir.join("meta.json"))
                .with_context(|| format!("reading {}", dir.join("meta.json").display()))?,
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    pub fn all(root: &Path) -> anyhow::Result<Vec<Self>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if let Ok(c) = Self::open(&e.path()) {
                out.push(c);
            }
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// By name, full ID or an unambiguous ID prefix.
    pub fn find(root: &Path, what: &str) -> anyhow::Result<Self> {
        let all = Self::all(root)?;
        if let Some(i) = all
            .iter()
            .position(|c| c.meta.name == what || c.meta.id == what)
        {
            return Ok(all.into_iter().nth(i).expect("found"));
        }
        let mut hits: Vec<Self> = all
            .into_iter()
            .filter(|c| !what.is_empty() && c.meta.id.starts_with(what))
            .collect();
        match hits.len() {
            1 => Ok(hits.remove(0)),
            0 => bail!("no such container: {what}"),
            _ => bail!("{what:?} names more than one container"),
        }
    }

    /// The supervisor's PID while it runs.
    pub fn supervisor(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_ok()
            .then_some(pid)
    }

    /// Whether its supervisor is alive: the VM runs, or it has ended and the supervisor still
    /// hands clients the end of their output.
    pub fn running(&self) -> bool {
        self.supervisor().is_some()
    }

    /// Written by the supervisor the moment QEMU has exited: the container is gone, whatever
    /// its clients are still taking.
    pub fn ended_marker(&self) -> PathBuf {
        self.dir.join("vm.ended")
    }

    /// Whether the VM itself still runs (what `stop`, `kill` and `ps` mean by running).
    pub fn vm_running(&self) -> bool {
        self.running() && !self.ended_marker().exists()
    }

    /// The config with the tether's writes (state, exit status).
    pub fn config(&self) -> anyhow::Result<ExecutorConfig> {
        let mut kv = tether_proto::guestinfo::vmx::load(&self.config_file())?;
        Ok(ExecutorConfig::decode(&mut kv)?.0)
    }

    /// The primary session's `started` key once the tether has written it: `true`, or why the
    /// launch failed.
    pub fn started(&self) -> Option<String> {
        let c = self.config().ok()?;
        Some(c.sessions.get(&self.meta.id)?.started.clone()).filter(|s| !s.is_empty())
    }

    /// The primary session's exit status once it has run and ended.
    pub fn exit_status(&self) -> Option<i32> {
        let c = self.config().ok()?;
        let s = c.sessions.get(&self.meta.id)?;
        session_ended(s).then_some(s.exit_status)
    }

    /// Changes the config in the guestinfo under the file's lock: `drop_first` names keys to
    /// remove before it is decoded; the config `change` made is encoded back whole.
    fn update_config(
        &self,
        drop_first: impl Fn(&str) -> bool,
        change: impl FnOnce(&mut ExecutorConfig),
    ) -> anyhow::Result<()> {
        let mut failure = None;
        VmxFile::open(self.config_file())?.update(|kv| {
            let gone: Vec<String> = kv
                .iter()
                .map(|(k, _)| k.to_string())
                .filter(|k| drop_first(k))
                .collect();
            for k in gone {
                kv.remove(&k);
            }
            match ExecutorConfig::decode(kv) {
                Ok((mut cfg, _)) => {
                    change(&mut cfg);
                    for (k, v) in cfg.encode() {
                        kv.insert(k, v);
                    }
                }
                Err(e) => failure = Some(e),
            }
        })?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Readies the guestinfo for a boot: the non-persistent keys go (as a VMX drops them at
    /// power-off: the execs and their state), the primary session's state of an earlier run is
    /// cleared, and whether its process waits for the first attach is set.
    pub fn prepare_start(&self, attached: bool) -> anyhow::Result<()> {
        let id = self.meta.id.clone();
        self.update_config(
            |k| k.ends_with(tether_proto::extraconfig::NON_PERSISTENT),
            |cfg| {
                if let Some(s) = cfg.sessions.get_mut(&id) {
                    s.started.clear();
                    s.exit_status = 0;
                    s.detail.start_time = 0;
                    s.detail.stop_time = 0;
                    s.attach = attached;
                    s.run_block = attached;
                }
            },
        )
    }

    /// Adds exec `id` to the guestinfo under the file's lock (the tether sees it at its next
    /// reload); the execs that ended before the newest [`ENDED_EXECS_KEPT`] go (returned with
    /// their last state). See [`add_exec_to`].
    pub fn add_exec(
        &self,
        id: &str,
        session: &SessionConfig,
    ) -> anyhow::Result<Vec<(String, SessionConfig)>> {
        let mut outcome = Ok(Vec::new());
        VmxFile::open(self.config_file())?.update(|kv| outcome = add_exec_to(kv, id, session))?;
        Ok(outcome?)
    }
}

/// Ended execs kept in a container's config (the newest by stop time), for `docker exec inspect`
/// of a detached exec. Older ones are removed when an exec is added: the config, and with it the
/// tether's memory and every reload's work, would otherwise grow with every exec ever run.
pub const ENDED_EXECS_KEPT: usize = 16;

/// Whether a session's (or exec's) state says it is over: exited (a stop time at or after its
/// start), or its launch failed (`started` holds the reason).
pub fn session_ended(s: &SessionConfig) -> bool {
    match s.started.as_str() {
        "" => false,
        "true" => s.detail.stop_time != 0 && s.detail.stop_time >= s.detail.start_time,
        _ => true,
    }
}

/// Adds exec `id` to the config keys `kv`, removing every key of the execs that ended before the
/// newest [`ENDED_EXECS_KEPT`]. Returns those execs with their last state.
pub fn add_exec_to(
    kv: &mut KeyValues,
    id: &str,
    session: &SessionConfig,
) -> Result<Vec<(String, SessionConfig)>, tether_proto::extraconfig::CodecError> {
    use tether_proto::config::SessionKind;
    let (mut cfg, _) = ExecutorConfig::decode(kv)?;
    let mut ended: Vec<(i64, String)> = cfg
        .execs
        .iter()
        .filter(|(_, s)| session_ended(s))
        .map(|(i, s)| (s.detail.stop_time, i.clone()))
        .collect();
    ended.sort_by(|a, b| b.cmp(a));
    let mut removed = Vec::new();
    for (_, old) in ended.into_iter().skip(ENDED_EXECS_KEPT) {
        if let Some(s) = cfg.execs.remove(&old) {
            for k in s.encode(SessionKind::Exec, &old).keys() {
                kv.remove(k);
            }
            removed.push((old, s));
        }
    }
    // The list of execs is written anew (an empty map writes no key at all).
    kv.remove(
        &tether_proto::extraconfig::Path::root()
            .field("execs")
            .non_persistent()
            .key(),
    );
    cfg.execs.insert(id.to_string(), session.clone());
    for (k, v) in cfg.encode() {
        kv.insert(k, v);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::config::SessionKind;

    fn exec(started: &str, start: i64, stop: i64) -> SessionConfig {
        let mut s = SessionConfig::default();
        s.cmd.path = "/bin/true".into();
        s.cmd.args = vec!["true".into()];
        s.started = started.into();
        s.detail.start_time = start;
        s.detail.stop_time = stop;
        s.exit_status = 3;
        s
    }

    #[test]
    fn adding_an_exec_removes_the_oldest_ended_ones_and_every_key_of_theirs() {
        let mut cfg = ExecutorConfig::default();
        cfg.common.id = "c".into();
        // 20 ended (stop times 100..120), one failed long ago, one running, one not started.
        for i in 0..20 {
            cfg.execs
                .insert(format!("done{i}"), exec("true", 50, 100 + i));
        }
        cfg.execs
            .insert("failed".into(), exec("no such file", 0, 0));
        cfg.execs.insert("running".into(), exec("true", 90, 0));
        cfg.execs.insert("waiting".into(), exec("", 0, 0));
        let mut kv: KeyValues = cfg.encode().into_iter().collect();
        let before = kv.iter().count();
        let removed = add_exec_to(&mut kv, "new", &exec("", 0, 0)).unwrap();
        let mut gone: Vec<&str> = removed.iter().map(|(i, _)| i.as_str()).collect();
        gone.sort();
        // 21 ended: the 16 newest stay; the failed one (stop time 0) and the 4 oldest go.
        assert_eq!(gone, ["done0", "done1", "done2", "done3", "failed"]);
        assert!(removed.iter().all(|(_, s)| s.exit_status == 3));
        let (after, _) = ExecutorConfig::decode(&mut kv.clone()).unwrap();
        assert_eq!(after.execs.len(), 16 + 3);
        for id in ["running", "waiting", "new", "done4", "done19"] {
            assert!(after.execs.contains_key(id), "{id}");
        }
        // Not one key of a removed exec is left, and the list names only what is there.
        for (id, _) in &removed {
            let of_it = |k: &str| {
                ['/', '.', '@']
                    .iter()
                    .any(|c| k.contains(&format!("|{id}{c}")))
            };
            let left: Vec<&str> = kv.iter().map(|(k, _)| k).filter(|k| of_it(k)).collect();
            assert!(left.is_empty(), "keys of {id} are left: {left:?}");
        }
        let list = kv
            .get(&SessionKind::Exec.path("x").key().replace("|x", ""))
            .unwrap_or_default();
        assert_eq!(list.split('|').count(), 19, "{list}");
        assert!(!list.split('|').any(|i| gone.contains(&i)), "{list}");
        assert!(kv.iter().count() < before);
        assert!(!session_ended(&exec("true", 90, 0)));
        assert!(session_ended(&exec("true", 90, 90)));
        assert!(
            !session_ended(&exec("true", 90, 80)),
            "a stop time of an earlier run"
        );
    }
}
