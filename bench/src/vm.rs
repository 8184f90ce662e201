//! `tether-bench vm VCH ASSETS`: containerVMs under QEMU. In one run, on the same kernel, disk
//! and QEMU devices: the time from starting to the container's first output byte on the host,
//! for `vch run` (our bootstrap stage, tether, guestinfo, attach) and for a baseline minimal init
//! (a few lines of C) that writes to COM1 at once, and for the floor between them (a C init doing
//! only what must come before the container's first byte); bootstrap.iso against the kernel path; and
//! stdout throughput over the emulated UART, ours (through SSH) against the baseline init's raw
//! copy.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use vch::container::BootMode;
use vch::vm::{self, VmSpec};

/// COM1 opened raw, as both inits write to it (C, shared by [`BASELINE_INIT`] and
/// [`FLOOR_INIT`]).
macro_rules! com1_c {
    () => {
        r#"#include <fcntl.h>
#include <termios.h>

static int com1(void) {
    int fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
    struct termios t;
    tcgetattr(fd, &t);
    cfmakeraw(&t);
    t.c_cflag &= ~CRTSCTS;
    t.c_cflag |= CLOCAL | CREAD;
    tcsetattr(fd, TCSANOW, &t);
    return fd;
}
"#
    };
}

const BASELINE_INIT: &str = concat!(
    com1_c!(),
    r#"#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    int fd = com1();
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
"#
);

/// The floor: the least any init must do before the container's first byte on this kernel and
/// disk (the SCSI modules, the disk, the mount, the exec), with nothing else (no config, no
/// attach, no supervision). The distance from the baseline to it is the kernel's and the
/// emulator's; the distance from it to `vch run` is ours.
const FLOOR_INIT: &str = concat!(
    "#define _GNU_SOURCE\n",
    com1_c!(),
    r#"#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *mods[][2] = {
    {"/m/scsi_common.ko", ""}, {"/m/scsi_mod.ko", "scan=manual"},
    {"/m/sd_mod.ko", ""}, {"/m/vmw_pvscsi.ko", ""}};

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    mount("sysfs", "/sys", "sysfs", 0, 0);
    for (unsigned i = 0; i < sizeof mods / sizeof mods[0]; i++) {
        int m = open(mods[i][0], O_RDONLY | O_CLOEXEC);
        syscall(SYS_finit_module, m, mods[i][1], 0);
        close(m);
    }
    int s = open("/sys/class/scsi_host/host0/scan", O_WRONLY);
    write(s, "0 0 0", 5);
    close(s);
    char head[2048];
    for (int tries = 0; tries < 30000; tries++) {
        int d = open("/dev/sda", O_RDONLY | O_CLOEXEC);
        int ok = d >= 0 && read(d, head, sizeof head) == (ssize_t)sizeof head;
        if (d >= 0) close(d);
        if (ok) break;
        usleep(1000);
    }
    mount("/dev/sda", "/mnt", "ext4", 0, "noinit_itable");
    int fd = com1();
    pid_t p = fork();
    if (p == 0) {
        chroot("/mnt");
        chdir("/");
        dup2(fd, 1);
        execl("/hello", "/hello", (char *)0);
        _exit(127);
    }
    waitpid(p, 0, 0);
    tcdrain(fd);
    reboot(RB_POWER_OFF);
    return 0;
}
"#
);

/// The floor's modules, from the kernel's tree in the assets (pvscsi's disk, as `vch run`).
const FLOOR_MODULES: [&str; 4] = [
    "kernel/drivers/scsi/scsi_common.ko",
    "kernel/drivers/scsi/scsi_mod.ko",
    "kernel/drivers/scsi/sd_mod.ko",
    "kernel/drivers/scsi/vmw_pvscsi.ko",
];

/// Bytes for the throughput runs over the UART.
const BYTES: usize = 2 << 20;
/// What the vsock line carries in one run.
const VSOCK_BYTES: usize = 8 << 20;
const RUNS: usize = 3;
/// Boot times vary by a second between runs on these machines (the kernel's own boot swings
/// from 2.5 to 4.5 s under TCG): more runs for them, each kind once per round.
const BOOT_RUNS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Compiles a C init statically.
fn cc_init(source: &str, defines: &[String], out: &Path) -> anyhow::Result<()> {
    let src = out.with_extension("c");
    std::fs::write(&src, source)?;
    let ok = Command::new("gcc")
        .args(["-static", "-O2"])
        .args(defines)
        .arg("-o")
        .arg(out)
        .arg(&src)
        .status()
        .context("gcc")?;
    if !ok.success() {
        bail!("gcc failed on {}", src.display());
    }
    Ok(())
}

/// An assets directory (`name` in `dir`) with the real kernel and `archive` as the initramfs,
/// uncompressed as ours.
fn init_assets(
    dir: &Path,
    assets: &Path,
    name: &str,
    archive: &initramfs::Archive,
) -> anyhow::Result<std::path::PathBuf> {
    let out = dir.join(name);
    std::fs::create_dir_all(&out)?;
    let mut cpio = Vec::new();
    archive.write(&mut cpio)?;
    std::fs::write(out.join("initramfs.cpio"), cpio)?;
    let _ = std::fs::remove_file(out.join("vmlinux"));
    std::os::unix::fs::symlink(assets.join("vmlinux").canonicalize()?, out.join("vmlinux"))?;
    Ok(out)
}

/// The baseline's assets: an init writing `bytes` (after a first line) to COM1 at once.
fn baseline_assets(dir: &Path, assets: &Path, bytes: usize) -> anyhow::Result<std::path::PathBuf> {
    let bin = dir.join(format!("baseline-{bytes}"));
    cc_init(BASELINE_INIT, &[format!("-DBYTES={bytes}")], &bin)?;
    let mut a = initramfs::Archive::new();
    a.dir("dev", 0o755)?;
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, std::fs::read(&bin)?)?;
    init_assets(dir, assets, &format!("baseline-{bytes}-assets"), &a)
}

/// The floor's assets: its init and the SCSI modules.
fn floor_assets(dir: &Path, assets: &Path) -> anyhow::Result<std::path::PathBuf> {
    let bin = dir.join("floor");
    cc_init(FLOOR_INIT, &[], &bin)?;
    let tree = std::fs::read_dir(assets.join("kernel/lib/modules"))
        .context("the kernel's modules in the assets")?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .context("no kernel module tree in the assets")?;
    let mut a = initramfs::Archive::new();
    for d in ["dev", "sys", "mnt", "m"] {
        a.dir(d, 0o755)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, std::fs::read(&bin)?)?;
    for m in FLOOR_MODULES {
        let base = m.rsplit('/').next().unwrap_or(m);
        let data =
            std::fs::read(tree.join(m)).with_context(|| format!("{m} in {}", tree.display()))?;
        a.file(&format!("m/{base}"), 0o644, data)?;
    }
    init_assets(dir, assets, "floor-assets", &a)
}

/// Boots a C init (the baseline, the floor) and reads COM1 until `want` bytes came or the VM
/// ended; returns (seconds to the first byte, bytes per second of the `want - 6` after the
/// baseline's first line).
fn init_run(assets: &Path, disk: &Path, dir: &Path, want: usize) -> anyhow::Result<(f64, f64)> {
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
        nics: &[],
        volumes: &[],
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
    while got < want {
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
    let first = first.context("the init wrote nothing")?;
    if got < want {
        bail!("the init wrote {got} bytes of {want}");
    }
    Ok((
        first.as_secs_f64(),
        want.saturating_sub(6) as f64 / (end - first).as_secs_f64().max(1e-9),
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
        // A network, when a run has one, is QEMU's user network with nothing routed out.
        .env("VCH_NET", "isolated")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
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
    let errors = errors.join().unwrap_or_default();
    let first = first.with_context(|| {
        format!(
            "vch run {args:?} printed nothing ({status}): {}",
            errors.trim()
        )
    })?;
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
    let floor = floor_assets(dir.path(), assets)?;
    println!("# containerVMs under QEMU (TCG, 1 vCPU, 256 MiB; medians of {BOOT_RUNS} rounds for start times, {RUNS} for throughput)");
    let (mut base, mut low, mut kernel, mut iso) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut networked = Vec::new();
    // Like for like with the baseline (which has no NIC): --net none; then the same container
    // with its network configured before the launch (a NIC, DHCP from QEMU).
    for _ in 0..BOOT_RUNS {
        base.push(init_run(&first_only, &disk, dir.path(), 6)?.0);
        low.push(init_run(&floor, &disk, dir.path(), 1)?.0);
        kernel.push(ours_run(vch, assets, &state, &["--net", "none"])?.0);
        iso.push(ours_run(vch, assets, &state, &["--net", "none", "--boot", "iso"])?.0);
        networked.push(ours_run(vch, assets, &state, &[])?.0);
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "runs (s): baseline {}; floor {}; kernel path {}; bootstrap.iso {}; with a network {}",
        runs(&base),
        runs(&low),
        runs(&kernel),
        runs(&iso),
        runs(&networked)
    );
    // Noise only ever adds time: the fastest run of each kind is the other estimate, and the
    // median of each round's own ratio cancels drift across rounds.
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let paired = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let (kb, fb, kf, ik) = (
        paired(&kernel, &base),
        paired(&low, &base),
        paired(&kernel, &low),
        paired(&iso, &kernel),
    );
    let (bm, fm, km, im) = (min(&base), min(&low), min(&kernel), min(&iso));
    let with_net = paired(&networked, &kernel);
    let (b, f, k, i) = (median(base), median(low), median(kernel), median(iso));
    let n = median(networked);
    println!(
        "with its network (a virtio NIC on QEMU's user network, DHCP before the launch): {n:.2} s, {:+.2} s over --net none (per round {with_net:.2}x)",
        n - k
    );
    println!(
        "start to the container's first output byte on the host: vch run (kernel) {k:.2} s, baseline init {b:.2} s, ratio {:.2} (target <= 1.15); fastest runs {km:.2} vs {bm:.2}: {:.2}; per round: {kb:.2}",
        k / b,
        km / bm
    );
    println!(
        "the floor (a C init loading the SCSI modules, mounting the disk, exec'ing /hello; no config, no attach): {f:.2} s, {:.2} of the baseline (fastest {:.2}, per round {fb:.2}); vch run is {:.2} of it (fastest {:.2}, per round {kf:.2})",
        f / b,
        fm / bm,
        k / f,
        km / fm
    );
    println!(
        "bootstrap.iso: vch run --boot iso {i:.2} s vs the kernel path {k:.2} s, ratio {:.2} (target <= 1.3); fastest {im:.2} vs {km:.2}: {:.2}; per round {ik:.2}",
        i / k,
        im / km
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let dd = format!(
        "/bin/dd if=/dev/zero bs=65536 count={} 2>/dev/null",
        BYTES / 65536
    );
    for _ in 0..RUNS {
        theirs.push(init_run(&with_bytes, &disk, dir.path(), 6 + BYTES)?.1);
        let (_, rate, got) = ours_run(vch, assets, &state, &["--", "/bin/sh", "-c", &dd])?;
        if got != BYTES {
            bail!("vch run delivered {got} bytes of {BYTES}");
        }
        ours.push(rate);
    }
    let (o, t) = (median(ours), median(theirs));
    println!(
        "stdout over the emulated UART, 2 MiB: ours (SSH attach on COM1, `vch run` into a pipe) {:.0} KiB/s, baseline init's raw copy {:.0} KiB/s, ratio {:.2} (target >= 0.9)",
        o / 1024.0,
        t / 1024.0,
        o / t
    );
    // The vsock line: the same `vch run` into a pipe, the tether attached over virtio-vsock.
    let dd = format!(
        "/bin/dd if=/dev/zero bs=65536 count={} 2>/dev/null",
        VSOCK_BYTES / 65536
    );
    let mut vsock = Vec::new();
    for _ in 0..RUNS {
        let args = ["--attach-line", "vsock", "--", "/bin/sh", "-c", &dd];
        let (_, rate, got) = ours_run(vch, assets, &state, &args)?;
        if got != VSOCK_BYTES {
            bail!("vch run over vsock delivered {got} bytes of {VSOCK_BYTES}");
        }
        vsock.push(rate);
    }
    let v = median(vsock);
    println!(
        "stdout over virtio-vsock, 8 MiB: ours (SSH attach on vsock, `vch run` into a pipe) {:.0} KiB/s, {:.1}x the raw UART copy above",
        v / 1024.0,
        v / t
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inits_compile() {
        let t = tempfile::tempdir().unwrap();
        if Command::new("gcc").arg("--version").output().is_err() {
            eprintln!("skipped: no gcc on this machine");
            return;
        }
        for (name, source, defines) in [
            ("baseline", BASELINE_INIT, vec!["-DBYTES=6".to_string()]),
            ("floor", FLOOR_INIT, vec![]),
        ] {
            cc_init(source, &defines, &t.path().join(name)).unwrap();
            assert!(t.path().join(name).exists(), "{name}");
        }
    }
}
