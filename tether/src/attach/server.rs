//! VIC's attach protocol on one SSH connection: `container-ids`, `version` and `reload` global
//! requests, `attach` channels to sessions (with `ping`, `unblock`, `window-change`,
//! `close-stdin`, `signal`), and the routing of SSH `session` channels to the debug shell.

use std::collections::HashMap;
use std::sync::Arc;

use ssh::{msg, wire, ChannelId, Handle, Handler, OpenFailure, PublicKey};

use super::forward::forward;
use super::line::READERS;
use super::shell::Shell;
use super::{lock, Shared, SHELL_OFF, VERSION};
use crate::session::input::InputMsg;
use crate::session::{Session, State};
use std::sync::atomic::Ordering;

struct Attached {
    session: Arc<Session>,
    subscription: u64,
    reader: u64,
}

/// VIC's attach protocol on one SSH connection.
pub struct Attach {
    pub(super) shared: Arc<Shared>,
    pub(super) handle: Option<Handle>,
    channels: HashMap<ChannelId, Attached>,
    pub(super) shells: HashMap<ChannelId, Shell>,
}

impl Attach {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            handle: None,
            channels: HashMap::new(),
            shells: HashMap::new(),
        }
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.shared.registry).get(id).cloned()
    }
}

fn prohibited(text: String) -> OpenFailure {
    OpenFailure::new(msg::OPEN_ADMINISTRATIVELY_PROHIBITED, text)
}

impl Handler for Attach {
    fn connected(&mut self, handle: Handle) {
        lock(&self.shared.connections).push(handle.clone());
        self.handle = Some(handle);
    }

    fn auth_none(&mut self, user: &str) -> bool {
        self.shared.authorized.is_none() && user == "daemon"
    }

    fn auth_publickey(&mut self, _user: &str, key: &PublicKey) -> bool {
        self.shared.authorized.as_ref() == Some(key)
    }

    fn global_request(&mut self, name: &str, _data: &[u8]) -> Option<Vec<u8>> {
        match name {
            "container-ids" => {
                let mut ids: Vec<String> = lock(&self.shared.registry)
                    .iter()
                    .filter(|(_, s)| s.live())
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.sort();
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                Some(wire::Writer::new().name_list(&refs).finish())
            }
            "version" => Some(VERSION.to_be_bytes().to_vec()),
            // Our extension: re-read the config (what SIGHUP does), for hosts without guest ops.
            "reload" => (self.shared.reload)().then(Vec::new),
            _ => None,
        }
    }

    fn channel_open(&mut self, ch: ChannelId, typ: &str, extra: &[u8]) -> Result<(), OpenFailure> {
        if typ == "session" {
            if !self.shared.debug_shell {
                return Err(prohibited(SHELL_OFF.into()));
            }
            self.shells.insert(ch, Shell::default());
            return Ok(());
        }
        // VIC's checks, in VIC's order.
        if typ != "attach" {
            return Err(OpenFailure::unknown_type(typ));
        }
        if extra.is_empty() {
            return Err(prohibited("attach channel requires ID in ExtraData".into()));
        }
        let id = String::from_utf8_lossy(extra).into_owned();
        let session = self
            .session(&id)
            .ok_or_else(|| prohibited(format!("session {id} is invalid")))?;
        let (subscription, outputs) = session.fanout.subscribe();
        match session.state() {
            State::Failed(e) => {
                session.fanout.unsubscribe(subscription);
                return Err(prohibited(format!("launch failed with: {}", e.message)));
            }
            State::Exited(e) => {
                session.fanout.unsubscribe(subscription);
                return Err(prohibited(format!(
                    "process finished with exit code: {}",
                    e.status()
                )));
            }
            _ => {}
        }
        let reader = READERS.fetch_add(1, Ordering::Relaxed);
        let _ = session.input().send(InputMsg::Reader(reader));
        let handle = self.handle.clone().expect("authenticated");
        tokio::spawn(forward(handle, ch, session.config().tty, outputs));
        tracing::info!(
            session = %id,
            channel = ch.0,
            clients = crate::session::fanout::attached(),
            "attached"
        );
        self.channels.insert(
            ch,
            Attached {
                session,
                subscription,
                reader,
            },
        );
        Ok(())
    }

    fn channel_request(&mut self, ch: ChannelId, name: &str, data: &[u8]) -> bool {
        if self.shells.contains_key(&ch) {
            return self.shell_request(ch, name, data);
        }
        let Some(a) = self.channels.get(&ch) else {
            return false;
        };
        match name {
            "ping" => data == b"Ping",
            "unblock" => {
                if let State::Failed(_) = a.session.state() {
                    // VIC: refuse and close the channel when the launch failed.
                    if let Some(h) = self.handle.clone() {
                        tokio::spawn(async move {
                            let _ = h.close(ch).await;
                        });
                    }
                    return false;
                }
                a.session.unblock();
                true
            }
            "window-change" => match super::window_change(data) {
                Some([c, rows, w, h]) => a.session.set_window(c, rows, w, h),
                None => false,
            },
            "close-stdin" => a.session.input().send(InputMsg::CloseStdin).is_ok(),
            // `signal` goes to the process, as `docker kill`; `group-signal` (ours) to its process
            // group, as VIC's `group-kill`. Delivered only to a running process.
            "signal" | "group-signal" => match super::signal_request(data) {
                Ok(_) if a.session.pid().is_none() => false,
                Ok(sig) if name == "group-signal" => a.session.signal_group(sig).is_ok(),
                Ok(sig) => a.session.signal(sig).is_ok(),
                Err(e) => {
                    tracing::warn!("attach: {e}");
                    false
                }
            },
            _ => false,
        }
    }

    fn data(&mut self, ch: ChannelId, data: &[u8]) -> bool {
        if let Some(input) = self.shells.get(&ch).and_then(|s| s.input.clone()) {
            let given_back = self.give_back(ch);
            return input
                .send(InputMsg::Data(0, data.to_vec(), given_back))
                .is_err();
        }
        let Some(a) = self.channels.get(&ch) else {
            return true;
        };
        let handle = self.handle.clone();
        let given_back = Box::new(move |n: usize| {
            if let Some(h) = handle {
                tokio::spawn(async move {
                    let _ = h.adjust_window(ch, n as u32).await;
                });
            }
        });
        // The window is given back once the process has the bytes: a process that does not read
        // its input holds the client back, never our memory.
        a.session
            .input()
            .send(InputMsg::Data(a.reader, data.to_vec(), given_back))
            .is_err()
    }

    fn eof(&mut self, ch: ChannelId) {
        if let Some(input) = self.shells.get(&ch).and_then(|s| s.input.clone()) {
            // As sshd: the client's EOF is the end of the shell's input.
            let _ = input.send(InputMsg::ReaderEof(0));
            let _ = input.send(InputMsg::CloseStdin);
        }
        if let Some(a) = self.channels.get(&ch) {
            let _ = a.session.input().send(InputMsg::ReaderEof(a.reader));
        }
    }

    fn closed(&mut self, ch: ChannelId) {
        if let Some(shell) = self.shells.remove(&ch) {
            if let Some(pid) = shell.pid {
                let _ = crate::sys::signal_group(pid, libc::SIGHUP);
            }
        }
        if let Some(a) = self.channels.remove(&ch) {
            // Detach: the process is left alone.
            a.session.fanout.unsubscribe(a.subscription);
            let _ = a.session.input().send(InputMsg::ReaderGone(a.reader));
            tracing::info!(session = %a.session.id, channel = ch.0, "detached");
        }
    }
}

impl Attach {
    pub(super) fn give_back(&self, ch: ChannelId) -> crate::session::input::Written {
        let handle = self.handle.clone();
        Box::new(move |n: usize| {
            if let Some(h) = handle {
                tokio::spawn(async move {
                    let _ = h.adjust_window(ch, n as u32).await;
                });
            }
        })
    }
}
