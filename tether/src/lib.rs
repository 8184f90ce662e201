//! The tether: the in-guest agent of a containerVM. `main.rs` only parses the command line and
//! calls in here.
//!
//! Folders own one subject each and import only downward (see the module map in the README):
//! `sys` (the only raw system calls) and the leaves `gate` and `logging` at the bottom; `boot`,
//! `guestinfo` and `session` above them; `attach` above `session`; and at the top the wiring,
//! which alone may use them all: `run` (`tether run`, `tether init`, the bootstrap stage's entry
//! and PID 1's composition), `agent` (the main loop), `cli`, and `tools` (the toolbox's view of
//! the container). `net`, `volume` and `toolbox` own networking, volumes and the embedded VMware
//! Tools.

pub mod agent;
pub mod attach;
pub mod boot;
pub mod cli;
pub mod gate;
pub mod guestinfo;
pub mod logging;
pub mod net;
pub mod run;
pub mod session;
pub mod sys;
pub mod toolbox;
pub mod tools;
pub mod volume;
