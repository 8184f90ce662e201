//! The attach server: on the attach line (the serial port COM1 in the VM, TCP, a Unix socket or
//! vsock) the tether waits for the host's handshake, then serves SSH with VIC's attach protocol
//! ([`server`]), and the debug shell beside it ([`shell`]). After any loss of the line it opens
//! it again and waits for a new handshake, forever ([`line`]); sessions are not touched by it.
//!
//! Owns: the attach line, the SSH connections to hosts, the attach and session channels, what
//! goes out on them ([`forward`]). Uses: `session` (the registry, a session's output, input,
//! window and signals), `sys`, `gate`. Must not reach up into the agent: a `reload` request
//! calls the function it is given in [`Shared`].

mod forward;
pub mod line;
mod server;
mod shell;

use std::sync::{Arc, Mutex};

use ssh::{wire, Handle, PrivateKey, PublicKey, ServerConfig};

use crate::session::Registry;

pub use line::run;
pub use server::Attach;
pub use shell::SHELL_OFF;

/// A `window-change` request's payload (columns, rows, width and height in pixels, as RFC 4254
/// sends them), each clamped to what a terminal takes; `None` when it is cut short.
pub fn window_change(data: &[u8]) -> Option<[u16; 4]> {
    let mut r = wire::Reader::new(data);
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    match (r.u32(), r.u32(), r.u32(), r.u32()) {
        (Ok(c), Ok(rows), Ok(w), Ok(h)) => Some([clamp(c), clamp(rows), clamp(w), clamp(h)]),
        _ => None,
    }
}

/// A `signal` or `group-signal` request's payload: a signal's name or number (a string).
pub fn signal_request(data: &[u8]) -> Result<i32, tether_proto::signal::BadSignal> {
    tether_proto::signal::parse(wire::Reader::new(data).utf8().unwrap_or(""))
}

/// The feature version VIC's tether reports (`MaxPluginVersion - 1`).
pub const VERSION: u32 = 10;

pub struct Shared {
    pub registry: Registry,
    /// Re-reads the config (the `reload` global request: what SIGHUP does); false when the
    /// tether is past taking it.
    pub reload: Box<dyn Fn() -> bool + Send + Sync>,
    pub server: Arc<ServerConfig>,
    /// When set, only this client key is accepted (and `none` is refused).
    pub authorized: Option<PublicKey>,
    /// The connections to hosts, for pushing `container-ids`.
    pub connections: Mutex<Vec<Handle>>,
    /// Serve SSH `session` channels: a shell in the container.
    pub debug_shell: bool,
    /// Bytes written to the attach line so far: the clients' progress, which the fanout's
    /// queues alone do not show (a chunk taken from them may spend seconds in the SSH
    /// connection's window on a slow line).
    pub written: std::sync::atomic::AtomicU64,
    /// The container's root (a debug shell runs the container's `/bin/sh`).
    pub root_ready: std::sync::Arc<crate::gate::Gate>,
    /// Debug shells are processes: their exits come from the one reaper.
    pub reaper: crate::session::reaper::Reaper,
}

impl Shared {
    /// Tells every connected host the live exec IDs (after a reload started new execs), as VIC's
    /// tether does, so the host can attach to them.
    pub fn push_exec_ids(&self) {
        let mut ids: Vec<String> = lock(&self.registry)
            .iter()
            .filter(|(_, s)| s.kind == tether_proto::config::SessionKind::Exec && s.live())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let payload = wire::Writer::new().name_list(&refs).finish();
        let mut connections = lock(&self.connections);
        connections.retain(|h| !h.is_closed());
        for h in connections.iter() {
            let (h, payload) = (h.clone(), payload.clone());
            tokio::spawn(async move {
                let _ = h.global_request("container-ids", true, payload).await;
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host key: the config's PEM when it has one, else a fresh Ed25519 key.
pub fn host_key(pem: &[u8]) -> PrivateKey {
    if pem.is_empty() {
        return PrivateKey::generate_ed25519();
    }
    match PrivateKey::from_pem(&String::from_utf8_lossy(pem)) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("the config's host key is unusable ({e}); using a generated one");
            PrivateKey::generate_ed25519()
        }
    }
}
