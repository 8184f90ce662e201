//! The tether as an ordinary process: VIC's own acceptance cases (reference 10.2) and the faults
//! of VIC's tether we set out to beat.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tether_proto::iolog::Stream;

const LIMIT: Duration = Duration::from_secs(30);

fn primary(h: &Harness) -> tether_proto::config::SessionConfig {
    h.state().sessions[ID].clone()
}

#[test]
fn path_lookup_and_output_match_a_direct_run() {
    // VIC TestHalt: `date --reference=/`, by PATH lookup.
    let h = Harness::new(&config(&["date", "--reference=/"]));
    assert!(h.run(&[], LIMIT).success());
    let direct = std::process::Command::new("date")
        .arg("--reference=/")
        .output()
        .unwrap();
    assert_eq!(
        h.output(Stream::Stdout),
        String::from_utf8_lossy(&direct.stdout)
    );
    let s = primary(&h);
    assert_eq!((s.started.as_str(), s.exit_status), ("true", 0));
    assert!(s.detail.start_time > 0 && s.detail.stop_time >= s.detail.start_time);
}

#[test]
fn relative_path_is_relative_to_dir() {
    let mut cfg = config(&["./hello"]);
    let h = Harness::new(&cfg);
    write_script(&h.path("hello"), "#!/bin/sh\necho relative \"$PWD\"\n");
    cfg.sessions.get_mut(ID).unwrap().cmd.dir = h.dir.path().to_str().unwrap().into();
    h.update(|c| *c = cfg.clone());
    assert!(h.run(&[], LIMIT).success());
    assert_eq!(
        h.output(Stream::Stdout),
        format!("relative {}\n", h.dir.path().display())
    );
}

#[test]
fn absolute_path_with_separate_stdout_and_stderr() {
    let h = Harness::new(&config(&[
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; echo out2",
    ]));
    assert!(h.run(&[], LIMIT).success());
    assert_eq!(h.output(Stream::Stdout), "out\nout2\n");
    assert_eq!(h.output(Stream::Stderr), "err\n");
}

#[test]
fn missing_binaries_fail_with_vics_text_and_docker_codes() {
    for (args, text, code) in [
        (
            vec!["/not/there"],
            "stat /not/there: no such file or directory",
            127,
        ),
        (
            vec!["notthere"],
            "notthere: no such executable in PATH",
            127,
        ),
        (vec!["/etc/passwd"], "/etc/passwd: permission denied", 126),
    ] {
        let h = Harness::new(&config(&args));
        assert!(
            h.run(&[], LIMIT).success(),
            "the tether itself ends cleanly"
        );
        let s = primary(&h);
        assert_eq!(
            (s.started.as_str(), s.exit_status),
            (text, code),
            "{args:?}"
        );
    }
}

#[test]
fn exit_codes_and_signal_deaths_are_reported_as_docker_does() {
    let h = Harness::new(&config(&["/bin/sh", "-c", "exit 7"]));
    assert!(h.run(&[], LIMIT).success());
    assert_eq!(primary(&h).exit_status, 7);
    // VIC wrote -1 for a signal death; docker says 128+N.
    let h = Harness::new(&config(&["/bin/sh", "-c", "kill -TERM $$"]));
    assert!(h.run(&[], LIMIT).success());
    assert_eq!(primary(&h).exit_status, 143);
    let h = Harness::new(&config(&["/bin/sh", "-c", "kill -KILL $$"]));
    assert!(h.run(&[], LIMIT).success());
    assert_eq!(primary(&h).exit_status, 137);
}

#[test]
fn a_pipe_in_an_argument_is_not_cut() {
    // VIC's format would deliver "echo a" only (issue #3510).
    let h = Harness::new(&config(&["/bin/sh", "-c", "echo a|tr a b"]));
    assert!(h.run(&[], LIMIT).success());
    assert_eq!(h.output(Stream::Stdout), "b\n");
}

#[test]
fn tty_output_goes_through_a_pty() {
    let mut cfg = config(&[
        "/bin/sh",
        "-c",
        "tty >/dev/null && echo is-a-tty; echo err >&2",
    ]);
    cfg.sessions.get_mut(ID).unwrap().tty = true;
    let h = Harness::new(&cfg);
    assert!(h.run(&[], LIMIT).success());
    // A pty merges the streams and turns \n into \r\n.
    assert_eq!(h.output(Stream::Stdout), "is-a-tty\r\nerr\r\n");
    assert_eq!(h.output(Stream::Stderr), "");
}

#[test]
fn exec_via_reload_and_a_failing_exec_is_not_fatal() {
    // VIC TestExec + TestMissingBinaryNonFatal: the primary waits for a file an exec creates.
    let h = Harness::new(&config(&[
        "/bin/sh",
        "-c",
        "while [ ! -e \"$1\" ]; do sleep 0.02; done; echo primary done",
        "sh",
    ]));
    let flag = h.path("flag");
    h.update(|c| {
        let a = &mut c.sessions.get_mut(ID).unwrap().cmd.args;
        a.push(flag.to_str().unwrap().to_string());
    });
    let mut t = h.spawn(&[]);
    wait_until(LIMIT, "the primary to start", || {
        primary(&h).started == "true"
    });
    h.update(|c| {
        c.execs.insert("bad".into(), session(&["/no/such/exec"]));
    });
    send_signal(&t, libc::SIGHUP);
    wait_until(LIMIT, "the failing exec to be reported", || {
        h.state()
            .execs
            .get("bad")
            .is_some_and(|e| !e.started.is_empty())
    });
    h.update(|c| {
        c.execs
            .insert("good".into(), session(&["touch", flag.to_str().unwrap()]));
    });
    send_signal(&t, libc::SIGHUP);
    assert!(wait(&mut t, LIMIT, &h.debug_text()).success());
    let s = h.state();
    assert_eq!(
        s.execs["bad"].started,
        "stat /no/such/exec: no such file or directory"
    );
    assert_eq!(s.execs["bad"].exit_status, 127);
    assert_eq!(
        (
            s.execs["good"].started.as_str(),
            s.execs["good"].exit_status
        ),
        ("true", 0)
    );
    assert!(s.execs["good"].detail.stop_time >= s.execs["good"].detail.start_time);
    assert_eq!(
        (
            s.sessions[ID].exit_status,
            h.output(Stream::Stdout).as_str()
        ),
        (0, "primary done\n")
    );
}

#[test]
fn exec_output_is_kept_and_flagged() {
    let h = Harness::new(&config(&[
        "/bin/sh",
        "-c",
        "while [ ! -e \"$0\" ]; do sleep 0.02; done",
    ]));
    let flag = h.path("flag");
    h.update(|c| {
        c.sessions
            .get_mut(ID)
            .unwrap()
            .cmd
            .args
            .push(flag.to_str().unwrap().into())
    });
    let mut t = h.spawn(&[]);
    wait_until(LIMIT, "the primary to start", || {
        primary(&h).started == "true"
    });
    h.update(|c| {
        c.execs.insert(
            "e1".into(),
            session(&[
                "/bin/sh",
                "-c",
                &format!("echo from-exec; touch {}", flag.display()),
            ]),
        );
    });
    send_signal(&t, libc::SIGHUP);
    assert!(wait(&mut t, LIMIT, &h.debug_text()).success());
    let exec_out: Vec<u8> = h
        .log()
        .into_iter()
        .filter(|e| e.exec)
        .flat_map(|e| e.data)
        .collect();
    assert_eq!(exec_out, b"from-exec\n");
    assert_eq!(
        h.output(Stream::Stdout),
        "",
        "the container's own output has no exec output"
    );
}

#[test]
fn deactivating_the_primary_stops_it_with_its_stop_signal() {
    // VIC TestExecHalt (where VIC reported -1).
    let h = Harness::new(&config(&["sleep", "100"]));
    let mut t = h.spawn(&[]);
    wait_until(LIMIT, "the primary to start", || {
        primary(&h).started == "true"
    });
    h.update(|c| c.sessions.get_mut(ID).unwrap().active = false);
    send_signal(&t, libc::SIGHUP);
    assert!(wait(&mut t, LIMIT, &h.debug_text()).success());
    assert_eq!(primary(&h).exit_status, 143);
}

#[test]
fn a_grandchild_holding_stdout_does_not_hold_the_exit_status() {
    // VIC #7810: a daemonised grandchild keeps the pipe open and the container never stops.
    let h = Harness::new(&config(&["/bin/sh", "-c", "sleep 60 & echo started"]));
    let t0 = Instant::now();
    assert!(h.run(&["--drain-timeout", "0.5"], LIMIT).success());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(h.output(Stream::Stdout), "started\n");
    assert_eq!(primary(&h).exit_status, 0);
    assert!(h.debug_text().contains("still held open"));
}

#[test]
fn sigterm_stops_cleanly_and_escalates_to_kill() {
    let h = Harness::new(&config(&[
        "/bin/sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    ]));
    let mut t = h.spawn(&["--stop-timeout", "0.5"]);
    wait_until(LIMIT, "the primary to be ready", || {
        h.output(Stream::Stdout) == "ready\n"
    });
    send_signal(&t, libc::SIGTERM);
    assert!(wait(&mut t, LIMIT, &h.debug_text()).success());
    assert_eq!(
        primary(&h).exit_status,
        137,
        "TERM was ignored, so the group got KILL"
    );
    assert!(h.debug_text().contains("killing its process group"));
}

#[test]
fn stop_signal_from_the_config_is_used() {
    let mut cfg = config(&[
        "/bin/sh",
        "-c",
        "trap 'echo got-usr1; exit 0' USR1; echo ready; while :; do sleep 0.05; done",
    ]);
    cfg.sessions.get_mut(ID).unwrap().stop_signal = "sigusr1".into();
    let h = Harness::new(&cfg);
    let mut t = h.spawn(&[]);
    wait_until(LIMIT, "the primary to be ready", || {
        h.output(Stream::Stdout) == "ready\n"
    });
    send_signal(&t, libc::SIGINT);
    assert!(wait(&mut t, LIMIT, &h.debug_text()).success());
    assert_eq!(h.output(Stream::Stdout), "ready\ngot-usr1\n");
    assert_eq!(primary(&h).exit_status, 0);
}

#[test]
fn runblock_starts_after_the_deadline_and_says_so() {
    let mut cfg = config(&["echo", "late"]);
    cfg.sessions.get_mut(ID).unwrap().run_block = true;
    let h = Harness::new(&cfg);
    assert!(h.run(&["--runblock-timeout", "0.3"], LIMIT).success());
    assert_eq!(h.output(Stream::Stdout), "late\n");
    assert!(h.debug_text().contains("no unblock within"));
    assert!(!primary(&h).run_block, "runblock is cleared once launched");
}

#[test]
fn restartable_exec_is_relaunched_with_backoff() {
    let h = Harness::new(&config(&[
        "/bin/sh",
        "-c",
        "while [ \"$(wc -l < \"$0\" 2>/dev/null)\" != 3 ]; do sleep 0.02; done",
    ]));
    let count = h.path("count");
    h.update(|c| {
        c.sessions
            .get_mut(ID)
            .unwrap()
            .cmd
            .args
            .push(count.to_str().unwrap().into())
    });
    let mut exec = session(&[
        "/bin/sh",
        "-c",
        &format!("echo x >> {}; exit 1", count.display()),
    ]);
    exec.restart = true;
    h.update(|c| {
        c.execs.insert("r".into(), exec);
    });
    assert!(h.run(&[], LIMIT).success());
    let s = h.state();
    assert!(
        s.execs["r"].diagnostics.resurrection_count >= 2,
        "{:?}",
        s.execs["r"].diagnostics
    );
}

#[test]
fn runs_as_the_containers_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: changing user needs root");
        return;
    }
    let mut cfg = config(&["id", "-u"]);
    cfg.sessions.get_mut(ID).unwrap().user = "nobody".into();
    let h = Harness::new(&cfg);
    assert!(h.run(&[], LIMIT).success());
    assert_eq!(h.output(Stream::Stdout), "65534\n");
}

#[test]
fn every_orphan_is_reaped() {
    // 10 000 grandchildren orphaned to the tether; the primary ends once all have exited.
    let script = "pipe(R, W) or die; for (1..10000) { my $p = fork; die unless defined $p; \
                  if ($p == 0) { close R; exit 0 if fork; exit 0 } waitpid($p, 0) } close W; <R>; exit 0";
    let h = Harness::new(&config(&["perl", "-e", script]));
    assert!(h.run(&[], Duration::from_secs(120)).success());
    assert_eq!(primary(&h).exit_status, 0);
    let debug = h.debug_text();
    assert!(
        debug.contains("orphans=10000"),
        "{}",
        debug.lines().last().unwrap_or("")
    );
}
