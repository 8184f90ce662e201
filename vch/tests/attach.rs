//! `tether run --attach tcp:…` against `vch attach --listen …`, and against the attach protocol
//! driven directly (resize, reattach, several sessions).
//!
//! Longer than 800 lines on purpose: every test here drives one harness (a process-mode tether
//! and a host on loopback, defined at the top), and a split would either copy it or move it away
//! from the tests that read it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ssh::{wire, ChannelEvent};
use tether_proto::config::{Cmd, ExecutorConfig, SessionConfig};
use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::vmx::{self, VmxFile};
use vch::guestinfo_server::ListenAddr;

const ID: &str = "c0ffee";

/// The tether binary of this workspace, built if needed (the same build `scripts/test` makes
/// first, so there it is already done). Called before any deadline starts.
fn tether_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-q", "--workspace", "--bins"])
                .status()
                .expect("cargo");
            assert!(status.success(), "building the tether");
            PathBuf::from(env!("CARGO_BIN_EXE_vch")).with_file_name("tether")
        })
        .clone()
}

fn session(args: &[&str]) -> SessionConfig {
    SessionConfig {
        active: true,
        cmd: Cmd {
            path: args[0].into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/usr/bin:/bin".into()],
            dir: "/".into(),
        },
        ..SessionConfig::default()
    }
}

fn config(primary: SessionConfig) -> ExecutorConfig {
    let mut c = ExecutorConfig::default();
    c.common.id = ID.into();
    c.sessions.insert(ID.into(), primary);
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Tether {
    child: Child,
    dir: tempfile::TempDir,
}

impl Tether {
    fn start(cfg: &ExecutorConfig, port: u16, extra: &[&str]) -> Self {
        // A bare HOST:PORT is a TCP address (the bench writes tcp:HOST:PORT).
        Self::start_on(cfg, &format!("127.0.0.1:{port}"), extra)
    }

    /// A tether whose attach line is `line` (`serial:DEVICE`, `tcp:…`, a bare HOST:PORT).
    fn start_on(cfg: &ExecutorConfig, line: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gi.vmx");
        VmxFile::create(&file, cfg.encode().into_iter().collect::<KeyValues>()).unwrap();
        let child = Command::new(tether_bin())
            .args(["run", "--guestinfo"])
            .arg(&file)
            .args(["--attach", line, "--debug-log"])
            .arg(dir.path().join("debug"))
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn state(&self) -> ExecutorConfig {
        let mut kv: KeyValues = vmx::load(&self.dir.path().join("gi.vmx")).unwrap();
        ExecutorConfig::decode(&mut kv).unwrap().0
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the tether did not end");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vch attach` with `stdin`, started before the tether; returns its output.
fn vch_attach(
    port: u16,
    args: &[&str],
    stdin: &[u8],
    cfg: &ExecutorConfig,
    tether_args: &[&str],
) -> (Output, Tether) {
    use std::io::Write as _;
    let _ = tether_bin();
    let mut vch = Command::new(env!("CARGO_BIN_EXE_vch"))
        .args([
            "attach",
            "--listen",
            // What people type; tcp:HOST:PORT elsewhere in these tests.
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "30",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The tether connects (and reconnects) until vch listens.
    let tether = Tether::start(cfg, port, tether_args);
    vch.stdin.take().unwrap().write_all(stdin).unwrap();
    (vch.wait_with_output().unwrap(), tether)
}

#[test]
fn echo_through_cat_with_separate_streams_close_stdin_and_exit_status() {
    let mut s = session(&["/bin/sh", "-c", "cat; echo to-stderr >&2; exit 4"]);
    s.open_stdin = true;
    s.run_block = true;
    let port = free_port();
    let (out, mut tether) = vch_attach(
        port,
        &[],
        b"hello\nworld\n",
        &config(s),
        &["--runblock-timeout", "30"],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello\nworld\n");
    assert_eq!(out.stderr, b"to-stderr\n");
    assert!(tether.wait().success());
    assert_eq!(tether.state().sessions[ID].exit_status, 4);
}

#[test]
fn a_signal_death_exits_128_plus_n_and_a_missing_binary_127_with_its_reason() {
    let mut s = session(&["/bin/sh", "-c", "kill -TERM $$"]);
    s.run_block = true;
    let (out, _t) = vch_attach(
        free_port(),
        &[],
        b"",
        &config(s),
        &["--runblock-timeout", "30"],
    );
    assert_eq!(out.status.code(), Some(143));

    let mut s = session(&["/not/there"]);
    s.run_block = true;
    let (out, _t) = vch_attach(
        free_port(),
        &[],
        b"",
        &config(s),
        &["--runblock-timeout", "30"],
    );
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(out.stderr, b"stat /not/there: no such file or directory\n");
}

#[test]
fn window_change_without_a_pty_is_refused() {
    let mut s = session(&["sleep", "30"]);
    s.run_block = true;
    with_tether(&config(s), |h| async move {
        let ch = h
            .open("attach", ID.as_bytes().to_vec())
            .await
            .unwrap()
            .unwrap();
        let size = wire::Writer::new().u32(80).u32(24).u32(0).u32(0).finish();
        assert!(!ch.request("window-change", true, size).await.unwrap());
    });
}

#[test]
fn an_invalid_id_is_refused_with_vics_text() {
    let s = session(&["sleep", "30"]);
    let (out, _t) = vch_attach(free_port(), &["--id", "nope"], b"", &config(s), &[]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vch: attaching to nope: session nope is invalid\n"
    );
}

#[test]
fn no_tether_is_a_one_line_error_not_a_hang() {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vch"))
        .args([
            "attach",
            "--listen",
            // Port 0: the kernel's choice, so no other test can hold it (nothing connects).
            "tcp:127.0.0.1:0",
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vch: no tether connected within 1s\n"
    );
}

#[test]
fn echo_hi_arrives_every_time() {
    // Short-lived output is never lost to an attached client (VIC #6749, #1129).
    for i in 0..1000 {
        let mut s = session(&["echo", "hi"]);
        s.run_block = true;
        let (out, _t) = vch_attach(
            free_port(),
            &[],
            b"",
            &config(s),
            &["--runblock-timeout", "30"],
        );
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(0), &b"hi\n"[..]),
            "run {i}"
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime, a host listening on a free loopback port, and a tether started against it (the
/// listener is bound first, so the tether's first connect succeeds).
fn listening_tether(
    cfg: &ExecutorConfig,
    extra: &[&str],
) -> (tokio::runtime::Runtime, vch::attach::Listening, Tether) {
    let rt = runtime();
    // Bound here on a port of the kernel's choosing: a free port looked up first could be taken
    // by a test running beside this one before it is bound again.
    let listener = rt
        .block_on(vch::attach::bind(&ListenAddr::Tcp("127.0.0.1:0".into())))
        .unwrap();
    let port = listener.tcp_port().expect("a TCP listener");
    let tether = Tether::start(cfg, port, extra);
    (rt, listener, tether)
}

/// Everything a channel carries until CLOSE: its data and the `exit-status` payload.
async fn output_and_status(ch: &mut ssh::Channel) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut out = Vec::new();
    let mut status = None;
    while let Some(ev) = ch.recv().await {
        match ev {
            ChannelEvent::Data(d) => out.extend(d),
            ChannelEvent::Request { name, data } if name == "exit-status" => status = Some(data),
            ChannelEvent::Closed => break,
            _ => {}
        }
    }
    (out, status)
}

/// Drives the attach protocol directly: `f` gets the SSH handle once the tether is connected.
fn with_tether<F, Fut>(cfg: &ExecutorConfig, f: F) -> Tether
where
    F: FnOnce(ssh::Handle) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_tether_as(cfg, ssh::ClientConfig::new("daemon"), f)
}

fn with_tether_as<F, Fut>(cfg: &ExecutorConfig, client: ssh::ClientConfig, f: F) -> Tether
where
    F: FnOnce(ssh::Handle) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (rt, listener, tether) = listening_tether(cfg, &["--runblock-timeout", "30"]);
    rt.block_on(async move {
        let line = listener.accept().await.unwrap();
        let h = vch::attach::connect_with(line, Duration::from_secs(30), client)
            .await
            .unwrap();
        f(h.clone()).await;
        h.disconnect("test done").await;
    });
    tether
}

/// An attach channel to session `id`, unblocked (its process launches).
async fn attach_unblocked(h: &ssh::Handle, id: &[u8]) -> ssh::Channel {
    let ch = h.open("attach", id.to_vec()).await.unwrap().unwrap();
    assert!(ch
        .request("unblock", true, b"Unblock".to_vec())
        .await
        .unwrap());
    ch
}

async fn read_until(ch: &mut ssh::Channel, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.windows(want.len()).any(|w| w == want) {
        match tokio::time::timeout(Duration::from_secs(20), ch.recv())
            .await
            .expect("output in time")
        {
            Some(ChannelEvent::Data(d)) => got.extend(d),
            Some(ChannelEvent::Closed) | None => panic!(
                "closed before {:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            ),
            _ => {}
        }
    }
    got
}

#[test]
fn tty_session_gets_the_window_size_and_its_changes() {
    let mut s = session(&["/bin/sh", "-c", "stty size; read x; stty size"]);
    s.tty = true;
    s.run_block = true;
    with_tether(&config(s), |h| async move {
        let mut ch = h
            .open("attach", ID.as_bytes().to_vec())
            .await
            .unwrap()
            .unwrap();
        let size = |c: u32, r: u32| wire::Writer::new().u32(c).u32(r).u32(0).u32(0).finish();
        // As docker does, the size comes before the process starts; it is kept for the pty.
        assert!(ch
            .request("window-change", true, size(100, 40))
            .await
            .unwrap());
        assert!(ch
            .request("unblock", true, b"Unblock".to_vec())
            .await
            .unwrap());
        read_until(&mut ch, b"40 100").await;
        assert!(ch
            .request("window-change", true, size(132, 50))
            .await
            .unwrap());
        ch.data(b"\n".to_vec()).await.unwrap();
        read_until(&mut ch, b"50 132").await;
    });
}

/// VIC's VCH and docker's CLI resize *after* `unblock`, while the launch is in flight: the
/// process must see the last size asked for, whether the change reaches the tether before the
/// pty exists, between its making and the exec, or after. Both orders a host uses: the change
/// sent right behind `unblock` (no wait for its reply), and after the reply.
#[test]
fn a_resize_right_after_unblock_reaches_the_process() {
    for round in 0..8u32 {
        let mut s = session(&["/bin/sh", "-c", "read x; stty size"]);
        s.tty = true;
        s.run_block = true;
        let (cols, rows) = (100 + round, 40 + round);
        with_tether(&config(s), |h| async move {
            let mut ch = h
                .open("attach", ID.as_bytes().to_vec())
                .await
                .unwrap()
                .unwrap();
            let size = wire::Writer::new()
                .u32(cols)
                .u32(rows)
                .u32(0)
                .u32(0)
                .finish();
            if round % 2 == 0 {
                let (unblocked, resized) = tokio::join!(
                    ch.request("unblock", true, b"Unblock".to_vec()),
                    ch.request("window-change", true, size),
                );
                assert!(unblocked.unwrap() && resized.unwrap());
            } else {
                assert!(ch
                    .request("unblock", true, b"Unblock".to_vec())
                    .await
                    .unwrap());
                assert!(ch.request("window-change", true, size).await.unwrap());
            }
            ch.data(b"go\n".to_vec()).await.unwrap();
            let want = format!("{rows} {cols}");
            read_until(&mut ch, want.as_bytes()).await;
        });
    }
}

/// The exit status comes after every byte of output, even when the end of the output still
/// waits in the connection for the client's window (a client that reads late and slowly).
#[test]
fn the_exit_status_comes_after_the_last_byte_to_a_client_that_reads_late_and_slowly() {
    const BYTES: usize = 4 << 20;
    let mut s = session(&[
        "/bin/sh",
        "-c",
        &format!("head -c {BYTES} /dev/zero; exit 3"),
    ]);
    s.run_block = true;
    with_tether(&config(s), |h| async move {
        let mut ch = attach_unblocked(&h, ID.as_bytes()).await;
        // The process writes everything and exits while the client reads nothing.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (mut got, mut status_at) = (0usize, None);
        while let Some(ev) = ch.recv().await {
            match ev {
                ChannelEvent::Data(d) => {
                    assert!(status_at.is_none(), "data after the exit status");
                    got += d.len();
                    // Slowly: the window opens a little at a time.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ChannelEvent::Request { name, data } if name == "exit-status" => {
                    assert_eq!(data, 3u32.to_be_bytes());
                    status_at = Some(got);
                }
                ChannelEvent::Closed => break,
                _ => {}
            }
        }
        assert_eq!(status_at, Some(BYTES), "the status after all {BYTES} bytes");
    });
}

#[test]
fn ten_detach_reattach_cycles_each_see_only_their_own_echo() {
    let mut s = session(&["cat"]);
    s.open_stdin = true;
    let mut t = with_tether(&config(s), |h| async move {
        for i in 0..10 {
            let mut ch = h
                .open("attach", ID.as_bytes().to_vec())
                .await
                .unwrap()
                .unwrap();
            let line = format!("cycle {i}\n");
            ch.data(line.clone().into_bytes()).await.unwrap();
            let got = read_until(&mut ch, line.as_bytes()).await;
            assert_eq!(got, line.as_bytes(), "cycle {i}");
            if i == 9 {
                assert!(ch.request("close-stdin", true, Vec::new()).await.unwrap());
                ch.eof().await.unwrap();
                while let Some(ev) = ch.recv().await {
                    if ev == ChannelEvent::Closed {
                        break;
                    }
                }
            } else {
                ch.close().await.unwrap(); // detach: cat keeps running
            }
        }
    });
    assert!(t.wait().success());
}

#[test]
fn three_sessions_multiplexed_and_signal_delivered() {
    let mut cfg = config(session(&["sleep", "60"]));
    for name in ["one", "two"] {
        let mut s = session(&["cat"]);
        s.open_stdin = true;
        cfg.sessions.insert(name.into(), s);
    }
    let mut t = with_tether(&cfg, |h| async move {
        let mut ids = vch::attach::container_ids(&h).await.unwrap();
        ids.sort();
        assert_eq!(ids, ["c0ffee", "one", "two"]);
        let v = h
            .global_request("version", true, Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, [0, 0, 0, 10]);
        let mut one = h.open("attach", b"one".to_vec()).await.unwrap().unwrap();
        let mut two = h.open("attach", b"two".to_vec()).await.unwrap().unwrap();
        one.data(b"to one\n".to_vec()).await.unwrap();
        two.data(b"to two\n".to_vec()).await.unwrap();
        assert_eq!(read_until(&mut one, b"to one\n").await, b"to one\n");
        assert_eq!(read_until(&mut two, b"to two\n").await, b"to two\n");
        // `signal` (VIC left it unimplemented) ends the primary: the container stops.
        let mut primary = h
            .open("attach", ID.as_bytes().to_vec())
            .await
            .unwrap()
            .unwrap();
        let term = wire::Writer::new().string("TERM").finish();
        assert!(primary.request("signal", true, term).await.unwrap());
        let mut status = None;
        while let Some(ev) = primary.recv().await {
            if let ChannelEvent::Request { name, data } = &ev {
                status = Some((name.clone(), data.clone()));
            }
            if ev == ChannelEvent::Closed {
                break;
            }
        }
        let (name, data) = status.expect("an exit report");
        assert_eq!(name, "exit-signal");
        assert_eq!(wire::Reader::new(&data).utf8().unwrap(), "TERM");
    });
    assert!(t.wait().success());
    assert_eq!(t.state().sessions[ID].exit_status, 143);
}

#[test]
fn vics_client_profile_through_the_whole_attach_flow() {
    use ssh::{cipher, kex, keys, ClientConfig, HostKeyCheck, Preferences, PrivateKey};
    // The container's host key as VIC makes it: PEM PKCS#1 RSA, 512 bits, in guestinfo.vice./key.
    let pem = include_str!("../../ssh/tests/data/rsa512.pem");
    let mut s = session(&["/bin/sh", "-c", "stty size; cat"]);
    s.tty = true;
    s.run_block = true;
    let mut cfg = config(s);
    cfg.key = tether_proto::extraconfig::Bytes(pem.as_bytes().to_vec());
    let mut vic = ClientConfig::new("daemon");
    vic.version = "SSH-2.0-VIC".into();
    vic.prefs = Preferences {
        kex: vec![kex::CURVE25519_LIBSSH.into()],
        host_keys: vec![keys::SSH_RSA.into()],
        ciphers: vec![cipher::AES128_CTR.into()],
        macs: vec![cipher::HMAC_SHA256_ETM.into()],
    };
    vic.host_key = HostKeyCheck::Pinned(PrivateKey::from_pem(pem).unwrap().public());
    let mut t = with_tether_as(&cfg, vic, |h| async move {
        assert_eq!(vch::attach::container_ids(&h).await.unwrap(), [ID]);
        assert_eq!(
            h.global_request("version", true, Vec::new())
                .await
                .unwrap()
                .unwrap(),
            [0, 0, 0, 10]
        );
        let mut ch = h
            .open("attach", ID.as_bytes().to_vec())
            .await
            .unwrap()
            .unwrap();
        assert!(ch.request("ping", true, b"Ping".to_vec()).await.unwrap());
        let size = wire::Writer::new().u32(80).u32(24).u32(0).u32(0).finish();
        assert!(ch.request("window-change", true, size).await.unwrap());
        assert!(ch
            .request("unblock", true, b"Unblock".to_vec())
            .await
            .unwrap());
        read_until(&mut ch, b"24 80").await;
        ch.data(b"typed\n".to_vec()).await.unwrap();
        read_until(&mut ch, b"typed\r\ntyped\r\n").await;
        assert!(ch.request("close-stdin", true, Vec::new()).await.unwrap());
        ch.eof().await.unwrap();
        let mut saw_eof = false;
        while let Some(ev) = ch.recv().await {
            saw_eof |= ev == ChannelEvent::Eof;
            if ev == ChannelEvent::Closed {
                break;
            }
        }
        assert!(saw_eof, "EOF before CLOSE");
    });
    assert!(t.wait().success());
    assert_eq!(t.state().sessions[ID].exit_status, 0);
}

/// Records the `container-ids` the tether pushes.
struct Pushes(tokio::sync::mpsc::UnboundedSender<Vec<String>>);

impl ssh::Handler for Pushes {
    fn global_request(&mut self, name: &str, data: &[u8]) -> Option<Vec<u8>> {
        if name != "container-ids" {
            return None;
        }
        let ids = wire::Reader::new(data).name_list().ok()?;
        let _ = self.0.send(ids.into_iter().map(str::to_string).collect());
        Some(Vec::new())
    }
}

#[test]
fn exec_by_reload_request_is_pushed_to_the_host_and_attachable() {
    let (rt, listener, t) = listening_tether(&config(session(&["sleep", "30"])), &[]);
    let file = t.dir.path().join("gi.vmx");
    rt.block_on(async move {
        let (tx, mut pushed) = tokio::sync::mpsc::unbounded_channel();
        let line = listener.accept().await.unwrap();
        let client = ssh::ClientConfig::new("daemon");
        let h = vch::attach::connect_handler(line, Duration::from_secs(30), client, Pushes(tx))
            .await
            .unwrap();
        // The VCH adds an exec (RunBlock, so that nothing is missed), then asks for a reload.
        VmxFile::open(&file)
            .unwrap()
            .update(|kv| {
                let mut e = session(&["/bin/sh", "-c", "echo from-exec; exit 3"]);
                e.run_block = true;
                let mut c = ExecutorConfig::default();
                c.execs.insert("e1".into(), e);
                for (k, v) in c.encode() {
                    if k.contains("execs") {
                        kv.insert(k, v);
                    }
                }
            })
            .unwrap();
        assert_eq!(
            h.global_request("reload", true, Vec::new()).await.unwrap(),
            Some(Vec::new())
        );
        let ids = tokio::time::timeout(Duration::from_secs(20), pushed.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids, ["e1"]);
        let mut ch = attach_unblocked(&h, b"e1").await;
        let (out, status) = output_and_status(&mut ch).await;
        assert_eq!(
            (out.as_slice(), status),
            (&b"from-exec\n"[..], Some(vec![0, 0, 0, 3]))
        );
        h.disconnect("done").await;
    });
    let state = t.state();
    assert_eq!(
        (
            state.execs["e1"].started.as_str(),
            state.execs["e1"].exit_status
        ),
        ("true", 3)
    );
}

/// A host that removes an ended exec's keys (as `vch` does past the newest few) and reloads: the
/// tether forgets it (an attach gets VIC's refusal for an unknown ID), while a running exec the
/// host removed goes on to its end.
#[test]
fn execs_the_host_removed_are_forgotten_once_ended() {
    let (rt, listener, t) = listening_tether(&config(session(&["sleep", "30"])), &[]);
    let file = t.dir.path().join("gi.vmx");
    rt.block_on(async move {
        let line = listener.accept().await.unwrap();
        let h = vch::attach::connect(line, Duration::from_secs(30))
            .await
            .unwrap();
        let mut quick = session(&["/bin/sh", "-c", "exit 4"]);
        quick.run_block = true;
        let mut slow = session(&["/bin/sh", "-c", "sleep 1; echo still here"]);
        slow.run_block = true;
        let add = |id: &str, s: &SessionConfig| {
            VmxFile::open(&file)
                .unwrap()
                .update(|kv| {
                    vch::container::add_exec_to(kv, id, s).unwrap();
                })
                .unwrap();
        };
        let reload = || async {
            h.global_request("reload", true, Vec::new()).await.unwrap();
        };
        add("quick", &quick);
        add("slow", &slow);
        reload().await;
        while vch::attach::container_ids(&h).await.unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut ch = attach_unblocked(&h, b"quick").await;
        assert_eq!(output_and_status(&mut ch).await.1, Some(vec![0, 0, 0, 4]));
        let mut slow_ch = attach_unblocked(&h, b"slow").await;
        // Both leave the config; the running one is not stopped.
        VmxFile::open(&file)
            .unwrap()
            .update(|kv| {
                let gone: Vec<String> = kv
                    .iter()
                    .map(|(k, _)| k.to_string())
                    .filter(|k| k.contains("execs"))
                    .collect();
                for k in gone {
                    kv.remove(&k);
                }
            })
            .unwrap();
        reload().await;
        // The agent reloads after answering: until then an attach hears that it has ended.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let refused = h.open("attach", b"quick".to_vec()).await.unwrap();
            let Err(why) = refused else {
                panic!("an attach to an ended exec was let in");
            };
            if why.to_string().contains("session quick is invalid") {
                break;
            }
            assert!(why.to_string().contains("exit code: 4"), "{why}");
            assert!(Instant::now() < deadline, "still known: {why}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (out, status) = output_and_status(&mut slow_ch).await;
        assert_eq!(
            (out.as_slice(), status),
            (&b"still here\n"[..], Some(vec![0, 0, 0, 0]))
        );
        h.disconnect("done").await;
    });
}

/// A pty pair standing in for the VM's COM1 (the tether opens the slave as its serial port, raw),
/// and the slave's path.
fn serial_pty() -> (nix::pty::OpenptyResult, PathBuf) {
    use std::os::fd::AsRawFd as _;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave_path =
        std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    (pty, slave_path)
}

#[test]
fn attach_over_a_serial_line() {
    let (pty, slave_path) = serial_pty();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gi.vmx");
    let mut s = session(&["/bin/sh", "-c", "echo over serial; exit 9"]);
    s.run_block = true;
    VmxFile::create(&file, config(s).encode().into_iter().collect::<KeyValues>()).unwrap();
    let mut tether = Command::new(tether_bin())
        .args(["run", "--runblock-timeout", "30", "--guestinfo"])
        .arg(&file)
        .arg("--attach")
        .arg(format!("serial:{}", slave_path.display()))
        .arg("--debug-log")
        .arg(dir.path().join("debug"))
        .spawn()
        .unwrap();
    let rt = runtime();
    rt.block_on(async {
        // The relay to the pty lives as long as `serial`.
        let mut serial = SerialHost::new(pty.master);
        let line = serial.plug().await;
        let h = vch::attach::connect(line, Duration::from_secs(30))
            .await
            .unwrap();
        let mut ch = attach_unblocked(&h, ID.as_bytes()).await;
        let (out, status) = output_and_status(&mut ch).await;
        assert_eq!(
            (out.as_slice(), status),
            (&b"over serial\n"[..], Some(vec![0, 0, 0, 9]))
        );
    });
    drop(pty.slave);
    assert!(tether.wait().unwrap().success());
}

fn wait_started(t: &Tether) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.state().sessions[ID].started != "true" {
        assert!(Instant::now() < deadline, "the primary did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vch_kill_delivers_a_signal_and_refuses_a_bad_one() {
    let port = free_port();
    let mut t = Tether::start(&config(session(&["sleep", "60"])), port, &[]);
    wait_started(&t);
    let vch = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vch"))
            .args([
                "kill",
                "--listen",
                &format!("tcp:127.0.0.1:{port}"),
                "--timeout",
                "30",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let bad = vch(&["-s", "NOPE", ID]);
    assert_eq!(bad.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        "vch: unsupported signal \"NOPE\"\n"
    );
    let ok = vch(&["-s", "term", ID]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(t.wait().success());
    assert_eq!(t.state().sessions[ID].exit_status, 143);
}

#[test]
fn vch_kill_group_reaches_the_whole_process_group() {
    // A child in the group writes a file when TERM reaches it; a signal to the process alone
    // would leave it to the final SIGKILL, and no file.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("child-got-term");
    let cmd = format!(
        "(trap 'echo yes > {}; exit 0' TERM; while :; do sleep 0.05; done) & wait",
        flag.display()
    );
    let mut t = Tether::start(&config(session(&["/bin/sh", "-c", &cmd])), port, &[]);
    wait_started(&t);
    let out = Command::new(env!("CARGO_BIN_EXE_vch"))
        .args([
            "kill",
            "--listen",
            // What people type; tcp:HOST:PORT elsewhere in these tests.
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "30",
        ])
        .args(["--group", "-s", "TERM", ID])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.wait().success());
    assert_eq!(t.state().sessions[ID].exit_status, 143);
    assert_eq!(
        std::fs::read_to_string(&flag).unwrap(),
        "yes\n",
        "the child got TERM too"
    );
}

#[test]
fn openssh_through_vch_proxy_reaches_the_tether() {
    let have_ssh = Command::new("sh")
        .args(["-c", "command -v ssh"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_ssh {
        eprintln!("skipped: no OpenSSH client here");
        return;
    }
    let port = free_port();
    let _t = Tether::start(&config(session(&["sleep", "60"])), port, &[]);
    let proxy = format!(
        "ProxyCommand={} proxy --listen tcp:127.0.0.1:{port} --timeout 30",
        env!("CARGO_BIN_EXE_vch")
    );
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            &proxy,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-T", "daemon@containervm", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Handshake, key exchange and `none` authentication succeed; the shell is off by default.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("the debug shell is off"), "{err}");
}

fn openssh_via_proxy(port: u16, extra: &[&str], cmd: &str) -> Output {
    let proxy = format!(
        "ProxyCommand={} proxy --listen tcp:127.0.0.1:{port} --timeout 30",
        env!("CARGO_BIN_EXE_vch")
    );
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            &proxy,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(extra)
        .args(["daemon@containervm", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn debug_shell_through_openssh_exec_and_pty() {
    let have_ssh = Command::new("sh")
        .args(["-c", "command -v ssh"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_ssh {
        eprintln!("skipped: no OpenSSH client here");
        return;
    }
    let mut cfg = config(session(&["sleep", "60"]));
    cfg.tether = Some(tether_proto::config::TetherExtensions {
        debug_shell: true,
        authorized_key: String::new(),
    });
    let port = free_port();
    let _t = Tether::start(&cfg, port, &[]);
    let out = openssh_via_proxy(port, &["-T"], "echo from-shell; echo to-err >&2; exit 6");
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"from-shell\n");
    assert_eq!(out.stderr, b"to-err\n");
    // The tether reconnects for the next host connection; this one asks for a pty.
    let out = openssh_via_proxy(port, &["-tt"], "tty; echo $TERM");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("/dev/pts/"), "{text}");
}

#[test]
fn an_authorized_key_replaces_none() {
    use ssh::{ClientConfig, PrivateKey};
    let key = PrivateKey::generate_ed25519();
    let mut cfg = config(session(&["sleep", "60"]));
    cfg.tether = Some(tether_proto::config::TetherExtensions {
        debug_shell: false,
        authorized_key: key.public().to_openssh(),
    });
    let (rt, listener, _t) = listening_tether(&cfg, &[]);
    rt.block_on(async {
        // `none`, as VIC's VCH authenticates, is refused...
        let line = listener.accept().await.unwrap();
        let err = vch::attach::connect(line, Duration::from_secs(30))
            .await
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("refused user daemon"),
            "{err:#}"
        );
        // ... and the authorized key is let in.
        let line = listener.accept().await.unwrap();
        let mut with_key = ClientConfig::new("daemon");
        with_key.key = Some(key);
        let h = vch::attach::connect_with(line, Duration::from_secs(30), with_key)
            .await
            .unwrap();
        assert_eq!(vch::attach::container_ids(&h).await.unwrap(), [ID]);
        h.disconnect("done").await;
    });
}

#[path = "../../tether/tests/common/report.rs"]
mod report;

/// The sockets the process `pid` listens on (TCP and TCP6 in LISTEN, UDP bound), by inode.
fn listening_sockets(pid: u32) -> Vec<String> {
    let mine: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(state), Some(inode)) = (cols.get(3), cols.get(9)) else {
                continue;
            };
            let listening = *state == "0A" || table.starts_with("udp");
            if listening && mine.iter().any(|m| m == inode) {
                out.push(format!("{table} {}", cols[1]));
            }
        }
    }
    out
}

/// The reliability suite's security checks (issue 18): the guest writes no key with `/`, no
/// secret reaches a log, the debug shell is off unless configured, the tether listens on no
/// port, and a client key pinned in the config refuses any other client.
#[test]
fn security_checks_keys_secrets_shell_ports_and_a_pinned_key() {
    use ssh::{ClientConfig, PrivateKey};
    let mut row = report::Row::new("security checks");
    let pinned = PrivateKey::generate_ed25519();
    let other = PrivateKey::generate_ed25519();
    let secret = "hunter2-never-logged";
    let mut primary = session(&["sleep", "60"]);
    primary.cmd.env.push(format!("SECRET_TOKEN={secret}"));
    let mut cfg = config(primary);
    cfg.debug_level = 1;
    // A host key of the host's own, as VIC's VCH writes one.
    let pem = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519"])
        .output()
        .unwrap();
    assert!(pem.status.success(), "openssl genpkey");
    let pem = String::from_utf8(pem.stdout).unwrap();
    let key_body = pem.lines().nth(1).unwrap().to_string();
    cfg.key = tether_proto::extraconfig::Bytes(pem.into_bytes());
    cfg.tether = Some(tether_proto::config::TetherExtensions {
        debug_shell: false,
        authorized_key: pinned.public().to_openssh(),
    });
    let before: std::collections::BTreeMap<String, String> = cfg.encode();
    let (rt, listener, mut t) = listening_tether(&cfg, &[]);
    let mut failures = Vec::new();
    rt.block_on(async {
        // Another client key is refused.
        row.cases += 1;
        row.faults += 1;
        let line = listener.accept().await.unwrap();
        let mut with_other = ClientConfig::new("daemon");
        with_other.key = Some(other);
        match vch::attach::connect_with(line, Duration::from_secs(30), with_other).await {
            Err(_) => row.passed += 1,
            Ok(_) => failures.push("a key other than the pinned one was let in".to_string()),
        }
        // The pinned key is let in; a shell channel is refused (the debug shell is off).
        let line = listener.accept().await.unwrap();
        let mut with_pinned = ClientConfig::new("daemon");
        with_pinned.key = Some(pinned);
        let h = vch::attach::connect_with(line, Duration::from_secs(30), with_pinned)
            .await
            .unwrap();
        row.cases += 1;
        row.faults += 1;
        match h.open("session", Vec::new()).await.unwrap() {
            Err(_) => row.passed += 1,
            Ok(_) => failures.push("a session channel was opened with the shell off".into()),
        }
        // Nothing listens: the tether connects out to the host, never the other way.
        row.cases += 1;
        let sockets = listening_sockets(t.child.id());
        if sockets.is_empty() {
            row.passed += 1;
        } else {
            failures.push(format!("the tether listens on {sockets:?}"));
        }
        vch::attach::kill(&h, ID, "KILL", false).await.unwrap();
        h.disconnect("done").await;
    });
    let status = t.wait();
    let debug = std::fs::read_to_string(t.dir.path().join("debug")).unwrap_or_default();
    if report::crashed(status, &debug) {
        row.crashes += 1;
    }
    // No secret in the log: neither the environment's values (debug level below 2) nor the host
    // key.
    row.cases += 1;
    if !debug.contains(secret) && !debug.contains(&key_body) && !debug.contains("PRIVATE KEY") {
        row.passed += 1;
    } else {
        failures.push("a secret is in the debug log".into());
    }
    // Every key the guest wrote or changed is a read-write one (no `/`).
    row.cases += 1;
    let after = vmx::load(&t.dir.path().join("gi.vmx")).unwrap();
    let written: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k).map(String::as_str) != Some(*v))
        .map(|(k, _)| k.to_string())
        .collect();
    let bad: Vec<&String> = written.iter().filter(|k| k.contains('/')).collect();
    if bad.is_empty() && !written.is_empty() {
        row.passed += 1;
    } else {
        failures.push(format!(
            "keys written with '/': {bad:?} (of {})",
            written.len()
        ));
    }
    row.notes = format!(
        "{} keys written by the guest, none with '/'; a pinned ed25519 key, another refused; \
         no session channel with the shell off; no listening socket; no secret in the debug log",
        written.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    row.finish();
}

/// Accepts the tether's next connection on `l` (TCP), keeping a second handle on the socket so
/// that the test can cut it abruptly, as a host that crashes or a cable pulled.
async fn accept_cuttable(
    l: &vch::attach::Listening,
) -> (Box<dyn vch::attach::Line>, std::net::TcpStream) {
    let vch::attach::Listening::Tcp(l) = l else {
        panic!("a TCP listener")
    };
    let (s, _) = l.accept().await.unwrap();
    let std = s.into_std().unwrap();
    let cut = std.try_clone().unwrap();
    (Box::new(tokio::net::TcpStream::from_std(std).unwrap()), cut)
}

/// The end of a streaming case: the tether's end (a crash counted), then every line the session
/// wrote to `lines` looked for in the output log `out`. The tether's debug log.
fn finish_streaming(
    t: &mut Tether,
    out: &std::path::Path,
    lines: &std::path::Path,
    row: &mut report::Row,
    failures: &mut Vec<String>,
) -> String {
    let status = t.wait();
    let debug = std::fs::read_to_string(t.dir.path().join("debug")).unwrap_or_default();
    if report::crashed(status, &debug) {
        row.crashes += 1;
    }
    row.cases += 1;
    match report::log_holds_every_line(out, lines, false, 10) {
        Ok(bytes) => {
            row.passed += 1;
            row.bytes += bytes as u64;
        }
        Err(e) => failures.push(format!("output log: {e}")),
    }
    debug
}

/// A config whose session writes numbered lines every 10 ms, each also to a file of its own (the
/// lines, beside the output log): the file and the output log's paths.
fn numbered_lines(dir: &std::path::Path) -> (ExecutorConfig, PathBuf, PathBuf) {
    let lines = dir.join("lines");
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo line $i; echo line $i >> {}; sleep 0.01; done",
        lines.display()
    );
    (
        config(session(&["sh", "-c", &script])),
        lines,
        dir.join("output.log"),
    )
}

/// What the `i`th host of a line-fault case does first: every fourth sends 16 KiB of garbage,
/// every fourth half a handshake and goes (true: the caller puts the next host in its place).
async fn opening_fault(
    i: usize,
    line: &mut Box<dyn vch::attach::Line>,
    row: &mut report::Row,
) -> bool {
    use tokio::io::AsyncWriteExt as _;
    match i % 4 {
        1 => {
            let garbage: Vec<u8> = (0..16 * 1024u32).map(|x| (x * 7919 % 251) as u8).collect();
            let _ = line.write_all(&garbage).await;
            row.faults += 1;
            false
        }
        2 => {
            let _ = line.write_all(&[tether_proto::handshake::SYN, 0x42]).await;
            row.faults += 1;
            true
        }
        _ => false,
    }
}

/// One host of a line-fault case: the handshake and SSH on `line` (within `limit`), an attach to
/// the session, unblocked, and three pieces of its output. The host's handle, or what failed.
async fn attached_and_streaming(
    line: Box<dyn vch::attach::Line>,
    limit: Duration,
) -> Result<ssh::Handle, String> {
    let h = match tokio::time::timeout(limit, vch::attach::connect(line, limit)).await {
        Ok(Ok(h)) => h,
        other => return Err(format!("{:?}", other.map(|r| r.err()))),
    };
    let Ok(Ok(mut ch)) = h.open("attach", ID.as_bytes().to_vec()).await else {
        return Err("attach refused".into());
    };
    let _ = ch.request("unblock", true, b"Unblock".to_vec()).await;
    let mut got = 0;
    while got < 3 {
        match tokio::time::timeout(Duration::from_secs(10), ch.recv()).await {
            Ok(Some(ChannelEvent::Data(_))) => got += 1,
            Ok(Some(_)) => {}
            _ => return Err("no output while attached".into()),
        }
    }
    Ok(h)
}

/// Line faults over TCP (issue 18): the host drops and reconnects again and again while the
/// session streams, sends garbage before a handshake, stops half way through one; the tether
/// takes the next host every time, and the output log holds every byte in order.
#[test]
fn line_faults_over_tcp_lose_nothing_and_the_tether_always_comes_back() {
    let mut row = report::Row::new("line faults (TCP)");
    let drops = report::size(100, 20);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, lines, out) = numbered_lines(dir.path());
    let (rt, listener, mut t) = listening_tether(&cfg, &["--output-log", out.to_str().unwrap()]);
    let mut failures = Vec::new();
    rt.block_on(async {
        for i in 0..drops {
            row.cases += 1;
            row.faults += 1;
            let (mut line, mut cut) = accept_cuttable(&listener).await;
            if opening_fault(i, &mut line, &mut row).await {
                let _ = cut.shutdown(std::net::Shutdown::Both);
                (line, cut) = accept_cuttable(&listener).await;
            }
            // Attached, taking some output, then the line is cut without a word.
            let h = match attached_and_streaming(line, Duration::from_secs(30)).await {
                Ok(h) => h,
                Err(e) => {
                    failures.push(format!("host {i}: {e}"));
                    continue;
                }
            };
            row.passed += 1;
            let _ = cut.shutdown(std::net::Shutdown::Both);
            drop(h);
        }
        // Then one that stays: it stops the session.
        let line = listener.accept().await.unwrap();
        let h = vch::attach::connect(line, Duration::from_secs(30))
            .await
            .unwrap();
        vch::attach::kill(&h, ID, "KILL", false).await.unwrap();
        h.disconnect("done").await;
    });
    let debug = finish_streaming(&mut t, &out, &lines, &mut row, &mut failures);
    row.notes = format!(
        "{drops} hosts each cut mid-stream (a quarter after 16 KiB of garbage, a quarter after \
         half a handshake); every line the session wrote is in the output log in order"
    );
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        debug.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    row.finish();
}

/// Slow and stalled hosts (issue 18, VIC #2982): a host reading at 60 KB/s throttles the session
/// and gets every byte in order (attach is lossless); a host that stops reading is let go within
/// the stated 10 s, the session goes on, and the output log holds every line.
#[test]
fn a_slow_host_throttles_a_stalled_one_is_let_go_and_nothing_is_lost() {
    let mut row = report::Row::new("slow and stalled hosts");
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("lines");
    // Lines as fast as the pipe takes them, each also in a file of the session's own.
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo line $i; echo line $i >> {}; done",
        lines.display()
    );
    let mut primary = session(&["sh", "-c", &script]);
    primary.run_block = true;
    let cfg = config(primary);
    let out = dir.path().join("output.log");
    let (rt, listener, mut t) = listening_tether(&cfg, &["--output-log", out.to_str().unwrap()]);
    let mut failures = Vec::new();
    let slow_secs = report::size(30, 6) as u64;
    rt.block_on(async {
        let line = listener.accept().await.unwrap();
        let h = vch::attach::connect(line, Duration::from_secs(30))
            .await
            .unwrap();
        let mut ch = h
            .open("attach", ID.as_bytes().to_vec())
            .await
            .unwrap()
            .unwrap();
        let _ = ch.request("unblock", true, b"Unblock".to_vec()).await;
        // 60 KB/s for a while: every byte, in order, from the first line.
        row.cases += 1;
        let mut got = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(slow_secs) {
            match tokio::time::timeout(Duration::from_secs(10), ch.recv()).await {
                Ok(Some(ChannelEvent::Data(d))) => {
                    got.extend_from_slice(&d);
                    tokio::time::sleep(Duration::from_secs_f64(d.len() as f64 / 60_000.0)).await;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&got);
        let complete: Vec<&str> = text.lines().collect();
        let complete = &complete[..complete.len().saturating_sub(1)];
        let in_order = complete
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {}", i + 1));
        let rate = got.len() as f64 / t0.elapsed().as_secs_f64();
        if in_order && complete.len() > 100 && rate < 90_000.0 {
            row.passed += 1;
            row.bytes += got.len() as u64;
        } else {
            failures.push(format!(
                "slow host: {} lines, in order {in_order}, {rate:.0} B/s",
                complete.len()
            ));
        }
        // Now it stops reading: let go within the stall bound, while the session goes on.
        row.cases += 1;
        row.faults += 1;
        let before = std::fs::read_to_string(&lines)
            .unwrap_or_default()
            .lines()
            .count();
        tokio::time::sleep(Duration::from_secs(13)).await;
        let after = std::fs::read_to_string(&lines)
            .unwrap_or_default()
            .lines()
            .count();
        let debug = std::fs::read_to_string(t.dir.path().join("debug")).unwrap_or_default();
        let dropped = debug.contains("made no progress");
        if dropped && after > before + 1000 {
            row.passed += 1;
        } else {
            failures.push(format!(
                "stalled host: dropped {dropped}, the session wrote {} lines during the stall",
                after - before
            ));
        }
        // A new host stops the session.
        let _ = ch.close().await;
        h.disconnect("done").await;
        let h = match tokio::time::timeout(Duration::from_secs(20), listener.accept()).await {
            Ok(Ok(line)) => vch::attach::connect(line, Duration::from_secs(30))
                .await
                .unwrap(),
            _ => h,
        };
        vch::attach::kill(&h, ID, "KILL", false).await.unwrap();
        h.disconnect("done").await;
    });
    finish_streaming(&mut t, &out, &lines, &mut row, &mut failures);
    row.notes = format!(
        "a host at 60 KB/s for {slow_secs} s got every line in order; one that stopped reading \
         was let go within 10 s while the session went on; the output log holds every line"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    row.finish();
}

/// The host's end of a pty standing in for COM1, behind which hosts come and go as a VCH that
/// restarts does: the line stays (the tether sees no hang-up, only silence and then a new
/// handshake in the middle of its SSH), each host gets a line of its own relayed to the pty, and
/// plugging in the next one cuts the last one off as a crash would.
struct SerialHost {
    master: std::sync::Arc<
        tokio::sync::Mutex<(
            tokio::net::unix::pipe::Receiver,
            tokio::net::unix::pipe::Sender,
        )>,
    >,
    cut: Option<tokio::sync::oneshot::Sender<()>>,
    relay: Option<tokio::task::JoinHandle<()>>,
}

impl SerialHost {
    /// The pty's master, made non-blocking (call in the runtime).
    fn new(master: std::os::fd::OwnedFd) -> Self {
        let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        let write = master.try_clone().unwrap();
        let r = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(master).unwrap();
        let w = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(write).unwrap();
        Self {
            master: std::sync::Arc::new(tokio::sync::Mutex::new((r, w))),
            cut: None,
            relay: None,
        }
    }

    /// Cuts the last host off (what it had not read is lost with it) and plugs in a new one.
    async fn plug(&mut self) -> Box<dyn vch::attach::Line> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        if let Some(cut) = self.cut.take() {
            let _ = cut.send(());
        }
        if let Some(relay) = self.relay.take() {
            let _ = relay.await;
        }
        let (host, mut far) = tokio::io::duplex(64 * 1024);
        let (cut, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
        let master = self.master.clone();
        self.relay = Some(tokio::spawn(async move {
            let mut m = master.lock().await;
            let (mr, mw) = &mut *m;
            let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
            loop {
                tokio::select! {
                    _ = &mut cut_rx => return,
                    n = mr.read(&mut a) => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if far.write_all(&a[..n]).await.is_err() { return },
                    },
                    n = far.read(&mut b) => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if mw.write_all(&b[..n]).await.is_err() { return },
                    },
                }
            }
        }));
        self.cut = Some(cut);
        Box::new(host)
    }
}

/// Line faults over a serial line (issue 18): hosts restart behind a pty 100 times while the
/// session streams (each new host's handshake lands in the middle of the last one's SSH), a
/// quarter after 16 KiB of garbage, a quarter after half a handshake: the tether comes back
/// every time and the output log holds every line in order.
#[test]
fn line_faults_over_a_serial_line_a_host_restarting_behind_it_loses_nothing() {
    let mut row = report::Row::new("line faults (serial)");
    let restarts = report::size(100, 8);
    let (pty, slave_path) = serial_pty();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, lines, out) = numbered_lines(dir.path());
    let mut t = Tether::start_on(
        &cfg,
        &format!("serial:{}", slave_path.display()),
        &["--output-log", out.to_str().unwrap()],
    );
    let mut failures = Vec::new();
    let mut recoveries = Vec::new();
    runtime().block_on(async {
        let mut serial = SerialHost::new(pty.master);
        for i in 0..restarts {
            row.cases += 1;
            row.faults += 1;
            let mut line = serial.plug().await;
            if opening_fault(i, &mut line, &mut row).await {
                line = serial.plug().await;
            }
            let t0 = Instant::now();
            let h = match attached_and_streaming(line, Duration::from_secs(60)).await {
                Ok(h) => h,
                Err(e) => {
                    failures.push(format!("host {i}: {e}"));
                    continue;
                }
            };
            recoveries.push(t0.elapsed());
            row.passed += 1;
            // The next plug cuts this host off mid-stream, without a word.
            drop(h);
        }
        let line = serial.plug().await;
        let h = vch::attach::connect(line, Duration::from_secs(60))
            .await
            .unwrap();
        vch::attach::kill(&h, ID, "KILL", false).await.unwrap();
        h.disconnect("done").await;
    });
    let debug = finish_streaming(&mut t, &out, &lines, &mut row, &mut failures);
    drop(pty.slave);
    // Each host was a handshake of its own, after the tether gave up the SSH of the one before.
    let handshakes = debug.matches("attach: the host connected").count();
    if handshakes != restarts + 1 {
        failures.push(format!(
            "{handshakes} handshakes for {} hosts",
            restarts + 1
        ));
    }
    let most = recoveries.iter().max().copied().unwrap_or_default();
    let mean = recoveries.iter().sum::<Duration>() / recoveries.len().max(1) as u32;
    row.notes = format!(
        "{restarts} hosts restarted behind a pty (the new host's handshake in the middle of the \
         last one's SSH; a quarter after 16 KiB of garbage, a quarter after half a handshake): \
         attached and streaming again each time {} ms on average, {} ms at most after the host \
         came (it retries its SYN every second); every line the session wrote is in the output \
         log in order",
        mean.as_millis(),
        most.as_millis()
    );
    eprintln!("{}", row.notes);
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        debug.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    row.finish();
}

/// Output integrity with a client (issue 18): through pipes (stdout and stderr at once) and a raw
/// pty, a client attached from the first byte detaches a quarter of the way, the session goes on
/// alone, the client attaches again mid-stream and stays to the end. What it took is byte-exact
/// for each span (the first a prefix of each stream, the second a suffix), and the output log
/// holds every byte.
#[test]
fn output_is_byte_exact_in_a_client_that_detaches_and_reattaches_and_in_the_log() {
    let mut row = report::Row::new("output integrity (a client detaching and reattaching)");
    let mib = report::size(1024, 8);
    let total = (mib as u64) << 20;
    let mut failures = Vec::new();
    for tty in [false, true] {
        row.cases += 1;
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("done");
        // The session waits for the test at its end, so that the second span always meets it,
        // and stdout holds its last quarter until the client is back, so that the second span
        // is mid-stream however fast the session runs alone.
        let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", flag.display());
        let back = dir.path().join("back");
        let stdout = report::generator_gated(1, mib, total / 4 * 3, &back);
        let script = if tty {
            format!("stty raw -echo; {stdout}; {wait}")
        } else {
            format!("{stdout} & {} >&2; wait; {wait}", report::generator(2, mib))
        };
        let mut s = session(&["/bin/sh", "-c", &script]);
        s.tty = tty;
        s.run_block = true;
        let out = dir.path().join("output.log");
        let (rt, listener, mut t) =
            listening_tether(&config(s), &["--output-log", out.to_str().unwrap()]);
        let (first, second, status) = rt.block_on(async {
            let line = listener.accept().await.unwrap();
            let h = vch::attach::connect(line, Duration::from_secs(30))
                .await
                .unwrap();
            let stream_of = |ev: &ChannelEvent| match ev {
                ChannelEvent::Data(d) => Some((0, d.clone())),
                ChannelEvent::ExtendedData(1, d) => Some((1, d.clone())),
                _ => None,
            };
            // From the first byte to a quarter of stdout.
            let mut ch = attach_unblocked(&h, ID.as_bytes()).await;
            let mut first = report::StreamHashes::default();
            while first.len(0) < total / 4 {
                match tokio::time::timeout(Duration::from_secs(30), ch.recv()).await {
                    Ok(Some(ev)) => {
                        if let Some((i, d)) = stream_of(&ev) {
                            first.take(i, &d);
                        }
                        if matches!(ev, ChannelEvent::Closed) {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            // Detached: what comes from here is not counted; the session goes on alone until
            // the output log has grown by another quarter of a stream.
            let _ = ch.close().await;
            let grown = std::fs::metadata(&out).map_or(0, |m| m.len()) + total / 4;
            let deadline = Instant::now() + Duration::from_secs(300);
            while std::fs::metadata(&out).map_or(0, |m| m.len()) < grown
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Attached again to the end.
            let mut ch = h
                .open("attach", ID.as_bytes().to_vec())
                .await
                .unwrap()
                .unwrap();
            std::fs::write(&back, "").unwrap();
            let mut second = report::StreamHashes::default();
            let mut status = None;
            let mut finished = false;
            loop {
                let ev = tokio::time::timeout(Duration::from_millis(200), ch.recv()).await;
                match ev {
                    Ok(Some(ChannelEvent::Request { name, data })) if name == "exit-status" => {
                        status = Some(data)
                    }
                    Ok(Some(ChannelEvent::Closed)) | Ok(None) => break,
                    Ok(Some(ev)) => {
                        if let Some((i, d)) = stream_of(&ev) {
                            second.take(i, &d);
                        }
                    }
                    // Quiet: the streams are done (or nearly); let the session end.
                    Err(_) if !finished => {
                        std::fs::write(&flag, "").unwrap();
                        finished = true;
                    }
                    Err(_) => {}
                }
            }
            h.disconnect("done").await;
            (first.finish(), second.finish(), status)
        });
        let exit = t.wait();
        let debug = std::fs::read_to_string(t.dir.path().join("debug")).unwrap_or_default();
        if report::crashed(exit, &debug) {
            row.crashes += 1;
        }
        let streams: &[u8] = if tty { &[1] } else { &[1, 2] };
        let mut ok = status == Some(vec![0, 0, 0, 0]);
        let what = if tty { "pty" } else { "pipes" };
        if !ok {
            failures.push(format!("{what}: exit status {status:?}"));
        }
        for (i, key) in streams.iter().enumerate() {
            let (a, b) = (first[i], second[i]);
            row.bytes += a.1 + b.1;
            let want_a = report::expected_range(*key, mib, 0..a.1);
            let want_b = report::expected_range(*key, mib, total - b.1..total);
            // Stdout paces the detach and the reattach, so both of its spans hold bytes with a
            // gap between; stderr runs on its own and may be over before the detach.
            let mid_stream = b.1 > 0 && a.1 + b.1 < total;
            if a != want_a || b != want_b || (i == 0 && !mid_stream) {
                ok = false;
                failures.push(format!(
                    "{what}, stream {i}: the client's first span {} bytes ({}), its second {} \
                     bytes ({})",
                    a.1,
                    if a == want_a { "exact" } else { "differs" },
                    b.1,
                    if b == want_b { "exact" } else { "differs" },
                ));
            }
        }
        let logged = report::logged(&out);
        for (i, key) in streams.iter().enumerate() {
            row.bytes += logged[i].1;
            if logged[i] != report::expected(*key, mib) {
                ok = false;
                failures.push(format!(
                    "{what}, stream {i}: the output log holds {} of {total} bytes, or others",
                    logged[i].1
                ));
            }
        }
        if ok {
            row.passed += 1;
        }
        eprintln!(
            "{what}: the client took {:?} then {:?} bytes of stdout",
            first[0].1, second[0].1
        );
    }
    row.notes = format!(
        "{mib} MiB per stream, pipes (stdout and stderr at once) and a raw pty; a client from the \
         first byte detached after a quarter, attached again after another quarter had gone to \
         the log alone: each span byte-exact in the client, every byte in the output log"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    row.finish();
}
