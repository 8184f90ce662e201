//! Test fixtures for interoperating with OpenSSH: a small exec server on our SSH, and an sshd on
//! loopback with a throwaway configuration.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_proto::ssh::{self, ChannelId, Handle, Handler, OpenFailure, PublicKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// A server handler that runs `exec` requests with `sh -c`: stdout as data, stderr as extended
/// data, stdin from channel data (EOF closes it), then exit-status, EOF and CLOSE.
pub struct ExecServer {
    pub allowed: Option<PublicKey>,
    handle: Option<Handle>,
    stdin: HashMap<ChannelId, mpsc::UnboundedSender<Option<Vec<u8>>>>,
}

impl ExecServer {
    pub fn new(allowed: Option<PublicKey>) -> Self {
        Self {
            allowed,
            handle: None,
            stdin: HashMap::new(),
        }
    }
}

impl Handler for ExecServer {
    fn connected(&mut self, handle: Handle) {
        self.handle = Some(handle);
    }

    fn auth_publickey(&mut self, _user: &str, key: &PublicKey) -> bool {
        self.allowed.as_ref() == Some(key)
    }

    fn channel_open(
        &mut self,
        _ch: ChannelId,
        typ: &str,
        _extra: &[u8],
    ) -> Result<(), OpenFailure> {
        if typ == "session" {
            Ok(())
        } else {
            Err(OpenFailure::unknown_type(typ))
        }
    }

    fn channel_request(&mut self, ch: ChannelId, name: &str, data: &[u8]) -> bool {
        match name {
            "exec" => {
                let mut r = tether_proto::ssh::wire::Reader::new(data);
                let Ok(cmd) = r.utf8() else { return false };
                let (tx, rx) = mpsc::unbounded_channel();
                self.stdin.insert(ch, tx);
                let handle = self.handle.clone().expect("connected");
                tokio::spawn(run_exec(handle, ch, cmd.to_string(), rx));
                true
            }
            "env" | "pty-req" => true,
            _ => false,
        }
    }

    fn data(&mut self, ch: ChannelId, data: &[u8]) -> bool {
        if let Some(tx) = self.stdin.get(&ch) {
            let _ = tx.send(Some(data.to_vec()));
        }
        true
    }

    fn eof(&mut self, ch: ChannelId) {
        if let Some(tx) = self.stdin.get(&ch) {
            let _ = tx.send(None);
        }
    }

    fn closed(&mut self, ch: ChannelId) {
        self.stdin.remove(&ch);
    }
}

async fn run_exec(
    handle: Handle,
    ch: ChannelId,
    cmd: String,
    mut input: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
) {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let feeder = tokio::spawn(async move {
        while let Some(Some(data)) = input.recv().await {
            if let Some(s) = stdin.as_mut() {
                if s.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
        drop(stdin);
    });
    let h2 = handle.clone();
    let errs = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 || h2.data(ch, Some(1), buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = stdout.read(&mut buf).await {
        if n == 0 || handle.data(ch, None, buf[..n].to_vec()).await.is_err() {
            break;
        }
    }
    let _ = errs.await;
    let status = child
        .wait()
        .await
        .map(|s| s.code().unwrap_or(255))
        .unwrap_or(255);
    feeder.abort();
    let _ = handle
        .channel_request(
            ch,
            "exit-status",
            false,
            (status as u32).to_be_bytes().to_vec(),
        )
        .await;
    let _ = handle.eof(ch).await;
    let _ = handle.close(ch).await;
}

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
