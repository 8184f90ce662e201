//! `tether-bench vm VCH ASSETS`: containerVMs under QEMU. In one run, on the same kernel, disk
//! and QEMU devices: the time from starting to the container's first output byte on the host,
//! for `vch run` (our bootstrap stage, tether, guestinfo, attach) and for a baseline minimal init
//! (a few lines of C) that writes to COM1 at once; bootstrap.iso against the kernel path; and
//! stdout throughput over the emulated UART, ours (through SSH) against the baseline init's raw
//! copy.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use vch::container::BootMode;
use vch::vm::{self, VmSpec};

const BASELINE_INIT: &str = r#"#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <termios.h>
#include <unistd.h>

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    int fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
    struct termios t;
    tcgetattr(fd, &t);
    cfmakeraw(&t);
    t.c_cflag &= ~CRTSCTS;
    t.c_cflag |= CLOCAL | CREAD;
    tcsetattr(fd, TCSANOW, &t);
    write(fd, "first\n", 6);
    long n = BYTES;
    char buf[4096];
    memset(buf, 'x', sizeof buf);
    while (n > 0) {
        ssize_t w = write(fd, buf, n < (long)sizeof buf ? (size_t)n : sizeof buf);
        if (w > 0) n -= w;
    }
    tcdrain(fd);
    reboot(RB_POWER_OFF);
    return 0;
}
"#;

/// Bytes for the throughput runs.
const BYTES: usize = 2 << 20;
const RUNS: usize = 3;
/// Boot times vary by a second between runs on these machines: more runs for them.
const BOOT_RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An assets directory with the real kernel and the baseline's initramfs.
fn baseline_assets(dir: &Path, assets: &Path, bytes: usize) -> anyhow::Result<std::path::PathBuf> {
    let out = dir.join(format!("baseline-{bytes}"));
    std::fs::create_dir_all(&out)?;
    let src = dir.join("init.c");
    std::fs::write(&src, BASELINE_INIT)?;
    let bin = out.join("init");
    let ok = Command::new("gcc")
        .args(["-static", "-O2", &format!("-DBYTES={bytes}"), "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("gcc")?;
    if !ok.success() {
        bail!("gcc failed on the baseline init");
    }
    let mut a = initramfs::Archive::new();
    a.dir("dev", 0o755)?;
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, std::fs::read(&bin)?)?;
    // Uncompressed, as ours.
    let mut cpio = Vec::new();
    a.write(&mut cpio)?;
    std::fs::write(out.join("initramfs.cpio"), cpio)?;
    let _ = std::fs::remove_file(out.join("vmlinux"));
    std::os::unix::fs::symlink(assets.join("vmlinux").canonicalize()?, out.join("vmlinux"))?;
    Ok(out)
}

/// Boots the baseline; returns (seconds to its first byte on COM1, bytes per second after it).
fn baseline_run(
    assets: &Path,
    disk: &Path,
    dir: &Path,
    bytes: usize,
) -> anyhow::Result<(f64, f64)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (debug, output) = (dir.join("debug"), dir.join("output"));
    let spec = VmSpec {
        assets,
        boot: BootMode::Kernel,
        accel: vm::Accel::Tcg,
        memory_mib: 256,
        attach_port: listener.local_addr()?.port(),
        debug_log: &debug,
        output_log: &output,
        disk: Some(disk),
        guestinfo: None,
        vsock: None,
        cmdline_extra: "",
    };
    let t0 = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(vm::qemu_args(&spec))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let mut first = None;
    while got < 6 + bytes {
        let _ = socket2::SockRef::from(&s).set_tcp_quickack(true);
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if first.is_none() {
            first = Some(t0.elapsed());
        }
        got += n;
    }
    let end = t0.elapsed();
    let _ = qemu.wait();
    let first = first.context("the baseline wrote nothing")?;
    if got < 6 + bytes {
        bail!("the baseline wrote {got} bytes of {}", 6 + bytes);
    }
    Ok((
        first.as_secs_f64(),
        bytes as f64 / (end - first).as_secs_f64(),
    ))
}

/// Runs `vch run --rm ARGS`; returns (seconds to the first stdout byte, bytes per second after
/// it, all of stdout).
fn ours_run(
    vch: &Path,
    assets: &Path,
    state: &Path,
    args: &[&str],
) -> anyhow::Result<(f64, f64, usize)> {
    let t0 = Instant::now();
    let mut child = Command::new(vch)
        .arg("run")
        .arg("--rm")
        .args(args)
        .env("VCH_STATE", state)
        .env("VCH_ASSETS", assets)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let mut first = None;
    let mut last = t0.elapsed();
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if first.is_none() {
            first = Some(t0.elapsed());
        }
        got += n;
        last = t0.elapsed();
    }
    let status = child.wait()?;
    let first = first.with_context(|| format!("vch run {args:?} printed nothing ({status})"))?;
    let rate = if got > 1 {
        got as f64 / (last - first).as_secs_f64().max(1e-9)
    } else {
        0.0
    };
    Ok((first.as_secs_f64(), rate, got))
}

pub fn run(vch: &Path, assets: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let image = assets.join("images/default.vmdk");
    let disk = dir.path().join("disk.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b"])
        .arg(image.canonicalize()?)
        .arg(&disk)
        .status()?;
    if !ok.success() {
        bail!("qemu-img create failed");
    }
    let first_only = baseline_assets(dir.path(), assets, 0)?;
    let with_bytes = baseline_assets(dir.path(), assets, BYTES)?;
    println!("# containerVMs under QEMU (TCG, 1 vCPU, 256 MiB; medians of {BOOT_RUNS} runs for start times, {RUNS} for throughput)");
    let (mut base, mut kernel, mut iso) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BOOT_RUNS {
        base.push(baseline_run(&first_only, &disk, dir.path(), 0)?.0);
        kernel.push(ours_run(vch, assets, &state, &[])?.0);
        iso.push(ours_run(vch, assets, &state, &["--boot", "iso"])?.0);
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "runs (s): baseline {}; kernel path {}; bootstrap.iso {}",
        runs(&base),
        runs(&kernel),
        runs(&iso)
    );
    let (b, k, i) = (median(base), median(kernel), median(iso));
    println!(
        "start to the container's first output byte on the host: vch run (kernel) {k:.2} s, baseline init {b:.2} s, ratio {:.2} (target <= 1.15)",
        k / b
    );
    println!(
        "bootstrap.iso: vch run --boot iso {i:.2} s vs the kernel path {k:.2} s, ratio {:.2} (target <= 1.3)",
        i / k
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let dd = format!(
        "/bin/dd if=/dev/zero bs=65536 count={} 2>/dev/null",
        BYTES / 65536
    );
    for _ in 0..RUNS {
        theirs.push(baseline_run(&with_bytes, &disk, dir.path(), BYTES)?.1);
        let (_, rate, got) = ours_run(vch, assets, &state, &["--", "/bin/sh", "-c", &dd])?;
        if got != BYTES {
            bail!("vch run delivered {got} bytes of {BYTES}");
        }
        ours.push(rate);
    }
    let (o, t) = (median(ours), median(theirs));
    println!(
        "stdout over the emulated UART, 2 MiB: ours (SSH attach on COM1) {:.0} KiB/s, baseline init's raw copy {:.0} KiB/s, ratio {:.2} (target >= 0.9)",
        o / 1024.0,
        t / 1024.0,
        o / t
    );
    Ok(())
}
