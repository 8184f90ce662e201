//! `tether-bench TETHER VCH`: session start-up, exec latency, memory and attach throughput of the
//! tether in process mode (the last through the `vch` binary, as a user runs it),
//! each against a baseline measured in the same run (these machines are noisy).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use tether_proto::config::{Cmd, ExecutorConfig, SessionConfig};
use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::vmx::VmxFile;
use tether_proto::iolog;

const ID: &str = "bench";

const RUNS: usize = 30;

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
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

/// A config with one session, `primary`, written as a `.vmx` file at `path`.
fn write_config(path: &Path, primary: SessionConfig) -> anyhow::Result<()> {
    let mut c = ExecutorConfig::default();
    c.common.id = ID.into();
    c.sessions.insert(ID.into(), primary);
    let kv: KeyValues = c.encode().into_iter().collect();
    VmxFile::create(path, kv)?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Milliseconds from starting `tether run` to the session's own clock reading at its start.
fn start_to_execve(tether: &Path, dir: &Path) -> anyhow::Result<f64> {
    let cfg = dir.join("start.vmx");
    let out = dir.join("start.log");
    write_config(&cfg, session(&["date", "+%s%N"]))?;
    let _ = std::fs::remove_file(&out);
    let t0 = now_nanos();
    let status = Command::new(tether)
        .args(["run", "--guestinfo"])
        .arg(&cfg)
        .arg("--output-log")
        .arg(&out)
        .arg("--debug-log")
        .arg(dir.join("debug"))
        .status()?;
    if !status.success() {
        bail!("tether run failed: {status}");
    }
    let log = iolog::decode(&std::fs::read(&out)?);
    let text: String = log
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect();
    let started: u128 = text
        .trim()
        .parse()
        .with_context(|| format!("session printed {text:?}"))?;
    Ok((started.saturating_sub(t0)) as f64 / 1e6)
}

/// The same measurement for a plain fork/exec of the same program: the floor.
fn baseline_execve() -> anyhow::Result<f64> {
    let t0 = now_nanos();
    let out = Command::new("date").arg("+%s%N").output()?;
    let started: u128 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok((started.saturating_sub(t0)) as f64 / 1e6)
}

/// Milliseconds from SIGHUP (with a new exec in the config) to the tether reading the exec's first
/// output byte, and the tether's RSS in KiB while the primary runs.
fn exec_latency_and_rss(tether: &Path, dir: &Path) -> anyhow::Result<(Vec<f64>, u64)> {
    let cfg = dir.join("exec.vmx");
    let out = dir.join("exec.log");
    let flag = dir.join("stop");
    let _ = std::fs::remove_file(&flag);
    let _ = std::fs::remove_file(&out);
    let script = format!("while [ ! -e {} ]; do sleep 0.01; done", flag.display());
    write_config(&cfg, session(&["/bin/sh", "-c", &script]))?;
    let mut child = Command::new(tether)
        .args(["run", "--guestinfo"])
        .arg(&cfg)
        .arg("--output-log")
        .arg(&out)
        .arg("--debug-log")
        .arg(dir.join("debug"))
        .stdin(Stdio::null())
        .spawn()?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let wait_for = |what: &str, cond: &mut dyn FnMut() -> bool| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    };
    wait_for("the primary", &mut || {
        std::fs::read_to_string(&cfg).is_ok_and(|t| t.contains(".started = \"true\""))
    })?;
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut latencies = Vec::new();
    for i in 0..RUNS {
        let id = format!("e{i}");
        let mut file = VmxFile::open(&cfg)?;
        file.update(|kv| {
            let mut c = ExecutorConfig::decode(kv).map(|x| x.0).unwrap_or_default();
            c.execs.insert(id.clone(), session(&["echo", "x"]));
            for (k, v) in c.encode() {
                if k.contains("execs") {
                    kv.insert(k, v);
                }
            }
        })?;
        let before = iolog::decode(&std::fs::read(&out).unwrap_or_default()).len();
        let t0 = now_nanos();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        let mut first = 0u128;
        wait_for("the exec's output", &mut || {
            let log = iolog::decode(&std::fs::read(&out).unwrap_or_default());
            match log.get(before) {
                Some(e) => {
                    first = u128::from(e.time_nanos);
                    true
                }
                None => false,
            }
        })?;
        latencies.push(first.saturating_sub(t0) as f64 / 1e6);
    }
    std::fs::write(&flag, "")?;
    child.wait()?;
    Ok((latencies, rss))
}

/// A tether in process mode with `primary` attached over TCP loopback; `f` gets the channel
/// right after `unblock`.
fn with_attached<T>(
    tether: &Path,
    dir: &Path,
    primary: SessionConfig,
    f: impl AsyncFnOnce(&mut ssh::Channel, u32) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let cfg = dir.join("attach.vmx");
    write_config(&cfg, primary)?;
    // One thread, as `vch` runs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = vch::guestinfo_server::ListenAddr::Tcp(format!("127.0.0.1:{port}"));
    let listener = rt.block_on(vch::attach::bind(&addr))?;
    let mut child = Command::new(tether)
        .args(["run", "--runblock-timeout", "60", "--guestinfo"])
        .arg(&cfg)
        .args(["--attach", &format!("tcp:127.0.0.1:{port}"), "--debug-log"])
        .arg(dir.join("debug"))
        .spawn()?;
    let result = rt.block_on(async {
        let line = listener.accept().await?;
        let h = vch::attach::connect(line, Duration::from_secs(30)).await?;
        let mut ch = h
            .open("attach", ID.as_bytes().to_vec())
            .await?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ch.request("unblock", true, b"Unblock".to_vec()).await?;
        let r = f(&mut ch, child.id()).await;
        h.disconnect("bench done").await;
        r
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// MB/s of 256 MiB of a session's stdout to an attached client.
fn attach_throughput(tether: &Path, dir: &Path) -> anyhow::Result<f64> {
    const BYTES: usize = 256 << 20;
    let mut s = session(&["head", "-c", &BYTES.to_string(), "/dev/zero"]);
    s.run_block = true;
    with_attached(tether, dir, s, async |ch, _| {
        // From the first byte, as the user's path is timed.
        let mut t0 = None;
        let mut got = 0usize;
        while let Some(ev) = ch.recv().await {
            match ev {
                ssh::ChannelEvent::Data(d) => {
                    t0.get_or_insert_with(Instant::now);
                    got += d.len()
                }
                ssh::ChannelEvent::Closed => break,
                _ => {}
            }
        }
        if got != BYTES {
            bail!("received {got} of {BYTES} bytes");
        }
        let t0 = t0.context("no output")?;
        Ok(BYTES as f64 / 1e6 / t0.elapsed().as_secs_f64())
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0))
}

/// Keystroke-to-echo round trips (ms) through `cat` in a session, and the tether's RSS (KiB)
/// with that session attached.
fn echo_latency(tether: &Path, dir: &Path) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut s = session(&["cat"]);
    s.run_block = true;
    s.open_stdin = true;
    with_attached(tether, dir, s, async |ch, pid| {
        let mut times = Vec::new();
        for i in 0..1000u32 {
            let key = vec![b'a' + (i % 26) as u8];
            let t0 = Instant::now();
            ch.data(key.clone()).await?;
            loop {
                match ch.recv().await {
                    Some(ssh::ChannelEvent::Data(d)) if d == key => break,
                    Some(ssh::ChannelEvent::Data(_)) => {}
                    None | Some(ssh::ChannelEvent::Closed) => bail!("closed"),
                    _ => {}
                }
            }
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok((times, rss_kib(pid)?))
    })
}

/// OpenSSH's sshd on a loopback port with a key of its own, and the client key it takes.
struct OpenSsh {
    daemon: std::process::Child,
    port: u16,
    key: PathBuf,
    public: String,
}

impl OpenSsh {
    /// `None` (said) where sshd is not installed.
    fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(sshd) = sshd else {
            println!("OpenSSH figures: skipped (OpenSSH's sshd is not installed)");
            return Ok(None);
        };
        let key = dir.join("user");
        let host = dir.join("host");
        for k in [&key, &host] {
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(k)
                .status()?;
        }
        let public = std::fs::read_to_string(key.with_extension("pub"))?;
        std::fs::write(dir.join("authorized_keys"), &public)?;
        let port = free_port()?;
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nUsePAM no\nStrictModes no\n\
                 PidFile none\nPermitRootLogin yes\nPasswordAuthentication no\nLogLevel ERROR\n",
                host.display(),
                dir.join("authorized_keys").display()
            ),
        )?;
        std::fs::create_dir_all("/run/sshd").ok();
        let daemon = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("sshd did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Self {
            daemon,
            port,
            key,
            public,
        }))
    }

    /// OpenSSH's client pulling `bytes` of `head -c` output from the server on `port`, its
    /// stdout a pipe this process reads.
    fn client(&self, port: u16, cipher: &str, bytes: u64) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-F",
            "/dev/null",
            "-T",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-c",
            cipher,
            "-i",
        ])
        .arg(&self.key)
        .args([
            "-p",
            &port.to_string(),
            "root@127.0.0.1",
            &format!("head -c {bytes} /dev/zero"),
        ]);
        c
    }
}

impl Drop for OpenSsh {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Reads `child`'s stdout (a pipe) to its end, as a user's next command in a pipeline would;
/// bytes per second from the first byte to the end (the connection's set-up left out, for
/// either side), and how many bytes came.
fn pipe_rate(mut child: std::process::Child) -> anyhow::Result<(f64, u64)> {
    use std::io::Read as _;
    let mut out = child.stdout.take().context("stdout is a pipe")?;
    let mut buf = vec![0u8; 128 * 1024];
    let (mut got, mut first) = (0u64, None);
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    let status = child.wait()?;
    let first = first.with_context(|| format!("nothing came through the pipe ({status})"))?;
    Ok((got as f64 / first.elapsed().as_secs_f64().max(1e-9), got))
}

/// Our SSH server against OpenSSH's sshd, each sending 256 MiB to OpenSSH's client.
fn ssh_throughput(openssh: &OpenSsh) -> anyhow::Result<()> {
    use ssh::{self, exec_server::ExecServer, PrivateKey, PublicKey, ServerConfig};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let allowed = PublicKey::from_openssh(&openssh.public)?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let our_port = listener.local_addr()?.port();
    let config = std::sync::Arc::new(ServerConfig::new(vec![PrivateKey::generate_ed25519()]));
    runtime.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (config, allowed) = (config.clone(), allowed.clone());
            tokio::spawn(
                async move { ssh::serve(s, config, ExecServer::new(Some(allowed))).await },
            );
        }
    });
    const BYTES: u64 = 256 << 20;
    let pull = |port: u16, cipher: &str| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let status = openssh
            .client(port, cipher, BYTES)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("ssh to port {port} failed: {status}");
        }
        Ok(BYTES as f64 / 1e6 / t0.elapsed().as_secs_f64())
    };
    for cipher in [
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes128-ctr",
    ] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            ours.push(pull(our_port, cipher)?);
            theirs.push(pull(openssh.port, cipher)?);
        }
        let (o, t) = (median(ours), median(theirs));
        println!("ssh 256 MiB to OpenSSH's client (into /dev/null), {cipher}: ours {o:.0} MB/s, OpenSSH sshd {t:.0} MB/s, ratio {:.2} (target >= 1.0)", o / t);
    }
    Ok(())
}

/// The attach path as a user runs it: `vch attach` (the binary) into a pipe, from the shipped
/// tether in process mode over TCP loopback, against OpenSSH's client into the same kind of pipe
/// (sshd, chacha20-poly1305, the same bytes), interleaved run by run; and the in-process client
/// (no `vch` process, no pipe), the former headline, meant as a ceiling (it no longer is one:
/// `vch` writes the pipe on a thread beside the connection, the in-process client counts on the
/// connection's own).
fn user_path(
    tether: &Path,
    vch: &Path,
    dir: &Path,
    openssh: Option<&OpenSsh>,
) -> anyhow::Result<()> {
    const BYTES: u64 = 256 << 20;
    let (mut ours, mut theirs, mut ceiling) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(vch_attach_rate(tether, vch, dir, BYTES)?);
        if let Some(o) = openssh {
            let child = o
                .client(o.port, "chacha20-poly1305@openssh.com", BYTES)
                .stdout(Stdio::piped())
                .spawn()?;
            let (rate, got) = pipe_rate(child)?;
            if got != BYTES {
                bail!("OpenSSH's client delivered {got} of {BYTES} bytes");
            }
            theirs.push(rate / 1e6);
        }
        ceiling.push(attach_throughput(tether, dir)?);
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (o, c) = (median(ours.clone()), median(ceiling.clone()));
    match theirs.is_empty() {
        false => {
            let t = median(theirs.clone());
            println!(
                "attach, the user's path: 256 MiB of session stdout through `vch attach` into a pipe: {o:.0} MB/s (runs {}); OpenSSH's client into a pipe {t:.0} MB/s (runs {}); ratio {:.2} (target >= 1.0)",
                runs(&ours),
                runs(&theirs),
                o / t
            );
        }
        true => println!(
            "attach, the user's path: `vch attach` into a pipe {o:.0} MB/s (no OpenSSH here)"
        ),
    }
    println!(
        "attach, in-process: the same bytes to a client inside this process that only counts them (no `vch` process, no pipe; the former headline, meant as a ceiling): {c:.0} MB/s (runs {})",
        runs(&ceiling)
    );
    Ok(())
}

/// One run of `vch attach --listen HOST:PORT --id ...` into a pipe, in MB/s.
fn vch_attach_rate(tether: &Path, vch: &Path, dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let mut s = session(&["head", "-c", &bytes.to_string(), "/dev/zero"]);
    s.run_block = true;
    let cfg = dir.join("user-path.vmx");
    write_config(&cfg, s)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let client = Command::new(vch)
        .args(["attach", "--listen", &addr, "--id", ID, "--timeout", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    // The tether connects again and again until vch listens.
    let mut tether = Command::new(tether)
        .args(["run", "--runblock-timeout", "60", "--guestinfo"])
        .arg(&cfg)
        .args(["--attach", &addr, "--debug-log"])
        .arg(dir.join("debug"))
        .stdin(Stdio::null())
        .spawn()?;
    let measured = pipe_rate(client);
    let _ = tether.kill();
    let _ = tether.wait();
    let (rate, got) = measured?;
    if got != bytes {
        bail!("vch attach delivered {got} of {bytes} bytes");
    }
    Ok(rate / 1e6)
}

mod reliability;
mod scale;
mod vm;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("reliability-report") {
        let (Some(file), header) = (args.get(2), args.get(3)) else {
            bail!("usage: tether-bench reliability-report FILE [HEADER]");
        };
        print!(
            "{}",
            reliability::report(Path::new(file), header.map_or("", |h| h.as_str()))?
        );
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("scale") {
        let Some(tether) = args.get(2) else {
            bail!("usage: tether-bench scale TETHER");
        };
        return scale::run(Path::new(tether));
    }
    if args.get(1).map(String::as_str) == Some("vm") {
        let (Some(vch), Some(assets)) = (args.get(2), args.get(3)) else {
            bail!("usage: tether-bench vm VCH ASSETS");
        };
        return vm::run(Path::new(vch), Path::new(assets));
    }
    let (Some(tether), Some(vch)) = (args.get(1), args.get(2)) else {
        bail!("usage: tether-bench TETHER VCH | tether-bench vm VCH ASSETS");
    };
    let (tether, vch) = (PathBuf::from(tether), PathBuf::from(vch));
    let dir = tempfile::tempdir()?;
    println!("# tether process-mode benchmarks ({RUNS} runs each, medians)");
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..RUNS {
        ours.push(start_to_execve(&tether, dir.path())?);
        base.push(baseline_execve()?);
    }
    let (o, b) = (median(ours), median(base));
    println!("start to session execve: {o:.2} ms (fork+exec baseline {b:.2} ms, +{:.2} ms; target < 5 ms)", o - b);
    let (lat, rss) = exec_latency_and_rss(&tether, dir.path())?;
    println!(
        "exec request (SIGHUP) to first output byte: {:.2} ms (target < 10 ms)",
        median(lat)
    );
    println!("tether RSS with one running session: {rss} KiB (target < 3072 KiB)");
    let openssh = OpenSsh::start(dir.path())?;
    if let Some(o) = &openssh {
        ssh_throughput(o)?;
    }
    user_path(&tether, &vch, dir.path(), openssh.as_ref())?;
    let (mut lat, attached_rss) = echo_latency(&tether, dir.path())?;
    lat.sort_by(f64::total_cmp);
    println!(
        "attach: keystroke to echo through cat: p50 {:.3} ms, p99 {:.3} ms (target p99 < 1 ms)",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    println!("tether RSS with one attached session: {attached_rss} KiB (target < 3072 KiB)");
    Ok(())
}
