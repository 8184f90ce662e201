//! Guestinfo over the VMware backdoor: the RPCI message channel (open, send, receive, close) run
//! against a [`Hypervisor`], which is either the real I/O ports ([`port`]) or, in tests, an
//! in-process fake host that implements the host side exactly.
//!
//! Every request opens a fresh channel, sends, receives, and closes it, as VIC did: the host keeps
//! at most 8 channels, and one per request never leaks one.

mod port;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use tether_proto::guestinfo::{rpc_get, rpc_set, GuestInfo, GuestInfoError};

pub use port::{is_vmware_cpu, IoPorts};

/// `"VMXh"`: always in EAX.
pub const MAGIC: u32 = 0x564D_5868;
/// The low-bandwidth port, in DX's low half.
pub const PORT_LB: u32 = 0x5658;
/// The high-bandwidth port, for `rep insb`/`rep outsb`.
pub const PORT_HB: u32 = 0x5659;
/// Backdoor commands (ECX low half).
pub const CMD_GETVERSION: u32 = 10;
pub const CMD_MESSAGE: u32 = 0x1E;
/// The high-bandwidth "message" command, in BX's low half on the HB port.
pub const HB_CMD_MESSAGE: u32 = 0;
/// The RPCI protocol number and the flag asking for cookies.
pub const PROTO_RPCI: u32 = 0x4943_5052;
/// The host-to-guest channel the tools poll (`"TCLO"`).
pub const PROTO_TCLO: u32 = 0x4f4c_4354;
pub const FLAG_COOKIE: u32 = 0x8000_0000;
/// The largest reply we take: guestinfo values are small, and the length comes from the host.
pub const MAX_REPLY: usize = 1 << 20;
/// How often a transfer interrupted by a checkpoint is started again.
pub const CHECKPOINT_RETRIES: usize = 8;

/// Message sub-commands (ECX high half).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    Open = 0,
    SendSize = 1,
    SendPayload = 2,
    RecvSize = 3,
    RecvPayload = 4,
    RecvStatus = 5,
    Close = 6,
}

/// Status bits (ECX high half on LB, EBX high half on HB).
pub mod status {
    pub const SUCCESS: u32 = 0x0001;
    pub const DORECV: u32 = 0x0002;
    pub const CLOSED: u32 = 0x0004;
    pub const UNSENT: u32 = 0x0008;
    pub const CPT: u32 = 0x0010;
    pub const POWEROFF: u32 = 0x0020;
    pub const TIMEOUT: u32 = 0x0040;
    pub const HB: u32 = 0x0080;
}

/// The registers of one backdoor call. On the HB port the buffer pointer is not here: the
/// [`Hypervisor`] puts it in RSI (out) or RDI (in) itself, and the cookie word that register would
/// carry travels in `bp` instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub ax: u32,
    pub bx: u32,
    pub cx: u32,
    pub dx: u32,
    pub si: u32,
    pub di: u32,
    pub bp: u32,
}

/// The three ways of talking to the hypervisor.
pub trait Hypervisor {
    /// `in eax, dx` on the LB port.
    fn low_bandwidth(&mut self, regs: &mut Regs);
    /// `rep outsb` of `data` to the HB port.
    fn high_bandwidth_out(&mut self, regs: &mut Regs, data: &[u8]);
    /// `rep insb` into `buf` from the HB port.
    fn high_bandwidth_in(&mut self, regs: &mut Regs, buf: &mut [u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackdoorError {
    #[error("not a VMware virtual machine ({0}); pass the override to use the backdoor anyway")]
    NotVmware(String),
    #[error("cannot get I/O permission for the backdoor ports: {0}")]
    NoIoPermission(String),
    #[error("the backdoor did not answer GETVERSION (ebx={ebx:#x}); no VMware hypervisor here")]
    NoBackdoor { ebx: u32 },
    #[error("the host refused to open an RPCI channel (status {0:#06x})")]
    OpenFailed(u32),
    #[error("{step:?} failed (status {status:#06x})")]
    Step { step: MsgType, status: u32 },
    #[error("{step:?}: still interrupted by checkpoints after {CHECKPOINT_RETRIES} tries")]
    Checkpoints { step: MsgType },
    #[error("{0}")]
    Protocol(String),
}

impl From<BackdoorError> for GuestInfoError {
    fn from(e: BackdoorError) -> Self {
        match e {
            BackdoorError::NotVmware(_)
            | BackdoorError::NoIoPermission(_)
            | BackdoorError::NoBackdoor { .. } => GuestInfoError::Unavailable(e.to_string()),
            other => GuestInfoError::Protocol(other.to_string()),
        }
    }
}

/// Asks the backdoor for its version; `Ok` only when EBX comes back as the magic number.
pub fn get_version(hv: &mut dyn Hypervisor) -> Result<u32, BackdoorError> {
    let mut r = Regs {
        ax: MAGIC,
        bx: !MAGIC,
        cx: CMD_GETVERSION,
        dx: PORT_LB,
        ..Regs::default()
    };
    hv.low_bandwidth(&mut r);
    if r.bx != MAGIC || r.ax == u32::MAX {
        return Err(BackdoorError::NoBackdoor { ebx: r.bx });
    }
    Ok(r.ax)
}

/// An open channel's id and cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelState {
    id: u32,
    cookie_high: u32,
    cookie_low: u32,
}

/// An open RPCI (or TCLO) channel.
pub struct Channel<'h> {
    hv: &'h mut dyn Hypervisor,
    id: u32,
    cookie_high: u32,
    cookie_low: u32,
}

impl<'h> Channel<'h> {
    /// Opens an RPCI channel, asking for cookies first and without them if the host refuses.
    pub fn open(hv: &'h mut dyn Hypervisor) -> Result<Self, BackdoorError> {
        Self::open_protocol(hv, PROTO_RPCI)
    }

    /// Opens a channel of `protocol` (RPCI or TCLO), with cookies if the host gives them.
    pub fn open_protocol(hv: &'h mut dyn Hypervisor, protocol: u32) -> Result<Self, BackdoorError> {
        let mut last = 0;
        for proto in [protocol | FLAG_COOKIE, protocol] {
            let mut r = Regs {
                ax: MAGIC,
                bx: proto,
                cx: CMD_MESSAGE | (MsgType::Open as u32) << 16,
                dx: PORT_LB,
                ..Regs::default()
            };
            hv.low_bandwidth(&mut r);
            last = r.cx >> 16;
            if last & status::SUCCESS != 0 {
                return Ok(Self {
                    hv,
                    id: r.dx >> 16,
                    cookie_high: r.si,
                    cookie_low: r.di,
                });
            }
        }
        Err(BackdoorError::OpenFailed(last))
    }

    /// What names this channel to the host, to use it again later ([`Channel::resume`]).
    pub fn state(&self) -> ChannelState {
        ChannelState {
            id: self.id,
            cookie_high: self.cookie_high,
            cookie_low: self.cookie_low,
        }
    }

    /// A channel opened earlier and left open (the TCLO channel lives across polls).
    pub fn resume(hv: &'h mut dyn Hypervisor, s: ChannelState) -> Self {
        Self {
            hv,
            id: s.id,
            cookie_high: s.cookie_high,
            cookie_low: s.cookie_low,
        }
    }

    fn lb(&mut self, step: MsgType, bx: u32) -> Regs {
        let mut r = Regs {
            ax: MAGIC,
            bx,
            cx: CMD_MESSAGE | (step as u32) << 16,
            dx: self.id << 16 | PORT_LB,
            si: self.cookie_high,
            di: self.cookie_low,
            bp: 0,
        };
        self.hv.low_bandwidth(&mut r);
        r
    }

    fn hb_regs(&self, len: usize) -> Regs {
        Regs {
            ax: MAGIC,
            bx: status::SUCCESS << 16 | HB_CMD_MESSAGE,
            cx: u32::try_from(len).unwrap_or(u32::MAX),
            dx: self.id << 16 | PORT_HB,
            ..Regs::default()
        }
    }

    /// Sends one message, starting again when a checkpoint interrupts it.
    pub fn send(&mut self, data: &[u8]) -> Result<(), BackdoorError> {
        let len = u32::try_from(data.len())
            .map_err(|_| BackdoorError::Protocol("message too long".into()))?;
        for _ in 0..CHECKPOINT_RETRIES {
            let r = self.lb(MsgType::SendSize, len);
            let st = r.cx >> 16;
            if st & status::SUCCESS == 0 {
                if st & status::CPT != 0 {
                    continue;
                }
                return Err(BackdoorError::Step {
                    step: MsgType::SendSize,
                    status: st,
                });
            }
            if data.is_empty() {
                return Ok(());
            }
            let outcome = if st & status::HB != 0 {
                let mut r = self.hb_regs(data.len());
                // HB out: RDI carries the low cookie, RBP the high one (RSI is the source pointer).
                r.di = self.cookie_low;
                r.bp = self.cookie_high;
                self.hv.high_bandwidth_out(&mut r, data);
                r.bx >> 16
            } else {
                self.send_low_bandwidth(data)
            };
            if outcome & status::SUCCESS != 0 {
                return Ok(());
            }
            if outcome & status::CPT == 0 {
                return Err(BackdoorError::Step {
                    step: MsgType::SendPayload,
                    status: outcome,
                });
            }
        }
        Err(BackdoorError::Checkpoints {
            step: MsgType::SendPayload,
        })
    }

    /// Four bytes a call; returns the status of the first failing call, or SUCCESS.
    fn send_low_bandwidth(&mut self, data: &[u8]) -> u32 {
        for chunk in data.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            let st = self.lb(MsgType::SendPayload, u32::from_le_bytes(word)).cx >> 16;
            if st & status::SUCCESS == 0 {
                return st;
            }
        }
        status::SUCCESS
    }

    /// Receives the reply to the last message (empty when the host has none).
    pub fn receive(&mut self) -> Result<Vec<u8>, BackdoorError> {
        for _ in 0..CHECKPOINT_RETRIES {
            let r = self.lb(MsgType::RecvSize, 0);
            let st = r.cx >> 16;
            if st & status::SUCCESS == 0 {
                if st & status::CPT != 0 {
                    continue;
                }
                return Err(BackdoorError::Step {
                    step: MsgType::RecvSize,
                    status: st,
                });
            }
            if st & status::DORECV == 0 {
                return Ok(Vec::new());
            }
            if r.dx >> 16 != MsgType::SendSize as u32 {
                return Err(BackdoorError::Protocol(format!(
                    "RecvSize: the host announced message type {} instead of a size",
                    r.dx >> 16
                )));
            }
            let len = r.bx as usize;
            if len > MAX_REPLY {
                self.lb(MsgType::RecvStatus, 0);
                return Err(BackdoorError::Protocol(format!(
                    "the host announced a {len}-byte reply, over the {MAX_REPLY}-byte limit"
                )));
            }
            let mut buf = vec![0u8; len];
            let outcome = if len == 0 {
                status::SUCCESS
            } else if st & status::HB != 0 {
                let mut r = self.hb_regs(len);
                // HB in: RSI carries the high cookie, RBP the low one (RDI is the destination pointer).
                r.si = self.cookie_high;
                r.bp = self.cookie_low;
                self.hv.high_bandwidth_in(&mut r, &mut buf);
                r.bx >> 16
            } else {
                self.receive_low_bandwidth(&mut buf)?
            };
            if outcome & status::SUCCESS == 0 {
                if outcome & status::CPT != 0 {
                    continue;
                }
                self.lb(MsgType::RecvStatus, 0);
                return Err(BackdoorError::Step {
                    step: MsgType::RecvPayload,
                    status: outcome,
                });
            }
            let st = self.lb(MsgType::RecvStatus, status::SUCCESS).cx >> 16;
            if st & status::SUCCESS == 0 {
                if st & status::CPT != 0 {
                    continue;
                }
                return Err(BackdoorError::Step {
                    step: MsgType::RecvStatus,
                    status: st,
                });
            }
            return Ok(buf);
        }
        Err(BackdoorError::Checkpoints {
            step: MsgType::RecvPayload,
        })
    }

    fn receive_low_bandwidth(&mut self, buf: &mut [u8]) -> Result<u32, BackdoorError> {
        for chunk in buf.chunks_mut(4) {
            let r = self.lb(MsgType::RecvPayload, status::SUCCESS);
            let st = r.cx >> 16;
            if st & status::SUCCESS == 0 {
                return Ok(st);
            }
            if r.dx >> 16 != MsgType::SendPayload as u32 {
                return Err(BackdoorError::Protocol(format!(
                    "RecvPayload: the host sent message type {} instead of payload",
                    r.dx >> 16
                )));
            }
            let word = r.bx.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(status::SUCCESS)
    }

    /// Closes the channel, again if a checkpoint interrupted the close: the host has only 8
    /// channels, so none may leak. A failure to close is not one the caller could act on.
    pub fn close(mut self) {
        for _ in 0..CHECKPOINT_RETRIES {
            let st = self.lb(MsgType::Close, 0).cx >> 16;
            if st & status::CPT == 0 || st & status::SUCCESS != 0 {
                return;
            }
        }
    }
}

/// One request and its reply on a fresh channel, closed whatever happens.
pub fn call(hv: &mut dyn Hypervisor, request: &[u8]) -> Result<Vec<u8>, BackdoorError> {
    let mut ch = Channel::open(hv)?;
    let result = ch.send(request).and_then(|()| ch.receive());
    ch.close();
    result
}

/// Guestinfo through the backdoor (and the tools' TCLO channel, kept open across polls).
pub struct Backdoor<H> {
    hv: H,
    tclo: Option<ChannelState>,
}

impl<H: Hypervisor> Backdoor<H> {
    /// Uses `hv` after checking that a backdoor answers.
    pub fn new(mut hv: H) -> Result<Self, BackdoorError> {
        get_version(&mut hv)?;
        Ok(Self { hv, tclo: None })
    }
}

impl Backdoor<IoPorts> {
    /// The real backdoor. Call this before any other thread starts: I/O permission is per thread
    /// and only threads created afterwards inherit it. Without `force`, a CPU that does not say
    /// "VMwareVMware" is refused before any port is touched.
    pub fn open(force: bool) -> Result<Self, BackdoorError> {
        Self::new(IoPorts::acquire(force)?)
    }
}

impl<H: Hypervisor + Send> GuestInfo for Backdoor<H> {
    fn get(&mut self, key: &str) -> Result<Option<String>, GuestInfoError> {
        rpc_get(
            &mut |req| call(&mut self.hv, req).map_err(GuestInfoError::from),
            key,
        )
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), GuestInfoError> {
        rpc_set(
            &mut |req| call(&mut self.hv, req).map_err(GuestInfoError::from),
            key,
            value,
        )
    }

    fn tclo(&mut self, reply: &[u8]) -> Result<Option<Vec<u8>>, GuestInfoError> {
        let mut ch = match self.tclo.take() {
            Some(s) => Channel::resume(&mut self.hv, s),
            None => Channel::open_protocol(&mut self.hv, PROTO_TCLO)?,
        };
        match ch.send(reply).and_then(|()| ch.receive()) {
            Ok(request) => {
                self.tclo = Some(ch.state());
                Ok(Some(request))
            }
            Err(e) => {
                // Opened afresh at the next poll.
                ch.close();
                Err(e.into())
            }
        }
    }

    fn rpci(&mut self, request: &[u8]) -> Result<Option<Vec<u8>>, GuestInfoError> {
        call(&mut self.hv, request)
            .map(Some)
            .map_err(GuestInfoError::from)
    }
}
