//! A process-mode harness: a config in a `.vmx`-style file, `tether run` on it, and readers for
//! the state it writes back and the output log.
#![allow(dead_code)]

pub mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tether_proto::config::{Cmd, ExecutorConfig, SessionConfig};
use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::vmx::{self, VmxFile};
use tether_proto::iolog::{self, Entry, Stream};

pub const ID: &str = "c0ffee";
pub const PATH: &str = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

pub fn tether_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tether")
}

/// An active session running `args` (args[0] is also the path) with a usual PATH.
pub fn session(args: &[&str]) -> SessionConfig {
    SessionConfig {
        active: true,
        cmd: Cmd {
            path: args[0].to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![PATH.to_string()],
            dir: "/".into(),
        },
        ..SessionConfig::default()
    }
}

/// A config whose primary session runs `args`.
pub fn config(args: &[&str]) -> ExecutorConfig {
    let mut c = ExecutorConfig::default();
    c.common.id = ID.into();
    let mut s = session(args);
    s.common.id = ID.into();
    c.sessions.insert(ID.into(), s);
    c
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub vmx: PathBuf,
    pub out: PathBuf,
    pub debug: PathBuf,
}

impl Harness {
    pub fn new(cfg: &ExecutorConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vmx = dir.path().join("guestinfo.vmx");
        let kv: KeyValues = cfg.encode().into_iter().collect();
        VmxFile::create(&vmx, kv).unwrap();
        let out = dir.path().join("output.log");
        let debug = dir.path().join("tether.debug");
        Self {
            dir,
            vmx,
            out,
            debug,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(tether_bin());
        c.arg("run")
            .arg("--guestinfo")
            .arg(&self.vmx)
            .arg("--output-log")
            .arg(&self.out)
            .arg("--debug-log")
            .arg(&self.debug)
            .args(extra)
            .stdin(Stdio::null());
        c
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.command(extra).spawn().unwrap()
    }

    /// Runs the tether to its end; a tether still running after `limit` fails the test.
    pub fn run(&self, extra: &[&str], limit: Duration) -> ExitStatus {
        let mut child = self.spawn(extra);
        wait(&mut child, limit, &self.debug_text())
    }

    /// The config with the state the tether wrote back.
    pub fn state(&self) -> ExecutorConfig {
        let mut kv: KeyValues = vmx::load(&self.vmx).unwrap();
        ExecutorConfig::decode(&mut kv).unwrap().0
    }

    /// Changes the host's keys, as a VCH does before a reload.
    pub fn update(&self, change: impl FnOnce(&mut ExecutorConfig)) {
        let mut file = VmxFile::open(&self.vmx).unwrap();
        file.update(|kv| {
            let mut cfg = ExecutorConfig::decode(kv).unwrap().0;
            change(&mut cfg);
            for (k, v) in cfg.encode() {
                kv.insert(k, v);
            }
        })
        .unwrap();
    }

    pub fn log(&self) -> Vec<Entry> {
        iolog::decode(&std::fs::read(&self.out).unwrap_or_default())
    }

    /// The container's own output on one stream (exec output left out).
    pub fn output(&self, stream: Stream) -> String {
        let bytes: Vec<u8> = self
            .log()
            .into_iter()
            .filter(|e| e.stream == stream && !e.exec)
            .flat_map(|e| e.data)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The kernel command line of a `tether init` on this harness (its guestinfo, logs and own
    /// directory), with `extra` words after.
    pub fn init_cmdline(&self, extra: &str) -> String {
        format!(
            "quiet tether.guestinfo={} tether.debug={} tether.output={} tether.dir={} {extra}",
            self.vmx.display(),
            self.debug.display(),
            self.out.display(),
            self.path("dot-tether").display()
        )
        .trim_end()
        .to_string()
    }

    pub fn debug_text(&self) -> String {
        std::fs::read_to_string(&self.debug).unwrap_or_default()
    }
}

/// Waits for `child`; kills it and fails when it outlives `limit`.
pub fn wait(child: &mut Child, limit: Duration, context: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}; {context}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` until it holds; fails after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn send_signal(child: &Child, sig: i32) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::try_from(sig).unwrap()).unwrap();
}

/// Runs a command that must succeed; its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tether run` as PID 1 of a new PID namespace, or `None` (with the reason printed) where this
/// machine does not allow one.
pub fn spawn_as_pid1(h: &Harness, extra: &[&str]) -> Option<Child> {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: unshare --pid is not allowed here: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("skipped: no unshare here ({e})");
            return None;
        }
    }
    let inner = h.command(extra);
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--mount-proc"])
        .arg(inner.get_program())
        .args(inner.get_args());
    Some(c.spawn().unwrap())
}

/// The pid (outside the namespace) of unshare's only child: the tether.
pub fn tether_pid(unshare: &Child) -> i32 {
    let path = format!("/proc/{0}/task/{0}/children", unshare.id());
    let mut pid = 0;
    wait_until(
        Duration::from_secs(60),
        "unshare to start the tether",
        || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
                .unwrap_or(0);
            pid != 0
        },
    );
    pid
}
