//! The tether as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`): orphans
//! come to it as they do in the VM, and signals from outside reach it only through its handlers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tether_proto::iolog::Stream;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn sigterm_to_pid1_stops_the_container_cleanly() {
    let h = Harness::new(&config(&[
        "/bin/sh",
        "-c",
        "echo pid=$$; trap 'echo bye; exit 3' TERM; while :; do sleep 0.05; done",
    ]));
    let Some(mut unshare) = spawn_as_pid1(&h, &[]) else {
        return;
    };
    let tether = tether_pid(&unshare);
    wait_until(LIMIT, "the session to start", || {
        h.output(Stream::Stdout).starts_with("pid=")
    });
    // Inside the namespace the tether is 1, so its session is a small number.
    let pid: i32 = h
        .output(Stream::Stdout)
        .trim_start_matches("pid=")
        .trim()
        .parse()
        .unwrap();
    assert!(
        pid > 1 && pid < 100,
        "session pid {pid} inside the namespace"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tether),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait(&mut unshare, LIMIT, &h.debug_text());
    assert!(status.success(), "{status:?}\n{}", h.debug_text());
    assert_eq!(h.output(Stream::Stdout), format!("pid={pid}\nbye\n"));
    assert_eq!(h.state().sessions[ID].exit_status, 3);
}

#[test]
fn orphans_of_the_namespace_are_reaped_by_pid1() {
    // Double-forked children are orphaned to PID 1 of the namespace, i.e. to the tether.
    let script = "pipe(R, W) or die; for (1..2000) { my $p = fork; die unless defined $p; \
                  if ($p == 0) { close R; exit 0 if fork; exit 0 } waitpid($p, 0) } close W; <R>; exit 0";
    let h = Harness::new(&config(&["perl", "-e", script]));
    let Some(mut unshare) = spawn_as_pid1(&h, &[]) else {
        return;
    };
    assert!(wait(&mut unshare, LIMIT, &h.debug_text()).success());
    assert!(
        h.debug_text().contains("orphans=2000"),
        "{}",
        h.debug_text()
    );
}

/// A connection to a listener on 127.0.0.1: "Network is unreachable" while `lo` is down, as it is
/// in a new network namespace and in a freshly booted VM.
const LOOPBACK_CHECK: &str = "perl -MIO::Socket::INET -e '$l = IO::Socket::INET->new(Listen => 1, \
    LocalAddr => \"127.0.0.1:0\") or die \"listen: $!\\n\"; IO::Socket::INET->new(PeerAddr => \
    \"127.0.0.1\", PeerPort => $l->sockport) or die \"loopback: $!\\n\"; print \"lo up\\n\"'";

#[test]
fn init_runs_the_container_and_powers_the_namespace_off() {
    let script = format!(
        "echo hello from init; {LOOPBACK_CHECK}; test -d /dev/pts; hostname; \
         grep -c web.example.com /etc/hosts; grep -c '^nameserver' /etc/resolv.conf; \
         cat /etc/hostname"
    );
    let mut cfg = config(&["/bin/sh", "-c", &script]);
    cfg.hostname = "web".into();
    cfg.domainname = "example.com".into();
    let h = Harness::new(&cfg);
    // Network, UTS and mount namespaces of its own: `lo` starts down (PID 1 brings it up), and
    // the hostname and the mounts over /etc/hosts, resolv.conf and hostname stay inside.
    let unshare = [
        "--pid",
        "--fork",
        "--mount",
        "--net",
        "--uts",
        "--mount-proc",
    ];
    let probe = Command::new("unshare").args(unshare).arg("true").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: unshare {unshare:?} is not allowed here");
        return;
    }
    let cmdline = h.init_cmdline("");
    let mut c = Command::new("unshare");
    c.args(unshare)
        .arg(tether_bin())
        .args(["init", "--cmdline", &cmdline]);
    let mut child = c.spawn().unwrap();
    let status = wait(&mut child, LIMIT, &h.debug_text());
    // reboot(POWER_OFF) in a PID namespace ends its init with SIGINT: the namespace's power-off.
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        status.signal() == Some(libc::SIGINT) || status.code() == Some(128 + libc::SIGINT),
        "{status:?}\n{}",
        h.debug_text()
    );
    assert_eq!(
        h.output(Stream::Stdout),
        "hello from init\nlo up\nweb.example.com\n2\n0\nweb.example.com\n",
        "{}",
        h.debug_text()
    );
    // The tether's own copies, in its directory.
    let hosts = std::fs::read_to_string(h.path("dot-tether/etc/hosts")).unwrap();
    assert!(hosts.contains("127.0.1.1\tweb.example.com\n"), "{hosts}");
    assert_eq!(h.state().sessions[ID].exit_status, 0);
    assert!(
        h.debug_text().contains("powering off"),
        "{}",
        h.debug_text()
    );
}

#[test]
fn init_with_an_unreadable_config_reports_and_powers_off() {
    let h = Harness::new(&config(&["true"]));
    let probe = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--mount-proc",
            "true",
        ])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: unshare --pid --mount is not allowed here");
        return;
    }
    // No VMware here: the default backdoor source is refused, and the tether says so and powers off.
    let cmdline = format!(
        "tether.debug={} tether.output={} tether.dir={}",
        h.debug.display(),
        h.out.display(),
        h.path("dot-tether").display()
    );
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--uts", "--mount-proc"])
        .arg(tether_bin())
        .args(["init", "--cmdline", &cmdline])
        .spawn()
        .unwrap();
    let status = wait(&mut child, LIMIT, &h.debug_text());
    assert!(!status.success());
    let debug = h.debug_text();
    assert!(debug.contains("not a VMware virtual machine"), "{debug}");
    assert!(debug.contains("powering off"), "{debug}");
}
