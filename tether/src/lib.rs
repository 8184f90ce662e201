//! The tether: the in-guest agent of a containerVM. `main.rs` only parses the command line and
//! calls in here.

pub mod backdoor;
pub mod cli;
pub mod config_cmd;
