//! Test fixtures for interoperating with OpenSSH: a small exec server on our SSH, and an sshd on
//! loopback with a throwaway configuration.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssh::exec_server::ExecServer;
use ssh::{self, PublicKey};

/// Starts our exec server on 127.0.0.1; returns its port.
pub async fn start_server(config: ssh::ServerConfig, allowed: Option<PublicKey>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Arc::new(config);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let config = config.clone();
            let allowed = allowed.clone();
            tokio::spawn(async move {
                let _ = ssh::serve(s, config, ExecServer::new(allowed)).await;
            });
        }
    });
    port
}

/// Writes an OpenSSH-format private key for OpenSSH's client (ssh-keygen makes it).
pub fn keygen(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    path
}

pub fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An sshd on loopback, killed when dropped.
pub struct Sshd {
    pub child: Child,
    pub port: u16,
    pub host_keys: Vec<PathBuf>,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sshd -D -e` on a free loopback port, trusting `authorized` for the current user.
pub fn start_sshd(dir: &Path, authorized: &str, extra: &[&str]) -> Sshd {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sshd installed");
    let mut host_keys = Vec::new();
    for kind in ["ed25519", "rsa"] {
        host_keys.push(keygen(dir, &format!("host_{kind}"), kind));
    }
    let auth = dir.join("authorized_keys");
    std::fs::write(&auth, authorized).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = dir.join("sshd_config");
    let mut text = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nHostKey {}\nAuthorizedKeysFile {}\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
         PidFile none\nPermitRootLogin yes\nLogLevel ERROR\n",
        host_keys[0].display(),
        host_keys[1].display(),
        auth.display()
    );
    for e in extra {
        text.push_str(e);
        text.push('\n');
    }
    std::fs::write(&conf, text).unwrap();
    std::fs::create_dir_all("/run/sshd").ok();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&conf)
        .stderr(Stdio::piped())
        .spawn()
        .expect("sshd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd {
        child,
        port,
        host_keys,
    }
}
