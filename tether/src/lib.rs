//! The tether: the in-guest agent of a containerVM. `main.rs` only parses the command line and
//! calls in here.

pub mod agent;
pub mod attach;
pub mod backdoor;
pub mod bootstrap;
pub mod cli;
pub mod config_cmd;
pub mod fanout;
pub mod gate;
pub mod gi;
pub mod input;
pub mod launch;
pub mod logging;
pub mod outlog;
pub mod pid1;
pub mod reaper;
pub mod run;
pub mod session;
pub mod sys;
pub mod users;
