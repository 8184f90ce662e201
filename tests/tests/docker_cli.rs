//! End to end through the docker CLI: Debian's docker 20.10 client (`/usr/bin/docker`, its daemon
//! never started) drives `vch serve`, which boots containerVMs under QEMU. The image is the
//! default image's files made into a `docker save` archive by the test (two layers, the upper
//! one with whiteouts) and loaded with `docker load`.

mod common;
#[path = "../../vch/tests/support/docker.rs"]
mod docker;
mod pty;
#[path = "../../vch/tests/support/save_tar.rs"]
mod save_tar;

use std::process::{Child, Command, Output, Stdio};

use common::*;
use std::time::{Duration, Instant};

const IMAGE: &str = "tether/default:e2e";

/// `vch serve` on a state root of its own with the test image loaded, and the docker CLI
/// pointed at it.
struct Daemon {
    state: tempfile::TempDir,
    config: tempfile::TempDir,
    host: String,
    child: Child,
}

impl Daemon {
    /// `None` (after saying why) when QEMU or the docker CLI is not installed.
    fn start() -> Option<Self> {
        if !qemu_present() {
            return None;
        }
        if !docker::cli_present() {
            return None;
        }
        assert!(
            assets().join("vmlinux").exists() && vch_bin().exists(),
            "run scripts/build-vm"
        );
        let state = tempfile::tempdir().unwrap();
        let sock = state.path().join("docker.sock");
        let mut serve = Command::new(vch_bin());
        serve
            .args(["serve", "--docker"])
            .arg(format!("unix:{}", sock.display()))
            .env("VCH_STATE", state.path())
            .env("VCH_ASSETS", assets())
            // No test traffic leaves this machine: QEMU's user network with restrict=on.
            .env("VCH_NET", "isolated");
        let (child, host) = docker::start_serve(serve);
        assert_eq!(host, format!("unix://{}", sock.display()));
        let d = Self {
            state,
            config: tempfile::tempdir().unwrap(),
            host,
            child,
        };
        d.load_image();
        Some(d)
    }

    /// The default image's files as two layers: the lower with files the upper one hides (a
    /// whiteout and an opaque directory), loaded with `docker load`.
    fn load_image(&self) {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        let out = Command::new(vch_bin())
            .args(["image", "default", "--tree"])
            .arg(&lower)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::write(lower.join("etc/removed"), "gone").unwrap();
        std::fs::create_dir_all(lower.join("opq")).unwrap();
        std::fs::write(lower.join("opq/old"), "hidden").unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("opq")).unwrap();
        std::fs::write(upper.join("etc/.wh.removed"), "").unwrap();
        std::fs::write(upper.join("opq/.wh..wh..opq"), "").unwrap();
        std::fs::write(upper.join("opq/new"), "visible").unwrap();
        let tar = t.path().join("image.tar");
        save_tar::save_tar(
            &[&lower, &upper],
            serde_json::json!({
                "Cmd": ["/hello"],
                "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes"],
            }),
            IMAGE,
            &tar,
        );
        let loaded = self.ok(&["load", "-i", &tar.display().to_string()]);
        assert_eq!(loaded.trim(), format!("Loaded image: {IMAGE}"));
    }

    fn cmd(&self, args: &[&str]) -> Command {
        docker::cli(&self.host, self.config.path(), args)
    }

    /// A docker command run to its end within 180 s.
    fn docker(&self, args: &[&str]) -> Output {
        output_within(
            self.cmd(args),
            Duration::from_secs(180),
            &format!("docker {args:?}"),
        )
    }

    /// A docker command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} ({:?}): {}\n{}",
            out.status,
            text(&out.stderr),
            self.logs()
        );
        text(&out.stdout)
    }

    /// Every containerVM's debug port and supervisor log (for failure messages).
    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.state.path()).unwrap().flatten() {
            for f in ["tether.debug", "supervisor.log"] {
                if let Ok(t) = std::fs::read_to_string(e.path().join(f)) {
                    out.push_str(&format!("--- {}/{f}\n{t}", e.path().display()));
                }
            }
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The containerVMs go with the test.
        let ids = self.docker(&["ps", "-aq"]);
        for id in text(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn docker_run_gives_output_and_docker_exit_codes() {
    let Some(d) = Daemon::start() else { return };
    // The image's config is the default command, and --rm leaves nothing behind.
    let out = d.docker(&["run", "--rm", IMAGE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("Hello from a containerVM"));
    let out = d.docker(&["run", "--rm", IMAGE, "echo", "hi"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "hi\n".into())
    );
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "", "--rm removed it");
    // Separate streams, the exit status, and the layers as loaded (whiteouts, the image's env).
    let script = "echo out; echo err >&2; test ! -e /etc/removed && test ! -e /opq/old \
                  && cat /opq/new && echo \" $FROM_IMAGE $FROM_RUN $(pwd)\"; exit 7";
    let out = d.docker(&[
        "run",
        "--name",
        "seven",
        "-l",
        "suite=e2e",
        "-e",
        "FROM_RUN=r",
        "-w",
        "/opq",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\nvisible yes r /opq\n");
    assert_eq!(text(&out.stderr), "err\n");
    let state = d.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        "seven",
    ]);
    assert_eq!(state.trim(), "exited 7");
    assert_eq!(d.ok(&["wait", "seven"]).trim(), "7");
    // A missing binary: 127 with the reason; a command that cannot run: 126.
    let out = d.docker(&["run", "--rm", IMAGE, "nosuch"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );
    let out = d.docker(&["run", "--rm", IMAGE, "/etc"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    // ps -a filters: by status, name and label.
    let running = d.ok(&["run", "-d", "--name", "up", IMAGE, "sleep", "300"]);
    assert_eq!(running.trim().len(), 64);
    let names = |args: &[&str]| {
        let mut a = vec!["ps", "-a", "--format", "{{.Names}}"];
        a.extend_from_slice(args);
        let mut v: Vec<String> = d.ok(&a).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(names(&["--filter", "status=exited"]), ["seven"]);
    assert_eq!(names(&["--filter", "status=running"]), ["up"]);
    assert_eq!(names(&["--filter", "label=suite=e2e"]), ["seven"]);
    assert_eq!(names(&["--filter", "name=up"]), ["up"]);
    assert_eq!(names(&[]), ["seven", "up"]);
    assert_eq!(d.ok(&["ps", "--format", "{{.Names}}"]).trim(), "up");
    // The same containerVMs as `vch ps` sees.
    let vch_ps = Command::new(vch_bin())
        .arg("ps")
        .env("VCH_STATE", d.state.path())
        .output()
        .unwrap();
    let vch_ps = text(&vch_ps.stdout);
    assert!(
        vch_ps.contains("up ") && vch_ps.contains("seven"),
        "{vch_ps}"
    );
    // rename, and kill with a signal: 128 + its number.
    d.ok(&["rename", "up", "up2"]);
    d.ok(&["kill", "-s", "HUP", "up2"]);
    assert_eq!(d.ok(&["wait", "up2"]).trim(), "129");
    d.ok(&["run", "-d", "--name", "up", IMAGE, "sleep", "300"]);
    // rm of a running container is refused; rm -f takes it; rm of an exited one.
    let out = d.docker(&["rm", "up"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot remove a running container"));
    d.ok(&["rm", "-f", "up", "up2", "seven"]);
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
}

#[test]
fn docker_run_it_resizes_and_attach_detaches_with_the_keys() {
    let Some(d) = Daemon::start() else { return };
    // The size of the CLI's terminal reaches the process after start, and a resize later.
    let script = "stty size; while read l; do [ \"$l\" = q ] && exit 5; stty size; done";
    let mut t = pty::Terminal::spawn(
        d.cmd(&["run", "-it", "--rm", IMAGE, "sh", "-c", script]),
        (30, 90),
    );
    t.expect("30 90", Duration::from_secs(120), &|| d.logs());
    t.resize((45, 132));
    t.type_until(b"\n", "45 132", Duration::from_secs(30));
    t.write(b"q\n");
    assert_eq!(t.wait(Duration::from_secs(60)), Some(5), "{}", t.seen());
    // docker attach to a running shell, detach with the keys given, the shell goes on; attach
    // again and end it.
    d.ok(&["run", "-dit", "--name", "shell", IMAGE, "sh"]);
    let mut t = pty::Terminal::spawn(
        d.cmd(&["attach", "--detach-keys", "ctrl-x,x", "shell"]),
        (24, 80),
    );
    std::thread::sleep(Duration::from_millis(500));
    t.type_until(
        b"echo hello-$((6*7))\n",
        "hello-42",
        Duration::from_secs(60),
    );
    t.write(b"\x18x");
    assert!(
        t.wait(Duration::from_secs(30)).is_some(),
        "the CLI detached: {}",
        t.seen()
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "shell"])
            .trim(),
        "true"
    );
    let mut t = pty::Terminal::spawn(d.cmd(&["attach", "shell"]), (24, 80));
    std::thread::sleep(Duration::from_millis(500));
    t.write(b"exit 9\n");
    assert_eq!(t.wait(Duration::from_secs(60)), Some(9), "{}", t.seen());
    assert_eq!(d.ok(&["wait", "shell"]).trim(), "9");
}

#[test]
fn detached_logs_exec_stop_and_wait() {
    let Some(d) = Daemon::start() else { return };
    // One that ends on its stop signal, one that ignores it.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "fast",
        IMAGE,
        "sh",
        "-c",
        "echo started; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.3; done",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        IMAGE,
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.3; done",
    ]);
    // logs -f follows the output until the container ends.
    let follow = d
        .cmd(&["logs", "-f", "fast"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // exec, without and with a tty, and detached.
    let out = d.docker(&[
        "exec",
        "fast",
        "sh",
        "-c",
        "echo in-exec; echo e >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("in-exec\n".into(), "e\n".into())
    );
    let mut t = pty::Terminal::spawn(
        d.cmd(&[
            "exec",
            "-it",
            "fast",
            "sh",
            "-c",
            "tty; sleep 1; stty size; exit 4",
        ]),
        (33, 101),
    );
    t.expect("/dev/pts/", Duration::from_secs(60), &|| d.logs());
    // The CLI's exec resize reaches the exec's terminal.
    t.expect("33 101", Duration::from_secs(30), &|| d.logs());
    assert_eq!(t.wait(Duration::from_secs(60)), Some(4));
    d.ok(&[
        "exec",
        "-d",
        "fast",
        "sh",
        "-c",
        "echo detached > /tmp/mark",
    ]);
    let start = Instant::now();
    while d.docker(&["exec", "fast", "cat", "/tmp/mark"]).stdout != b"detached\n" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the detached exec never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let top = d.ok(&["top", "fast"]);
    assert!(top.contains("sleep 0.3"), "{top}");
    // docker stops, then waits: the stop returns when the process dies, well before its 30 s.
    let waiter = d
        .cmd(&["wait", "stubborn"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    d.ok(&["stop", "-t", "30", "fast"]);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "stop took {:?}",
        t0.elapsed()
    );
    assert_eq!(d.ok(&["wait", "fast"]).trim(), "143");
    let logs = follow.wait_with_output().unwrap();
    let logs = text(&logs.stdout);
    assert!(logs.starts_with("started\ntick 1\n"), "{logs}");
    assert_eq!(d.ok(&["logs", "--tail", "1", "fast"]).lines().count(), 1);
    // The one that ignores TERM is killed after the timeout: 137, to the waiter started before.
    d.ok(&["stop", "-t", "1", "stubborn"]);
    let waited = waiter.wait_with_output().unwrap();
    assert_eq!(text(&waited.stdout).trim(), "137");
    let code = d.ok(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}} {{.State.Running}}",
        "stubborn",
    ]);
    assert_eq!(code.trim(), "137 false");
    // A stopped container starts again and runs its command anew.
    d.ok(&["start", "fast"]);
    let start = Instant::now();
    while d.ok(&["logs", "fast"]).matches("started\n").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            d.ok(&["logs", "fast"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // restart: stopped and started again, a third run.
    d.ok(&["restart", "-t", "1", "fast"]);
    let start = Instant::now();
    while d.ok(&["logs", "fast"]).matches("started\n").count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            d.ok(&["logs", "fast"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "fast"])
            .trim(),
        "true"
    );
    d.ok(&["rm", "-f", "fast"]);
    d.ok(&["rm", "stubborn"]);
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
}

#[test]
fn volumes_ports_and_events_through_the_docker_cli() {
    let Some(d) = Daemon::start() else { return };
    let mut events = d
        .cmd(&[
            "events",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A named volume keeps its files across containers; :ro refuses writes.
    let out = d.docker(&[
        "run",
        "--rm",
        "--name",
        "w",
        "-v",
        "data:/d",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /d/f",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = d.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/d:ro",
        IMAGE,
        "sh",
        "-c",
        "cat /d/f; touch /d/g",
    ]);
    assert_eq!(text(&out.stdout), "kept\n");
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(d.ok(&["volume", "ls", "-q"]).contains("data"));
    // A published port, the host port picked by the daemon.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1::80",
        IMAGE,
        "sh",
        "-c",
        "echo served > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
    ]);
    let port = d.ok(&["port", "web", "80"]);
    let port: u16 = port
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("docker port said {port:?}"));
    let start = Instant::now();
    let body = loop {
        match http_get(port, "/index.html") {
            Ok(b) => break b,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(60), "{e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(body, "served\n");
    d.ok(&["rm", "-f", "web"]);
    d.ok(&["volume", "rm", "data"]);
    // A network of our own: a server found by its alias from another container on it.
    d.ok(&["network", "create", "dnet"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "dnet",
        "--network-alias",
        "svc",
        IMAGE,
        "sh",
        "-c",
        "echo served by srv > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
    ]);
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        "dnet",
        IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://svc/ && break; sleep 1; done",
    ]);
    assert_eq!(got, "served by srv\n");
    let ip = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.dnet.IPAddress}}",
        "srv",
    ]);
    assert!(ip.trim().parse::<std::net::Ipv4Addr>().is_ok(), "{ip:?}");
    assert!(
        !d.docker(&["network", "rm", "dnet"]).status.success(),
        "in use"
    );
    d.ok(&["rm", "-f", "srv"]);
    d.ok(&["network", "rm", "dnet"]);
    // The events of those containers, in docker's order.
    let _ = events.kill();
    let seen = text(&events.wait_with_output().unwrap().stdout);
    let w: Vec<&str> = seen.lines().filter(|l| l.ends_with(" w")).collect();
    assert_eq!(w, ["create w", "start w", "die w", "destroy w"], "{seen}");
    let web: Vec<&str> = seen.lines().filter(|l| l.ends_with(" web")).collect();
    assert_eq!(
        web,
        ["create web", "start web", "die web", "destroy web"],
        "{seen}"
    );
}
