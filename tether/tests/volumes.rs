//! Volumes as PID 1 mounts them, on ext4 images on loop devices these tests make (root needed):
//! `tether init` in PID, mount and UTS namespaces of its own, the container's root being the
//! host's (so the mount points live in a scratch directory of the test's).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use tether_proto::config::{ExecutorConfig, MountSpec, Url};
use tether_proto::iolog::Stream;

const LIMIT: Duration = Duration::from_secs(60);

/// An ext4 image labelled `label` holding the files of `from`, on a loop device (detached when
/// dropped).
struct Disk {
    device: String,
}

impl Disk {
    fn new(dir: &Path, label: &str, from: &Path) -> Self {
        let img = dir.join(format!("{label}.img"));
        sh(&["truncate", "-s", "16M", img.to_str().unwrap()]);
        sh(&[
            "mkfs.ext4",
            "-q",
            "-L",
            label,
            "-d",
            from.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        let device = sh(&["losetup", "-f", "--show", img.to_str().unwrap()])
            .trim()
            .to_string();
        Self { device }
    }

    /// A file of the filesystem, read without mounting it.
    fn cat(&self, path: &str) -> String {
        sh(&["debugfs", "-R", &format!("cat {path}"), &self.device])
    }

    /// `debugfs stat`'s text for a path.
    fn stat(&self, path: &str) -> String {
        sh(&["debugfs", "-R", &format!("stat {path}"), &self.device])
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
    }
}

/// A label no other test (or run) uses at the same time.
fn label(tag: &str) -> String {
    format!("tv{}{tag}", std::process::id() % 100_000)
}

fn mount(label: &str, dest: &Path, mode: &str, copy: bool) -> MountSpec {
    MountSpec {
        source: Url {
            scheme: "label".into(),
            path: label.into(),
            ..Url::default()
        },
        path: dest.display().to_string(),
        mode: mode.into(),
        copy_mode: if copy { 2 } else { 1 },
    }
}

/// `tether init` with `cfg` in namespaces of its own; waits for it to power off.
fn run_init(h: &Harness, volwait: u32) -> Child {
    let cmdline = h.init_cmdline(&format!("tether.volwait={volwait}"));
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--uts", "--mount-proc"])
        .arg(tether_bin())
        .args(["init", "--cmdline", &cmdline])
        .spawn()
        .unwrap()
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn disk_volumes_nest_copy_up_into_an_empty_one_and_ro_refuses_writes() {
    let t = tempfile::tempdir().unwrap();
    // The image's directory where the first volume goes: its files are copied up (mode kept);
    // it has a `logs` directory with a file, where the second volume goes.
    let root = t.path().join("root");
    write(&root.join("data/hello"), "from the image\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        root.join("data/hello"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    write(&root.join("data/logs/image-log"), "image\n");
    // An empty volume, and one with VIC's data directory and a file in it.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let full = t.path().join("full");
    write(&full.join(".vic.vol.data/old"), "kept\n");
    let (la, lb) = (label("a"), label("b"));
    let a = Disk::new(t.path(), &la, &empty);
    let b = Disk::new(t.path(), &lb, &full);
    let data = root.join("data");
    let logs = data.join("logs");
    let script = format!(
        "cat {d}/hello; stat -c %a {d}/hello; ls -A {l}; \
         touch {l}/new 2>/dev/null && echo wrote || echo refused; \
         echo written at the end > {d}/written",
        d = data.display(),
        l = logs.display()
    );
    let mut cfg: ExecutorConfig = config(&["/bin/sh", "-c", &script]);
    cfg.mounts
        .insert("logs".into(), mount(&lb, &logs, "ro", true));
    cfg.mounts
        .insert("data".into(), mount(&la, &data, "rw", true));
    let h = Harness::new(&cfg);
    let mut child = run_init(&h, 10);
    wait(&mut child, LIMIT, &h.debug_text());
    assert_eq!(h.state().sessions[ID].exit_status, 0, "{}", h.debug_text());
    assert_eq!(
        h.output(Stream::Stdout),
        // Copied up; the nested volume was not empty, so only its own file shows; ro refused.
        "from the image\n640\nold\nrefused\n",
        "{}",
        h.debug_text()
    );
    // On the disks themselves: the copy-up (with the nested directory's image file, now
    // hidden under the second volume), and the file written just before the exit.
    assert_eq!(a.cat("/hello"), "from the image\n");
    assert_eq!(a.cat("/logs/image-log"), "image\n");
    assert_eq!(a.cat("/written"), "written at the end\n");
    assert!(
        a.stat("/hello").contains("Mode:  0640"),
        "{}",
        a.stat("/hello")
    );
    assert_eq!(b.cat("/.vic.vol.data/old"), "kept\n");
    assert!(!b.stat("/.vic.vol.data/image-log").contains("Inode:"));
    // The image's own directory is untouched (the volumes were mounted over it).
    assert!(!root.join("data/written").exists());
}

#[test]
fn a_volume_whose_disk_never_comes_fails_the_launch_with_the_cause() {
    let t = tempfile::tempdir().unwrap();
    let missing: PathBuf = t.path().join("data");
    let mut cfg = config(&["/bin/echo", "must not run"]);
    cfg.mounts
        .insert("data".into(), mount(&label("none"), &missing, "rw", false));
    let h = Harness::new(&cfg);
    let mut child = run_init(&h, 1);
    wait(&mut child, LIMIT, &h.debug_text());
    let s = &h.state().sessions[ID];
    assert_eq!(s.exit_status, 125, "{}", h.debug_text());
    assert!(
        s.started.starts_with("volume data: no disk labelled"),
        "{}",
        s.started
    );
    assert_eq!(h.output(Stream::Stdout), "");
}
