//! Sessions: the container's process and every exec. A session is launched as VIC resolves it
//! ([`launch`], [`users`]), with pipes or a pty, its output pumped to attached clients
//! ([`fanout`]) and to the output log ([`outlog`]), its input from them ([`input`]), its exit
//! collected by the one reaper ([`reaper`]) and every step written to guestinfo in a safe order.
//!
//! Owns: processes, their stdio, exits, the output log, the registry of sessions by ID.
//! Uses: `guestinfo` (to publish state), `sys`, `gate` (launches wait for the container's root).
//! Must not know who attaches (the attach server uses this folder, not the other way round) or
//! how the root is made: what the VM's wiring adds to a launch comes in through [`Settings`].

mod chunks;
pub mod fanout;
pub mod input;
pub mod launch;
mod life;
pub mod outlog;
pub mod reaper;
pub mod users;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use life::{child_stdio, plumbing, Ctx, Plumbing, Session, Settings, State};

/// Every session and exec by ID: the agent adds them, the attach server looks them up.
pub type Registry = Arc<Mutex<HashMap<String, Arc<Session>>>>;
