//! `vch serve` driven by the stock docker CLI (Debian's docker.io 20.10 client, `/usr/bin/docker`)
//! for what needs no VM: version negotiation, the image store (load with whiteouts, images,
//! inspect, rmi), volumes, networks, docker's errors and exit codes. `tests/tests/docker_cli.rs`
//! runs containers.

mod support;

use support::docker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A `vch serve` on a state root of its own, and the docker CLI pointed at it.
struct Daemon {
    state: tempfile::TempDir,
    config: tempfile::TempDir,
    host: String,
    child: Child,
}

impl Daemon {
    /// `None` (after saying why) when the docker CLI is not installed (scripts/setup installs it).
    fn start(endpoint: &str) -> Option<Self> {
        if !docker::cli_present() {
            return None;
        }
        let state = tempfile::tempdir().unwrap();
        let endpoint = endpoint.replace("STATE", &state.path().display().to_string());
        let mut serve = Command::new(env!("CARGO_BIN_EXE_vch"));
        serve
            .args(["serve", "--docker", &endpoint])
            .env("VCH_STATE", state.path());
        let (child, host) = docker::start_serve(serve);
        Some(Self {
            state,
            config: tempfile::tempdir().unwrap(),
            host,
            child,
        })
    }

    fn docker(&self, args: &[&str]) -> Output {
        docker::cli(&self.host, self.config.path(), args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A docker command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_tree(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (p, body) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    root.to_path_buf()
}

#[test]
fn version_negotiation_and_docker_errors_over_tcp() {
    let Some(d) = Daemon::start("tcp:127.0.0.1:0") else {
        return;
    };
    assert!(d.host.starts_with("tcp://127.0.0.1:"), "{}", d.host);
    let v = d.ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.Os}}",
    ]);
    assert_eq!(v.trim(), "1.41 linux");
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
    // A missing container: docker's 404 and wording.
    let out = d.docker(&["inspect", "--type", "container", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No such container: nosuch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No registry: a run of an image that is not here ends in a clear error and 125.
    let out = d.docker(&["run", "--rm", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no registry"), "{err}");
    let out = d.docker(&["stop", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such container: nosuch"));
    // The built-in networks, and a network that is not there.
    let nets = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(nets.lines().collect::<Vec<_>>(), ["bridge", "none"]);
    assert!(!d.docker(&["network", "inspect", "nosuch"]).status.success());
}

#[test]
fn the_image_store_loads_layers_with_whiteouts_and_removes_images() {
    let Some(d) = Daemon::start("unix:STATE/docker.sock") else {
        return;
    };
    // The socket is for its owner and group.
    let sock = d.state.path().join("docker.sock");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let t = tempfile::tempdir().unwrap();
    let lower = write_tree(
        &t.path().join("lower"),
        &[("etc/removed", "x"), ("opq/old", "o"), ("keep", "k")],
    );
    let upper = write_tree(
        &t.path().join("upper"),
        &[
            (".wh.removed", ""),
            ("opq/.wh..wh..opq", ""),
            ("opq/new", "n"),
        ],
    );
    // The whiteout of etc/removed sits in etc/ of the upper layer.
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::rename(upper.join(".wh.removed"), upper.join("etc/.wh.removed")).unwrap();
    let tar = t.path().join("img.tar");
    support::save_tar::save_tar(
        &[&lower, &upper],
        serde_json::json!({ "Cmd": ["/bin/sh"], "Env": ["A=1"], "WorkingDir": "/srv" }),
        "t/whiteouts:v1",
        &tar,
    );
    let out = d.ok(&["load", "-i", &tar.display().to_string()]);
    assert_eq!(out.trim(), "Loaded image: t/whiteouts:v1");
    let images = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(images.trim(), "t/whiteouts:v1");
    let cfg = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.Cmd}} {{.Config.Env}} {{.Config.WorkingDir}}",
        "t/whiteouts:v1",
    ]);
    assert_eq!(cfg.trim(), "[/bin/sh] [A=1] /srv");
    // The image's disk holds the layers applied in order: read back with debugfs.
    let store = d.state.path().join("image-store");
    let dir = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("disk.vmdk").exists())
        .expect("an image disk")
        .path();
    let raw = t.path().join("disk.raw");
    let conv = Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(dir.join("disk.vmdk"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(conv.success());
    let ls = |p: &str| {
        let o = Command::new("debugfs")
            .args(["-R", &format!("ls -l {p}")])
            .arg(&raw)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let root = ls("/");
    assert!(root.contains(" keep"), "{root}");
    assert!(root.contains(" proc") && root.contains(" dev"), "{root}");
    assert!(!ls("/etc").contains("removed"));
    let opq = ls("/opq");
    assert!(opq.contains(" new") && !opq.contains(" old"), "{opq}");
    assert!(!opq.contains(".wh."), "{opq}");
    // Loading it again changes nothing; a second tag, then rmi untags before it deletes.
    d.ok(&["load", "-i", &tar.display().to_string()]);
    assert_eq!(d.ok(&["images", "-q"]).lines().count(), 1);
    let rootfs = t.path().join("rootfs.tar");
    support::save_tar::tar_dir(&lower, &rootfs);
    let id = d.ok(&[
        "import",
        "-c",
        "CMD [\"/keep\"]",
        &rootfs.display().to_string(),
        "t/imported",
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let cmd = d.ok(&["image", "inspect", "-f", "{{.Config.Cmd}}", "t/imported"]);
    assert_eq!(cmd.trim(), "[/keep]");
    let gone = d.ok(&["rmi", "t/imported", "t/whiteouts:v1"]);
    assert!(gone.contains("Untagged: t/imported:latest"), "{gone}");
    assert!(gone.contains("Deleted: sha256:"), "{gone}");
    assert_eq!(d.ok(&["images", "-q"]).trim(), "");
    // Not an image archive: a clear error, nothing added.
    let junk = t.path().join("junk.tar");
    support::save_tar::tar_dir(&lower, &junk);
    let out = d.docker(&["load", "-i", &junk.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("manifest.json"));
}

#[test]
fn volumes_through_the_api() {
    let Some(d) = Daemon::start("tcp:127.0.0.1:0") else {
        return;
    };
    assert_eq!(
        d.ok(&["volume", "create", "--opt", "size=64M", "data"])
            .trim(),
        "data"
    );
    let ls = d.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert_eq!(ls.trim(), "vmdk data");
    let size = d.ok(&["volume", "inspect", "-f", "{{.Options.size}}", "data"]);
    assert_eq!(size.trim(), "64M");
    // The same volume `vch volume` sees.
    let vch = Command::new(env!("CARGO_BIN_EXE_vch"))
        .args(["volume", "ls"])
        .env("VCH_STATE", d.state.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&vch.stdout).contains("data"));
    assert_eq!(d.ok(&["volume", "rm", "data"]).trim(), "data");
    let out = d.docker(&["volume", "rm", "data"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such volume: data"));
}
