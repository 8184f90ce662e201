//! One connection's task: key exchanges (the first, and rekeys started by either side, in
//! [`key_exchange`]), user authentication ([`auth`]), and the connection protocol
//! ([`channels`]), driven by packets from the reader task and commands from the application.
//! Each file holds the part of the connection's state machine that one RFC describes (4253,
//! 4252, 4254); this one the state itself, the task's loop and the dispatch of packets.

mod auth;
mod channels;
mod key_exchange;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::cipher::{self, Direction};
use super::kex::{self, Agreed, Ephemeral, KexInit};
use super::keys::PublicKey;
use super::transport::{self, Incoming, KeysIn, Out, Packet};
use super::wire::{Reader, Writer};
use super::{
    msg, Channel, ChannelEvent, ChannelId, ClientConfig, Command, Handle, Handler, HostKeyCheck,
    Limits, OpenFailure, ServerConfig, SshError, Stream,
};

/// How many failed authentication attempts a client gets.
const MAX_AUTH_ATTEMPTS: u32 = 20;
/// How many packets may wait for the connection task.
const QUEUE: usize = 256;

enum Role {
    Server(Arc<ServerConfig>),
    Client(Box<ClientConfig>),
}

enum KexState {
    Idle,
    /// We sent our KEXINIT and wait for the peer's.
    SentInit {
        ours: Vec<u8>,
    },
    /// Both KEXINITs are known; the ECDH messages are being exchanged.
    Exchanging {
        ours: Vec<u8>,
        theirs: Vec<u8>,
        agreed: Box<Agreed>,
        ephemeral: Option<Ephemeral>,
        ignore_next: bool,
    },
    /// We sent NEWKEYS and wait for the peer's.
    AwaitNewKeys,
}

#[derive(PartialEq, Eq)]
enum Auth {
    /// Server: waiting for the ssh-userauth service request. Client: not asked for yet.
    Start,
    InProgress,
    Done,
}

struct Pending {
    ext: Option<u32>,
    data: crate::Payload,
    sent: usize,
    done: Option<oneshot::Sender<()>>,
}

struct Chan {
    remote: u32,
    remote_window: u64,
    remote_max: u32,
    local_window: u32,
    consumed: u32,
    queue: VecDeque<Pending>,
    eof_wanted: bool,
    close_wanted: bool,
    sent_eof: bool,
    sent_close: bool,
    requests: VecDeque<Option<oneshot::Sender<bool>>>,
    /// Channels we opened report here; the peer's go to the handler.
    events: Option<mpsc::UnboundedSender<ChannelEvent>>,
    opening: Option<oneshot::Sender<Result<Channel, OpenFailure>>>,
    /// The peer opened it and the handler answers later ([`Handler::channel_open_later`]).
    confirming: bool,
}

impl Chan {
    fn new(limits: &Limits) -> Self {
        Self {
            remote: 0,
            remote_window: 0,
            remote_max: 0,
            local_window: limits.window,
            consumed: 0,
            queue: VecDeque::new(),
            eof_wanted: false,
            close_wanted: false,
            sent_eof: false,
            sent_close: false,
            requests: VecDeque::new(),
            events: None,
            opening: None,
            confirming: false,
        }
    }
}

struct Conn<H: Handler> {
    role: Role,
    handler: H,
    limits: Limits,
    out: mpsc::Sender<Out>,
    keys_in: mpsc::UnboundedSender<KeysIn>,
    handle: Handle,
    v_c: Vec<u8>,
    v_s: Vec<u8>,
    session_id: Option<Vec<u8>>,
    kex: KexState,
    first_kex: bool,
    strict: bool,
    /// The client said it takes SSH_MSG_EXT_INFO.
    peer_ext_info: bool,
    /// Our packets held back while our key exchange runs.
    deferred: Vec<Packet>,
    paused: bool,
    auth: Auth,
    auth_failures: u32,
    client_tried_key: bool,
    ready: Option<oneshot::Sender<Result<(), SshError>>>,
    channels: HashMap<u32, Chan>,
    next_channel: u32,
    globals: VecDeque<Option<oneshot::Sender<Option<Vec<u8>>>>>,
    bytes_since_kex: u64,
    kex_at: Instant,
    disconnected: bool,
}

/// Runs a server connection on `stream` until it ends.
pub async fn serve<S: Stream, H: Handler>(
    stream: S,
    config: Arc<ServerConfig>,
    handler: H,
) -> Result<(), SshError> {
    if config.keys.is_empty() {
        return Err(SshError::HostKey("the server has no host key".into()));
    }
    let (conn, incoming, commands) = start(stream, Role::Server(config), handler).await?;
    conn.run(incoming, commands).await
}

/// Connects as a client; returns once authenticated, with the connection running in a task whose
/// result the join handle gives.
pub async fn connect<S: Stream, H: Handler>(
    stream: S,
    config: ClientConfig,
    handler: H,
) -> Result<(Handle, tokio::task::JoinHandle<Result<(), SshError>>), SshError> {
    let (mut conn, incoming, commands) =
        start(stream, Role::Client(Box::new(config)), handler).await?;
    let (ready_tx, ready_rx) = oneshot::channel();
    conn.ready = Some(ready_tx);
    let handle = conn.handle.clone();
    let task = tokio::spawn(conn.run(incoming, commands));
    match ready_rx.await {
        Ok(Ok(())) => Ok((handle, task)),
        Ok(Err(e)) => Err(e),
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(SshError::Closed),
        },
    }
}

type Started<H> = (Conn<H>, mpsc::Receiver<Incoming>, mpsc::Receiver<Command>);

async fn start<S: Stream, H: Handler>(
    mut stream: S,
    role: Role,
    handler: H,
) -> Result<Started<H>, SshError> {
    let (ours, limits) = match &role {
        Role::Server(c) => (c.version.clone(), c.limits.clone()),
        Role::Client(c) => (c.version.clone(), c.limits.clone()),
    };
    let peer = transport::exchange_versions(&mut stream, &ours).await?;
    let (v_c, v_s) = if matches!(role, Role::Server(_)) {
        (peer, ours)
    } else {
        (ours, peer)
    };
    let (r, w) = tokio::io::split(stream);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (keys_tx, keys_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    tokio::spawn(transport::reader(r, in_tx, keys_rx));
    tokio::spawn(transport::writer(w, out_rx));
    let (cmd_tx, cmd_rx) = mpsc::channel(QUEUE);
    let conn = Conn::new(
        role,
        handler,
        limits,
        out_tx,
        keys_tx,
        Handle { tx: cmd_tx },
        v_c.into_bytes(),
        v_s.into_bytes(),
    );
    Ok((conn, in_rx, cmd_rx))
}

impl<H: Handler> Conn<H> {
    /// A connection right after the version exchange.
    #[allow(clippy::too_many_arguments)]
    fn new(
        role: Role,
        handler: H,
        limits: Limits,
        out: mpsc::Sender<Out>,
        keys_in: mpsc::UnboundedSender<KeysIn>,
        handle: Handle,
        v_c: Vec<u8>,
        v_s: Vec<u8>,
    ) -> Self {
        Conn {
            role,
            handler,
            limits,
            out,
            keys_in,
            handle,
            v_c,
            v_s,
            session_id: None,
            kex: KexState::Idle,
            first_kex: true,
            strict: false,
            peer_ext_info: false,
            deferred: Vec::new(),
            paused: false,
            auth: Auth::Start,
            auth_failures: 0,
            client_tried_key: false,
            ready: None,
            channels: HashMap::new(),
            next_channel: 0,
            globals: VecDeque::new(),
            bytes_since_kex: 0,
            kex_at: Instant::now(),
            disconnected: false,
        }
    }
}

fn protocol(what: impl Into<String>) -> SshError {
    SshError::Protocol(what.into())
}

impl<H: Handler> Conn<H> {
    fn is_server(&self) -> bool {
        matches!(self.role, Role::Server(_))
    }

    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Incoming>,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<(), SshError> {
        let result = self.drive(&mut incoming, &mut commands).await;
        if let Err(e) = &result {
            let (reason, why) = match e {
                SshError::Kex(_) => (msg::DISCONNECT_KEY_EXCHANGE_FAILED, e.to_string()),
                SshError::Cipher(_) => (msg::DISCONNECT_MAC_ERROR, e.to_string()),
                SshError::HostKey(_) => (msg::DISCONNECT_HOST_KEY_NOT_VERIFIABLE, e.to_string()),
                SshError::Auth(_) => (msg::DISCONNECT_NO_MORE_AUTH_METHODS, e.to_string()),
                SshError::Closed | SshError::Io(_) | SshError::Disconnected { .. } => {
                    (0, String::new())
                }
                _ => (msg::DISCONNECT_PROTOCOL_ERROR, e.to_string()),
            };
            if reason != 0 && !self.disconnected {
                let mut w = Writer::msg(msg::DISCONNECT);
                w.u32(reason).string(why).string("");
                let _ = self.out.send(Out::Packet(w.finish().into())).await;
            }
        }
        let _ = self.out.send(Out::Close).await;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(match &result {
                Err(e) => SshError::Protocol(e.to_string()),
                Ok(()) => SshError::Closed,
            }));
        }
        // Whoever waits on a channel learns that it is gone.
        for (id, ch) in self.channels.drain() {
            match ch.events {
                Some(ev) => {
                    let _ = ev.send(ChannelEvent::Closed);
                }
                None => self.handler.closed(ChannelId(id)),
            }
        }
        match result {
            Err(SshError::Closed) if self.disconnected => Ok(()),
            other => other,
        }
    }

    async fn drive(
        &mut self,
        incoming: &mut mpsc::Receiver<Incoming>,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Result<(), SshError> {
        self.send_kexinit().await?;
        loop {
            tokio::select! {
                p = incoming.recv() => match p {
                    Some(Ok((seq, payload))) => {
                        self.bytes_since_kex += payload.len() as u64;
                        self.packet(seq, payload).await?;
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(SshError::Closed),
                },
                c = commands.recv(), if self.auth == Auth::Done => match c {
                    Some(c) => self.command(c).await?,
                    None => return Ok(()),
                },
            }
            if self.disconnected {
                return Ok(());
            }
            self.maybe_rekey().await?;
        }
    }

    /// Starts a new key exchange when a traffic or time limit is reached.
    async fn maybe_rekey(&mut self) -> Result<(), SshError> {
        if matches!(self.kex, KexState::Idle)
            && self.session_id.is_some()
            && (self.bytes_since_kex >= self.limits.rekey_bytes
                || self.kex_at.elapsed() >= self.limits.rekey_after)
        {
            self.send_kexinit().await?;
        }
        Ok(())
    }

    /// Sends a packet, or holds it while our key exchange runs.
    async fn send(&mut self, payload: impl Into<Packet>) -> Result<(), SshError> {
        let payload = payload.into();
        self.bytes_since_kex += payload.len() as u64;
        if self.paused
            && !payload
                .kind()
                .is_some_and(|n| msg::is_kex(n) || n == msg::DISCONNECT)
        {
            self.deferred.push(payload);
            return Ok(());
        }
        self.out
            .send(Out::Packet(payload))
            .await
            .map_err(|_| SshError::Closed)
    }

    async fn send_kexinit(&mut self) -> Result<(), SshError> {
        let (prefs, host_keys) = match &self.role {
            Role::Server(c) => {
                // Each algorithm once, in our preference order, for the keys we have.
                let mut algs: Vec<&str> = Vec::new();
                for pref in &c.prefs.host_keys {
                    if c.keys
                        .iter()
                        .any(|k| k.algorithms().contains(&pref.as_str()))
                        && !algs.contains(&pref.as_str())
                    {
                        algs.push(pref);
                    }
                }
                (
                    c.prefs.clone(),
                    algs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )
            }
            Role::Client(c) => (c.prefs.clone(), Vec::new()),
        };
        let hk: Vec<&str> = host_keys.iter().map(String::as_str).collect();
        let ours = KexInit::build(&prefs, self.is_server(), self.first_kex, &hk);
        self.paused = true;
        self.send(ours.clone()).await?;
        self.kex = KexState::SentInit { ours };
        self.bytes_since_kex = 0;
        self.kex_at = Instant::now();
        Ok(())
    }

    async fn packet(&mut self, seq: u32, payload: Vec<u8>) -> Result<(), SshError> {
        let Some(&number) = payload.first() else {
            return Err(protocol("an empty packet"));
        };
        // Strict KEX: nothing but the key exchange until the first one is over.
        if self.first_kex && self.strict && !msg::is_kex(number) {
            return Err(protocol(format!(
                "message {number} during the initial key exchange (strict KEX)"
            )));
        }
        let chatter = matches!(number, msg::IGNORE | msg::DEBUG);
        if self.first_kex
            && self.session_id.is_none()
            && matches!(self.kex, KexState::SentInit { .. })
            && number != msg::KEXINIT
            && !chatter
        {
            return Err(protocol(format!(
                "message {number} before the first KEXINIT"
            )));
        }
        if msg::is_kex(number) {
            return self.kex_packet(payload).await;
        }
        match number {
            msg::DISCONNECT => {
                let mut r = Reader::new(&payload[1..]);
                let reason = r.u32().unwrap_or(0);
                let description = r.utf8().unwrap_or("").to_string();
                self.disconnected = true;
                Err(SshError::Disconnected {
                    reason,
                    description,
                })
            }
            msg::IGNORE | msg::DEBUG | msg::UNIMPLEMENTED => Ok(()),
            msg::SERVICE_REQUEST | msg::SERVICE_ACCEPT | msg::EXT_INFO => {
                self.service(payload).await
            }
            msg::USERAUTH_REQUEST..=msg::USERAUTH_PK_OK if self.auth != Auth::Done => {
                self.userauth(payload).await
            }
            msg::GLOBAL_REQUEST..=msg::CHANNEL_FAILURE if self.auth == Auth::Done => {
                self.connection(payload).await
            }
            msg::USERAUTH_REQUEST..=msg::CHANNEL_FAILURE => {
                if self.auth == Auth::Done
                    && (msg::USERAUTH_REQUEST..=msg::USERAUTH_PK_OK).contains(&number)
                {
                    // A late authentication message after success is ignored (RFC 4252 §5.1).
                    return Ok(());
                }
                Err(protocol(format!("message {number} before authentication")))
            }
            _ => {
                let mut w = Writer::msg(msg::UNIMPLEMENTED);
                w.u32(seq);
                self.send(w.finish()).await
            }
        }
    }
}

/// For fuzzing: a server connection already past key exchange and authentication (keys "none"),
/// fed `payloads` as received messages. Returns when one is refused or all are handled.
#[cfg(feature = "fuzzing")]
pub async fn fuzz_authenticated_server(payloads: Vec<Vec<u8>>) -> Result<(), SshError> {
    struct Accepting;
    impl Handler for Accepting {
        fn channel_open(&mut self, _: ChannelId, _: &str, _: &[u8]) -> Result<(), OpenFailure> {
            Ok(())
        }
        fn global_request(&mut self, _: &str, d: &[u8]) -> Option<Vec<u8>> {
            Some(d.to_vec())
        }
        fn channel_request(&mut self, _: ChannelId, _: &str, _: &[u8]) -> bool {
            true
        }
    }
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move { while out_rx.recv().await.is_some() {} });
    let (keys_tx, _keys_rx) = mpsc::unbounded_channel();
    let (cmd_tx, _cmd_rx) = mpsc::channel(QUEUE);
    let role = Role::Server(Arc::new(ServerConfig::new(vec![
        super::PrivateKey::generate_ed25519(),
    ])));
    let handle = Handle { tx: cmd_tx };
    let mut conn = Conn::new(
        role,
        Accepting,
        Limits::default(),
        out_tx,
        keys_tx,
        handle,
        b"SSH-2.0-fuzz".to_vec(),
        super::VERSION.as_bytes().to_vec(),
    );
    // Past key exchange and authentication.
    conn.session_id = Some(vec![0; 32]);
    conn.first_kex = false;
    conn.auth = Auth::Done;
    for (seq, p) in payloads.into_iter().enumerate() {
        conn.packet(seq as u32, p).await?;
        if conn.disconnected {
            break;
        }
    }
    Ok(())
}
