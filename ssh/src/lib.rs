//! Our own SSH-2 (RFC 4253, 4252, 4254), both roles, async over any byte stream, on RustCrypto's
//! building blocks. It gives the application what VIC's attach protocol needs and common SSH
//! libraries keep to themselves: global requests with reply payloads, channels of any type with
//! their extra data, and channel requests of any name.
//!
//! * [`serve`] runs a server connection to its end, calling a [`Handler`].
//! * [`connect`] runs a client connection in a task and returns a [`Handle`] once authenticated;
//!   channels it opens come back as [`Channel`]s with their own event streams.

pub mod cipher;
mod conn;
#[doc(hidden)]
pub mod exec_server;
pub mod kex;
pub mod keys;
pub mod msg;
mod transport;
pub mod wire;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

#[cfg(feature = "fuzzing")]
pub use conn::fuzz_authenticated_server;
pub use conn::{connect, serve};
pub use kex::Preferences;
pub use keys::{KeyError, PrivateKey, PublicKey};

/// Fills `buf` from the operating system's random source.
pub fn random(buf: &mut [u8]) {
    // The OS source failing is not something to carry on from with weak randomness.
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// Random bytes for packet padding: the operating system's, drawn 4 KiB at a time (a packet
/// takes 4 to 19; one system call per packet was a fifth of a bulk transfer's system calls).
pub fn random_padding(buf: &mut [u8]) {
    use std::cell::RefCell;
    const POOL: usize = 4096;
    thread_local! {
        static POOL_BYTES: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    if buf.len() > POOL {
        return random(buf);
    }
    POOL_BYTES.with_borrow_mut(|(pool, used)| {
        if pool.len() - *used < buf.len() {
            pool.resize(POOL, 0);
            random(pool);
            *used = 0;
        }
        // Each byte serves once.
        buf.copy_from_slice(&pool[*used..*used + buf.len()]);
        *used += buf.len();
    });
}

/// Our identification string.
pub const VERSION: &str = concat!("SSH-2.0-tether_", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the peer disconnected (reason {reason}): {description}")]
    Disconnected { reason: u32, description: String },
    #[error("key exchange: {0}")]
    Kex(#[from] kex::NoCommon),
    #[error("host key: {0}")]
    HostKey(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("packet: {0}")]
    Cipher(#[from] cipher::CipherError),
    #[error("malformed message: {0}")]
    Wire(#[from] wire::WireError),
}

/// A channel, by our number for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

/// Why a channel was not opened (reason code and description, RFC 4254 §5.1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("channel open refused ({reason}): {description}")]
pub struct OpenFailure {
    pub reason: u32,
    pub description: String,
}

impl OpenFailure {
    pub fn new(reason: u32, description: impl Into<String>) -> Self {
        Self {
            reason,
            description: description.into(),
        }
    }

    pub fn unknown_type(typ: &str) -> Self {
        Self::new(
            msg::OPEN_UNKNOWN_CHANNEL_TYPE,
            format!("unknown channel type {typ}"),
        )
    }
}

/// How a client checks the server's host key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Any key (VIC's VCH does this).
    Any,
    /// Exactly this key.
    Pinned(PublicKey),
}

/// Flow control and rekeying, for both roles.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The window we give the peer per channel.
    pub window: u32,
    /// The largest data packet we accept.
    pub max_packet: u32,
    /// Start a new key exchange after this many bytes in either direction.
    pub rekey_bytes: u64,
    /// ... or after this long.
    pub rekey_after: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window: 2 * 1024 * 1024,
            max_packet: 32 * 1024,
            rekey_bytes: 1 << 30,
            rekey_after: std::time::Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Host keys; the one used is the first that can sign the negotiated algorithm.
    pub keys: Vec<PrivateKey>,
    pub prefs: Preferences,
    pub version: String,
    pub limits: Limits,
    /// Methods named in USERAUTH_FAILURE.
    pub auth_methods: Vec<String>,
}

impl ServerConfig {
    pub fn new(keys: Vec<PrivateKey>) -> Self {
        Self {
            keys,
            prefs: Preferences::default(),
            version: VERSION.to_string(),
            limits: Limits::default(),
            auth_methods: vec!["publickey".into()],
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub user: String,
    /// Tried after `none` is refused.
    pub key: Option<PrivateKey>,
    pub host_key: HostKeyCheck,
    pub prefs: Preferences,
    pub version: String,
    pub limits: Limits,
}

impl ClientConfig {
    pub fn new(user: &str) -> Self {
        Self {
            user: user.to_string(),
            key: None,
            host_key: HostKeyCheck::Any,
            prefs: Preferences::default(),
            version: VERSION.to_string(),
            limits: Limits::default(),
        }
    }
}

/// What the application decides. Every method has a refusing default; all are called from the
/// connection's task and must not block.
pub trait Handler: Send + 'static {
    /// Authentication succeeded (server) or completed (client); `handle` sends on this connection.
    fn connected(&mut self, _handle: Handle) {}
    fn auth_none(&mut self, _user: &str) -> bool {
        false
    }
    fn auth_publickey(&mut self, _user: &str, _key: &PublicKey) -> bool {
        false
    }
    /// `Some(payload)` answers REQUEST_SUCCESS with the payload; `None` REQUEST_FAILURE.
    fn global_request(&mut self, _name: &str, _data: &[u8]) -> Option<Vec<u8>> {
        None
    }
    /// A channel the peer opens, with its type and extra data.
    fn channel_open(
        &mut self,
        _ch: ChannelId,
        typ: &str,
        _extra: &[u8],
    ) -> Result<(), OpenFailure> {
        Err(OpenFailure::unknown_type(typ))
    }
    fn channel_request(&mut self, _ch: ChannelId, _name: &str, _data: &[u8]) -> bool {
        false
    }
    /// Data on a channel the peer opened. Return true when it is consumed now (the window is
    /// given back at once); false when the application will call [`Handle::adjust_window`].
    fn data(&mut self, _ch: ChannelId, _data: &[u8]) -> bool {
        true
    }
    fn extended_data(&mut self, _ch: ChannelId, _code: u32, _data: &[u8]) -> bool {
        true
    }
    fn eof(&mut self, _ch: ChannelId) {}
    fn closed(&mut self, _ch: ChannelId) {}

    /// For a handler that answers after asking elsewhere (a relay): `None` promises a later
    /// [`Handle::answer_open`]. The default answers now with [`Handler::channel_open`].
    fn channel_open_later(
        &mut self,
        ch: ChannelId,
        typ: &str,
        extra: &[u8],
    ) -> Option<Result<(), OpenFailure>> {
        Some(self.channel_open(ch, typ, extra))
    }
    /// `None` promises a later [`Handle::answer_request`] when `want_reply` (answers go in the
    /// order of the requests). The default answers now with [`Handler::channel_request`].
    fn channel_request_later(
        &mut self,
        ch: ChannelId,
        name: &str,
        data: &[u8],
        _want_reply: bool,
    ) -> Option<bool> {
        Some(self.channel_request(ch, name, data))
    }
    /// `None` promises a later [`Handle::answer_global`] when `want_reply` (in request order).
    /// The default answers now with [`Handler::global_request`].
    fn global_request_later(
        &mut self,
        name: &str,
        data: &[u8],
        _want_reply: bool,
    ) -> Option<Option<Vec<u8>>> {
        Some(self.global_request(name, data))
    }
}

/// A handler that refuses everything (a client that only opens channels itself).
pub struct NoHandler;
impl Handler for NoHandler {}

/// Events of a channel we opened.
#[derive(Debug, PartialEq, Eq)]
pub enum ChannelEvent {
    Data(Vec<u8>),
    ExtendedData(u32, Vec<u8>),
    Eof,
    /// A request from the peer (a want-reply is answered with failure).
    Request {
        name: String,
        data: Vec<u8>,
    },
    Closed,
}

/// Channel data to send: bytes of the sender's own (a `Vec` becomes one without a copy), or bytes
/// it shares with others (a session's output goes to every attached client and the log from one
/// buffer). The connection seals packets straight from them, without a copy of its own.
pub type Payload = bytes::Bytes;

pub(crate) enum Command {
    Data {
        ch: u32,
        ext: Option<u32>,
        data: Payload,
        done: oneshot::Sender<()>,
    },
    Eof(u32),
    Close(u32),
    Adjust(u32, u32),
    ChannelRequest {
        ch: u32,
        name: String,
        data: Vec<u8>,
        reply: Option<oneshot::Sender<bool>>,
    },
    GlobalRequest {
        name: String,
        data: Vec<u8>,
        reply: Option<oneshot::Sender<Option<Vec<u8>>>>,
    },
    Open {
        typ: String,
        extra: Vec<u8>,
        reply: oneshot::Sender<Result<Channel, OpenFailure>>,
    },
    AnswerOpen(u32, Result<(), OpenFailure>),
    AnswerRequest(u32, bool),
    AnswerGlobal(Option<Vec<u8>>),
    Disconnect(String),
}

/// Data handed to the connection by [`Handle::queue_data`], until it is on its way.
pub struct Queued(oneshot::Receiver<()>);

impl Queued {
    /// Whether it is on its way already (without waiting); an error once the connection is gone.
    pub fn is_sent(&mut self) -> Result<bool, SshError> {
        match self.0.try_recv() {
            Ok(()) => Ok(true),
            Err(oneshot::error::TryRecvError::Empty) => Ok(false),
            Err(oneshot::error::TryRecvError::Closed) => Err(SshError::Closed),
        }
    }

    /// Waits until it is on its way (the peer's window may hold it).
    pub async fn sent(self) -> Result<(), SshError> {
        self.0.await.map_err(|_| SshError::Closed)
    }
}

/// Sends on a connection. Cheap to clone; every method fails with [`SshError::Closed`] once the
/// connection is gone.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    async fn send(&self, c: Command) -> Result<(), SshError> {
        self.tx.send(c).await.map_err(|_| SshError::Closed)
    }

    /// Sends data (extended data with `ext`), returning when all of it is on its way: waits while
    /// the peer's window is full.
    pub async fn data(
        &self,
        ch: ChannelId,
        ext: Option<u32>,
        data: impl Into<Payload>,
    ) -> Result<(), SshError> {
        self.queue_data(ch, ext, data).await?.sent().await
    }

    /// Queues data (extended data with `ext`) behind what is queued already and returns at once;
    /// the future it gives resolves when the data is on its way. A sender that keeps a few chunks
    /// queued lets the connection pack them into full packets.
    pub async fn queue_data(
        &self,
        ch: ChannelId,
        ext: Option<u32>,
        data: impl Into<Payload>,
    ) -> Result<Queued, SshError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Data {
            ch: ch.0,
            ext,
            data: data.into(),
            done,
        })
        .await?;
        Ok(Queued(wait))
    }

    /// EOF after the data queued before it.
    pub async fn eof(&self, ch: ChannelId) -> Result<(), SshError> {
        self.send(Command::Eof(ch.0)).await
    }

    /// CLOSE after the data queued before it.
    pub async fn close(&self, ch: ChannelId) -> Result<(), SshError> {
        self.send(Command::Close(ch.0)).await
    }

    /// Gives `n` bytes of window back to the peer (data the application has consumed).
    pub async fn adjust_window(&self, ch: ChannelId, n: u32) -> Result<(), SshError> {
        self.send(Command::Adjust(ch.0, n)).await
    }

    /// A channel request; with `want_reply`, waits for and returns the peer's answer.
    pub async fn channel_request(
        &self,
        ch: ChannelId,
        name: &str,
        want_reply: bool,
        data: Vec<u8>,
    ) -> Result<bool, SshError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::ChannelRequest {
            ch: ch.0,
            name: name.to_string(),
            data,
            reply: want_reply.then_some(tx),
        })
        .await?;
        if want_reply {
            rx.await.map_err(|_| SshError::Closed)
        } else {
            Ok(true)
        }
    }

    /// A global request; with `want_reply`, returns the success payload or `None` for failure.
    pub async fn global_request(
        &self,
        name: &str,
        want_reply: bool,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, SshError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::GlobalRequest {
            name: name.to_string(),
            data,
            reply: want_reply.then_some(tx),
        })
        .await?;
        if want_reply {
            rx.await.map_err(|_| SshError::Closed)
        } else {
            Ok(Some(Vec::new()))
        }
    }

    /// Opens a channel of type `typ` with `extra` data.
    pub async fn open(
        &self,
        typ: &str,
        extra: Vec<u8>,
    ) -> Result<Result<Channel, OpenFailure>, SshError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Open {
            typ: typ.to_string(),
            extra,
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| SshError::Closed)
    }

    /// The answer to a channel open the handler deferred.
    pub async fn answer_open(
        &self,
        ch: ChannelId,
        answer: Result<(), OpenFailure>,
    ) -> Result<(), SshError> {
        self.send(Command::AnswerOpen(ch.0, answer)).await
    }

    /// The answer to a channel request the handler deferred.
    pub async fn answer_request(&self, ch: ChannelId, ok: bool) -> Result<(), SshError> {
        self.send(Command::AnswerRequest(ch.0, ok)).await
    }

    /// The answer to a global request the handler deferred.
    pub async fn answer_global(&self, answer: Option<Vec<u8>>) -> Result<(), SshError> {
        self.send(Command::AnswerGlobal(answer)).await
    }

    /// Disconnects with a reason shown to the peer.
    pub async fn disconnect(&self, why: &str) {
        let _ = self.send(Command::Disconnect(why.to_string())).await;
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the connection is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A channel we opened, with its events.
pub struct Channel {
    pub id: ChannelId,
    pub handle: Handle,
    events: mpsc::UnboundedReceiver<ChannelEvent>,
    /// Data taken and not yet given back to the peer's window.
    unadjusted: u32,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel({})", self.id.0)
    }
}

impl Channel {
    /// The next event; the data of the previous one is given back to the peer's window first
    /// (it has been consumed by then). `None` once closed.
    ///
    /// Cancel-safe (a `select!` branch may drop it at any await): the window is given back before
    /// an event is taken, never after, so a dropped call loses no event.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        if self.unadjusted > 0 {
            let _ = self.handle.adjust_window(self.id, self.unadjusted).await;
            self.unadjusted = 0;
        }
        let ev = self.events.recv().await?;
        if let ChannelEvent::Data(d) | ChannelEvent::ExtendedData(_, d) = &ev {
            self.unadjusted = d.len() as u32;
        }
        Some(ev)
    }

    pub async fn data(&self, data: impl Into<Vec<u8>>) -> Result<(), SshError> {
        self.handle.data(self.id, None, data.into()).await
    }

    pub async fn eof(&self) -> Result<(), SshError> {
        self.handle.eof(self.id).await
    }

    pub async fn close(&self) -> Result<(), SshError> {
        self.handle.close(self.id).await
    }

    pub async fn request(
        &self,
        name: &str,
        want_reply: bool,
        data: Vec<u8>,
    ) -> Result<bool, SshError> {
        self.handle
            .channel_request(self.id, name, want_reply, data)
            .await
    }
}

/// A stream the connection can own.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

#[cfg(test)]
mod tests;
