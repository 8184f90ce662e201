//! An in-process VMware host: the backdoor's host side (GETVERSION, the RPCI message channel with
//! its status bits, cookies, 8 channels, high-bandwidth transfers on or off, checkpoint injection)
//! answering `info-get`/`info-set` from a key/value store.

use std::collections::BTreeSet;

use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::serve_request;
use tether_proto::rpc::{Reply, Request, MAX_REQUEST};

use super::*;

const MAX_CHANNELS: usize = 8;

#[derive(Debug)]
enum State {
    Idle,
    Receiving { expected: usize, buf: Vec<u8> },
    ReplyReady { reply: Vec<u8>, pos: usize },
}

#[derive(Debug)]
struct Chan {
    cookie_high: u32,
    cookie_low: u32,
    state: State,
    /// A TCLO channel: what the guest sends is its reply to the last request; what it
    /// receives is the next request.
    tclo: bool,
}

pub struct FakeHost {
    pub store: KeyValues,
    /// Offer high-bandwidth transfers.
    pub hb: bool,
    /// Honour the cookie flag on OPEN (an old host refuses it).
    pub cookies: bool,
    /// Answer `info-get`/`info-set` with "Permission denied" (VMX "secure RPC").
    pub secure_rpc: bool,
    /// Call numbers (counting every backdoor call from 1) that report a checkpoint instead.
    pub checkpoints: BTreeSet<usize>,
    /// Which message sub-commands the guest used, in order.
    pub trace: Vec<MsgType>,
    /// TCLO requests for the guest to take, in order.
    pub tclo_requests: std::collections::VecDeque<Vec<u8>>,
    /// What the guest sent on the TCLO channel (its replies), in order.
    pub tclo_replies: Vec<Vec<u8>>,
    /// The RPCI requests that were not guestinfo (the tools' own), in order.
    pub rpci_log: Vec<Vec<u8>>,
    calls: usize,
    channels: Vec<Option<Chan>>,
    next_cookie: u32,
}

impl FakeHost {
    pub fn new(store: KeyValues) -> Self {
        Self {
            store,
            hb: false,
            cookies: true,
            secure_rpc: false,
            checkpoints: BTreeSet::new(),
            trace: Vec::new(),
            tclo_requests: Default::default(),
            tclo_replies: Vec::new(),
            rpci_log: Vec::new(),
            calls: 0,
            channels: (0..MAX_CHANNELS).map(|_| None).collect(),
            next_cookie: 0x1234_5678,
        }
    }

    pub fn open_channels(&self) -> usize {
        self.channels.iter().filter(|c| c.is_some()).count()
    }

    fn checkpoint_now(&mut self) -> bool {
        self.calls += 1;
        self.checkpoints.contains(&self.calls)
    }

    /// The answer on channel `dx`: the next TCLO request, or the RPCI reply.
    fn answer_on(&mut self, dx: u32, request: &[u8]) -> Vec<u8> {
        let tclo = self
            .channels
            .get((dx >> 16) as usize)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.tclo);
        if tclo {
            self.tclo_replies.push(request.to_vec());
            return self.tclo_requests.pop_front().unwrap_or_default();
        }
        if !request.starts_with(b"info-") {
            self.rpci_log.push(request.to_vec());
            return b"1 ".to_vec();
        }
        self.answer(request)
    }

    fn answer(&mut self, request: &[u8]) -> Vec<u8> {
        if self.secure_rpc
            && matches!(
                Request::parse(request),
                Ok(Request::Get { .. } | Request::Set { .. })
            )
        {
            return Reply::fail("Permission denied").to_bytes();
        }
        serve_request(&mut self.store, request).to_bytes()
    }

    /// The channel named by `dx` if the cookies match.
    fn channel(&mut self, dx: u32, high: u32, low: u32) -> Option<&mut Chan> {
        let id = (dx >> 16) as usize;
        self.channels
            .get_mut(id)?
            .as_mut()
            .filter(|c| c.cookie_high == high && c.cookie_low == low)
    }

    fn message(&mut self, r: &mut Regs) -> u32 {
        let step = r.cx >> 16;
        if step == MsgType::Open as u32 {
            return self.open(r);
        }
        let cpt = self.checkpoint_now();
        let hb = self.hb;
        let (dx, si, di) = (r.dx, r.si, r.di);
        let Some(step) = [
            MsgType::SendSize,
            MsgType::SendPayload,
            MsgType::RecvSize,
            MsgType::RecvPayload,
            MsgType::RecvStatus,
            MsgType::Close,
        ]
        .into_iter()
        .find(|m| *m as u32 == step) else {
            return 0;
        };
        self.trace.push(step);
        let mut processed = None;
        let Some(ch) = self.channel(dx, si, di) else {
            return 0;
        };
        if cpt {
            // A checkpoint: a send starts over; a reply stays to be fetched again.
            ch.state = match std::mem::replace(&mut ch.state, State::Idle) {
                State::ReplyReady { reply, .. } => State::ReplyReady { reply, pos: 0 },
                _ => State::Idle,
            };
            return status::CPT;
        }
        let hb_bit = if hb { status::HB } else { 0 };
        let st = match step {
            MsgType::SendSize => {
                let expected = r.bx as usize;
                if expected > MAX_REQUEST {
                    return 0;
                }
                ch.state = State::Receiving {
                    expected,
                    buf: Vec::new(),
                };
                if expected == 0 {
                    processed = Some(Vec::new());
                }
                status::SUCCESS | hb_bit
            }
            MsgType::SendPayload => match &mut ch.state {
                State::Receiving { expected, buf } => {
                    let take = (*expected - buf.len()).min(4);
                    buf.extend_from_slice(&r.bx.to_le_bytes()[..take]);
                    if buf.len() == *expected {
                        processed = Some(std::mem::take(buf));
                    }
                    status::SUCCESS
                }
                _ => 0,
            },
            MsgType::RecvSize => match &ch.state {
                State::ReplyReady { reply, .. } => {
                    r.bx = reply.len() as u32;
                    r.dx = (MsgType::SendSize as u32) << 16 | PORT_LB;
                    status::SUCCESS | status::DORECV | hb_bit
                }
                _ => status::SUCCESS,
            },
            MsgType::RecvPayload => match &mut ch.state {
                State::ReplyReady { reply, pos } => {
                    let mut word = [0u8; 4];
                    let end = (*pos + 4).min(reply.len());
                    word[..end - *pos].copy_from_slice(&reply[*pos..end]);
                    *pos = end;
                    r.bx = u32::from_le_bytes(word);
                    r.dx = (MsgType::SendPayload as u32) << 16 | PORT_LB;
                    status::SUCCESS
                }
                _ => 0,
            },
            MsgType::RecvStatus => {
                ch.state = State::Idle;
                status::SUCCESS
            }
            MsgType::Close => {
                self.channels[(dx >> 16) as usize] = None;
                return status::SUCCESS;
            }
            MsgType::Open => unreachable!("handled above"),
        };
        if let Some(request) = processed {
            let reply = self.answer_on(dx, &request);
            if let Some(ch) = self.channel(dx, si, di) {
                ch.state = State::ReplyReady { reply, pos: 0 };
            }
        }
        st
    }

    fn open(&mut self, r: &mut Regs) -> u32 {
        self.trace.push(MsgType::Open);
        let wants_cookie = r.bx & FLAG_COOKIE != 0;
        let proto = r.bx & !FLAG_COOKIE;
        if !(proto == PROTO_RPCI || proto == PROTO_TCLO) || (wants_cookie && !self.cookies) {
            return 0;
        }
        let Some(id) = self.channels.iter().position(Option::is_none) else {
            return 0;
        };
        let (high, low) = if wants_cookie {
            self.next_cookie = self.next_cookie.wrapping_mul(2_654_435_761).wrapping_add(1);
            (self.next_cookie, !self.next_cookie)
        } else {
            (0, 0)
        };
        self.channels[id] = Some(Chan {
            cookie_high: high,
            cookie_low: low,
            state: State::Idle,
            tclo: proto == PROTO_TCLO,
        });
        r.dx = (id as u32) << 16 | PORT_LB;
        r.si = high;
        r.di = low;
        status::SUCCESS
    }
}

impl Hypervisor for FakeHost {
    fn low_bandwidth(&mut self, r: &mut Regs) {
        if r.ax != MAGIC || r.dx & 0xffff != PORT_LB {
            r.ax = u32::MAX;
            return;
        }
        match r.cx & 0xffff {
            CMD_GETVERSION => {
                r.ax = 6;
                r.bx = MAGIC;
                r.cx = 2;
            }
            CMD_MESSAGE => {
                let st = self.message(r);
                r.cx = st << 16 | CMD_MESSAGE;
            }
            _ => r.ax = u32::MAX,
        }
    }

    fn high_bandwidth_out(&mut self, r: &mut Regs, data: &[u8]) {
        let cpt = self.checkpoint_now();
        let (dx, high, low) = (r.dx, r.bp, r.di);
        let mut st = 0;
        let mut processed = None;
        if r.ax == MAGIC && r.dx & 0xffff == PORT_HB && r.bx & 0xffff == HB_CMD_MESSAGE {
            if let Some(ch) = self.channel(dx, high, low) {
                if cpt {
                    ch.state = State::Idle;
                    st = status::CPT;
                } else if let State::Receiving { expected, .. } = ch.state {
                    if expected == r.cx as usize && data.len() == expected {
                        processed = Some(data.to_vec());
                        st = status::SUCCESS;
                    }
                }
            }
        }
        if let Some(request) = processed {
            let reply = self.answer_on(dx, &request);
            if let Some(ch) = self.channel(dx, high, low) {
                ch.state = State::ReplyReady { reply, pos: 0 };
            }
        }
        r.bx = st << 16;
    }

    fn high_bandwidth_in(&mut self, r: &mut Regs, buf: &mut [u8]) {
        let cpt = self.checkpoint_now();
        let (dx, high, low) = (r.dx, r.si, r.bp);
        let mut st = 0;
        if r.ax == MAGIC && r.dx & 0xffff == PORT_HB && r.bx & 0xffff == HB_CMD_MESSAGE {
            if let Some(ch) = self.channel(dx, high, low) {
                if cpt {
                    st = status::CPT;
                } else if let State::ReplyReady { reply, .. } = &ch.state {
                    if reply.len() == buf.len() && r.cx as usize == buf.len() {
                        buf.copy_from_slice(reply);
                        st = status::SUCCESS;
                    }
                }
            }
        }
        r.bx = st << 16;
    }
}
