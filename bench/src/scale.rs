//! `tether-bench scale TETHER`: many execs in one containerVM (issue 18), through the attach
//! protocol as a VCH drives it (one SSH connection over loopback, an `attach` channel per exec,
//! execs added to the config and a `reload` asked for).
//!
//! - 100 execs at once, each streaming to its own channel: aggregate throughput against one exec
//!   streaming the same total in the same run, the tether's RSS growth per session (its peak
//!   while they run against its RSS before), and every exit status; the CPU time per GB of the
//!   tether, of the sessions' own processes and of the host's side in each, and the same
//!   producers without a tether (the machine's floor);
//! - 1 000 execs one after another, each attached to its end: the tether's RSS along the way.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tether_proto::config::SessionConfig;
use tether_proto::guestinfo::vmx::VmxFile;

use crate::{rss_kib, session, write_config};

/// A tether in process mode with a primary that waits, and the host connected to it.
struct Containervm {
    child: std::process::Child,
    cfg: std::path::PathBuf,
    h: ssh::Handle,
}

impl Containervm {
    async fn start(tether: &Path, dir: &Path) -> anyhow::Result<Self> {
        let cfg = dir.join("scale.vmx");
        write_config(&cfg, session(&["sleep", "3600"]))?;
        let addr = vch::guestinfo_server::ListenAddr::Tcp("127.0.0.1:0".into());
        let listener = vch::attach::bind(&addr).await?;
        let port = listener.tcp_port().context("a TCP port")?;
        let child = Command::new(tether)
            .args(["run", "--runblock-timeout", "60", "--guestinfo"])
            .arg(&cfg)
            .args(["--attach", &format!("tcp:127.0.0.1:{port}"), "--debug-log"])
            .arg(dir.join("scale.debug"))
            .arg("--output-log")
            .arg(dir.join("scale.out"))
            .spawn()?;
        let line = listener.accept().await?;
        let h = vch::attach::connect(line, Duration::from_secs(30)).await?;
        Ok(Self { child, cfg, h })
    }

    /// Empties the output log (the tether appends to it): 2.4 GB a round would otherwise
    /// fill this machine's memory, and its reclaim would be the noise of the later rounds.
    fn fresh_log(&self) -> anyhow::Result<()> {
        let log = self.cfg.with_file_name("scale.out");
        Ok(std::fs::OpenOptions::new()
            .write(true)
            .open(log)?
            .set_len(0)?)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Adds `execs` to the config (RunBlock, as a VCH does so that nothing is missed), asks for a
    /// reload, and waits until the tether lists them all.
    async fn add_execs(&self, execs: &[(String, SessionConfig)]) -> anyhow::Result<()> {
        // As `vch` adds an exec (the ended ones beyond the newest few leave the config).
        let mut outcome = Ok(());
        VmxFile::open(&self.cfg)?.update(|kv| {
            for (id, s) in execs {
                let mut s = s.clone();
                s.run_block = true;
                if let Err(e) = vch::container::add_exec_to(kv, id, &s) {
                    outcome = Err(e);
                }
            }
        })?;
        outcome?;
        if self
            .h
            .global_request("reload", true, Vec::new())
            .await?
            .is_none()
        {
            bail!("the tether refused the reload");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ids = vch::attach::container_ids(&self.h).await?;
            if execs.iter().all(|(id, _)| ids.contains(id)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the tether did not list the execs within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// An attach channel to `id`, unblocked.
    async fn attach(&self, id: &str) -> anyhow::Result<ssh::Channel> {
        let ch = self
            .h
            .open("attach", id.as_bytes().to_vec())
            .await?
            .map_err(|e| anyhow::anyhow!("attach {id}: {e}"))?;
        ch.request("unblock", true, b"Unblock".to_vec()).await?;
        Ok(ch)
    }
}

impl Drop for Containervm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a channel carries to its CLOSE: the data's length and the exit status.
async fn drain(ch: ssh::Channel) -> (u64, Option<i32>) {
    let (bytes, status, _) = drain_timed(ch).await;
    (bytes, status)
}

/// [`drain`], and when the first byte came.
async fn drain_timed(mut ch: ssh::Channel) -> (u64, Option<i32>, Option<Instant>) {
    let mut bytes = 0u64;
    let mut status = None;
    let mut first = None;
    while let Some(ev) = ch.recv().await {
        match ev {
            ssh::ChannelEvent::Data(d) => {
                first.get_or_insert_with(Instant::now);
                bytes += d.len() as u64
            }
            ssh::ChannelEvent::Request { name, data } => {
                status = status.or(vch::attach::exit_status(&name, &data))
            }
            ssh::ChannelEvent::Closed => break,
            _ => {}
        }
    }
    (bytes, status, first)
}

/// Samples a process's RSS every 5 ms while it runs, keeping the peak.
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// CPU time so far (seconds) of the tether (all its threads), of its sessions (the children it
/// has reaped, with theirs) and of this process (the host's side).
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    tether: f64,
    sessions: f64,
    host: f64,
}

impl Cpu {
    fn now(tether: u32) -> anyhow::Result<Self> {
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        // utime, stime, cutime, cstime: fields 14 to 17 of /proc/PID/stat.
        let times = |pid: String| -> anyhow::Result<[f64; 4]> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .context("/proc/PID/stat")?
                .1
                .split_whitespace()
                .collect();
            let field = |i: usize| -> anyhow::Result<f64> {
                Ok(f.get(i).context("/proc/PID/stat")?.parse::<u64>()? as f64 / hz)
            };
            Ok([field(11)?, field(12)?, field(13)?, field(14)?])
        };
        let t = times(tether.to_string())?;
        let me = times("self".into())?;
        Ok(Self {
            tether: t[0] + t[1],
            sessions: t[2] + t[3],
            host: me[0] + me[1],
        })
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            tether: self.tether - before.tether,
            sessions: self.sessions - before.sessions,
            host: self.host - before.host,
        }
    }

    /// Each side's median over `cpus`.
    fn median(cpus: impl Iterator<Item = Cpu> + Clone) -> Cpu {
        let of = |f: fn(&Cpu) -> f64| crate::median(cpus.clone().map(|c| f(&c)).collect());
        Cpu {
            tether: of(|c| c.tether),
            sessions: of(|c| c.sessions),
            host: of(|c| c.host),
        }
    }

    fn per_gb(self, gb: f64) -> String {
        format!(
            "tether {:.2} s, sessions {:.2} s, host {:.2} s",
            self.tether / gb,
            self.sessions / gb,
            self.host / gb
        )
    }
}

/// An exec writing `bytes` of zeros and exiting with `status`.
fn streaming_exec(bytes: u64, status: i32) -> SessionConfig {
    session(&[
        "/bin/sh",
        "-c",
        &format!("head -c {bytes} /dev/zero; exit {status}"),
    ])
}

/// Runs `n` execs at once, each streaming `each` bytes to its own channel (or, with `each` 0,
/// sleeping a second): (MB/s from the first byte to the last CLOSE, the tether's peak RSS in
/// KiB, the CPU time everything took from the first unblock to the last CLOSE). Fails on a short
/// stream or a wrong exit status.
async fn at_once(
    vm: &Containervm,
    tag: &str,
    n: usize,
    each: u64,
) -> anyhow::Result<(f64, u64, Cpu)> {
    let execs: Vec<(String, SessionConfig)> = (0..n)
        .map(|i| {
            let status = (i % 120 + 1) as i32;
            let exec = match each {
                0 => session(&["/bin/sh", "-c", &format!("sleep 1; exit {status}")]),
                _ => streaming_exec(each, status),
            };
            (format!("{tag}{i}"), exec)
        })
        .collect();
    vm.fresh_log()?;
    vm.add_execs(&execs).await?;
    let sampler = PeakRss::start(vm.pid());
    // Every channel open and subscribed before the first unblock, so that all run together.
    let mut channels = Vec::new();
    for (id, _) in &execs {
        let ch =
            vm.h.open("attach", id.as_bytes().to_vec())
                .await?
                .map_err(|e| anyhow::anyhow!("attach {id}: {e}"))?;
        channels.push(ch);
    }
    let mut readers = Vec::new();
    let cpu = Cpu::now(vm.pid())?;
    for ch in channels {
        ch.request("unblock", true, b"Unblock".to_vec()).await?;
        readers.push(tokio::spawn(drain_timed(ch)));
    }
    let mut total = 0u64;
    let mut t0: Option<Instant> = None;
    for (i, r) in readers.into_iter().enumerate() {
        let (bytes, status, first) = r.await?;
        t0 = match (t0, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let want = (i % 120 + 1) as i32;
        if bytes != each || status != Some(want) {
            bail!("exec {tag}{i}: {bytes} of {each} bytes, exit status {status:?} (want {want})");
        }
        total += bytes;
    }
    // From the first byte (as the user's path is timed) to the last CLOSE.
    let secs = t0.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    let cpu = Cpu::now(vm.pid())?.since(cpu);
    Ok((total as f64 / 1e6 / secs, sampler.finish(), cpu))
}

/// The same figure without the tether, as the floor of what this machine allows: `n` execs' own
/// command (`sh` running `head`) writing `each` bytes into pipes that one thread of this process
/// reads: (MB/s from the first byte to the last, the CPU time those processes took). The
/// producers, the pipes and the scheduler cost the same with a tether between them and the
/// host, and 100 producers on 2 cores cost more per byte than one.
async fn pipes_alone(n: usize, each: u64) -> anyhow::Result<(f64, f64)> {
    use tokio::io::AsyncReadExt as _;
    let mut readers = Vec::new();
    let cpu = Cpu::now(std::process::id())?;
    for _ in 0..n {
        let mut child = Command::new("/bin/sh")
            .args(["-c", &format!("head -c {each} /dev/zero; exit 0")])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let out: std::os::fd::OwnedFd = child.stdout.take().context("stdout")?.into();
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(out)?;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let (mut got, mut first) = (0u64, None);
            loop {
                let k = pipe.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                got += k as u64;
            }
            child.wait()?;
            anyhow::Ok((got, first))
        }));
    }
    let (mut total, mut t0) = (0u64, None::<Instant>);
    for r in readers {
        let (got, first) = r.await??;
        if got != each {
            bail!("a pipe gave {got} of {each} bytes");
        }
        total += got;
        t0 = match (t0, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let secs = t0.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    // This process's reaped children are the producers.
    let cpu = Cpu::now(std::process::id())?.since(cpu);
    Ok((total as f64 / 1e6 / secs, cpu.sessions))
}

pub fn run(tether: &Path) -> anyhow::Result<()> {
    const N: usize = 100;
    const EACH: u64 = 8 << 20;
    // Nine: one round's ratio swings by a tenth either way on these machines, and the median of
    // five still moved by 0.05 between runs of the same build.
    const ROUNDS: usize = 9;
    // In memory: the output log gets every byte (2.4 GB in all), and a disk's writeback would
    // be the noise of this figure.
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    // One thread, as `vch` runs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let vm = Containervm::start(tether, dir.path()).await?;
        // The same total through one exec first, as the baseline; rounds interleaved.
        println!("# scale: {N} execs at once, each {} MiB to its own attach channel, against one exec streaming {} MiB (one SSH connection, loopback)", EACH >> 20, (N as u64 * EACH) >> 20);
        let before = rss_kib(vm.pid())?;
        let (_, peak, _) = at_once(&vm, "idle-", N, 0).await?;
        println!(
            "{N} attached execs at once, no output: RSS {before} KiB before, {peak} KiB at the peak: {:.1} KiB per session",
            peak.saturating_sub(before) as f64 / N as f64
        );
        // A round unreported first: the first exec streaming after the start runs slower (the
        // allocator's and the kernel's caches), which made round 1's ratio the highest.
        at_once(&vm, "warm-one-", 1, N as u64 * EACH).await?;
        at_once(&vm, "warm-many-", N, EACH).await?;
        let (mut ratios, mut pers, mut floors, mut cpus) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let gb = (N as u64 * EACH) as f64 / 1e9;
        for round in 0..ROUNDS {
            let (alone_one, procs_one) = pipes_alone(1, N as u64 * EACH).await?;
            let (alone_many, procs_many) = pipes_alone(N, EACH).await?;
            println!(
                "round {}, the floor without a tether: one producer into a pipe {alone_one:.0} MB/s, {N} at once {alone_many:.0} MB/s ({:.2}x); the producers' CPU per GB {:.2} s, {:.2} s",
                round + 1,
                alone_many / alone_one,
                procs_one / gb,
                procs_many / gb
            );
            floors.push(alone_many / alone_one);
            let (one, _, cpu_one) = at_once(&vm, &format!("one{round}-"), 1, N as u64 * EACH).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = rss_kib(vm.pid())?;
            let (many, peak, cpu_many) = at_once(&vm, &format!("many{round}-"), N, EACH).await?;
            let per = peak.saturating_sub(before) as f64 / N as f64;
            println!(
                "round {}: one exec {one:.0} MB/s; {N} at once {many:.0} MB/s in all ({:.2}x); RSS {before} KiB before, {peak} KiB at the peak ({per:.1} KiB per session); every exit status right",
                round + 1,
                many / one
            );
            println!(
                "round {}: CPU per GB, one exec: {}; {N} at once: {}",
                round + 1,
                cpu_one.per_gb(gb),
                cpu_many.per_gb(gb)
            );
            ratios.push(many / one);
            pers.push(per);
            cpus.push((cpu_one, cpu_many));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        println!(
            "{N} at once against one, median of {ROUNDS} rounds: {:.2}x (target >= 0.9x; the floor without a tether {:.2}x); RSS growth per session, median {:.1} KiB, most {:.1} KiB (target <= 64 KiB)",
            crate::median(ratios),
            crate::median(floors),
            crate::median(pers.clone()),
            pers.iter().copied().fold(0.0, f64::max)
        );
        // Where the time goes: the CPU each side spent per GB, as the median of the rounds.
        println!(
            "CPU per GB, median of {ROUNDS} rounds, one exec: {}; {N} at once: {}",
            Cpu::median(cpus.iter().map(|c| c.0)).per_gb(gb),
            Cpu::median(cpus.iter().map(|c| c.1)).per_gb(gb)
        );
        drop(vm);
        // One after another: RSS along the way.
        let vm = Containervm::start(tether, dir.path()).await?;
        let mut marks = Vec::new();
        let t0 = Instant::now();
        for i in 0..1000usize {
            let id = format!("seq{i}");
            let status = (i % 120) as i32;
            vm.add_execs(&[(id.clone(), streaming_exec(1024, status))])
                .await?;
            let (bytes, got) = drain(vm.attach(&id).await?).await;
            if bytes != 1024 || got != Some(status) {
                bail!("exec {id}: {bytes} bytes, exit status {got:?} (want {status})");
            }
            if [10, 100, 250, 500, 750, 1000].contains(&(i + 1)) {
                marks.push((i + 1, rss_kib(vm.pid())?, t0.elapsed()));
            }
        }
        // RSS after so many execs, and the time each of the execs since the last mark took.
        let mut text = Vec::new();
        let mut prev = (0usize, Duration::ZERO);
        for (n, kib, at) in &marks {
            let each = (*at - prev.1).as_secs_f64() * 1e3 / (n - prev.0) as f64;
            text.push(format!("{n}: {kib} KiB ({each:.1} ms each)"));
            prev = (*n, *at);
        }
        let first = marks.iter().find(|m| m.0 == 100).map_or(0, |m| m.1);
        let last = marks.last().map_or(0, |m| m.1);
        println!(
            "1000 execs one after another, each attached to its end (1 KiB of output, its exit status checked): RSS after {}; from the 100th to the 1000th {:+} KiB (target: flat)",
            text.join(", "),
            last as i64 - first as i64
        );
        Ok(())
    })
}
