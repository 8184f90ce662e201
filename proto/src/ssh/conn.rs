//! One connection's task: key exchanges (the first, and rekeys started by either side), user
//! authentication, and the connection protocol, driven by packets from the reader task and
//! commands from the application.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::cipher::{self, Direction};
use super::kex::{self, Agreed, Ephemeral, KexInit};
use super::keys::PublicKey;
use super::transport::{self, Incoming, KeysIn, Out};
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
    data: Vec<u8>,
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
    deferred: Vec<Vec<u8>>,
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
                let _ = self.out.send(Out::Packet(w.finish())).await;
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
    async fn send(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        self.bytes_since_kex += payload.len() as u64;
        if self.paused
            && !payload
                .first()
                .is_some_and(|&n| msg::is_kex(n) || n == msg::DISCONNECT)
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

    // ---- key exchange ----

    async fn kex_packet(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let number = payload[0];
        let state = std::mem::replace(&mut self.kex, KexState::Idle);
        match (number, state) {
            (msg::KEXINIT, state @ (KexState::Idle | KexState::SentInit { .. })) => {
                let ours = match state {
                    KexState::SentInit { ours } => ours,
                    _ => {
                        // The peer starts a rekey: answer with ours first.
                        self.send_kexinit().await?;
                        match std::mem::replace(&mut self.kex, KexState::Idle) {
                            KexState::SentInit { ours } => ours,
                            _ => unreachable!("send_kexinit sets SentInit"),
                        }
                    }
                };
                let theirs_parsed = KexInit::parse(&payload)?;
                let ours_parsed = KexInit::parse(&ours)?;
                let server = self.is_server();
                let (c, s) = if server {
                    (&theirs_parsed, &ours_parsed)
                } else {
                    (&ours_parsed, &theirs_parsed)
                };
                let agreed = kex::negotiate(c, s, !server)?;
                if self.first_kex {
                    self.strict = agreed.strict;
                    self.peer_ext_info = agreed.ext_info_c;
                }
                let ignore_next = agreed.ignore_guess;
                let mut ephemeral = None;
                if !server {
                    let e = Ephemeral::new();
                    let mut w = Writer::msg(msg::KEX_ECDH_INIT);
                    w.string(e.public);
                    self.send(w.finish()).await?;
                    ephemeral = Some(e);
                }
                self.kex = KexState::Exchanging {
                    ours,
                    theirs: payload,
                    agreed: Box::new(agreed),
                    ephemeral,
                    ignore_next,
                };
                Ok(())
            }
            (
                _,
                KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ephemeral,
                    ignore_next: true,
                },
            ) if number != msg::NEWKEYS => {
                // The peer's wrong guess (first_kex_packet_follows): dropped.
                self.kex = KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ephemeral,
                    ignore_next: false,
                };
                Ok(())
            }
            (
                msg::KEX_ECDH_INIT,
                KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ..
                },
            ) if self.is_server() => self.server_ecdh(&payload, ours, theirs, agreed).await,
            (
                msg::KEX_ECDH_REPLY,
                KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ephemeral: Some(e),
                    ..
                },
            ) if !self.is_server() => self.client_ecdh(&payload, ours, theirs, agreed, e).await,
            (msg::NEWKEYS, KexState::AwaitNewKeys) => {
                let first = self.first_kex;
                self.first_kex = false;
                self.kex = KexState::Idle;
                if first {
                    self.after_first_kex().await?;
                }
                Ok(())
            }
            (n, _) => Err(protocol(format!("unexpected key exchange message {n}"))),
        }
    }

    /// Derives both directions' keys and sends NEWKEYS; the writer switches right after it, the
    /// reader after the peer's.
    async fn finish_kex(
        &mut self,
        agreed: &Agreed,
        shared: &[u8],
        h: &[u8],
    ) -> Result<(), SshError> {
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        let make = |cipher: &str, mac: &str, iv: u8, key: u8, mk: u8| {
            let (kl, il) = cipher::key_lengths(cipher);
            let ml = cipher::mac_key_length(mac);
            Direction::new(
                cipher,
                mac,
                &kex::derive(shared, h, &sid, key, kl),
                &kex::derive(shared, h, &sid, iv, il),
                &kex::derive(shared, h, &sid, mk, ml),
            )
        };
        let c2s = make(&agreed.cipher_c2s, &agreed.mac_c2s, b'A', b'C', b'E');
        let s2c = make(&agreed.cipher_s2c, &agreed.mac_s2c, b'B', b'D', b'F');
        let (outgoing, incoming) = if self.is_server() {
            (s2c, c2s)
        } else {
            (c2s, s2c)
        };
        let reset_seq = self.strict;
        self.out
            .send(Out::Packet(vec![msg::NEWKEYS]))
            .await
            .map_err(|_| SshError::Closed)?;
        self.out
            .send(Out::NewKeys {
                dir: outgoing,
                reset_seq,
            })
            .await
            .map_err(|_| SshError::Closed)?;
        let _ = self.keys_in.send(KeysIn {
            dir: incoming,
            reset_seq,
        });
        self.kex = KexState::AwaitNewKeys;
        // Our side of the exchange is over: what was held back goes now, under the new keys.
        self.paused = false;
        for p in std::mem::take(&mut self.deferred) {
            self.out
                .send(Out::Packet(p))
                .await
                .map_err(|_| SshError::Closed)?;
        }
        Ok(())
    }

    async fn server_ecdh(
        &mut self,
        payload: &[u8],
        ours: Vec<u8>,
        theirs: Vec<u8>,
        agreed: Box<Agreed>,
    ) -> Result<(), SshError> {
        let Role::Server(config) = &self.role else {
            unreachable!("server only")
        };
        let key = config
            .keys
            .iter()
            .find(|k| k.algorithms().contains(&agreed.host_key.as_str()))
            .ok_or_else(|| SshError::HostKey(format!("no host key can sign {}", agreed.host_key)))?
            .clone();
        let mut r = Reader::new(&payload[1..]);
        let q_c = r.string()?.to_vec();
        let e = Ephemeral::new();
        let q_s = e.public;
        let shared = e.agree(&q_c)?;
        let k_s = key.public().blob();
        let h = kex::exchange_hash(
            &self.v_c, &self.v_s, &theirs, &ours, &k_s, &q_c, &q_s, &shared,
        );
        let sig = key
            .sign(&agreed.host_key, &h)
            .map_err(|e| SshError::HostKey(e.to_string()))?;
        let mut w = Writer::msg(msg::KEX_ECDH_REPLY);
        w.string(&k_s).string(q_s).string(sig);
        self.send(w.finish()).await?;
        self.finish_kex(&agreed, &shared, &h).await
    }

    async fn client_ecdh(
        &mut self,
        payload: &[u8],
        ours: Vec<u8>,
        theirs: Vec<u8>,
        agreed: Box<Agreed>,
        e: Ephemeral,
    ) -> Result<(), SshError> {
        let Role::Client(config) = &self.role else {
            unreachable!("client only")
        };
        let mut r = Reader::new(&payload[1..]);
        let k_s = r.string()?.to_vec();
        let q_s = r.string()?.to_vec();
        let sig = r.string()?.to_vec();
        let host = PublicKey::from_blob(&k_s).map_err(|e| SshError::HostKey(e.to_string()))?;
        if let HostKeyCheck::Pinned(want) = &config.host_key {
            if &host != want {
                return Err(SshError::HostKey(format!(
                    "the server's key {} is not the one expected",
                    host.to_openssh()
                )));
            }
        }
        let q_c = e.public;
        let shared = e.agree(&q_s)?;
        let h = kex::exchange_hash(
            &self.v_c, &self.v_s, &ours, &theirs, &k_s, &q_c, &q_s, &shared,
        );
        host.verify(&agreed.host_key, &h, &sig).map_err(|_| {
            SshError::HostKey("the server's signature of the exchange does not verify".into())
        })?;
        self.finish_kex(&agreed, &shared, &h).await
    }

    async fn after_first_kex(&mut self) -> Result<(), SshError> {
        if self.is_server() && self.peer_ext_info {
            // RFC 8308: tell the client which signature algorithms user keys may use.
            let mut w = Writer::msg(msg::EXT_INFO);
            w.u32(1).string("server-sig-algs").name_list(&[
                super::keys::SSH_ED25519,
                super::keys::RSA_SHA2_512,
                super::keys::RSA_SHA2_256,
                super::keys::SSH_RSA,
            ]);
            self.send(w.finish()).await?;
        }
        if !self.is_server() {
            let mut w = Writer::msg(msg::SERVICE_REQUEST);
            w.string("ssh-userauth");
            self.send(w.finish()).await?;
        }
        Ok(())
    }

    // ---- services and authentication ----

    async fn service(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let mut r = Reader::new(&payload[1..]);
        match payload[0] {
            msg::SERVICE_REQUEST if self.is_server() => {
                let name = r.utf8()?;
                if name != "ssh-userauth" || self.auth != Auth::Start {
                    let mut w = Writer::msg(msg::DISCONNECT);
                    w.u32(msg::DISCONNECT_SERVICE_NOT_AVAILABLE)
                        .string(format!("service {name} not available"))
                        .string("");
                    self.send(w.finish()).await?;
                    self.disconnected = true;
                    return Ok(());
                }
                self.auth = Auth::InProgress;
                let mut w = Writer::msg(msg::SERVICE_ACCEPT);
                w.string("ssh-userauth");
                self.send(w.finish()).await
            }
            msg::SERVICE_ACCEPT if !self.is_server() && self.auth == Auth::Start => {
                self.auth = Auth::InProgress;
                let user = match &self.role {
                    Role::Client(c) => c.user.clone(),
                    Role::Server(_) => unreachable!(),
                };
                let mut w = Writer::msg(msg::USERAUTH_REQUEST);
                w.string(user).string("ssh-connection").string("none");
                self.send(w.finish()).await
            }
            msg::EXT_INFO => Ok(()),
            n => Err(protocol(format!("unexpected service message {n}"))),
        }
    }

    async fn userauth(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        if self.is_server() {
            self.server_userauth(payload).await
        } else {
            self.client_userauth(payload).await
        }
    }

    async fn server_userauth(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        if payload[0] != msg::USERAUTH_REQUEST || self.auth != Auth::InProgress {
            return Err(protocol("unexpected authentication message"));
        }
        let mut r = Reader::new(&payload[1..]);
        let user = r.utf8()?.to_string();
        let service = r.utf8()?;
        let method = r.utf8()?;
        let ok = if service != "ssh-connection" {
            false
        } else {
            match method {
                "none" => self.handler.auth_none(&user),
                "publickey" => {
                    let has_sig = r.bool()?;
                    let alg = r.utf8()?.to_string();
                    let blob = r.string()?.to_vec();
                    let key = PublicKey::from_blob(&blob)
                        .ok()
                        .filter(|k| k.supports(&alg));
                    match key {
                        Some(key) if self.handler.auth_publickey(&user, &key) => {
                            if !has_sig {
                                let mut w = Writer::msg(msg::USERAUTH_PK_OK);
                                w.string(&alg).string(&blob);
                                return self.send(w.finish()).await;
                            }
                            let sig = r.string()?;
                            let mut signed = Writer::new();
                            signed
                                .string(self.session_id.as_deref().unwrap_or_default())
                                .u8(msg::USERAUTH_REQUEST)
                                .string(&user)
                                .string("ssh-connection")
                                .string("publickey")
                                .bool(true)
                                .string(&alg)
                                .string(&blob);
                            key.verify(&alg, &signed.0, sig).is_ok()
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        };
        if ok {
            self.auth = Auth::Done;
            self.send(vec![msg::USERAUTH_SUCCESS]).await?;
            let handle = self.handle.clone();
            self.handler.connected(handle);
            return Ok(());
        }
        self.auth_failures += 1;
        if self.auth_failures > MAX_AUTH_ATTEMPTS {
            return Err(SshError::Auth("too many attempts".into()));
        }
        let methods = match &self.role {
            Role::Server(c) => c.auth_methods.clone(),
            Role::Client(_) => Vec::new(),
        };
        let m: Vec<&str> = methods.iter().map(String::as_str).collect();
        let mut w = Writer::msg(msg::USERAUTH_FAILURE);
        w.name_list(&m).bool(false);
        self.send(w.finish()).await
    }

    async fn client_userauth(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let Role::Client(config) = &self.role else {
            unreachable!("client only")
        };
        match payload[0] {
            msg::USERAUTH_SUCCESS => {
                self.auth = Auth::Done;
                let handle = self.handle.clone();
                self.handler.connected(handle);
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
                Ok(())
            }
            msg::USERAUTH_BANNER => Ok(()),
            msg::USERAUTH_FAILURE => {
                let mut r = Reader::new(&payload[1..]);
                let methods: Vec<String> = r.name_list()?.into_iter().map(str::to_string).collect();
                match (&config.key, self.client_tried_key) {
                    (Some(key), false) if methods.iter().any(|m| m == "publickey") => {
                        self.client_tried_key = true;
                        let alg = key.algorithms().first().copied().unwrap_or_default();
                        let blob = key.public().blob();
                        let mut signed = Writer::new();
                        signed
                            .string(self.session_id.as_deref().unwrap_or_default())
                            .u8(msg::USERAUTH_REQUEST)
                            .string(&config.user)
                            .string("ssh-connection")
                            .string("publickey")
                            .bool(true)
                            .string(alg)
                            .string(&blob);
                        let sig = key
                            .sign(alg, &signed.0)
                            .map_err(|e| SshError::Auth(e.to_string()))?;
                        let mut w = Writer::msg(msg::USERAUTH_REQUEST);
                        w.string(&config.user)
                            .string("ssh-connection")
                            .string("publickey")
                            .bool(true)
                            .string(alg)
                            .string(&blob)
                            .string(sig);
                        self.send(w.finish()).await
                    }
                    _ => Err(SshError::Auth(format!(
                        "the server refused user {} (it offers: {})",
                        config.user,
                        methods.join(",")
                    ))),
                }
            }
            n => Err(protocol(format!("unexpected authentication message {n}"))),
        }
    }

    // ---- connection protocol ----

    fn chan(&mut self, id: u32) -> Result<&mut Chan, SshError> {
        self.channels
            .get_mut(&id)
            .ok_or_else(|| protocol(format!("no channel {id}")))
    }

    async fn connection(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let mut r = Reader::new(&payload[1..]);
        match payload[0] {
            msg::GLOBAL_REQUEST => {
                let name = r.utf8()?.to_string();
                let want_reply = r.bool()?;
                let answer = self
                    .handler
                    .global_request_later(&name, r.rest(), want_reply);
                match answer {
                    Some(answer) if want_reply => self.answer_global(answer).await,
                    _ => Ok(()),
                }
            }
            n @ (msg::REQUEST_SUCCESS | msg::REQUEST_FAILURE) => {
                let waiter = self
                    .globals
                    .pop_front()
                    .ok_or_else(|| protocol("a reply to no global request"))?;
                if let Some(w) = waiter {
                    let _ = w.send((n == msg::REQUEST_SUCCESS).then(|| r.rest().to_vec()));
                }
                Ok(())
            }
            msg::CHANNEL_OPEN => {
                let typ = r.utf8()?.to_string();
                let remote = r.u32()?;
                let window = r.u32()?;
                let max = r.u32()?;
                let id = self.next_channel;
                self.next_channel = self.next_channel.wrapping_add(1);
                let mut ch = Chan::new(&self.limits);
                ch.remote = remote;
                ch.remote_window = u64::from(window);
                ch.remote_max = max;
                ch.confirming = true;
                self.channels.insert(id, ch);
                match self
                    .handler
                    .channel_open_later(ChannelId(id), &typ, r.rest())
                {
                    Some(answer) => self.answer_open(id, answer).await,
                    None => Ok(()),
                }
            }
            msg::CHANNEL_OPEN_CONFIRMATION => {
                let id = r.u32()?;
                let remote = r.u32()?;
                let window = r.u32()?;
                let max = r.u32()?;
                let handle = self.handle.clone();
                let ch = self.chan(id)?;
                let opening = ch
                    .opening
                    .take()
                    .ok_or_else(|| protocol("confirmation of a channel not being opened"))?;
                ch.remote = remote;
                ch.remote_window = u64::from(window);
                ch.remote_max = max;
                let (tx, rx) = mpsc::unbounded_channel();
                ch.events = Some(tx);
                let _ = opening.send(Ok(Channel {
                    id: ChannelId(id),
                    handle,
                    events: rx,
                    unadjusted: 0,
                }));
                Ok(())
            }
            msg::CHANNEL_OPEN_FAILURE => {
                let id = r.u32()?;
                let reason = r.u32()?;
                let description = r.utf8()?.to_string();
                let ch = self
                    .channels
                    .remove(&id)
                    .ok_or_else(|| protocol(format!("no channel {id}")))?;
                if let Some(o) = ch.opening {
                    let _ = o.send(Err(OpenFailure {
                        reason,
                        description,
                    }));
                }
                Ok(())
            }
            msg::CHANNEL_WINDOW_ADJUST => {
                let id = r.u32()?;
                let n = r.u32()?;
                let ch = self.chan(id)?;
                ch.remote_window = (ch.remote_window + u64::from(n)).min(u64::from(u32::MAX));
                self.pump(id).await
            }
            msg::CHANNEL_DATA | msg::CHANNEL_EXTENDED_DATA => {
                let id = r.u32()?;
                let code = if payload[0] == msg::CHANNEL_EXTENDED_DATA {
                    Some(r.u32()?)
                } else {
                    None
                };
                let data = r.string()?;
                let max = self.limits.max_packet;
                let ch = self.chan(id)?;
                if data.len() as u64 > u64::from(ch.local_window) || data.len() as u32 > max {
                    return Err(protocol(format!("channel {id}: data beyond the window")));
                }
                ch.local_window -= data.len() as u32;
                let consumed_now = match &ch.events {
                    Some(ev) => {
                        let _ = ev.send(match code {
                            Some(c) => ChannelEvent::ExtendedData(c, data.to_vec()),
                            None => ChannelEvent::Data(data.to_vec()),
                        });
                        false
                    }
                    None => match code {
                        Some(c) => self.handler.extended_data(ChannelId(id), c, data),
                        None => self.handler.data(ChannelId(id), data),
                    },
                };
                if consumed_now {
                    self.adjust(id, data.len() as u32).await?;
                }
                Ok(())
            }
            msg::CHANNEL_EOF => {
                let id = r.u32()?;
                let ch = self.chan(id)?;
                match &ch.events {
                    Some(ev) => {
                        let _ = ev.send(ChannelEvent::Eof);
                    }
                    None => self.handler.eof(ChannelId(id)),
                }
                Ok(())
            }
            msg::CHANNEL_CLOSE => {
                let id = r.u32()?;
                let mut ch = self
                    .channels
                    .remove(&id)
                    .ok_or_else(|| protocol(format!("no channel {id}")))?;
                if !ch.sent_close {
                    let mut w = Writer::msg(msg::CHANNEL_CLOSE);
                    w.u32(ch.remote);
                    self.send(w.finish()).await?;
                }
                ch.queue.clear();
                match ch.events.take() {
                    Some(ev) => {
                        let _ = ev.send(ChannelEvent::Closed);
                    }
                    None => self.handler.closed(ChannelId(id)),
                }
                Ok(())
            }
            msg::CHANNEL_REQUEST => {
                let id = r.u32()?;
                let name = r.utf8()?.to_string();
                let want_reply = r.bool()?;
                let data = r.rest().to_vec();
                let ch = self.chan(id)?;
                let ok = match &ch.events {
                    Some(ev) => {
                        let _ = ev.send(ChannelEvent::Request { name, data });
                        false
                    }
                    None => {
                        match self.handler.channel_request_later(
                            ChannelId(id),
                            &name,
                            &data,
                            want_reply,
                        ) {
                            Some(ok) => ok,
                            None => return Ok(()),
                        }
                    }
                };
                if want_reply && self.channels.contains_key(&id) {
                    self.answer_request(id, ok).await?;
                }
                Ok(())
            }
            n @ (msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE) => {
                let id = r.u32()?;
                let ch = self.chan(id)?;
                let waiter = ch
                    .requests
                    .pop_front()
                    .ok_or_else(|| protocol("a reply to no channel request"))?;
                if let Some(w) = waiter {
                    let _ = w.send(n == msg::CHANNEL_SUCCESS);
                }
                Ok(())
            }
            n => Err(protocol(format!("unexpected message {n}"))),
        }
    }

    /// Confirms or refuses a channel the peer opened.
    async fn answer_open(
        &mut self,
        id: u32,
        answer: Result<(), OpenFailure>,
    ) -> Result<(), SshError> {
        let Some(ch) = self.channels.get_mut(&id).filter(|c| c.confirming) else {
            return Ok(());
        };
        let remote = ch.remote;
        match answer {
            Ok(()) => {
                ch.confirming = false;
                let mut w = Writer::msg(msg::CHANNEL_OPEN_CONFIRMATION);
                w.u32(remote)
                    .u32(id)
                    .u32(self.limits.window)
                    .u32(self.limits.max_packet);
                self.send(w.finish()).await?;
                self.pump(id).await
            }
            Err(f) => {
                self.channels.remove(&id);
                let mut w = Writer::msg(msg::CHANNEL_OPEN_FAILURE);
                w.u32(remote).u32(f.reason).string(f.description).string("");
                self.send(w.finish()).await
            }
        }
    }

    /// Answers the peer's global request: success with its payload, or failure.
    async fn answer_global(&mut self, answer: Option<Vec<u8>>) -> Result<(), SshError> {
        let p = match answer {
            Some(data) => Writer::msg(msg::REQUEST_SUCCESS).raw(&data).finish(),
            None => vec![msg::REQUEST_FAILURE],
        };
        self.send(p).await
    }

    /// Answers the peer's channel request (in the order the requests came).
    async fn answer_request(&mut self, id: u32, ok: bool) -> Result<(), SshError> {
        let Some(ch) = self.channels.get(&id) else {
            return Ok(());
        };
        let mut w = Writer::msg(if ok {
            msg::CHANNEL_SUCCESS
        } else {
            msg::CHANNEL_FAILURE
        });
        w.u32(ch.remote);
        self.send(w.finish()).await
    }

    /// Gives `n` consumed bytes back to the peer, in batches of at least a quarter window.
    async fn adjust(&mut self, id: u32, n: u32) -> Result<(), SshError> {
        let window = self.limits.window;
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        ch.consumed = ch.consumed.saturating_add(n);
        if ch.consumed >= window / 4 || ch.local_window < window / 2 {
            let give = ch.consumed;
            ch.consumed = 0;
            ch.local_window = ch.local_window.saturating_add(give);
            let mut w = Writer::msg(msg::CHANNEL_WINDOW_ADJUST);
            w.u32(ch.remote).u32(give);
            self.send(w.finish()).await?;
        }
        Ok(())
    }

    /// Sends what the peer's window allows of a channel's queue, then EOF/CLOSE when asked for.
    /// Queued chunks of the same stream share a packet, up to the packet size.
    async fn pump(&mut self, id: u32) -> Result<(), SshError> {
        let mut packets = Vec::new();
        if let Some(ch) = self.channels.get_mut(&id) {
            if ch.opening.is_some() || ch.confirming || ch.sent_close {
                return Ok(());
            }
            let max = (ch.remote_max.max(1) as usize).min(32 * 1024);
            while let Some(ext) = ch.queue.front().map(|p| p.ext) {
                // The chunks (or parts) that go in this packet: the same stream, in order, as
                // much as the peer's window and the packet size allow.
                let room = ch.remote_window.min(max as u64) as usize;
                let mut take = 0usize;
                let mut parts = 0usize;
                for p in ch.queue.iter().take_while(|p| p.ext == ext) {
                    if take == room {
                        break;
                    }
                    take += (p.data.len() - p.sent).min(room - take);
                    parts += 1;
                }
                if take > 0 {
                    let mut buf = Vec::with_capacity(13 + take);
                    buf.push(if ext.is_some() {
                        msg::CHANNEL_EXTENDED_DATA
                    } else {
                        msg::CHANNEL_DATA
                    });
                    let mut w = Writer(buf);
                    w.u32(ch.remote);
                    if let Some(code) = ext {
                        w.u32(code);
                    }
                    w.u32(take as u32);
                    let mut left = take;
                    for p in ch.queue.iter_mut().take(parts) {
                        let n = (p.data.len() - p.sent).min(left);
                        w.raw(&p.data[p.sent..p.sent + n]);
                        p.sent += n;
                        left -= n;
                    }
                    packets.push(w.finish());
                    ch.remote_window -= take as u64;
                }
                // Chunks sent whole are done; an empty one is done at once.
                let mut progressed = take > 0;
                while ch.queue.front().is_some_and(|p| p.sent == p.data.len()) {
                    if let Some(done) = ch.queue.pop_front().and_then(|mut p| p.done.take()) {
                        let _ = done.send(());
                    }
                    progressed = true;
                }
                if !progressed {
                    break;
                }
            }
            if ch.queue.is_empty() {
                if ch.eof_wanted && !ch.sent_eof {
                    ch.sent_eof = true;
                    packets.push(Writer::msg(msg::CHANNEL_EOF).u32(ch.remote).finish());
                }
                if ch.close_wanted && !ch.sent_close {
                    ch.sent_close = true;
                    packets.push(Writer::msg(msg::CHANNEL_CLOSE).u32(ch.remote).finish());
                }
            }
        }
        for p in packets {
            self.send(p).await?;
        }
        Ok(())
    }

    async fn command(&mut self, c: Command) -> Result<(), SshError> {
        match c {
            Command::Data {
                ch,
                ext,
                data,
                done,
            } => {
                if let Some(c) = self
                    .channels
                    .get_mut(&ch)
                    .filter(|c| !c.eof_wanted && !c.close_wanted)
                {
                    c.queue.push_back(Pending {
                        ext,
                        data,
                        sent: 0,
                        done: Some(done),
                    });
                    self.pump(ch).await?;
                }
                Ok(())
            }
            Command::Eof(ch) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.eof_wanted = true;
                    self.pump(ch).await?;
                }
                Ok(())
            }
            Command::Close(ch) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.close_wanted = true;
                    self.pump(ch).await?;
                }
                Ok(())
            }
            Command::Adjust(ch, n) => self.adjust(ch, n).await,
            Command::ChannelRequest {
                ch,
                name,
                data,
                reply,
            } => {
                let Some(c) = self
                    .channels
                    .get_mut(&ch)
                    .filter(|c| !c.sent_close && c.opening.is_none())
                else {
                    return Ok(()); // the reply sender is dropped: the caller sees the channel gone
                };
                let want = reply.is_some();
                if want {
                    c.requests.push_back(reply);
                }
                let mut w = Writer::msg(msg::CHANNEL_REQUEST);
                w.u32(c.remote).string(name).bool(want).raw(&data);
                self.send(w.finish()).await
            }
            Command::GlobalRequest { name, data, reply } => {
                let want = reply.is_some();
                if want {
                    self.globals.push_back(reply);
                }
                let mut w = Writer::msg(msg::GLOBAL_REQUEST);
                w.string(name).bool(want).raw(&data);
                self.send(w.finish()).await
            }
            Command::Open { typ, extra, reply } => {
                let id = self.next_channel;
                self.next_channel = self.next_channel.wrapping_add(1);
                let mut ch = Chan::new(&self.limits);
                ch.opening = Some(reply);
                self.channels.insert(id, ch);
                let mut w = Writer::msg(msg::CHANNEL_OPEN);
                w.string(typ)
                    .u32(id)
                    .u32(self.limits.window)
                    .u32(self.limits.max_packet)
                    .raw(&extra);
                self.send(w.finish()).await
            }
            Command::AnswerOpen(ch, answer) => self.answer_open(ch, answer).await,
            Command::AnswerRequest(ch, ok) => self.answer_request(ch, ok).await,
            Command::AnswerGlobal(answer) => self.answer_global(answer).await,
            Command::Disconnect(why) => {
                let mut w = Writer::msg(msg::DISCONNECT);
                w.u32(msg::DISCONNECT_BY_APPLICATION).string(why).string("");
                self.send(w.finish()).await?;
                self.disconnected = true;
                Ok(())
            }
        }
    }
}

/// For fuzzing: a server connection already past key exchange and authentication (keys "none"),
/// fed `payloads` as received messages. Returns when one is refused or all are handled.
#[doc(hidden)]
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
