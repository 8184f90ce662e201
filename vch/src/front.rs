//! The supervisor's front door: an SSH server on the container's control socket that relays
//! every client's global requests, channels, channel requests and data to the one SSH
//! connection the supervisor holds with the tether (a containerVM has one attach line). So
//! `vch attach`, `exec`, `kill` and `stop` use the same client code whether they reach a tether
//! directly or through a supervisor, and any number of them work at once.

use std::collections::HashMap;

use ssh::{
    self, Channel, ChannelEvent, ChannelId, Handle, Handler, OpenFailure, PrivateKey, ServerConfig,
};
use tokio::sync::mpsc;

enum FromClient {
    Data(Option<u32>, Vec<u8>),
    Eof,
    Request {
        name: String,
        data: Vec<u8>,
        want_reply: bool,
    },
    Close,
}

struct Global {
    name: String,
    data: Vec<u8>,
    want_reply: bool,
}

/// The global request a `vch` command sends the supervisor to have the VM's tools run a TCLO
/// request (the data) as the VMX would; the answer is the tools' reply.
pub const TOOLS_REQUEST: &str = "tools@vch";

/// How long a tools request waits for the guest's reply.
const TOOLS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Front {
    upstream: Handle,
    tools: tether_proto::guestinfo::tools::ToolsQueue,
    down: Option<Handle>,
    channels: HashMap<ChannelId, mpsc::UnboundedSender<FromClient>>,
    globals: Option<mpsc::UnboundedSender<Global>>,
}

impl Front {
    fn pass_on(&mut self, ch: ChannelId, m: FromClient) {
        if let Some(tx) = self.channels.get(&ch) {
            let _ = tx.send(m);
        }
    }
}

impl Handler for Front {
    fn connected(&mut self, handle: Handle) {
        // Global requests are answered in the order they came: one task relays them all.
        let (tx, mut rx) = mpsc::unbounded_channel::<Global>();
        let (up, down) = (self.upstream.clone(), handle.clone());
        let tools = self.tools.clone();
        tokio::spawn(async move {
            while let Some(g) = rx.recv().await {
                let answer = if g.name == TOOLS_REQUEST {
                    // As the VMX: the request goes to the guest's next TCLO poll.
                    let tools = tools.clone();
                    let end = g
                        .data
                        .iter()
                        .position(|&b| b == b' ')
                        .unwrap_or(g.data.len());
                    let shown = format!(
                        "{} ({} bytes)",
                        String::from_utf8_lossy(&g.data[..end]),
                        g.data.len()
                    );
                    let reply =
                        tokio::task::spawn_blocking(move || tools.request(g.data, TOOLS_WAIT))
                            .await
                            .unwrap_or(None);
                    tracing::info!(
                        "tools: {shown} -> {:?}",
                        reply.as_deref().map(String::from_utf8_lossy)
                    );
                    reply
                } else {
                    up.global_request(&g.name, g.want_reply, g.data)
                        .await
                        .unwrap_or(None)
                };
                if g.want_reply && down.answer_global(answer).await.is_err() {
                    return;
                }
            }
        });
        self.globals = Some(tx);
        self.down = Some(handle);
    }

    fn auth_none(&mut self, _user: &str) -> bool {
        // The socket lives in the container's state directory, readable by its owner only.
        true
    }

    fn global_request_later(
        &mut self,
        name: &str,
        data: &[u8],
        want_reply: bool,
    ) -> Option<Option<Vec<u8>>> {
        let g = Global {
            name: name.to_string(),
            data: data.to_vec(),
            want_reply,
        };
        match &self.globals {
            Some(tx) if tx.send(g).is_ok() => None,
            _ => Some(None),
        }
    }

    fn channel_open_later(
        &mut self,
        ch: ChannelId,
        typ: &str,
        extra: &[u8],
    ) -> Option<Result<(), OpenFailure>> {
        let Some(down) = self.down.clone() else {
            return Some(Err(OpenFailure::new(2, "not connected")));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.channels.insert(ch, tx);
        let (up, typ, extra) = (self.upstream.clone(), typ.to_string(), extra.to_vec());
        tokio::spawn(async move {
            match up.open(&typ, extra).await {
                Ok(Ok(upch)) => {
                    if down.answer_open(ch, Ok(())).await.is_ok() {
                        relay(upch, down, ch, rx).await;
                    }
                }
                Ok(Err(refused)) => {
                    let _ = down.answer_open(ch, Err(refused)).await;
                }
                Err(e) => {
                    let _ = down
                        .answer_open(ch, Err(OpenFailure::new(2, format!("the tether: {e}"))))
                        .await;
                }
            }
        });
        None
    }

    fn channel_request_later(
        &mut self,
        ch: ChannelId,
        name: &str,
        data: &[u8],
        want_reply: bool,
    ) -> Option<bool> {
        self.pass_on(
            ch,
            FromClient::Request {
                name: name.to_string(),
                data: data.to_vec(),
                want_reply,
            },
        );
        None
    }

    fn data(&mut self, ch: ChannelId, data: &[u8]) -> bool {
        self.pass_on(ch, FromClient::Data(None, data.to_vec()));
        false
    }

    fn extended_data(&mut self, ch: ChannelId, code: u32, data: &[u8]) -> bool {
        self.pass_on(ch, FromClient::Data(Some(code), data.to_vec()));
        false
    }

    fn eof(&mut self, ch: ChannelId) {
        self.pass_on(ch, FromClient::Eof);
    }

    fn closed(&mut self, ch: ChannelId) {
        self.pass_on(ch, FromClient::Close);
        self.channels.remove(&ch);
    }
}

/// Moves one channel's traffic both ways until either side closes it.
async fn relay(
    mut up: Channel,
    down: Handle,
    ch: ChannelId,
    mut from_client: mpsc::UnboundedReceiver<FromClient>,
) {
    let mut client_gone = false;
    let mut relayed = 0usize;
    loop {
        tokio::select! {
            ev = up.recv() => {
                if let Some(ChannelEvent::Data(d) | ChannelEvent::ExtendedData(_, d)) = &ev {
                    relayed += d.len();
                }
                let sent = match ev {
                    Some(ChannelEvent::Data(d)) => down.data(ch, None, d).await,
                    Some(ChannelEvent::ExtendedData(c, d)) => down.data(ch, Some(c), d).await,
                    Some(ChannelEvent::Eof) => down.eof(ch).await,
                    Some(ChannelEvent::Request { name, data }) => {
                        down.channel_request(ch, &name, false, data).await.map(|_| ())
                    }
                    Some(ChannelEvent::Closed) | None => {
                        tracing::debug!(channel = ch.0, relayed, "the tether closed a channel");
                        let _ = down.close(ch).await;
                        return;
                    }
                };
                if sent.is_err() && !client_gone {
                    client_gone = true;
                    let _ = up.close().await;
                }
            }
            m = from_client.recv(), if !client_gone => match m {
                Some(FromClient::Data(ext, d)) => {
                    let n = d.len() as u32;
                    let _ = up.handle.data(up.id, ext, d).await;
                    let _ = down.adjust_window(ch, n).await;
                }
                Some(FromClient::Eof) => {
                    let _ = up.eof().await;
                }
                Some(FromClient::Request { name, data, want_reply }) => {
                    let ok = up.request(&name, want_reply, data).await.unwrap_or(false);
                    if want_reply {
                        let _ = down.answer_request(ch, ok).await;
                    }
                }
                Some(FromClient::Close) | None => {
                    client_gone = true;
                    let _ = up.close().await;
                }
            },
        }
    }
}

/// The connected clients, counted so that the supervisor outlives the delivery of their output:
/// when the VM is gone a relay may still hold output a client has not taken yet.
#[derive(Clone)]
pub struct Clients(std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Default for Clients {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl Clients {
    /// Waits until every client has disconnected, at most `limit`; whether they all did.
    pub async fn wait_gone(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Serves clients on `listener`, relaying to `upstream`, until `upstream` is gone; the clients'
/// connections go on (to take what is relayed) and are counted in `clients`.
pub async fn serve(
    listener: tokio::net::UnixListener,
    upstream: Handle,
    clients: Clients,
    tools: tether_proto::guestinfo::tools::ToolsQueue,
) {
    let key = PrivateKey::generate_ed25519();
    let config = std::sync::Arc::new(ServerConfig::new(vec![key]));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = upstream.closed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let front = Front {
            upstream: upstream.clone(),
            tools: tools.clone(),
            down: None,
            channels: HashMap::new(),
            globals: None,
        };
        let config = config.clone();
        let clients = clients.clone();
        clients.0.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            if let Err(e) = ssh::serve(stream, config, front).await {
                tracing::debug!("a control client: {e}");
            }
            clients.0.send_modify(|n| *n -= 1);
        });
    }
}

/// A listener on `path` whose file appears only once it listens: bound under a temporary name,
/// then renamed into place (bind(2) makes the file a moment before listen(2), and a client that
/// watched for the file and connected in between was refused: a `vch run` once, in a bench run).
/// A stale file at `path` is replaced.
pub fn listen_at(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Connects to a supervisor's control socket.
pub async fn connect(socket: &std::path::Path) -> anyhow::Result<Handle> {
    use anyhow::Context as _;
    // The socket's file appears at bind(2), a moment before listen(2): a client that sees it in
    // between is refused (a `vch run` watching for it was, once in a bench run). Briefly again.
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (handle, _task) = ssh::connect(stream, ssh::ClientConfig::new("vch"), ssh::NoHandler)
        .await
        .context("SSH to the supervisor")?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_control_socket_appears_only_once_it_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        // A stale file from an earlier listener is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert_eq!(
            std::os::unix::net::UnixStream::connect(&path)
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        let listener = listen_at(&path).unwrap();
        // Whoever sees the file can connect at once.
        tokio::net::UnixStream::connect(&path).await.unwrap();
        listener.accept().await.unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["ctl.sock"], "no temporary left");
    }
}
