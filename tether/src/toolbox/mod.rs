//! The embedded VMware Tools (issue 16, not built yet): the TCLO loop on the backdoor, power
//! operations, and the guest operations VIC's VCH uses (start a program, signal, file transfer).
//!
//! Will own: the TCLO channel and its handlers. May use: `guestinfo` (the backdoor), `sys`, and
//! the sessions through functions the wiring hands it (it must not reach into the agent).
