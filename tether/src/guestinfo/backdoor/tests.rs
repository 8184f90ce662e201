use proptest::prelude::*;
use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::{GuestInfo, GuestInfoError};

use super::fake::FakeHost;
use super::*;

fn host(hb: bool) -> FakeHost {
    let mut h = FakeHost::new(
        [("guestinfo.vice./common/id", "abc123")]
            .into_iter()
            .collect::<KeyValues>(),
    );
    h.hb = hb;
    h
}

fn backdoor(h: FakeHost) -> Backdoor<FakeHost> {
    Backdoor::new(h).unwrap()
}

#[test]
fn get_and_set_over_the_low_bandwidth_path() {
    let mut b = backdoor(host(false));
    assert_eq!(
        b.get("guestinfo.vice./common/id").unwrap().as_deref(),
        Some("abc123")
    );
    assert_eq!(b.get("guestinfo.vice./missing").unwrap(), None);
    b.set("guestinfo.vice..sessions|abc123.started", "true")
        .unwrap();
    assert_eq!(
        b.hv.store.get("guestinfo.vice..sessions|abc123.started"),
        Some("true")
    );
    assert!(
        b.hv.trace.contains(&MsgType::SendPayload) && b.hv.trace.contains(&MsgType::RecvPayload)
    );
}

#[test]
fn get_and_set_over_the_high_bandwidth_path() {
    let mut b = backdoor(host(true));
    let big = "v".repeat(40_000);
    b.set("guestinfo.big", &big).unwrap();
    assert_eq!(
        b.get("guestinfo.big").unwrap().as_deref(),
        Some(big.as_str())
    );
    // Nothing went four bytes at a time.
    assert!(
        !b.hv.trace.contains(&MsgType::SendPayload) && !b.hv.trace.contains(&MsgType::RecvPayload)
    );
}

#[test]
fn every_request_closes_its_channel() {
    let mut b = backdoor(host(false));
    for i in 0..20 {
        b.set(&format!("guestinfo.k{i}"), "x").unwrap();
    }
    assert_eq!(b.hv.open_channels(), 0);
    let opens = b.hv.trace.iter().filter(|m| **m == MsgType::Open).count();
    let closes = b.hv.trace.iter().filter(|m| **m == MsgType::Close).count();
    assert_eq!((opens, closes), (20, 20));
}

#[test]
fn a_host_without_cookies_is_used_without_them() {
    let mut h = host(false);
    h.cookies = false;
    let mut b = backdoor(h);
    assert_eq!(
        b.get("guestinfo.vice./common/id").unwrap().as_deref(),
        Some("abc123")
    );
}

#[test]
fn checkpoints_restart_the_interrupted_transfer() {
    for hb in [false, true] {
        // Calls: 1 SendSize, 2.. payload (LB) or 2 HB out; later ones land in the receive.
        for at in 1..12 {
            let mut h = host(hb);
            h.checkpoints.insert(at);
            let mut b = backdoor(h);
            let got = b.get("guestinfo.vice./common/id").unwrap();
            assert_eq!(
                got.as_deref(),
                Some("abc123"),
                "hb={hb} checkpoint at call {at}"
            );
            assert_eq!(b.hv.open_channels(), 0);
        }
    }
}

#[test]
fn endless_checkpoints_give_up_with_an_error() {
    let mut h = host(false);
    // Every send attempt is interrupted; the close that follows is not.
    h.checkpoints = (1..=CHECKPOINT_RETRIES).collect();
    let mut b = backdoor(h);
    let err = b.get("guestinfo.vice./common/id").unwrap_err();
    assert!(err.to_string().contains("checkpoints"), "{err}");
    assert_eq!(
        b.hv.open_channels(),
        0,
        "the channel is closed after a failure too"
    );
}

#[test]
fn permission_denied_is_an_error_not_a_missing_key() {
    let mut h = host(true);
    h.secure_rpc = true;
    let mut b = backdoor(h);
    match b.get("guestinfo.vice./common/id") {
        Err(GuestInfoError::Refused { reason, .. }) => assert_eq!(reason, "Permission denied"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(b.set("guestinfo.x", "1").is_err());
}

#[test]
fn a_full_host_refuses_to_open() {
    let mut h = host(false);
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut r = Regs {
            ax: MAGIC,
            bx: PROTO_RPCI,
            cx: CMD_MESSAGE,
            dx: PORT_LB,
            ..Regs::default()
        };
        h.low_bandwidth(&mut r);
        held.push(r.dx >> 16);
    }
    assert_eq!(h.open_channels(), 8);
    assert_eq!(
        call(&mut h, b"info-get guestinfo.x").unwrap_err(),
        BackdoorError::OpenFailed(0)
    );
}

#[test]
fn oversized_requests_never_reach_the_host() {
    let mut b = backdoor(host(true));
    let err = b.set("guestinfo.k", &"x".repeat(70_000)).unwrap_err();
    assert!(err.to_string().contains("more than the 65536"), "{err}");
    assert!(b.hv.trace.is_empty());
}

/// A host that answers GETVERSION with all ones, like a machine with no backdoor device.
struct NoDevice;
impl Hypervisor for NoDevice {
    fn low_bandwidth(&mut self, r: &mut Regs) {
        *r = Regs {
            ax: u32::MAX,
            bx: u32::MAX,
            ..*r
        };
    }
    fn high_bandwidth_out(&mut self, _: &mut Regs, _: &[u8]) {}
    fn high_bandwidth_in(&mut self, _: &mut Regs, _: &mut [u8]) {}
}

#[test]
fn no_backdoor_device_is_refused_at_getversion() {
    assert_eq!(
        Backdoor::new(NoDevice).err(),
        Some(BackdoorError::NoBackdoor { ebx: u32::MAX })
    );
}

#[test]
fn this_machine_is_refused_before_any_port_is_touched() {
    if is_vmware_cpu() {
        return; // On VMware the backdoor is real and may be used.
    }
    // Had `in` run without permission, this test process would have died with SIGSEGV.
    match Backdoor::open(false) {
        Err(BackdoorError::NotVmware(why)) => assert!(!why.is_empty()),
        other => panic!("expected NotVmware, got {:?}", other.err()),
    }
    // Forced: either no I/O permission here, or permission and then no answer to GETVERSION.
    match Backdoor::open(true) {
        Err(BackdoorError::NoIoPermission(_) | BackdoorError::NoBackdoor { .. }) => {}
        other => panic!("expected a clean refusal, got {:?}", other.err()),
    }
}

/// A host whose answers are arbitrary register values.
struct Chaos {
    words: Vec<u32>,
    at: usize,
}

impl Chaos {
    fn next(&mut self) -> u32 {
        let w = self
            .words
            .get(self.at % self.words.len().max(1))
            .copied()
            .unwrap_or(0);
        self.at += 1;
        w
    }
}

impl Hypervisor for Chaos {
    fn low_bandwidth(&mut self, r: &mut Regs) {
        r.ax = self.next();
        r.bx = self.next();
        r.cx = self.next();
        r.dx = self.next();
        r.si = self.next();
        r.di = self.next();
    }
    fn high_bandwidth_out(&mut self, r: &mut Regs, _: &[u8]) {
        r.bx = self.next();
    }
    fn high_bandwidth_in(&mut self, r: &mut Regs, buf: &mut [u8]) {
        r.bx = self.next();
        for b in buf.iter_mut() {
            *b = self.next() as u8;
        }
    }
}

proptest! {
    #[test]
    fn a_misbehaving_host_never_panics_or_hangs(words in prop::collection::vec(any::<u32>(), 1..64)) {
        let mut hv = Chaos { words, at: 0 };
        let _ = call(&mut hv, b"info-get guestinfo.x");
        // Bounded: retries are counted and payloads are bounded by MAX_REPLY.
        prop_assert!(hv.at < 4 * (MAX_REPLY / 4 + 64) * CHECKPOINT_RETRIES);
    }
}

#[test]
fn the_tclo_channel_stays_open_and_carries_replies_out_and_requests_in() {
    for hb in [false, true] {
        let mut h = host(hb);
        h.tclo_requests
            .extend([b"reset".to_vec(), Vec::new(), b"ping".to_vec()]);
        let mut b = backdoor(h);
        assert_eq!(b.tclo(b"").unwrap(), Some(b"reset".to_vec()));
        assert_eq!(b.tclo(b"OK ATR toolbox").unwrap(), Some(Vec::new()));
        // Guestinfo and the tools' own requests go on their own channels in between.
        assert_eq!(
            b.get("guestinfo.vice./common/id").unwrap().as_deref(),
            Some("abc123")
        );
        assert_eq!(
            b.rpci(b"tools.set.version 2147483647").unwrap(),
            Some(b"1 ".to_vec())
        );
        assert_eq!(b.tclo(b"").unwrap(), Some(b"ping".to_vec()));
        assert_eq!(
            b.hv.tclo_replies,
            [b"".to_vec(), b"OK ATR toolbox".to_vec(), b"".to_vec()]
        );
        assert_eq!(b.hv.rpci_log, [b"tools.set.version 2147483647".to_vec()]);
        assert_eq!(b.hv.open_channels(), 1, "only the TCLO channel stays open");
    }
}

/// The toolbox's loop against the fake VMX: the VMX's requests in, the replies and the tools'
/// RPCI requests out, byte for byte.
#[test]
fn the_toolbox_loop_answers_the_vmx_through_the_backdoor() {
    use crate::toolbox::fake::{FakeContainer, Log};
    use crate::toolbox::{tclo, vix, Out, Toolbox};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let vix_start = |path: &str, args: &str| vix::start_program_as("abc123", path, args);
    let mut h = host(false);
    h.tclo_requests.extend([
        b"reset".to_vec(),
        b"Capabilities_Register".to_vec(),
        vix_start("kill", "TERM"),
        vix_start("reload", ""),
        b"OS_Halt".to_vec(),
    ]);
    let b = Arc::new(Mutex::new(backdoor(h)));
    struct Line(Arc<Mutex<Backdoor<FakeHost>>>, Arc<AtomicBool>);
    impl tclo::Line for Line {
        fn poll(&mut self, reply: &[u8]) -> Result<Option<Vec<u8>>, String> {
            let mut b = self.0.lock().unwrap();
            if b.hv.tclo_requests.is_empty() && !reply.is_empty() {
                // The last reply is out: the test's VMX has nothing more to say.
                self.1.store(true, Ordering::Relaxed);
            }
            b.tclo(reply).map_err(|e| e.to_string())
        }
    }
    // The tools' out channel through the same fake.
    struct RpciOut(Arc<Mutex<Backdoor<FakeHost>>>);
    impl Out for RpciOut {
        fn send(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
            let got = self.0.lock().unwrap().rpci(request);
            got.map(Option::unwrap_or_default)
                .map_err(|e| e.to_string())
        }
    }
    let did = Log::default();
    let container = FakeContainer::new(Some("abc123"), &did);
    let mut toolbox = Toolbox::new(container, Box::new(RpciOut(b.clone())));
    let stop = Arc::new(AtomicBool::new(false));
    let mut line = Line(b.clone(), stop.clone());
    tclo::run(&mut line, &mut toolbox, &stop, &|_| {});
    let b = b.lock().unwrap();
    assert_eq!(
        b.hv.tclo_replies,
        [
            b"".to_vec(),
            b"OK ATR toolbox".to_vec(),
            b"OK ".to_vec(),
            b"OK 0 0 1000\0".to_vec(),
            b"OK 0 0 1001\0".to_vec(),
            b"OK ".to_vec(),
        ]
    );
    assert_eq!(
        b.hv.rpci_log,
        [
            crate::toolbox::nicinfo::request(&[]),
            b"tools.set.version 2147483647".to_vec(),
            b"tools.capability.statechange".to_vec(),
            b"tools.capability.hgfs_server toolbox 1".to_vec(),
            b"tools.os.statechange.status 1 1\0".to_vec(),
        ]
    );
    assert_eq!(did.take(), ["signal SIGTERM group=false", "reload", "halt"]);
}
