//! What the end-to-end tests share: where the workspace's `vch` and boot media are, running a
//! command with a deadline, and an HTTP GET on loopback.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

pub fn vch_bin() -> PathBuf {
    std::env::var_os("VCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/vch"))
}

pub fn assets() -> PathBuf {
    std::env::var_os("VCH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/containervm"))
}

/// Whether QEMU is installed; says why not (a skip) when it is not.
pub fn qemu_present() -> bool {
    let here = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !here {
        eprintln!("SKIP: qemu-system-x86_64 is not installed (scripts/setup-vm installs it)");
    }
    here
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` (stdin empty) to its end, with a deadline: a command still running after `limit`
/// is killed and fails the test.
pub fn output_within(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// One HTTP GET of `path` from 127.0.0.1:`port`: the body, or why not.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(format!("not a 200 reply: {reply:?}")),
    }
}
