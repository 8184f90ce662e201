//! The tether's main loop: read the config, start sessions and execs, re-read on reload, and when
//! the primary session ends (or the tether is told to stop) stop everything in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::config::{ExecutorConfig, SessionConfig, SessionKind};
use tokio::sync::mpsc;

use crate::guestinfo::{self as gi, Guestinfo};
use crate::session::{Ctx, Registry, Session};

/// What can happen to the tether from outside.
#[derive(Debug)]
pub enum Event {
    /// Re-read the config (SIGHUP, or a `reload` request from an attach client).
    Reload,
    /// Stop everything and end (SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGPWR).
    Stop(String),
}

/// Told each config read: the debug level, and the container's identity for the wiring.
pub type OnConfig = Box<dyn Fn(&ExecutorConfig, &Guestinfo) + Send>;

/// How long the last SIGKILL to the process groups may take to be collected.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// The debug level at which the debug shell is on without its extension key.
pub const DEBUG_SHELL_LEVEL: i32 = 3;
/// How long attached clients may take nothing at shutdown before they are left.
const CLIENT_STALL: Duration = crate::session::fanout::STALL;

pub struct Agent {
    ctx: Arc<Ctx>,
    cfg: ExecutorConfig,
    sessions: HashMap<String, Arc<Session>>,
    /// Sessions whose task has not finished.
    live: HashMap<String, ()>,
    events: mpsc::UnboundedReceiver<Event>,
    finished: mpsc::UnboundedReceiver<String>,
    loaded_once: bool,
    on_config: OnConfig,
    attach: Option<std::sync::Arc<crate::attach::Shared>>,
    /// Every session and exec by ID, shared with the attach server.
    registry: Registry,
    /// Where the attach server's `reload` requests go (this agent's own events).
    reload: mpsc::UnboundedSender<Event>,
}

/// Why the agent ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    PrimaryExited,
    Stopped(String),
}

impl Agent {
    /// `events` comes from `reload` (and from whatever else the caller gives a sender to:
    /// signals).
    pub fn new(
        ctx: Arc<Ctx>,
        (reload, events): (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
        finished: mpsc::UnboundedReceiver<String>,
        on_config: OnConfig,
    ) -> Self {
        Self {
            ctx,
            cfg: ExecutorConfig::default(),
            sessions: HashMap::new(),
            live: HashMap::new(),
            events,
            finished,
            loaded_once: false,
            on_config,
            attach: None,
            registry: Registry::default(),
            reload,
        }
    }

    /// The session the container's life follows: the one with the container's ID, or the only
    /// persistent session when the ID names none.
    /// Every session and exec by ID (the toolbox signals the primary through it).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    fn primary_id(&self) -> Option<String> {
        self.cfg.primary_id().map(str::to_string)
    }

    /// Runs until the primary session ends or a stop is asked for. A config that cannot be read
    /// at the start is returned as an error (the caller reports it and stops).
    pub async fn run(mut self) -> Result<Ending, String> {
        if let Err(e) = self.reload().await {
            // The host learns why from the primary's state, as for a launch that failed.
            if let Some(id) = self.ctx.gi.container_id().await {
                let why = format!("the config cannot be read: {e}");
                self.ctx.publish(
                    "the primary's failure",
                    gi::failed_state(SessionKind::Session, &id, 125, &why),
                );
                self.ctx.gi.sync().await;
            }
            return Err(e);
        }
        // Nothing would ever end the container: say so and stop, as for an unreadable config.
        if self.primary_id().is_none() {
            self.shutdown().await;
            return Err(format!(
                "the config names no session to run ({} sessions, container ID {:?})",
                self.cfg.sessions.len(),
                self.cfg.common.id
            ));
        }
        let ending = loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(Event::Reload) => {
                        if let Err(e) = self.reload().await {
                            tracing::error!("reload: {e}");
                        }
                    }
                    Some(Event::Stop(why)) => break Ending::Stopped(why),
                    None => break Ending::Stopped("no more events".into()),
                },
                Some(id) = self.finished.recv() => {
                    self.live.remove(&id);
                    if self.primary_id().as_deref() == Some(id.as_str()) {
                        break Ending::PrimaryExited;
                    }
                }
            }
        };
        tracing::info!("stopping: {ending:?}");
        self.shutdown().await;
        Ok(ending)
    }

    /// Reads the config (merging) and brings the sessions in line with it.
    async fn reload(&mut self) -> Result<(), String> {
        let reading = std::time::Instant::now();
        let (cfg, warnings) = self.ctx.gi.decode(std::mem::take(&mut self.cfg)).await?;
        self.cfg = cfg;
        for w in warnings {
            tracing::warn!("config: {w}");
        }
        (self.on_config)(&self.cfg, &self.ctx.gi);
        tracing::debug!("config read in {:?}", reading.elapsed());
        let first = !self.loaded_once;
        self.loaded_once = true;
        let primary = self.primary_id();
        let wanted: Vec<(String, SessionKind, SessionConfig)> = self
            .cfg
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), SessionKind::Session, s.clone()))
            .chain(
                self.cfg
                    .execs
                    .iter()
                    .filter(|(id, _)| {
                        // An exec may not take a session's ID (it would replace its config).
                        let clash = self.cfg.sessions.contains_key(*id);
                        if clash {
                            tracing::warn!(exec = %id, "an exec with a session's ID; ignored");
                        }
                        !clash
                    })
                    .map(|(id, s)| (id.clone(), SessionKind::Exec, s.clone())),
            )
            .collect();
        self.forget_ended_and_unlisted();
        let mut initial = Vec::new();
        let mut to_start = Vec::new();
        for (id, kind, scfg) in wanted {
            match self.sessions.get(&id) {
                Some(s) => {
                    let active = scfg.active;
                    s.update_config(scfg);
                    if !active && self.live.contains_key(&id) && !s.stopping() {
                        tracing::info!(session = %id, "deactivated; stopping it");
                        s.request_stop();
                    }
                }
                None => {
                    if first || kind == SessionKind::Exec {
                        initial.extend(gi::initial_state(kind, &id, scfg.run_block));
                    }
                    let active = scfg.active;
                    let s = Session::new(&id, kind, scfg);
                    self.sessions.insert(id.clone(), s.clone());
                    self.registry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), s.clone());
                    if active {
                        to_start.push(s);
                    }
                }
            }
        }
        if !initial.is_empty() {
            self.ctx.publish("the initial session state", initial);
        }
        if first {
            self.start_attach_server();
        }
        let new_execs = to_start.iter().any(|s| s.kind == SessionKind::Exec);
        for s in to_start {
            let is_primary = primary.as_deref() == Some(&*s.id);
            self.live.insert(s.id.to_string(), ());
            tokio::spawn(s.clone().run(self.ctx.clone(), is_primary));
        }
        if new_execs && !first {
            if let Some(a) = &self.attach {
                a.push_exec_ids();
            }
        }
        Ok(())
    }

    /// Forgets the execs that have ended and that the config no longer lists (a host removes a
    /// finished exec's keys): their memory goes, and an attach to one is refused as to any
    /// unknown ID. Without this every exec ever run would stay.
    fn forget_ended_and_unlisted(&mut self) {
        let gone: Vec<String> = self
            .sessions
            .keys()
            .filter(|id| {
                !self.cfg.sessions.contains_key(*id)
                    && !self.cfg.execs.contains_key(*id)
                    && !self.live.contains_key(*id)
            })
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        for id in &gone {
            self.sessions.remove(id);
            registry.remove(id);
        }
        tracing::debug!(
            "forgot {} ended execs the config no longer lists",
            gone.len()
        );
    }

    /// Starts the attach server once the config (and with it the host key) is known.
    fn start_attach_server(&mut self) {
        let Some(spec) = self.ctx.settings.attach.clone() else {
            return;
        };
        let key = crate::attach::host_key(&self.cfg.key.0);
        let ext = self.cfg.tether.clone().unwrap_or_default();
        let authorized = match ext.authorized_key.trim() {
            "" => None,
            line => match ssh::PublicKey::from_openssh(line) {
                Ok(k) => Some(k),
                Err(e) => {
                    // Refusing everyone is safer than falling back to `none`.
                    tracing::error!("guestinfo.vice./tether/authorizedkey is unusable ({e}); no client can attach");
                    Some(ssh::PrivateKey::generate_ed25519().public())
                }
            },
        };
        let debug_shell = ext.debug_shell || self.cfg.debug_level >= DEBUG_SHELL_LEVEL;
        let shared = crate::attach::Shared {
            registry: self.registry.clone(),
            reload: {
                let tx = self.reload.clone();
                Box::new(move || tx.send(Event::Reload).is_ok())
            },
            server: std::sync::Arc::new(ssh::ServerConfig::new(vec![key])),
            authorized,
            connections: Default::default(),
            debug_shell,
            root_ready: self.ctx.settings.root_ready.clone(),
            written: Default::default(),
            reaper: self.ctx.reaper.clone(),
        };
        let shared = std::sync::Arc::new(shared);
        self.attach = Some(shared.clone());
        tracing::info!("attach server on {spec}");
        tokio::spawn(crate::attach::run(spec, shared));
    }

    /// Stops every session: the stop signal, then SIGKILL to the process groups after the stop
    /// timeout; then flushes the output log.
    async fn shutdown(&mut self) {
        for (id, s) in &self.sessions {
            if self.live.contains_key(id) {
                s.request_stop();
            }
        }
        if !self.wait_for_sessions(self.ctx.settings.stop_timeout).await {
            for (id, s) in &self.sessions {
                if self.live.contains_key(id) {
                    tracing::warn!(session = %id, "still running after the stop timeout; killing its process group");
                    if let Err(e) = s.signal_group(libc::SIGKILL) {
                        tracing::warn!(session = %id, "SIGKILL: {e}");
                    }
                }
            }
            if !self.wait_for_sessions(KILL_GRACE).await {
                tracing::error!(
                    "sessions still running after SIGKILL: {:?}",
                    self.live.keys().collect::<Vec<_>>()
                );
            }
        }
        // Attached clients get all their output and the end of their sessions (exit status, EOF,
        // CLOSE, which they acknowledge after the rest) before we go, however slow the line,
        // as long as they keep taking it; one that takes nothing for CLIENT_STALL is left.
        // Progress: the queues shrink, or bytes still go out on the line (a chunk taken from a
        // queue may wait seconds for the SSH window on a slow line: 2 MiB was once cut short
        // that way).
        let written = || {
            self.attach
                .as_ref()
                .map_or(0, |a| a.written.load(std::sync::atomic::Ordering::Relaxed))
        };
        let mut backlog = usize::MAX;
        let mut sent = written();
        let mut progress = tokio::time::Instant::now();
        loop {
            let now: usize = self.sessions.values().map(|s| s.fanout.backlog()).sum();
            if self.sessions.values().all(|s| s.fanout.is_empty()) {
                break;
            }
            let now_sent = written();
            if now < backlog || now_sent > sent {
                backlog = backlog.min(now);
                sent = now_sent;
                progress = tokio::time::Instant::now();
            } else if progress.elapsed() > CLIENT_STALL {
                tracing::warn!("attached clients took nothing for {CLIENT_STALL:?}; leaving them");
                break;
            }
            let all_closed = async {
                for s in self.sessions.values() {
                    s.fanout.wait_empty().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(100), all_closed).await;
        }
        self.ctx.log.flush(None).await;
        // Every state write queued so far (the exits above among them) is done before we end.
        self.ctx.gi.sync().await;
        tracing::info!(
            orphans = self.ctx.reaper.orphans_reaped(),
            "all sessions stopped"
        );
    }

    /// Waits until no session task is left, at most `limit`. True when none is.
    async fn wait_for_sessions(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.live.is_empty() {
            match tokio::time::timeout_at(deadline, self.finished.recv()).await {
                Ok(Some(id)) => {
                    self.live.remove(&id);
                }
                Ok(None) | Err(_) => return self.live.is_empty(),
            }
        }
        true
    }
}
