//! The embedded VMware Tools, as VIC's tether embeds them: the TCLO loop ([`tclo`]) takes the
//! VMX's requests (reset, ping, capabilities, options, power operations, guest operations) and
//! [`Toolbox::dispatch`] answers them; guest operations ([`vix`]) are limited to what VIC's VCH
//! uses: StartProgram with three programs (`kill <sig>`, `group-kill <sig>`, `reload`), the
//! tools' state, the list of the programs so started, and terminating one (a no-op).
//!
//! Owns: the TCLO channel's loop and its handlers. Uses: `guestinfo` (the transport carries the
//! TCLO channel and the tools' RPCI requests), and the container through [`Container`], which the
//! wiring implements (it must not reach into the agent).

pub mod nicinfo;
pub mod tclo;
pub use tether_proto::vix;

pub use nix::sys::signal::Signal;

/// What the toolbox asks of the container.
pub trait Container: Send {
    /// The container's ID once the config has been read; `None` before.
    fn id(&self) -> Option<String>;
    /// The labels of the disk volumes mounted (they authenticate too, as in VIC).
    fn volume_labels(&self) -> Vec<String>;
    /// Signals the primary session's process, or its whole process group.
    fn signal(&self, sig: Signal, group: bool) -> Result<(), String>;
    /// Reads the config again (a new exec).
    fn reload(&self);
    /// Stops the container and powers off (OS_Halt).
    fn halt(&self);
    /// The first non-loopback IPv4 address, for `broadcastIP`.
    fn primary_ip(&self) -> Option<String>;
    /// The NICs with their addresses, for the VMX's NIC info (none by default).
    fn nics(&self) -> Vec<nicinfo::Nic> {
        Vec::new()
    }
    /// A number that changes when the addresses do (the NICs are reported again).
    fn network_changes(&self) -> u64 {
        0
    }
}

/// The tools' own requests to the VMX (the RPCI "out" channel).
pub trait Out: Send {
    fn send(&mut self, request: &[u8]) -> Result<Vec<u8>, String>;
}

/// What the tools report as their version: unmanaged (guest-managed tools), as VIC does.
pub const CAPABILITIES: [&str; 3] = [
    "tools.set.version 2147483647",
    "tools.capability.statechange",
    "tools.capability.hgfs_server toolbox 1",
];

/// The guest OS states of the power operations (`powerops.h`).
const HALT: u8 = 1;
const REBOOT: u8 = 2;
const POWER_ON: u8 = 3;
const RESUME: u8 = 4;
const SUSPEND: u8 = 5;

/// The TCLO request handlers.
pub struct Toolbox<C> {
    container: C,
    out: Box<dyn Out>,
    /// Programs "started" (their synthetic pids and commands, for ListProcessesEx).
    started: Vec<(u64, String)>,
    /// The network changes last reported, once the VMX has reset the tools.
    reported: Option<u64>,
}

impl<C: Container> Toolbox<C> {
    pub fn new(container: C, out: Box<dyn Out>) -> Self {
        Self {
            container,
            out,
            started: Vec::new(),
            reported: None,
        }
    }

    /// Between polls: the NICs reported again when the addresses have changed since the last
    /// report (the network comes up after the tools' first `reset`; a lease is renewed).
    pub fn tick(&mut self) {
        if let Some(seen) = self.reported {
            if seen != self.container.network_changes() {
                self.send_nic_info();
            }
        }
    }

    fn out(&mut self, request: &str) {
        if let Err(e) = self.out.send(request.as_bytes()) {
            tracing::warn!("toolbox: {request:?}: {e}");
        }
    }

    /// Answers one TCLO request: `OK ...`, `ERR ...` or `Unknown Command`.
    pub fn dispatch(&mut self, request: &[u8]) -> Vec<u8> {
        let (name, args) = match request.iter().position(|&b| b == b' ') {
            Some(i) => (&request[..i], &request[i + 1..]),
            None => (request, &[][..]),
        };
        let end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let name = String::from_utf8_lossy(&name[..end]).into_owned();
        tracing::debug!("toolbox: {name}");
        let ok = |payload: &[u8]| [b"OK ".as_slice(), payload].concat();
        match name.as_str() {
            "reset" => {
                // The addresses go to the VMX at once (vSphere shows them).
                self.send_nic_info();
                ok(b"ATR toolbox")
            }
            "ping" => ok(b""),
            "Capabilities_Register" => {
                for c in CAPABILITIES {
                    self.out(c);
                }
                ok(b"")
            }
            "Set_Option" => {
                let text = String::from_utf8_lossy(args);
                let mut words = text.trim_end_matches('\0').splitn(2, ' ');
                if (words.next(), words.next()) == (Some("broadcastIP"), Some("1")) {
                    if let Some(ip) = self.container.primary_ip() {
                        self.out(&format!("info-set guestinfo.ip {ip}"));
                    }
                    self.send_nic_info();
                }
                ok(b"")
            }
            "OS_PowerOn" => self.power(POWER_ON, true),
            "OS_Resume" => self.power(RESUME, true),
            "OS_Suspend" => self.power(SUSPEND, true),
            "OS_Reboot" => self.power(REBOOT, false),
            "OS_Halt" => {
                let reply = self.power(HALT, true);
                tracing::info!("toolbox: OS_Halt: stopping the container");
                self.container.halt();
                reply
            }
            vix::RELAYED_COMMAND => ok(&self.vix(args)),
            _ => b"Unknown Command".to_vec(),
        }
    }

    fn send_nic_info(&mut self) {
        self.reported = Some(self.container.network_changes());
        let request = nicinfo::request(&self.container.nics());
        if let Err(e) = self.out.send(&request) {
            tracing::warn!("toolbox: NIC info: {e}");
        }
    }

    /// What GetToolsState reports: the guest, the tools (VIC's unmanaged version string, as
    /// govmomi's toolbox), and the guest operations offered (programs: yes; files: no).
    fn tools_state(&self) -> Vec<u8> {
        use base64::Engine as _;
        use vix::{property as id, Property};
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let os = format!("linux-{}", std::env::consts::ARCH);
        let list = vix::property_list(&[
            Property::String(id::OS_VERSION, os.clone()),
            Property::String(id::OS_VERSION_SHORT, os),
            Property::String(id::TOOLS_PRODUCT_NAME, "VMware Tools (tether)".into()),
            Property::String(
                id::TOOLS_VERSION,
                "10.0.5 build-3227872 (Compatible)".into(),
            ),
            Property::String(id::GUEST_NAME, host),
            Property::Int32(id::TOOLS_API_OPTIONS, 1),
            Property::Int32(id::OS_FAMILY, 1),
            Property::Bool(id::START_PROGRAM_ENABLED, true),
            Property::Bool(id::TERMINATE_PROCESS_ENABLED, true),
            Property::Bool(id::LIST_PROCESSES_ENABLED, true),
        ]);
        base64::engine::general_purpose::STANDARD
            .encode(list)
            .into_bytes()
    }

    /// A power operation: its state change reported (`1` done, `0` refused), then OK.
    fn power(&mut self, state: u8, done: bool) -> Vec<u8> {
        let rc = if done { "1 " } else { "0 " };
        self.out(&format!("tools.os.statechange.status {rc}{state}\0"));
        b"OK ".to_vec()
    }

    /// A relayed guest operation: `"<name>"`, a NUL, then the VIX request.
    fn vix(&mut self, args: &[u8]) -> Vec<u8> {
        let mut data = args;
        if data.first() == Some(&b'"') {
            data = &data[1..];
            if let Some(i) = data.iter().position(|&b| b == b'"') {
                data = &data[i + 1..];
            }
        }
        if data.first() == Some(&0) {
            data = &data[1..];
        }
        let req = match vix::parse(data) {
            Ok(r) => r,
            Err(vix::Malformed(code)) => return vix::reply(None, code, b""),
        };
        let h = req.header;
        if h.opcode != vix::OP_GET_TOOLS_STATE {
            if let Err(why) = self.authenticate(&h, req.credential) {
                tracing::warn!("toolbox: guest operation {} refused: {why}", h.opcode);
                return vix::reply(Some(&h), vix::error::AUTHENTICATION_FAIL, why.as_bytes());
            }
        }
        match h.opcode {
            vix::OP_GET_TOOLS_STATE => vix::reply(Some(&h), vix::error::OK, &self.tools_state()),
            vix::OP_START_PROGRAM => match vix::start_program(req.body) {
                Ok(p) => match self.start(&p) {
                    Ok(pid) => vix::reply(Some(&h), vix::error::OK, pid.to_string().as_bytes()),
                    Err(why) => {
                        tracing::warn!("toolbox: StartProgram {:?}: {why}", p.path);
                        vix::reply(Some(&h), vix::error::FAIL, why.as_bytes())
                    }
                },
                Err(vix::Malformed(code)) => vix::reply(Some(&h), code, b""),
            },
            vix::OP_LIST_PROCESSES_EX => {
                let list: String = self
                    .started
                    .iter()
                    .map(|(pid, cmd)| {
                        format!(
                            "<proc><cmd>{cmd}</cmd><name>{cmd}</name><pid>{pid}</pid><user>root</user>\
                             <start>0</start><eCode>0</eCode><eTime>0</eTime></proc>"
                        )
                    })
                    .collect();
                vix::reply(Some(&h), vix::error::OK, list.as_bytes())
            }
            vix::OP_TERMINATE_PROCESS => vix::reply(Some(&h), vix::error::NO_SUCH_PROCESS, b""),
            _ => vix::reply(Some(&h), vix::error::UNRECOGNIZED_COMMAND_IN_GUEST, b""),
        }
    }

    /// VIC's override: the credential's name is the container's ID or a mounted volume's label.
    fn authenticate(&self, h: &vix::Header, credential: &[u8]) -> Result<(), String> {
        let name = vix::credential_name(h, credential)?;
        let Some(id) = self.container.id() else {
            return Err("not yet initialized".into());
        };
        if name == id || self.container.volume_labels().contains(&name) {
            Ok(())
        } else {
            Err(format!(
                "{name:?} is neither the container nor one of its volumes"
            ))
        }
    }

    /// VIC's StartProgram: `kill <sig>`, `group-kill <sig>` or `reload`; a synthetic pid.
    fn start(&mut self, p: &vix::StartProgram) -> Result<u64, String> {
        match p.path.as_str() {
            "kill" | "group-kill" => {
                let sig = tether_proto::signal::parse(p.arguments.trim())
                    .map_err(|e| format!("{} {:?}: {e}", p.path, p.arguments))?;
                let sig = Signal::try_from(sig).map_err(|e| format!("signal {sig}: {e}"))?;
                tracing::info!("toolbox: {} {sig:?}", p.path);
                self.container.signal(sig, p.path == "group-kill")?;
            }
            "reload" => {
                tracing::info!("toolbox: reload");
                self.container.reload();
            }
            other => return Err(format!("unknown command {other:?}")),
        }
        let pid = 1000 + self.started.len() as u64;
        self.started.push((
            pid,
            format!("{} {}", p.path, p.arguments).trim().to_string(),
        ));
        Ok(pid)
    }
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::fake::{toolbox, FakeContainer, FakeOut, Log};
    use super::*;

    /// A relayed StartProgram as the VMX puts it in the TCLO channel, with a password (which
    /// VIC's override does not look at).
    fn start(name: &str, path: &str, args: &str) -> Vec<u8> {
        vix::relayed(&vix::request(
            vix::OP_START_PROGRAM,
            &vix::start_program_body(path, args),
            &vix::credential(name, "ignored"),
            vix::CREDENTIAL_NAME_PASSWORD,
        ))
    }

    #[test]
    fn the_vmx_handshake_commands() {
        let (mut t, log) = toolbox(Some("c0ffee"));
        assert_eq!(t.dispatch(b"reset\0"), b"OK ATR toolbox");
        assert_eq!(t.dispatch(b"ping"), b"OK ");
        assert_eq!(t.dispatch(b"Capabilities_Register"), b"OK ");
        assert_eq!(t.dispatch(b"Set_Option broadcastIP 1"), b"OK ");
        assert_eq!(t.dispatch(b"Set_Option enableDnD 0"), b"OK ");
        assert_eq!(t.dispatch(b"No_Such_Thing x"), b"Unknown Command");
        let nic_info = String::from_utf8_lossy(&nicinfo::request(&[])).into_owned();
        assert_eq!(
            log.take(),
            [
                format!("out {nic_info}"),
                "out tools.set.version 2147483647".into(),
                "out tools.capability.statechange".into(),
                "out tools.capability.hgfs_server toolbox 1".into(),
                "out info-set guestinfo.ip 10.0.2.15".into(),
                format!("out {nic_info}"),
            ]
        );
    }

    #[test]
    fn the_nics_are_reported_again_when_the_addresses_change() {
        use std::sync::atomic::Ordering;
        let log = Log::default();
        let net = FakeContainer::new(None, &log);
        let changes = net.changes.clone();
        let mut t = Toolbox::new(net, Box::new(FakeOut(log.clone())));
        t.tick();
        assert!(log.take().is_empty(), "nothing before the VMX's reset");
        t.dispatch(b"reset");
        assert_eq!(log.take().len(), 1);
        t.tick();
        assert!(log.take().is_empty(), "no change");
        changes.fetch_add(1, Ordering::Relaxed);
        t.tick();
        assert_eq!(log.take().len(), 1, "reported again");
        t.tick();
        assert!(log.take().is_empty());
    }

    #[test]
    fn power_operations_report_their_state_and_halt_stops_the_container() {
        let (mut t, log) = toolbox(Some("c0ffee"));
        for op in [
            "OS_PowerOn",
            "OS_Resume",
            "OS_Suspend",
            "OS_Reboot",
            "OS_Halt",
        ] {
            assert_eq!(t.dispatch(op.as_bytes()), b"OK ", "{op}");
        }
        assert_eq!(
            log.take(),
            [
                "out tools.os.statechange.status 1 3\0",
                "out tools.os.statechange.status 1 4\0",
                "out tools.os.statechange.status 1 5\0",
                "out tools.os.statechange.status 0 2\0",
                "out tools.os.statechange.status 1 1\0",
                "halt",
            ]
        );
    }

    #[test]
    fn start_program_runs_vics_three_programs_for_the_container_only() {
        let (mut t, log) = toolbox(Some("c0ffee"));
        assert_eq!(
            t.dispatch(&start("c0ffee", "kill", "TERM")),
            b"OK 0 0 1000\0"
        );
        assert_eq!(
            t.dispatch(&start("c0ffee", "group-kill", "9")),
            b"OK 0 0 1001\0"
        );
        assert_eq!(
            t.dispatch(&start("vol-data", "reload", "")),
            b"OK 0 0 1002\0"
        );
        assert_eq!(
            log.take(),
            [
                "signal SIGTERM group=false",
                "signal SIGKILL group=true",
                "reload"
            ]
        );
        // Anything else is refused, and so is anyone else.
        let r = t.dispatch(&start("c0ffee", "/bin/sh", "-c id"));
        assert_eq!(r, b"OK 1 0 unknown command \"/bin/sh\"\0");
        let r = t.dispatch(&start("other", "kill", "TERM"));
        assert!(
            r.starts_with(b"OK 35 0 "),
            "{}",
            String::from_utf8_lossy(&r)
        );
        let r = t.dispatch(&start("c0ffee", "kill", "NOSUCHSIG"));
        assert!(
            r.starts_with(b"OK 1 0 kill"),
            "{}",
            String::from_utf8_lossy(&r)
        );
        assert!(log.take().is_empty());
        // The programs started, as ListProcessesEx shows them.
        let list = vix::request(
            vix::OP_LIST_PROCESSES_EX,
            &[0; 12],
            &vix::credential("c0ffee", ""),
            1,
        );
        let r = t.dispatch(&vix::relayed(&list));
        let text = String::from_utf8_lossy(&r);
        assert!(
            text.starts_with("OK 0 0 <proc><cmd>kill TERM</cmd>"),
            "{text}"
        );
        assert!(text.contains("<pid>1002</pid>"), "{text}");
        // TerminateProcess: the programs have ended already; no such process.
        let mut body = 1002i64.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        let term = vix::request(
            vix::OP_TERMINATE_PROCESS,
            &body,
            &vix::credential("c0ffee", ""),
            1,
        );
        let r = t.dispatch(&vix::relayed(&term));
        assert_eq!(r, b"OK 20003 0 \0");
    }

    #[test]
    fn before_the_config_and_with_bad_requests() {
        let (mut t, _) = toolbox(None);
        assert_eq!(
            t.dispatch(&start("c0ffee", "kill", "TERM")),
            b"OK 35 0 not yet initialized\0"
        );
        let (mut t, log) = toolbox(Some("c0ffee"));
        // A truncated header, a wrong magic, an unknown opcode.
        let req = start("c0ffee", "kill", "TERM");
        let r = t.dispatch(&req[..40]);
        assert_eq!(r, b"OK 10000 0 \0");
        let r = t.dispatch(&vix::relayed(b"\x01\x02\x03\x04"));
        assert_eq!(r, b"OK 10000 0 \0");
        let odd = vix::request(77, &[], &vix::credential("c0ffee", ""), 1);
        let r = t.dispatch(&vix::relayed(&odd));
        assert_eq!(r, b"OK 3025 0 \0");
        // GetToolsState needs no credential: the properties, in base64.
        let state = vix::request(vix::OP_GET_TOOLS_STATE, &[], &[], 0);
        let r = t.dispatch(&vix::relayed(&state));
        assert!(r.starts_with(b"OK 0 0 ") && r.ends_with(b"\0"));
        use base64::Engine as _;
        let list = base64::engine::general_purpose::STANDARD
            .decode(&r[7..r.len() - 1])
            .unwrap();
        assert_eq!(&list[..4], &vix::property::OS_VERSION.to_le_bytes());
        let tail = vix::property_list(&[vix::Property::Bool(
            vix::property::LIST_PROCESSES_ENABLED,
            true,
        )]);
        assert!(list.ends_with(&tail));
        assert!(log.take().is_empty());
    }
}
