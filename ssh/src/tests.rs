//! Our client against our server over an in-memory pipe: VIC's attach requests, rekeying, flow
//! control, ordering of EOF and CLOSE.

use std::sync::{Arc, Mutex};

use super::*;

const RSA512: &str = include_str!("../tests/data/rsa512.pem");

/// What the server saw, for assertions.
#[derive(Default, Debug)]
struct Seen {
    opened: Vec<(String, Vec<u8>)>,
    requests: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
    eof: bool,
}

/// A server in the style of the tether's attach server.
struct Attach {
    seen: Arc<Mutex<Seen>>,
    handle: Option<Handle>,
}

impl Handler for Attach {
    fn connected(&mut self, handle: Handle) {
        self.handle = Some(handle);
    }
    fn auth_none(&mut self, user: &str) -> bool {
        user == "daemon"
    }
    fn global_request(&mut self, name: &str, _data: &[u8]) -> Option<Vec<u8>> {
        match name {
            "container-ids" => Some(wire::Writer::new().string("abc,def").finish()),
            "version" => Some(10u32.to_be_bytes().to_vec()),
            _ => None,
        }
    }
    fn channel_open(&mut self, _ch: ChannelId, typ: &str, extra: &[u8]) -> Result<(), OpenFailure> {
        if typ != "attach" {
            return Err(OpenFailure::unknown_type(typ));
        }
        if extra != b"abc" {
            return Err(OpenFailure::new(
                msg::OPEN_ADMINISTRATIVELY_PROHIBITED,
                format!("session {} is invalid", String::from_utf8_lossy(extra)),
            ));
        }
        self.seen
            .lock()
            .unwrap()
            .opened
            .push((typ.into(), extra.to_vec()));
        Ok(())
    }
    fn channel_request(&mut self, ch: ChannelId, name: &str, data: &[u8]) -> bool {
        self.seen
            .lock()
            .unwrap()
            .requests
            .push((name.into(), data.to_vec()));
        match name {
            "ping" => data == b"Ping",
            "unblock" => data == b"Unblock",
            "close-stdin" => {
                // Answer, then send output, exit-status, EOF and CLOSE in that order.
                let h = self.handle.clone().unwrap();
                let echo = self.seen.lock().unwrap().data.clone();
                tokio::spawn(async move {
                    h.data(ch, None, echo).await.unwrap();
                    h.data(ch, Some(1), b"to stderr".to_vec()).await.unwrap();
                    h.channel_request(ch, "exit-status", false, 7u32.to_be_bytes().to_vec())
                        .await
                        .unwrap();
                    h.eof(ch).await.unwrap();
                    h.close(ch).await.unwrap();
                });
                true
            }
            _ => false,
        }
    }
    fn data(&mut self, _ch: ChannelId, data: &[u8]) -> bool {
        self.seen.lock().unwrap().data.extend_from_slice(data);
        true
    }
    fn eof(&mut self, _ch: ChannelId) {
        self.seen.lock().unwrap().eof = true;
    }
}

/// VIC's Go client: curve25519-sha256@libssh.org, ssh-rsa (SHA-1), aes128-ctr with
/// hmac-sha2-256-etm, user `daemon`, auth `none`.
fn vic_client() -> ClientConfig {
    let mut c = ClientConfig::new("daemon");
    c.version = "SSH-2.0-VIC".into();
    c.prefs = Preferences {
        kex: vec![kex::CURVE25519_LIBSSH.into()],
        host_keys: vec![keys::SSH_RSA.into()],
        ciphers: vec![cipher::AES128_CTR.into()],
        macs: vec![cipher::HMAC_SHA256_ETM.into()],
    };
    c
}

async fn pair(
    server: ServerConfig,
    client: ClientConfig,
    seen: Arc<Mutex<Seen>>,
) -> (Handle, tokio::task::JoinHandle<Result<(), SshError>>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let handler = Attach { seen, handle: None };
    let srv = tokio::spawn(serve(b, Arc::new(server), handler));
    let (h, _task) = connect(a, client, NoHandler).await.unwrap();
    (h, srv)
}

#[tokio::test]
async fn vics_client_profile_drives_the_whole_attach_flow() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let key = PrivateKey::from_pem(RSA512).unwrap();
    let (h, srv) = pair(ServerConfig::new(vec![key]), vic_client(), seen.clone()).await;
    // Global requests with reply payloads.
    let ids = h
        .global_request("container-ids", true, Vec::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids, b"\0\0\0\x07abc,def");
    let v = h
        .global_request("version", true, Vec::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, [0, 0, 0, 10]);
    assert_eq!(
        h.global_request("nope", true, Vec::new()).await.unwrap(),
        None
    );
    // A custom channel type with the raw ID as extra data; a bad ID is refused with VIC's text.
    let refused = h
        .open("attach", b"zzz".to_vec())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (refused.reason, refused.description.as_str()),
        (1, "session zzz is invalid")
    );
    let refused = h.open("session", Vec::new()).await.unwrap().unwrap_err();
    assert_eq!(refused.reason, msg::OPEN_UNKNOWN_CHANNEL_TYPE);
    let mut ch = h.open("attach", b"abc".to_vec()).await.unwrap().unwrap();
    // Custom channel requests with raw payloads.
    assert!(ch.request("ping", true, b"Ping".to_vec()).await.unwrap());
    assert!(!ch.request("ping", true, b"Pong".to_vec()).await.unwrap());
    assert!(ch
        .request("unblock", true, b"Unblock".to_vec())
        .await
        .unwrap());
    let mut wc = Vec::new();
    wc.extend_from_slice(&[0, 0, 0, 80, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(
        !ch.request("window-change", true, wc).await.unwrap(),
        "answered (false), never left waiting"
    );
    ch.data(b"hi\n".to_vec()).await.unwrap();
    assert!(ch.request("close-stdin", true, Vec::new()).await.unwrap());
    let mut events = Vec::new();
    while let Some(ev) = ch.recv().await {
        events.push(ev);
    }
    assert_eq!(
        events,
        [
            ChannelEvent::Data(b"hi\n".to_vec()),
            ChannelEvent::ExtendedData(1, b"to stderr".to_vec()),
            ChannelEvent::Request {
                name: "exit-status".into(),
                data: vec![0, 0, 0, 7]
            },
            ChannelEvent::Eof,
            ChannelEvent::Closed,
        ]
    );
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.opened, [("attach".to_string(), b"abc".to_vec())]);
        let names: Vec<&str> = s.requests.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["ping", "ping", "unblock", "window-change", "close-stdin"]
        );
    }
    h.disconnect("bye").await;
    match srv.await.unwrap() {
        Err(SshError::Disconnected {
            reason,
            description,
        }) => {
            assert_eq!(
                (reason, description.as_str()),
                (msg::DISCONNECT_BY_APPLICATION, "bye")
            );
        }
        other => panic!("the server should see our disconnect, got {other:?}"),
    }
}

#[tokio::test]
async fn a_user_other_than_daemon_is_refused() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(serve(
        b,
        Arc::new(ServerConfig::new(vec![PrivateKey::generate_ed25519()])),
        Attach { seen, handle: None },
    ));
    let err = connect(a, ClientConfig::new("root"), NoHandler)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("refused user root"), "{err}");
}

#[tokio::test]
async fn rekeying_mid_transfer_keeps_every_byte() {
    for cipher in cipher::CIPHERS {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut server = ServerConfig::new(vec![PrivateKey::generate_ed25519()]);
        server.limits.rekey_bytes = 100_000;
        let mut client = ClientConfig::new("daemon");
        client.prefs.ciphers = vec![cipher.to_string()];
        client.limits.rekey_bytes = 150_000;
        let (h, _srv) = pair(server, client, seen.clone()).await;
        let ch = h.open("attach", b"abc".to_vec()).await.unwrap().unwrap();
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in payload.chunks(50_000) {
            ch.data(chunk.to_vec()).await.unwrap();
        }
        // A request after the data makes sure everything before it has arrived.
        assert!(ch.request("ping", true, b"Ping".to_vec()).await.unwrap());
        assert!(seen.lock().unwrap().data == payload, "{cipher}");
    }
}

/// A server that never consumes data on its own.
struct Slow {
    handle: Option<Handle>,
    got: Arc<Mutex<usize>>,
}

impl Handler for Slow {
    fn connected(&mut self, handle: Handle) {
        self.handle = Some(handle);
    }
    fn auth_none(&mut self, _: &str) -> bool {
        true
    }
    fn channel_open(&mut self, _: ChannelId, _: &str, _: &[u8]) -> Result<(), OpenFailure> {
        Ok(())
    }
    fn data(&mut self, _: ChannelId, d: &[u8]) -> bool {
        *self.got.lock().unwrap() += d.len();
        false
    }
}

#[tokio::test]
async fn a_peer_that_does_not_consume_stops_the_sender_at_the_window() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let got = Arc::new(Mutex::new(0));
    let mut server = ServerConfig::new(vec![PrivateKey::generate_ed25519()]);
    server.limits.window = 64 * 1024;
    tokio::spawn(serve(
        b,
        Arc::new(server),
        Slow {
            handle: None,
            got: got.clone(),
        },
    ));
    let (h, _task) = connect(a, ClientConfig::new("x"), NoHandler).await.unwrap();
    let ch = h.open("any", Vec::new()).await.unwrap().unwrap();
    let send = ch.data(vec![0u8; 200 * 1024]);
    // The send cannot finish: the server gave 64 KiB of window and never gives it back.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), send)
            .await
            .is_err()
    );
    assert_eq!(
        *got.lock().unwrap(),
        64 * 1024,
        "no more than the window arrived"
    );
}

/// Each packet's data as it came, with its stream (extended data's code).
type Received = Arc<Mutex<Vec<(Option<u32>, Vec<u8>)>>>;

/// A server that records each packet's data as it comes and gives the window back only when the
/// test says so.
struct Packets {
    handle: Arc<Mutex<Option<(Handle, ChannelId)>>>,
    got: Received,
}

impl Handler for Packets {
    fn connected(&mut self, handle: Handle) {
        *self.handle.lock().unwrap() = Some((handle, ChannelId(0)));
    }
    fn auth_none(&mut self, _: &str) -> bool {
        true
    }
    fn channel_open(&mut self, ch: ChannelId, _: &str, _: &[u8]) -> Result<(), OpenFailure> {
        if let Some((_, c)) = self.handle.lock().unwrap().as_mut() {
            *c = ch;
        }
        Ok(())
    }
    fn data(&mut self, _: ChannelId, d: &[u8]) -> bool {
        self.got.lock().unwrap().push((None, d.to_vec()));
        false
    }
    fn extended_data(&mut self, _: ChannelId, code: u32, d: &[u8]) -> bool {
        self.got.lock().unwrap().push((Some(code), d.to_vec()));
        false
    }
}

#[tokio::test]
async fn chunks_queued_behind_a_closed_window_go_out_packed_by_stream_in_order() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let got = Arc::new(Mutex::new(Vec::new()));
    let server_handle = Arc::new(Mutex::new(None));
    let mut server = ServerConfig::new(vec![PrivateKey::generate_ed25519()]);
    server.limits.window = 1000;
    tokio::spawn(serve(
        b,
        Arc::new(server),
        Packets {
            handle: server_handle.clone(),
            got: got.clone(),
        },
    ));
    let (h, _task) = connect(a, ClientConfig::new("x"), NoHandler).await.unwrap();
    let ch = h.open("any", Vec::new()).await.unwrap().unwrap();
    // The first chunk fills the window; the others wait in the connection.
    let mut queued = Vec::new();
    let mut want: Vec<(Option<u32>, Vec<u8>)> = Vec::new();
    for (i, (ext, len)) in [(None, 1000); 10]
        .into_iter()
        .chain([(Some(1), 500); 3])
        .chain([(None, 1000); 2])
        .enumerate()
    {
        let chunk = vec![i as u8; len];
        want.push((ext, chunk.clone()));
        queued.push(h.queue_data(ch.id, ext, chunk).await.unwrap());
    }
    // A request behind the data: its reply means the first packet is through.
    assert!(!ch.request("mark", true, Vec::new()).await.unwrap());
    assert_eq!(got.lock().unwrap().len(), 1, "one window's worth went");
    let (server, id) = server_handle.lock().unwrap().clone().unwrap();
    server.adjust_window(id, 100_000).await.unwrap();
    for q in queued {
        q.sent().await.unwrap();
    }
    assert!(!ch.request("mark", true, Vec::new()).await.unwrap());
    let got = got.lock().unwrap().clone();
    let shape: Vec<(Option<u32>, usize)> = got.iter().map(|(e, d)| (*e, d.len())).collect();
    assert_eq!(
        shape,
        [(None, 1000), (None, 9000), (Some(1), 1500), (None, 2000)],
        "one packet per run of a stream"
    );
    let join = |v: &[(Option<u32>, Vec<u8>)], e: Option<u32>| -> Vec<u8> {
        v.iter()
            .filter(|(x, _)| *x == e)
            .flat_map(|(_, d)| d.clone())
            .collect()
    };
    assert_eq!(
        join(&got, None),
        join(&want, None),
        "stdout whole, in order"
    );
    assert_eq!(
        join(&got, Some(1)),
        join(&want, Some(1)),
        "stderr whole, in order"
    );
}

#[tokio::test]
async fn garbage_from_the_peer_is_a_clean_error() {
    use tokio::io::AsyncWriteExt as _;
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve(
        a,
        Arc::new(ServerConfig::new(vec![PrivateKey::generate_ed25519()])),
        NoHandler,
    ));
    b.write_all(b"SSH-2.0-evil\r\n").await.unwrap();
    b.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("bad packet length"), "{err}");

    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve(
        a,
        Arc::new(ServerConfig::new(vec![PrivateKey::generate_ed25519()])),
        NoHandler,
    ));
    b.write_all(b"HTTP/1.0 200 OK\r\n".repeat(70).as_slice())
        .await
        .unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("no SSH version line"), "{err}");
}

#[tokio::test]
async fn the_first_packet_must_be_kexinit() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // A peer that sends IGNORE before KEXINIT while claiming strict KEX is cut off.
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve(
        a,
        Arc::new(ServerConfig::new(vec![PrivateKey::generate_ed25519()])),
        NoHandler,
    ));
    b.write_all(b"SSH-2.0-x\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let _ = b.read(&mut buf).await.unwrap();
    let mut none = cipher::Direction::none();
    let unimpl = wire::Writer::msg(msg::UNIMPLEMENTED).u32(0).finish();
    b.write_all(&none.seal(0, &unimpl)).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("before the first KEXINIT"),
        "{err}"
    );
}

/// A server that answers nothing at once: a task answers each open, request and global request
/// after a delay, as a relay does once it has asked elsewhere.
struct Later {
    handle: Option<Handle>,
}

impl Handler for Later {
    fn connected(&mut self, handle: Handle) {
        self.handle = Some(handle);
    }
    fn auth_none(&mut self, _: &str) -> bool {
        true
    }
    fn channel_open_later(
        &mut self,
        ch: ChannelId,
        typ: &str,
        _: &[u8],
    ) -> Option<Result<(), OpenFailure>> {
        let h = self.handle.clone().unwrap();
        let answer = match typ {
            "yes" => Ok(()),
            _ => Err(OpenFailure::new(1, format!("no {typ}"))),
        };
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            h.answer_open(ch, answer).await.unwrap();
        });
        None
    }
    fn channel_request_later(
        &mut self,
        ch: ChannelId,
        name: &str,
        _: &[u8],
        want_reply: bool,
    ) -> Option<bool> {
        let h = self.handle.clone().unwrap();
        let ok = name == "good";
        if want_reply {
            tokio::spawn(async move { h.answer_request(ch, ok).await.unwrap() });
        }
        None
    }
    fn global_request_later(
        &mut self,
        name: &str,
        _: &[u8],
        want: bool,
    ) -> Option<Option<Vec<u8>>> {
        let h = self.handle.clone().unwrap();
        let answer = (name == "echo").then(|| name.as_bytes().to_vec());
        if want {
            tokio::spawn(async move { h.answer_global(answer).await.unwrap() });
        }
        None
    }
}

#[tokio::test]
async fn a_handler_may_answer_opens_and_requests_later() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = ServerConfig::new(vec![PrivateKey::generate_ed25519()]);
    tokio::spawn(serve(b, Arc::new(server), Later { handle: None }));
    let (h, _task) = connect(a, ClientConfig::new("x"), NoHandler).await.unwrap();
    assert_eq!(
        h.global_request("echo", true, Vec::new()).await.unwrap(),
        Some(b"echo".to_vec())
    );
    assert_eq!(
        h.global_request("other", true, Vec::new()).await.unwrap(),
        None
    );
    let refused = h.open("no-such", Vec::new()).await.unwrap().unwrap_err();
    assert_eq!(refused, OpenFailure::new(1, "no no-such"));
    let ch = h.open("yes", Vec::new()).await.unwrap().unwrap();
    assert!(ch.request("good", true, Vec::new()).await.unwrap());
    assert!(!ch.request("bad", true, Vec::new()).await.unwrap());
    // Without want_reply nothing is answered, and the next reply still pairs with its request.
    assert!(ch.request("bad", false, Vec::new()).await.unwrap());
    assert!(ch.request("good", true, Vec::new()).await.unwrap());
}
