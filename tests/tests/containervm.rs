//! End to end: `vch` boots containerVMs under QEMU (TCG here; KVM where it really works) with
//! Debian's kernel, our initramfs (the tether as /init), bootstrap.iso and VMDK images, and the
//! tether as PID 1 runs the container. `scripts/build-vm` makes the boot media and the `vch`
//! these tests drive (`VCH_BIN` and `VCH_ASSETS` override where they are).
//!
//! The tests skip, saying so, only when QEMU is not installed at all; a missing boot medium is a
//! failure.

mod common;
mod pty;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use std::time::{Duration, Instant};

/// A state root of its own for each test; `None` (after saying why) when QEMU cannot run here.
struct Host {
    state: tempfile::TempDir,
}

impl Host {
    fn new() -> Option<Self> {
        if !qemu_present() {
            return None;
        }
        for f in [
            "vmlinux",
            "initramfs.cpio",
            "bootstrap.iso",
            "images/default.vmdk",
        ] {
            assert!(
                assets().join(f).exists(),
                "{} is missing: run scripts/build-vm",
                assets().join(f).display()
            );
        }
        assert!(
            vch_bin().exists(),
            "{} is missing: run scripts/build-vm",
            vch_bin().display()
        );
        Some(Self {
            state: tempfile::tempdir().unwrap(),
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(vch_bin());
        c.args(args)
            .env("VCH_STATE", self.state.path())
            .env("VCH_ASSETS", assets())
            // No test traffic leaves this machine: QEMU's user network with restrict=on.
            .env("VCH_NET", "isolated")
            .stdin(Stdio::null());
        c
    }

    /// Runs vch to its end, with a deadline.
    fn vch(&self, args: &[&str]) -> Output {
        output_within(
            self.cmd(args),
            Duration::from_secs(180),
            &format!("vch {args:?}"),
        )
    }

    /// Runs vch, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.vch(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "vch {args:?}: {}\n{}",
            text(&out.stderr),
            self.debug_log()
        );
        text(&out.stdout)
    }

    /// The debug port of the only containerVM (for failure messages).
    fn debug_log(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.state.path()).unwrap().flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path().join("tether.debug")) {
                out.push_str(&t);
            }
        }
        out
    }

    /// Waits until no containerVM's supervisor is left (QEMU has exited).
    fn wait_all_stopped(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            let ps = self.vch(&["ps"]);
            if !String::from_utf8_lossy(&ps.stdout).contains("running") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

#[test]
fn hello_world_with_the_kernel_and_with_bootstrap_iso() {
    let Some(host) = Host::new() else { return };
    for boot in ["kernel", "iso"] {
        let out = host.vch(&["run", "--rm", "--boot", boot]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{boot}: {}\n{}",
            text(&out.stderr),
            host.debug_log()
        );
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with("Hello from a containerVM: pid "),
            "{boot}: {stdout:?}"
        );
        assert!(
            stdout.contains("cloud-amd64"),
            "the Debian kernel: {stdout:?}"
        );
    }
}

#[test]
fn exit_status_and_signal_death() {
    let Some(host) = Host::new() else { return };
    let out = host.vch(&[
        "run",
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n", "stderr kept apart");
    let out = host.vch(&["run", "--", "/bin/sh", "-c", "kill -USR1 $$"]);
    assert_eq!(out.status.code(), Some(128 + 10), "{}", text(&out.stderr));
    // The status the tether wrote to guestinfo says the same.
    let ps = text(&host.vch(&["ps"]).stdout);
    assert!(
        ps.contains("exited (7)") && ps.contains("exited (138)"),
        "{ps}"
    );
}

#[test]
fn a_burst_of_output_reaches_the_client_whole_before_the_vm_powers_off() {
    let Some(host) = Host::new() else { return };
    // About 800 KB written at once, far faster than the emulated UART carries it: the tether
    // holds it for the client and powers off only after the client has taken all of it.
    let out = host.vch(&["run", "--", "/bin/seq", "1", "120000"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let expected: String = (1..=120000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout.len(), expected.len(), "every byte arrived");
    assert!(out.stdout == expected.as_bytes(), "in order, unchanged");
    // And the output log has it too.
    let logs = host.vch(&[
        "logs",
        &text(&host.vch(&["ps"]).stdout).lines().nth(1).unwrap()[..12],
    ]);
    assert!(
        logs.stdout == expected.as_bytes(),
        "output.log holds the same bytes"
    );
}

#[test]
fn the_tether_attaches_over_virtio_vsock() {
    let Some(host) = Host::new() else { return };
    let out = host.vch(&[
        "run",
        "--attach-line",
        "vsock",
        "--",
        "/bin/sh",
        "-c",
        "seq 1 20000; dd if=/dev/zero bs=65536 count=128 2>/dev/null; echo err >&2; exit 4",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}\n{}",
        text(&out.stderr),
        host.debug_log()
    );
    // Faster than the host's client takes it: the supervisor must outlive its delivery (8 MiB
    // arrived cut at 6-7 MiB when it exited with the VM).
    let lines: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout.len(), lines.len() + (8 << 20), "every byte");
    assert!(out.stdout.starts_with(lines.as_bytes()), "in order");
    assert!(out.stdout[lines.len()..].iter().all(|&b| b == 0));
    assert_eq!(text(&out.stderr), "err\n");
    assert!(
        host.debug_log().contains("attach server on vsock:2:2377"),
        "the tether used the vsock line"
    );
}

#[test]
fn missing_binary_is_127_with_a_reason() {
    let Some(host) = Host::new() else { return };
    let out = host.vch(&["run", "--", "/no/such/program", "arg"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("no such file or directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_into_a_running_container_then_stop_escalates_to_kill() {
    let Some(host) = Host::new() else { return };
    // The container ignores SIGTERM: only the escalation to SIGKILL ends it.
    let out = host.vch(&[
        "run",
        "-d",
        "--name",
        "busy",
        "--",
        "/bin/sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 1; done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "an ID: {id:?}");

    let out = host.vch(&[
        "exec",
        "busy",
        "--",
        "/bin/sh",
        "-c",
        "echo from-exec $(cat /etc/os-release | head -1); exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "from-exec NAME=\"tether default image\"\n"
    );

    // PID 1's house before the launch: `lo` up (its operstate reads "down" otherwise), and the
    // container's identity: the hostname (vch gives the name) in the kernel and /etc/hostname,
    // the tether's hosts over the image's.
    let out = host.vch(&[
        "exec",
        "busy",
        "--",
        "/bin/sh",
        "-c",
        "cat /sys/class/net/lo/operstate; hostname; cat /etc/hostname; \
         grep -c '127.0.1.1.busy' /etc/hosts; grep -c localhost4 /etc/hosts",
    ]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "unknown\nbusy\nbusy\n1\n1\n"),
        "{}",
        text(&out.stderr)
    );

    // stdin reaches an interactive exec and its EOF ends it.
    let mut child = host
        .cmd(&["exec", "-i", "busy", "--", "/bin/cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "through stdin\n")
    );

    let started = Instant::now();
    let out = host.vch(&["stop", "-t", "2", "busy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        host.wait_all_stopped(Duration::from_secs(30)),
        "the VM powered off"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "TERM was ignored for the grace time"
    );
    let ps = text(&host.vch(&["ps"]).stdout);
    assert!(ps.contains("exited (137)"), "SIGKILL ended it: {ps}");
    let logs = host.vch(&["logs", "busy"]);
    assert_eq!(text(&logs.stdout), "ready\n");
}

#[test]
fn tty_with_a_resize() {
    let Some(host) = Host::new() else { return };
    // A loop that reports the window size at each line typed, and ends with 5 on "q".
    let script = "tty; stty size; while read l; do [ \"$l\" = q ] && exit 5; stty size; done";
    let mut t = pty::Terminal::spawn(
        host.cmd(&["run", "-it", "--", "/bin/sh", "-c", script]),
        (30, 90),
    );
    t.expect("/dev/pts/", Duration::from_secs(120), &|| host.debug_log());
    t.expect("30 90", Duration::from_secs(10), &|| host.debug_log());
    t.resize((45, 132));
    // The resize travels as window-change beside the typed lines; type until it has arrived.
    t.type_until(b"\n", "45 132", Duration::from_secs(30));
    t.write(b"q\n");
    assert_eq!(t.wait(Duration::from_secs(60)), Some(5), "{}", t.seen());
}

#[test]
fn an_image_without_the_containerfs_label_fails_clearly_and_powers_off() {
    let Some(host) = Host::new() else { return };
    let root = host.state.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let disk = host.state.path().join("unlabelled.vmdk");
    let out = host.vch(&[
        "image",
        "build",
        "--from",
        root.to_str().unwrap(),
        "--label",
        "scratch",
        "-o",
        disk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = host.vch(&[
        "run",
        "--image",
        disk.to_str().unwrap(),
        "--cmdline",
        "tether.rootwait=3",
        "--",
        "/bin/busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("no disk labelled \"containerfs\"") && err.contains("sda"),
        "{err}"
    );
    assert!(
        host.wait_all_stopped(Duration::from_secs(30)),
        "the VM powered off"
    );
}

/// `vch stop` returns as soon as the container is gone (docker's stop: the timeout only bounds
/// the wait before SIGKILL), and so do `vch kill` and `vch rm -f`.
#[test]
fn stop_kill_and_rm_return_as_soon_as_the_container_is_gone() {
    let Some(host) = Host::new() else { return };
    for name in ["st", "ki", "rm"] {
        let out = host.vch(&["run", "-d", "--name", name, "--", "/bin/sleep", "1000"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let ps = text(&host.vch(&["ps"]).stdout);
    assert_eq!(ps.matches("running").count(), 3, "{ps}");

    // The process dies of SIGTERM at once; stop's 10 s are only the bound before SIGKILL.
    let started = Instant::now();
    let out = host.vch(&["stop", "st"]);
    let took = started.elapsed();
    let returned = std::time::SystemTime::now();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(10), "stop waited {took:?}");
    let c = vch::container::Container::find(host.state.path(), "st").unwrap();
    let ended = std::fs::metadata(c.ended_marker())
        .and_then(|m| m.modified())
        .expect("the supervisor marked the VM's end");
    let after = returned.duration_since(ended).unwrap_or_default();
    assert!(
        after < Duration::from_secs(2),
        "stop returned {after:?} after the VM ended"
    );
    assert_eq!(c.exit_status(), Some(143));

    // kill (SIGKILL) returns once the container is gone, as docker's does.
    let out = host.vch(&["kill", "ki"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let c = vch::container::Container::find(host.state.path(), "ki").unwrap();
    assert!(!c.vm_running(), "the VM is gone when kill returns");
    assert_eq!(c.exit_status(), Some(137));

    let started = Instant::now();
    let out = host.vch(&["rm", "-f", "rm"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "rm -f took {:?}",
        started.elapsed()
    );
    let ps = text(&host.vch(&["ps"]).stdout);
    assert!(!ps.contains("running") && !ps.contains(" rm "), "{ps}");
}

/// The order an unmodified VCH uses for `docker exec -it`: the exec written to the config, a
/// `reload`, an attach, `unblock`, and the resize right behind it, while the launch (the exec
/// reads its binary from the emulated disk, tens of milliseconds under TCG) is in flight. The
/// process sees the size asked for.
#[test]
fn a_resize_right_after_unblock_reaches_the_exec_under_qemu() {
    use ssh::{wire, ChannelEvent};
    let Some(host) = Host::new() else { return };
    let out = host.vch(&["run", "-d", "--name", "rz", "--", "/bin/sleep", "1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let c = vch::container::Container::find(host.state.path(), "rz").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let h = vch::front::connect(&c.ctl_socket()).await.unwrap();
        let mut seen = Vec::new();
        for (round, (cols, rows)) in [(77u32, 33u32), (150, 60)].into_iter().enumerate() {
            let id = vch::container::new_id();
            let spec = vch::container::RunSpec {
                name: None,
                command: vec!["/bin/sh".into(), "-c".into(), "read x; stty size".into()],
                env: Vec::new(),
                workdir: None,
                user: None,
                tty: true,
                interactive: true,
                attached: true,
                debug: 0,
                debug_shell: false,
            };
            c.add_exec(&id, &vch::container::session(&id, "rz", &spec))
                .unwrap();
            assert!(h
                .global_request("reload", true, Vec::new())
                .await
                .unwrap()
                .is_some());
            while !vch::attach::container_ids(&h).await.unwrap().contains(&id) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut ch = h.open("attach", id.into_bytes()).await.unwrap().unwrap();
            let size = wire::Writer::new()
                .u32(cols)
                .u32(rows)
                .u32(0)
                .u32(0)
                .finish();
            if round == 0 {
                // Sent back to back: the resize does not wait for unblock's reply.
                let (u, w) = tokio::join!(
                    ch.request("unblock", true, b"Unblock".to_vec()),
                    ch.request("window-change", true, size),
                );
                assert!(u.unwrap() && w.unwrap());
            } else {
                assert!(ch
                    .request("unblock", true, b"Unblock".to_vec())
                    .await
                    .unwrap());
                assert!(ch.request("window-change", true, size).await.unwrap());
            }
            ch.data(b"go\n".to_vec()).await.unwrap();
            let mut out = Vec::new();
            while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(60), ch.recv()).await
            {
                match ev {
                    ChannelEvent::Data(d) => out.extend(d),
                    ChannelEvent::Closed => break,
                    _ => {}
                }
            }
            seen.push((format!("{rows} {cols}"), text(&out)));
        }
        h.disconnect("done").await;
        seen
    });
    for (want, out) in got {
        assert!(out.contains(&want), "wanted {want:?}: {out:?}");
    }
    let out = host.vch(&["stop", "rz"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A free TCP port on the host's loopback (for QEMU's hostfwd to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_user_network_leases_an_address_reaches_the_host_and_publishes_a_port() {
    let Some(host) = Host::new() else { return };
    // A page on the host's loopback, which the container fetches through QEMU's guestfwd.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for mut c in server.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nfrom the host\n");
        }
    });
    let published = free_port();
    // The container shows its network, fetches the host's page, then serves one with busybox
    // httpd on port 8080, published on the host's loopback.
    let script = format!(
        "grep nameserver /etc/resolv.conf; hostname; ip -o -4 addr show dev bridge | \
         awk '{{print $4}}'; wget -q -O - http://10.0.2.100:{server_port}/; \
         mkdir -p /www && echo from the container > /www/index.html && exec httpd -f -p 8080 -h /www"
    );
    let id = host.ok(&[
        "run",
        "-d",
        "-p",
        &format!("{published}:8080"),
        "--host-port",
        &server_port.to_string(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let id = id.trim().to_string();
    // The host fetches the container's page through the published port.
    let start = Instant::now();
    let page = loop {
        match http_get(published, "/") {
            Ok(body) => break body,
            Err(e) if start.elapsed() > Duration::from_secs(120) => {
                panic!("no page from the container: {e}\n{}", host.debug_log())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(page, "from the container\n");
    let logs = text(&host.vch(&["logs", &id]).stdout);
    assert_eq!(
        logs,
        format!(
            "nameserver 10.0.2.3\n{}\n10.0.2.15/24\nfrom the host\n",
            &id[..12]
        ),
        "{}",
        host.debug_log()
    );
    // The lease, as the tether wrote it back, in vch inspect.
    let inspect = host.vch(&["inspect", &id]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let net = &v["NetworkSettings"]["Networks"]["bridge"];
    assert_eq!(net["IPAddress"], "10.0.2.15", "{v}");
    assert_eq!(net["IPPrefixLen"], 24, "{v}");
    assert_eq!(net["Gateway"], "10.0.2.2", "{v}");
    assert_eq!(net["DNS"], serde_json::json!(["10.0.2.3"]), "{v}");
    assert_eq!(
        net["Ports"],
        serde_json::json!([format!("{published}:8080/tcp")]),
        "{v}"
    );
    assert_eq!(v["State"]["Running"], true, "{v}");
    // The tools reported the NIC with its address to the VMX once the network was up (a report
    // with no NIC is 48 bytes long).
    // The supervisor logs what the tools said within a second or so.
    let log = host.state.path().join(&id).join("supervisor.log");
    let reported = || {
        let sup = std::fs::read_to_string(&log).unwrap_or_default();
        sup.lines()
            .filter_map(|l| l.split("tools said: SetGuestInfo  9  (").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
            .any(|n| n > 48)
    };
    let start = Instant::now();
    while !reported() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rm = host.vch(&["rm", "-f", &id]);
    assert_eq!(rm.status.code(), Some(0), "{}", text(&rm.stderr));
}

#[test]
fn containervms_on_a_vch_network_reach_each_other_by_name_and_alias() {
    let Some(host) = Host::new() else { return };
    let ok = |args: &[&str]| host.ok(args);
    ok(&["network", "create", "front"]);
    ok(&["network", "create", "back", "--subnet", "192.168.77.0/24"]);
    // A server on the network, under its name and an alias, its port published on the host.
    let published = free_port();
    ok(&[
        "run",
        "-d",
        "--net",
        "none",
        "-p",
        &format!("{published}:80"),
        "--name",
        "web",
        "--network",
        "front",
        "--network",
        "back",
        "--network-alias",
        "www",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p /www && echo served by web > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    // A client on both networks, with a chosen address on the first: it fetches the page by
    // the server's name and by its alias, through the network's DNS (dnsmasq on the gateway).
    // Its resolv.conf lists both networks' servers (in VIC's endpoint order, by name): `back`'s
    // does not know `web` and refuses, so the resolver asks `front`'s.
    let out = ok(&[
        "run",
        "--net",
        "none",
        "--name",
        "client",
        "--network",
        "front",
        "--network",
        "back",
        "--ip",
        "10.89.1.50",
        "--",
        "/bin/sh",
        "-c",
        "for n in web www; do for i in 1 2 3 4 5 6 7 8 9 10; do \
         wget -q -O - http://$n/ && break; sleep 1; done; done; \
         ip -o -4 addr | awk '$2 != \"lo\" {print $2, $4}'; grep nameserver /etc/resolv.conf",
    ]);
    assert_eq!(
        out,
        "served by web\nserved by web\nfront 10.89.1.50/24\nback 192.168.77.3/24\n\
         nameserver 192.168.77.1\nnameserver 10.89.1.1\n",
        "{}",
        host.debug_log()
    );
    // `run -d` on two networks: both addresses, as the tether wrote them back, in vch inspect.
    let web: serde_json::Value = serde_json::from_str(&ok(&["inspect", "web"])).unwrap();
    assert_eq!(
        web["NetworkSettings"]["Networks"]["front"]["IPAddress"], "10.89.1.2",
        "{web}"
    );
    assert_eq!(
        web["NetworkSettings"]["Networks"]["back"]["IPAddress"], "192.168.77.2",
        "{web}"
    );
    // The client's too.
    let client: serde_json::Value = serde_json::from_str(&ok(&["inspect", "client"])).unwrap();
    let nets = &client["NetworkSettings"]["Networks"];
    assert_eq!(nets["front"]["IPAddress"], "10.89.1.50", "{client}");
    assert_eq!(nets["back"]["IPAddress"], "192.168.77.3", "{client}");
    assert_eq!(nets["back"]["Gateway"], "192.168.77.1", "{client}");
    // The host reaches it through the published port (a forwarder into the network).
    assert_eq!(http_get(published, "/").unwrap(), "served by web\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&["network", "inspect", "front"])).unwrap();
    let members: Vec<(String, String)> = inspect["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            (
                c["Name"].as_str().unwrap().to_string(),
                c["IPv4Address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        members.contains(&("web".into(), "10.89.1.2/24".into())),
        "{inspect}"
    );
    assert!(
        members.contains(&("client".into(), "10.89.1.50/24".into())),
        "{inspect}"
    );
    // In use: refused; once the containers are gone, the network and its namespace go.
    let busy = host.vch(&["network", "rm", "front"]);
    assert!(
        text(&busy.stderr).contains("in use by web"),
        "{}",
        text(&busy.stderr)
    );
    let netns = inspect["Namespace"].as_str().unwrap().to_string();
    ok(&["rm", "-f", "web"]);
    ok(&["rm", "client"]);
    ok(&["network", "rm", "front"]);
    ok(&["network", "rm", "back"]);
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "{netns} is left"
    );
    assert_eq!(
        ok(&["network", "ls"]).lines().count(),
        1,
        "only the heading"
    );
}

#[test]
fn volumes_keep_files_across_runs_nest_copy_up_and_refuse_writes_when_ro() {
    let Some(host) = Host::new() else { return };
    let run = |args: &[&str]| {
        let out = host.vch(args);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // First run: two nested volumes, made on first use; a file written as the last act.
    let (code, out, err) = run(&[
        "run",
        "--net",
        "none",
        "--name",
        "first",
        "-v",
        "outer:/data",
        "-v",
        "inner:/data/inner",
        "--",
        "/bin/sh",
        "-c",
        "grep -c ' /data' /proc/mounts; echo kept > /data/inner/f; echo top > /data/top",
    ]);
    assert_eq!(code, Some(0), "{err}\n{}", host.debug_log());
    assert_eq!(out, "2\n");
    // Unmounted before the power went: the filesystem needs no journal recovery.
    for volume in ["outer", "inner"] {
        let v: serde_json::Value =
            serde_json::from_slice(&host.vch(&["volume", "inspect", volume]).stdout).unwrap();
        let raw = host.state.path().join(format!("{volume}.raw"));
        let conv = Command::new("qemu-img")
            .args(["convert", "-O", "raw", v["Mountpoint"].as_str().unwrap()])
            .arg(&raw)
            .output()
            .unwrap();
        assert!(conv.status.success(), "{}", text(&conv.stderr));
        let head = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&raw)
            .output()
            .unwrap();
        let head = text(&head.stdout);
        assert!(head.contains("Filesystem features:"), "{head}");
        assert!(
            !head.contains("needs_recovery"),
            "{volume} was not unmounted: {head}"
        );
        std::fs::remove_file(&raw).unwrap();
    }
    // Second run: both files there; read-only refuses a write.
    let (code, out, err) = run(&[
        "run",
        "--net",
        "none",
        "--rm",
        "-v",
        "outer:/data:ro",
        "-v",
        "inner:/data/inner",
        "--",
        "/bin/sh",
        "-c",
        "cat /data/top /data/inner/f; touch /data/new 2>/dev/null && echo wrote || echo refused",
    ]);
    assert_eq!(code, Some(0), "{err}\n{}", host.debug_log());
    assert_eq!(out, "top\nkept\nrefused\n");
    // Copy-up: a new volume over the image's /bin holds the image's files (busybox's applets).
    let (code, out, err) = run(&[
        "run",
        "--net",
        "none",
        "--rm",
        "-v",
        "bins:/bin",
        "--",
        "/bin/sh",
        "-c",
        "test -x /bin/busybox && ls /bin | wc -l",
    ]);
    assert_eq!(code, Some(0), "{err}\n{}", host.debug_log());
    assert!(out.trim().parse::<u32>().unwrap() > 100, "{out}");
    // A volume in use by a running containerVM is not attached to a second one, and cannot go.
    let (code, _, err) = run(&[
        "run",
        "-d",
        "--net",
        "none",
        "--name",
        "holder",
        "-v",
        "outer:/data",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&[
        "run",
        "--net",
        "none",
        "-v",
        "outer:/data",
        "--",
        "/bin/true",
    ]);
    assert_eq!(
        code,
        Some(125),
        "as docker's run when it cannot start the container"
    );
    assert!(err.contains("volume outer is in use by holder"), "{err}");
    let (code, _, err) = run(&["volume", "rm", "outer"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("in use by"), "{err}");
    assert_eq!(run(&["rm", "-f", "holder"]).0, Some(0));
    assert_eq!(run(&["rm", "first"]).0, Some(0));
    assert_eq!(run(&["volume", "rm", "outer"]).0, Some(0));
    // An anonymous volume goes with its container's rm -v.
    let (code, _, err) = run(&[
        "run",
        "--net",
        "none",
        "--name",
        "anon",
        "-v",
        "/scratch",
        "--",
        "/bin/true",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let listed = |host: &Host| text(&host.vch(&["volume", "ls"]).stdout).lines().count();
    let before = listed(&host);
    assert_eq!(run(&["rm", "-v", "anon"]).0, Some(0));
    assert_eq!(listed(&host), before - 1);
}

/// nfs-ganesha (user space, VFS backend) serving `dir` as `/export` over NFSv4 on 127.0.0.1,
/// without a grace period; killed when dropped.
struct NfsServer {
    child: std::process::Child,
    port: u16,
}

impl NfsServer {
    fn start(work: &Path, dir: &Path) -> Self {
        let port = free_port();
        let conf = work.join("ganesha.conf");
        std::fs::write(
            &conf,
            format!(
                "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1; \
                 Enable_NLM = false; Enable_RQUOTA = false; }}\n\
                 NFSV4 {{ Graceless = true; }}\n\
                 EXPORT {{ Export_Id = 1; Path = {}; Pseudo = /export; Access_Type = RW; \
                 Squash = No_Root_Squash; Protocols = 4; Transports = TCP; SecType = sys; \
                 FSAL {{ Name = VFS; }} }}\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("ganesha.nfsd")
            .arg("-F")
            .arg("-L")
            .arg(work.join("ganesha.log"))
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(work.join("ganesha.pid"))
            .spawn()
            .expect("ganesha.nfsd (scripts/setup installs nfs-ganesha)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ganesha did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_nfs_volume_from_a_server_on_the_hosts_loopback() {
    let Some(host) = Host::new() else { return };
    let work = tempfile::tempdir().unwrap();
    let export = work.path().join("export");
    std::fs::create_dir(&export).unwrap();
    std::fs::write(export.join("hello"), "from the NFS server\n").unwrap();
    let server = NfsServer::start(work.path(), &export);
    // The container reaches the server at 10.0.2.100:2049 (QEMU's guestfwd to its port).
    let forward = format!("2049:{}", server.port);
    let run = |volume: &str, script: &str| {
        host.ok(&[
            "run",
            "--rm",
            "--host-port",
            &forward,
            "-v",
            volume,
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
    };
    let out = run(
        "nfs://10.0.2.100/export:/share",
        "cat /share/hello; echo from the container > /share/written",
    );
    assert_eq!(out, "from the NFS server\n");
    assert_eq!(
        std::fs::read_to_string(export.join("written")).unwrap(),
        "from the container\n"
    );
    // Read-only: the mount refuses the write.
    let out = run(
        "nfs://10.0.2.100/export:/share:ro",
        "cat /share/written; touch /share/no 2>/dev/null && echo wrote || echo refused",
    );
    assert_eq!(out, "from the container\nrefused\n");
    assert!(!export.join("no").exists());
}

#[test]
fn exec_and_stop_go_through_the_vms_tools_as_vics_vch_does() {
    let Some(host) = Host::new() else { return };
    let id = host
        .ok(&[
            "run",
            "-d",
            "--net",
            "none",
            "--name",
            "tools",
            "--",
            "/bin/sleep",
            "1000",
        ])
        .trim()
        .to_string();
    let inspect = |host: &Host| -> serde_json::Value {
        serde_json::from_slice(&host.vch(&["inspect", "tools"]).stdout).unwrap()
    };
    // The tools poll the supervisor (the VMX): inspect shows them running.
    let start = Instant::now();
    while inspect(&host)["Tools"]["Running"] != true {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            inspect(&host)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And they have registered (a VMX learns their version before it relays guest operations;
    // the supervisor logs what they said about once a second).
    let sup_log = host.state.path().join(&id).join("supervisor.log");
    while !std::fs::read_to_string(&sup_log)
        .unwrap_or_default()
        .contains("tools said: tools.set.version")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(&sup_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = host.ok(&["exec", "tools", "--", "/bin/echo", "through the tools"]);
    assert_eq!(out, "through the tools\n");
    host.ok(&["stop", "tools"]);
    // The guest's tools did both (its debug log), asked by the supervisor (its log).
    let debug = host.debug_log();
    assert!(debug.contains("toolbox: reload"), "{debug}");
    assert!(debug.contains("toolbox: kill SIGTERM"), "{debug}");
    let sup = std::fs::read_to_string(&sup_log).unwrap();
    assert_eq!(
        sup.matches("tools: Vix_1_Relayed_Command").count(),
        2,
        "{sup}"
    );
    // At their start the tools registered and reported the NICs (none here: --net none).
    assert!(
        sup.contains("tools said: tools.set.version 2147483647"),
        "{sup}"
    );
    assert!(sup.contains("tools said: SetGuestInfo  9 "), "{sup}");
    assert_eq!(inspect(&host)["State"]["ExitCode"], 143);
    assert_eq!(inspect(&host)["Tools"]["Running"], false);
}
