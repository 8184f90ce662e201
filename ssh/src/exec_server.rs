//! A minimal exec server on our SSH for tests and benchmarks: `session` channels whose `exec`
//! requests run under `sh -c`. (The tether's debug shell is the full one.)

use std::collections::HashMap;
use std::process::Stdio;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::{ChannelId, Handle, Handler, OpenFailure, PublicKey};

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
                let mut r = super::wire::Reader::new(data);
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
