//! Image disks: an ext4 filesystem labelled `containerfs` made from a directory or a tar (a
//! `docker export` works), converted to VMDK with qemu-img; and the built-in default image (a
//! tiny static hello and Debian's busybox-static).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

pub use tether_proto::vm::CONTAINERFS_LABEL as LABEL;

pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A system tool, also where sbin is not on PATH.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// The bytes of the files under `dir`, with `per_entry` more for each entry (a filesystem's
/// inode and block slack when sizing one; none for an image's size as docker shows it).
pub fn tree_bytes(dir: &Path, per_entry: u64) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        total += per_entry
            + if m.is_dir() {
                tree_bytes(&e.path(), per_entry)
            } else {
                m.len()
            };
    }
    total
}

/// Makes `out` (VMDK) from a directory or a tar file, with `label` (`containerfs` for a usable
/// image; anything else makes a disk the bootstrap stage will not take).
pub fn build(from: &Path, out: &Path, label: &str) -> anyhow::Result<()> {
    build_sized(from, out, label, None)
}

/// [`build`] with the filesystem's size in MiB (room for the files and more when `None`).
pub fn build_sized(
    from: &Path,
    out: &Path,
    label: &str,
    size_mib: Option<u64>,
) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("vch-image")
        .tempdir()
        .context("a temporary directory")?;
    let tree = if from.is_dir() {
        from.to_path_buf()
    } else if from.is_file() {
        let t = work.path().join("rootfs");
        std::fs::create_dir(&t)?;
        run(
            Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(from)
                .arg("-C")
                .arg(&t),
            &format!("tar (unpacking {})", from.display()),
        )?;
        t
    } else {
        bail!("{}: no such directory or tar file", from.display());
    };
    // Room for the files, the journal and what the container writes.
    let mib = size_mib.unwrap_or((tree_bytes(&tree, 4096) * 3 / 2 / (1 << 20) + 64).max(64));
    let raw = work.path().join("disk.raw");
    // Inode tables and journal written out here: otherwise the guest's ext4lazyinit thread
    // zeroes them in the background right after the mount, taking the CPU from the container's
    // start (zero blocks cost nothing in the VMDK).
    run(
        Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .args(["-L", label, "-d"])
            .arg(&tree)
            .arg(&raw)
            .arg(format!("{mib}M")),
        "mkfs.ext4",
    )?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let partial = out.with_extension("vmdk.partial");
    run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vmdk"])
            .arg(&raw)
            .arg(&partial),
        "qemu-img convert",
    )?;
    std::fs::rename(&partial, out)?;
    Ok(())
}

/// The source of the default image's `/hello`.
pub const HELLO_C: &str = r#"#include <stdio.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct utsname u;
    uname(&u);
    printf("Hello from a containerVM: pid %d on %s %s (%s)\n", (int)getpid(), u.sysname, u.release, u.machine);
    for (int i = 1; i < argc; i++)
        printf("argv[%d] = %s\n", i, argv[i]);
    return 0;
}
"#;

/// Changes with how `build` makes filesystems (the default image is rebuilt).
const MKFS_REVISION: u32 = 2;

/// Builds the default image at `out` unless it is there and current.
pub fn ensure_default(out: &Path) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    // Its size stands for its version: reading 2 MB at every `vch run` only to check the stamp
    // would be a cost of each container's start.
    let bb = std::fs::metadata(busybox).context(
        "/bin/busybox is missing (package busybox-static; scripts/setup-vm installs it)",
    )?;
    let stamp_path = out.with_extension("stamp");
    let stamp = format!(
        "{} {} {} {}",
        env!("CARGO_PKG_VERSION"),
        MKFS_REVISION,
        bb.len(),
        HELLO_C.len()
    );
    if out.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    eprintln!("vch: building the default image {}", out.display());
    let work = tempfile::Builder::new().prefix("vch-default").tempdir()?;
    let root = work.path().join("rootfs");
    default_tree(&root)?;
    build(&root, out, LABEL)?;
    std::fs::write(stamp_path, stamp)?;
    Ok(())
}

/// The default image's files (busybox with its applets, `/hello`, a passwd and group) written
/// under `root`: also what a test turns into a `docker save` tar.
pub fn default_tree(root: &Path) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    for d in [
        "bin", "etc", "dev", "proc", "sys", "tmp", "root", "home", "var",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    let work = tempfile::Builder::new().prefix("vch-hello").tempdir()?;
    let src = work.path().join("hello.c");
    std::fs::write(&src, HELLO_C)?;
    let cc = if Command::new("musl-gcc").arg("--version").output().is_ok() {
        "musl-gcc"
    } else {
        "gcc"
    };
    run(
        Command::new(cc)
            .args(["-static", "-Os", "-s", "-o"])
            .arg(root.join("hello"))
            .arg(&src),
        &format!("{cc} (the default image's hello)"),
    )?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"tether default image\"\nID=tether-default\n",
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}
