//! Our SSH against the system's OpenSSH, both ways, across every cipher, MAC, host key algorithm
//! and key exchange we offer. Skipped (saying so) only where OpenSSH is not installed.

mod openssh;

use std::path::Path;
use std::process::Stdio;

use openssh::*;
use ssh::{
    self, keys, ChannelEvent, ClientConfig, HostKeyCheck, PrivateKey, PublicKey, ServerConfig,
};

const CIPHERS: &[&str] = ssh::cipher::CIPHERS;

fn combos() -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    for c in CIPHERS {
        if ssh::cipher::is_aead(c) {
            v.push((*c, "hmac-sha2-256-etm@openssh.com"));
        } else {
            for m in ssh::cipher::MACS {
                v.push((*c, *m));
            }
        }
    }
    v
}

fn have_openssh() -> bool {
    let ok = which("ssh")
        && which("ssh-keygen")
        && (Path::new("/usr/sbin/sshd").exists() || which("sshd"));
    if !ok {
        eprintln!("skipped: OpenSSH (ssh, sshd, ssh-keygen) is not installed");
    }
    ok
}

/// A user key made by ssh-keygen (`kind`), and our exec server (Ed25519 host key) trusting it.
async fn server_for_new_user(dir: &Path, kind: &str) -> (std::path::PathBuf, u16) {
    let user_key = keygen(dir, "user", kind);
    let public = std::fs::read_to_string(user_key.with_extension("pub")).unwrap();
    let allowed = PublicKey::from_openssh(&public).unwrap();
    let port = start_server(
        ServerConfig::new(vec![PrivateKey::generate_ed25519()]),
        Some(allowed),
    )
    .await;
    (user_key, port)
}

async fn openssh_client(
    port: u16,
    key: &Path,
    opts: &[String],
    cmd: &str,
    stdin: &[u8],
) -> std::process::Output {
    let mut c = tokio::process::Command::new("ssh");
    c.args([
        "-F",
        "/dev/null",
        "-T",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
    ])
    .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i"])
    .arg(key)
    .args(["-p", &port.to_string()]);
    for o in opts {
        c.args(["-o", o]);
    }
    c.arg("tester@127.0.0.1").arg(cmd);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    use tokio::io::AsyncWriteExt as _;
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ssh finished within a minute")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_client_against_our_server_every_algorithm() {
    if !have_openssh() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let user_key = keygen(dir.path(), "user", "ed25519");
    let allowed =
        PublicKey::from_openssh(&std::fs::read_to_string(user_key.with_extension("pub")).unwrap())
            .unwrap();
    let rsa = PrivateKey::from_pem(
        &std::fs::read_to_string(keygen(dir.path(), "hostrsa", "rsa")).unwrap(),
    )
    .unwrap();
    let config = ServerConfig::new(vec![PrivateKey::generate_ed25519(), rsa]);
    let port = start_server(config, Some(allowed)).await;
    let mut runs = 0;
    for (cipher, mac) in combos() {
        for hk in [keys::SSH_ED25519, keys::RSA_SHA2_512, keys::RSA_SHA2_256] {
            for kex in ssh::kex::KEX {
                let opts = vec![
                    format!("Ciphers={cipher}"),
                    format!("MACs={mac}"),
                    format!("HostKeyAlgorithms={hk}"),
                    format!("KexAlgorithms={kex}"),
                ];
                let out = openssh_client(
                    port,
                    &user_key,
                    &opts,
                    "cat; echo err >&2; exit 3",
                    b"from stdin\n",
                )
                .await;
                let what = format!(
                    "{cipher} {mac} {hk} {kex}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(out.status.code(), Some(3), "{what}");
                assert_eq!(out.stdout, b"from stdin\n", "{what}");
                assert_eq!(out.stderr, b"err\n", "{what}");
                runs += 1;
            }
        }
    }
    assert_eq!(runs, combos().len() * 3 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_client_refused_with_a_wrong_key() {
    if !have_openssh() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let user_key = keygen(dir.path(), "user", "ed25519");
    let port = start_server(
        ServerConfig::new(vec![PrivateKey::generate_ed25519()]),
        Some(PrivateKey::generate_ed25519().public()),
    )
    .await;
    let out = openssh_client(port, &user_key, &[], "true", b"").await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` on `handle` in a session channel; returns (stdout, stderr, exit status).
async fn exec(handle: &ssh::Handle, cmd: &str, stdin: &[u8]) -> (Vec<u8>, Vec<u8>, Option<u32>) {
    let mut ch = handle.open("session", Vec::new()).await.unwrap().unwrap();
    let req = ssh::wire::Writer::new().string(cmd).finish();
    assert!(ch.request("exec", true, req).await.unwrap());
    if !stdin.is_empty() {
        ch.data(stdin.to_vec()).await.unwrap();
    }
    ch.eof().await.unwrap();
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = ch.recv().await {
        match ev {
            ChannelEvent::Data(d) => out.extend(d),
            ChannelEvent::ExtendedData(1, d) => err.extend(d),
            ChannelEvent::Request { name, data } if name == "exit-status" => {
                status = data
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            }
            ChannelEvent::Closed => break,
            _ => {}
        }
    }
    (out, err, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_openssh_sshd_every_algorithm() {
    if !have_openssh() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate_ed25519();
    let sshd = start_sshd(dir.path(), &key.public().to_openssh(), &[]);
    let host_ed = PublicKey::from_openssh(
        &std::fs::read_to_string(sshd.host_keys[0].with_extension("pub")).unwrap(),
    )
    .unwrap();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let mut runs = 0;
    for (cipher, mac) in combos() {
        for hk in [keys::SSH_ED25519, keys::RSA_SHA2_512, keys::RSA_SHA2_256] {
            for kex in ssh::kex::KEX {
                let mut cfg = ClientConfig::new(&user);
                cfg.key = Some(key.clone());
                cfg.prefs.ciphers = vec![cipher.into()];
                cfg.prefs.macs = vec![mac.into()];
                cfg.prefs.host_keys = vec![hk.into()];
                cfg.prefs.kex = vec![kex.to_string()];
                if hk == keys::SSH_ED25519 {
                    cfg.host_key = HostKeyCheck::Pinned(host_ed.clone());
                }
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", sshd.port))
                    .await
                    .unwrap();
                let what = format!("{cipher} {mac} {hk} {kex}");
                let (handle, _task) = ssh::connect(stream, cfg, ssh::NoHandler)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let (out, err, status) =
                    exec(&handle, "cat; echo err >&2; exit 5", b"to sshd\n").await;
                assert_eq!(
                    (out.as_slice(), err.as_slice(), status),
                    (&b"to sshd\n"[..], &b"err\n"[..], Some(5)),
                    "{what}"
                );
                handle.disconnect("done").await;
                runs += 1;
            }
        }
    }
    assert_eq!(runs, combos().len() * 3 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_refuses_a_host_key_it_does_not_expect() {
    if !have_openssh() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate_ed25519();
    let sshd = start_sshd(dir.path(), &key.public().to_openssh(), &[]);
    let mut cfg = ClientConfig::new("root");
    cfg.key = Some(key);
    cfg.host_key = HostKeyCheck::Pinned(PrivateKey::generate_ed25519().public());
    cfg.prefs.host_keys = vec![keys::SSH_ED25519.into()];
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", sshd.port))
        .await
        .unwrap();
    let err = ssh::connect(stream, cfg, ssh::NoHandler)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not the one expected"), "{err}");
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

const BIG: usize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_through_our_server_with_openssh_rekeying_every_megabyte() {
    if !have_openssh() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (user_key, port) = server_for_new_user(dir.path(), "ed25519").await;
    let data = pattern(BIG);
    let opts = vec!["RekeyLimit=1M".to_string()];
    let out = openssh_client(port, &user_key, &opts, "cat", &data).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), BIG);
    assert!(out.stdout == data, "the bytes came back changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_through_openssh_sshd_with_both_sides_rekeying() {
    if !have_openssh() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate_ed25519();
    let sshd = start_sshd(dir.path(), &key.public().to_openssh(), &["RekeyLimit 1M"]);
    let mut cfg = ClientConfig::new("root");
    cfg.key = Some(key);
    cfg.limits.rekey_bytes = 3 << 20;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", sshd.port))
        .await
        .unwrap();
    let (handle, _task) = ssh::connect(stream, cfg, ssh::NoHandler).await.unwrap();
    let data = pattern(BIG);
    let mut ch = handle.open("session", Vec::new()).await.unwrap().unwrap();
    assert!(ch
        .request(
            "exec",
            true,
            ssh::wire::Writer::new().string("cat").finish()
        )
        .await
        .unwrap());
    let writer = {
        let handle = handle.clone();
        let id = ch.id;
        let data = data.clone();
        tokio::spawn(async move {
            for chunk in data.chunks(256 * 1024) {
                handle.data(id, None, chunk.to_vec()).await.unwrap();
            }
            handle.eof(id).await.unwrap();
        })
    };
    let mut got = Vec::with_capacity(BIG);
    let mut status = None;
    while let Some(ev) = ch.recv().await {
        match ev {
            ChannelEvent::Data(d) => got.extend(d),
            ChannelEvent::Request { name, data } if name == "exit-status" => status = Some(data),
            ChannelEvent::Closed => break,
            _ => {}
        }
    }
    writer.await.unwrap();
    assert_eq!(status, Some(vec![0, 0, 0, 0]));
    assert_eq!(got.len(), BIG);
    assert!(got == data, "the bytes came back changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_client_with_an_rsa_user_key_uses_rsa_sha2() {
    if !have_openssh() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (user_key, port) = server_for_new_user(dir.path(), "rsa").await;
    // OpenSSH no longer signs with ssh-rsa (SHA-1): this works only through server-sig-algs.
    let opts = vec!["PubkeyAcceptedAlgorithms=rsa-sha2-256,rsa-sha2-512".to_string()];
    let out = openssh_client(port, &user_key, &opts, "echo rsa-ok", b"").await;
    assert_eq!(
        out.stdout,
        b"rsa-ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
