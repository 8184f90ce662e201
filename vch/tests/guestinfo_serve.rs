//! `vch guestinfo serve` answering a guest that reads its whole config and writes state back.

use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tether_proto::config::ExecutorConfig;
use tether_proto::guestinfo::stream::StreamGuestInfo;
use tether_proto::guestinfo::vmx::{self, VmxFile};
use tether_proto::guestinfo::{write_back, AsSource, GuestInfo};

const WORKED_EXAMPLE: &str = include_str!("../../proto/tests/data/vic-worked-example.txt");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(path: &std::path::Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("the server never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn a_guest_reads_its_config_and_writes_state_through_vch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("guestinfo.vmx");
    let pairs = vmx::parse(WORKED_EXAMPLE).unwrap();
    std::fs::write(
        &file,
        vmx::render(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    )
    .unwrap();
    let sock = dir.path().join("gi.sock");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_vch"))
            .args(["guestinfo", "serve", "--file"])
            .arg(&file)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .spawn()
            .unwrap(),
    );
    let mut gi = StreamGuestInfo::new(connect(&sock));
    let (mut cfg, _) = ExecutorConfig::decode(&mut AsSource(&mut gi)).unwrap();
    assert_eq!(
        cfg.sessions["deadbeef0123456789"].cmd.args,
        ["/bin/sh", "-c", "echo hi"]
    );

    let s = cfg.sessions.get_mut("deadbeef0123456789").unwrap();
    s.exit_status = 7;
    s.detail.stop_time = 1234;
    let keys = s.encode(
        tether_proto::config::SessionKind::Session,
        "deadbeef0123456789",
    );
    let written = write_back(&mut gi, &keys).unwrap();
    // Only the keys the guest may write were sent: host-only (`/`) keys are dropped by the sink.
    assert_eq!(written, keys.keys().filter(|k| !k.contains('/')).count());
    assert!(written > 0 && written < keys.len());
    assert_eq!(
        gi.get("guestinfo.vice..sessions|deadbeef0123456789.status")
            .unwrap()
            .as_deref(),
        Some("7")
    );

    let on_disk = VmxFile::open(&file).unwrap();
    assert_eq!(
        on_disk
            .values()
            .get("guestinfo.vice..sessions|deadbeef0123456789.detail.stoptime"),
        Some("1234")
    );
    assert_eq!(
        on_disk
            .values()
            .get("guestinfo.vice./sessions|deadbeef0123456789/cmd/Path"),
        Some("/bin/sh")
    );
}

#[test]
fn a_missing_file_is_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vch"))
        .args([
            "guestinfo",
            "serve",
            "--file",
            "/nonexistent.vmx",
            "--listen",
            "unix:/tmp/never.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("vch: opening /nonexistent.vmx"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
