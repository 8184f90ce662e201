//! The reliability suite (issue 18): malformed configurations, process storms, output integrity,
//! shutdown and security checks against a process-mode tether (an ordinary process, or PID 1 of a
//! new PID namespace). `RELIABILITY=full` runs each case at full size (`scripts/reliability`);
//! otherwise a short version for CI. With `RELIABILITY_REPORT=FILE` each group appends one JSON
//! line (cases, passed, bytes checked, faults injected, crashes, leaks) that
//! `scripts/reliability` turns into the table of `docs/reliability.md`.

mod common;

use common::report::{crashed, expected, full, generator, log_holds_every_line, logged, size, Row};

/// The groups run one at a time: the storms (a fork bomb, 10 000 signals) starve whatever runs
/// beside them, and the shutdown group's bound is about the tether, not about a starved machine.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tether_proto::extraconfig::KeyValues;

// ---------------------------------------------------------------------------------------------
// Malformed configurations

/// What a malformed config must come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The session runs (the bad part decoded to a default or was ignored) and exits 0.
    Runs,
    /// The primary's `started` holds an error naming `.1`, the tether ends with the state written.
    Refused(&'static str),
    /// The config cannot be read at all: the tether ends at once saying why (`.1` in its log).
    Unreadable(&'static str),
}

struct Case {
    name: &'static str,
    outcome: Outcome,
    /// Changes the keys of a valid config running `/bin/echo ok`.
    change: Box<dyn Fn(&mut KeyValues)>,
}

fn key(k: &str) -> String {
    format!("guestinfo.vice.{k}")
}

fn case(name: &'static str, outcome: Outcome, change: impl Fn(&mut KeyValues) + 'static) -> Case {
    Case {
        name,
        outcome,
        change: Box::new(change),
    }
}

/// A key of the primary session (`c0ffee`), e.g. `cmd/Args`.
fn sk(field: &str) -> String {
    key(&format!("/sessions|c0ffee/{field}"))
}

fn corpus() -> Vec<Case> {
    use Outcome::*;
    let sessions = size(10_000, 300);
    vec![
        case("valid (the baseline)", Runs, |_| {}),
        case("missing container id", Runs, |kv| {
            kv.remove(&key("/common/id"));
        }),
        case("missing session index", Unreadable("no session"), |kv| {
            kv.remove(&key("/sessions"));
        }),
        case("session index names a session with no keys", Runs, |kv| {
            kv.insert(key("/sessions"), "c0ffee|ghost");
        }),
        case("session index with an empty name", Runs, |kv| {
            kv.insert(key("/sessions"), "c0ffee|");
        }),
        case("args count past the end", Refused("cmd/Args"), |kv| {
            kv.insert(sk("cmd/Args"), "7");
        }),
        case("args count negative", Runs, |kv| {
            kv.insert(sk("cmd/Args"), "-5");
        }),
        case("args count huge", Refused("cmd/Args"), |kv| {
            kv.insert(sk("cmd/Args"), "4294967296000");
        }),
        case("args count not a number", Refused("cmd/Args"), |kv| {
            kv.insert(sk("cmd/Args"), "two");
        }),
        case("env count past the end", Refused("cmd/Env"), |kv| {
            kv.insert(sk("cmd/Env"), "9");
        }),
        case("args values with a bad escape", Runs, |kv| {
            kv.insert(sk("cmd/Args~"), "/bin/echo|ok|%ZZ|7");
        }),
        case("a session without a path", Refused("no command"), |kv| {
            kv.insert(sk("cmd/Path"), "");
            kv.insert(sk("cmd/Args"), "-1");
            kv.insert(sk("cmd/Args~"), "");
        }),
        case("a path that is not there", Refused("no such file"), |kv| {
            kv.insert(sk("cmd/Path"), "/no/such/binary");
        }),
        case("an unknown user", Refused("nosuchuser"), |kv| {
            kv.insert(sk("User"), "nosuchuser");
        }),
        case("an unknown group", Refused("nosuchgroup"), |kv| {
            kv.insert(sk("Group"), "nosuchgroup");
        }),
        case(
            "a working directory that is not there",
            Refused("/no/such/dir"),
            |kv| {
                kv.insert(sk("cmd/Dir"), "/no/such/dir");
            },
        ),
        case(
            "a working directory that is a file",
            Refused("/etc/passwd"),
            |kv| {
                kv.insert(sk("cmd/Dir"), "/etc/passwd");
            },
        ),
        case(
            "a 1 MiB environment value",
            Refused("argument list too long"),
            |kv| {
                kv.insert(sk("cmd/Env"), "1");
                kv.insert(
                    sk("cmd/Env~"),
                    format!("PATH=/bin|BIG={}", "x".repeat(1 << 20)),
                );
            },
        ),
        case(
            "a 1 MiB argument",
            Refused("argument list too long"),
            |kv| {
                kv.insert(sk("cmd/Args"), "2");
                kv.insert(
                    sk("cmd/Args~"),
                    format!("/bin/echo|ok|{}", "y".repeat(1 << 20)),
                );
            },
        ),
        case("an environment entry without =", Runs, |kv| {
            kv.insert(sk("cmd/Env~"), "JUSTANAME");
        }),
        case("10 000 environment variables", Runs, |kv| {
            kv.insert(sk("cmd/Env"), "10000");
            let env: Vec<String> = std::iter::once("PATH=/bin".to_string())
                .chain((1..=10_000).map(|i| format!("V{i}={i}")))
                .collect();
            kv.insert(sk("cmd/Env~"), env.join("|"));
        }),
        case("a bad boolean", Refused("tty"), |kv| {
            kv.insert(sk("tty"), "maybe");
        }),
        case("a bad integer in the state", Refused("status"), |kv| {
            kv.insert("guestinfo.vice..sessions|c0ffee.status", "x");
        }),
        case("an integer past i64", Refused("debug"), |kv| {
            kv.insert(key("/diagnostics/debug"), "99999999999999999999999");
        }),
        case("an unknown stop signal", Runs, |kv| {
            kv.insert(sk("stopSignal"), "SIGNOPE");
        }),
        case("unknown keys and scopes", Runs, |kv| {
            kv.insert(key("%weird/scope"), "1");
            kv.insert("guestinfo.vice.", "bare prefix");
            kv.insert(sk("NoSuchField"), "x");
        }),
        case("<nil> as the path", Refused("no command"), |kv| {
            kv.insert(sk("cmd/Path"), "<nil>");
            kv.insert(sk("cmd/Args"), "-1");
            kv.insert(sk("cmd/Args~"), "");
        }),
        case("a bad base64 host key", Refused("key"), |kv| {
            kv.insert(key("/key"), "!!!not base64!!!");
        }),
        case("an exec with the primary's ID", Runs, |kv| {
            kv.insert(key("/execs@non-persistent"), "c0ffee");
        }),
        case("an exec with no keys", Runs, |kv| {
            kv.insert(key("/execs@non-persistent"), "e1");
        }),
        case("a hostname of 300 characters", Runs, |kv| {
            kv.insert(key("/common/name"), "h".repeat(300));
            kv.insert(key("/hostname"), "h".repeat(300));
        }),
        case("a runblock nobody unblocks", Runs, |kv| {
            kv.insert(sk("runblock"), "true");
        }),
        case(
            if full() {
                "10 000 sessions"
            } else {
                "300 sessions (10 000 in the full run)"
            },
            Runs,
            move |kv| {
                let mut ids = vec!["c0ffee".to_string()];
                for i in 0..sessions {
                    let id = format!("s{i}");
                    for (k, v) in [
                        ("active", "true"),
                        ("cmd/Path", "/bin/true"),
                        ("cmd/Args", "0"),
                        ("cmd/Args~", "/bin/true"),
                        ("cmd/Dir", "/"),
                    ] {
                        kv.insert(key(&format!("/sessions|{id}/{k}")), v);
                    }
                    ids.push(id);
                }
                kv.insert(key("/sessions"), ids.join("|"));
            },
        ),
    ]
}

/// Writes `kv` as a `.vmx` file the harness's tether reads.
fn write_vmx(path: &Path, kv: &KeyValues) {
    let text = tether_proto::guestinfo::vmx::render(kv.iter());
    std::fs::write(path, text).unwrap();
}

#[test]
fn malformed_configurations_give_a_clear_outcome_and_never_crash() {
    let _turn = one_at_a_time();
    let mut row = Row::new("malformed configuration");
    let base = config(&["/bin/echo", "ok"]);
    let mut failures = Vec::new();
    let (mut kinds, mut longest) = ([0usize; 3], Duration::ZERO);
    let mut cases = corpus();
    // And two that are not key/value text at all.
    cases.push(case("not UTF-8", Outcome::Unreadable("UTF-8"), |_| {}));
    cases.push(case(
        "binary garbage",
        Outcome::Unreadable("guestinfo"),
        |_| {},
    ));
    cases.push(case(
        "a quoted value cut short",
        Outcome::Unreadable("guestinfo"),
        |_| {},
    ));
    cases.push(case(
        "the same key twice in other cases",
        Outcome::Runs,
        |_| {},
    ));
    for c in cases {
        row.cases += 1;
        row.faults += 1;
        let h = Harness::new(&base);
        let mut kv: KeyValues = base.encode().into_iter().collect();
        (c.change)(&mut kv);
        match c.name {
            "not UTF-8" => {
                let mut text = std::fs::read(&h.vmx).unwrap();
                text.extend_from_slice(b"guestinfo.vice.x = \"\xff\xfe\"\n");
                std::fs::write(&h.vmx, text).unwrap();
            }
            "binary garbage" => std::fs::write(&h.vmx, [0u8, 1, 2, 0xff, b'=', 0x80]).unwrap(),
            "a quoted value cut short" => {
                write_vmx(&h.vmx, &kv);
                let mut text = std::fs::read(&h.vmx).unwrap();
                text.extend_from_slice(b"guestinfo.vice./hostname = \"cut\n");
                std::fs::write(&h.vmx, text).unwrap();
            }
            "the same key twice in other cases" => {
                write_vmx(&h.vmx, &kv);
                let mut text = std::fs::read(&h.vmx).unwrap();
                text.extend_from_slice(b"GUESTINFO.VICE./SESSIONS|C0FFEE/CMD/DIR = \"/\"\n");
                std::fs::write(&h.vmx, text).unwrap();
            }
            _ => write_vmx(&h.vmx, &kv),
        }
        let started = Instant::now();
        let mut child = h.spawn(&["--runblock-timeout", "1"]);
        let status = wait(&mut child, Duration::from_secs(120), c.name);
        let debug = h.debug_text();
        if crashed(status, &debug) {
            row.crashes += 1;
            failures.push(format!("{}: crashed ({status}): {debug}", c.name));
            continue;
        }
        longest = longest.max(started.elapsed());
        kinds[match c.outcome {
            Outcome::Runs => 0,
            Outcome::Refused(_) => 1,
            Outcome::Unreadable(_) => 2,
        }] += 1;
        let verdict = check(&h, c.outcome, status, &debug);
        match verdict {
            Ok(()) => row.passed += 1,
            Err(why) => failures.push(format!(
                "{} (after {:?}): {why}\n{}",
                c.name,
                started.elapsed(),
                debug.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            )),
        }
    }
    row.notes = format!(
        "{} ran with a default, {} refused with the reason in `started` (status 125/126/127), \
         {} unreadable (a stop saying why); longest {:.1} s",
        kinds[0],
        kinds[1],
        kinds[2],
        longest.as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    row.finish();
}

fn check(
    h: &Harness,
    outcome: Outcome,
    status: std::process::ExitStatus,
    debug: &str,
) -> Result<(), String> {
    // The primary's state keys as written, read one by one: the rest of the file may be what
    // cannot be decoded.
    let kv: KeyValues = std::fs::read_to_string(&h.vmx)
        .ok()
        .and_then(|t| tether_proto::guestinfo::vmx::parse(&t).ok())
        .map(|pairs| pairs.into_iter().collect())
        .unwrap_or_default();
    let started = kv
        .get(&format!("guestinfo.vice..sessions|{ID}.started"))
        .map(str::to_string);
    let code = kv.get(&format!("guestinfo.vice..sessions|{ID}.status"));
    match outcome {
        Outcome::Runs => match (started.as_deref(), code) {
            (Some("true"), Some("0")) => Ok(()),
            other => Err(format!("started and status {other:?}")),
        },
        Outcome::Refused(word) => match started {
            Some(s) if s != "true" && s.contains(word) => {
                if status.success() && code.is_none() {
                    return Err("no status written".into());
                }
                Ok(())
            }
            other => Err(format!(
                "started {other:?}, wanted an error naming {word:?}"
            )),
        },
        Outcome::Unreadable(word) => {
            if status.success() {
                return Err("the tether ended with 0".into());
            }
            if !debug.contains(word) {
                return Err(format!("the log does not say {word:?}"));
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process storms

/// The tether's open descriptors and resident memory (KiB).
fn fds_and_rss(pid: i32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// The tether's children (its sessions, and orphans not reaped yet).
fn children(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum()
}

/// A pids cgroup (v1 or v2) holding at most `max` tasks, for the fork bomb; `None` where this
/// machine has none to give.
struct PidsLimit(std::path::PathBuf);

impl PidsLimit {
    fn new(max: u32) -> Option<Self> {
        let name = format!("tether-reliability-{}", std::process::id());
        for base in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
            let dir = Path::new(base).join(&name);
            if std::fs::create_dir(&dir).is_ok() {
                if std::fs::write(dir.join("pids.max"), max.to_string()).is_ok() {
                    return Some(Self(dir));
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        None
    }
    fn add(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for PidsLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

const STORM: &str = r#"
my ($d, $n, $bomb) = @ARGV;
sub waitfile { my $f = shift; until (-e $f) { select(undef, undef, undef, 0.01) } }
waitfile("$d/go");
# Children, each status checked by its parent.
my $bad = 0;
for my $i (1..$n) {
    my $p = fork; die "fork: $!" unless defined $p;
    if (!$p) { exit($i % 256) }
    waitpid($p, 0);
    $bad++ if ($? >> 8) != $i % 256;
}
# Orphans: each grandchild outlives its parent and goes to PID 1.
pipe(R, W);
for (1..$n) {
    my $p = fork; die "fork: $!" unless defined $p;
    if (!$p) { close R; exit 0 if fork; exit 0 }
    waitpid($p, 0);
}
close W; <R>;
# A fork bomb in a process group of its own, held by the pids limit, killed after 3 s.
if ($bomb) {
    my $b = fork;
    if (!$b) { setpgrp(0, 0); while (1) { fork } }
    sleep 3;
    kill 'KILL', -$b;
    waitpid($b, 0);
}
open F, ">$d/done.tmp"; print F "bad=$bad\n"; close F; rename "$d/done.tmp", "$d/done";
waitfile("$d/exit");
exit 42;
"#;

#[test]
fn process_storms_and_a_signal_flood_lose_no_status_and_leak_nothing() {
    let _turn = one_at_a_time();
    let mut row = Row::new("process storms");
    let n = size(10_000, 1_000);
    let signals = size(10_000, 2_000);
    let h = Harness::new(&config(&["/bin/true"]));
    let dir = h.dir.path().display().to_string();
    let limit = PidsLimit::new(256);
    let bomb = if limit.is_some() { "1" } else { "0" };
    h.update(|c| {
        let s = c.sessions.get_mut(ID).unwrap();
        s.cmd.path = "/usr/bin/perl".into();
        s.cmd.args = ["perl", "-e", STORM, &dir, &n.to_string(), bomb]
            .map(String::from)
            .to_vec();
    });
    let Some(mut unshare) = spawn_as_pid1(&h, &[]) else {
        return;
    };
    let tether = tether_pid(&unshare);
    if let Some(l) = &limit {
        l.add(unshare.id() as i32);
        l.add(tether);
    }
    // Settled: the session runs and waits for the go.
    wait_until(Duration::from_secs(60), "the session", || {
        children(tether) == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let (fds0, rss0) = fds_and_rss(tether);
    std::fs::write(h.path("go"), "").unwrap();
    // Signals at PID 1 while the storms run: the ones it handles by reloading, and ones it
    // has no use for.
    use nix::sys::signal::Signal::*;
    let kinds = [SIGHUP, SIGCHLD, SIGWINCH, SIGALRM, SIGPIPE, SIGURG, SIGCONT];
    for i in 0..signals {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(tether), kinds[i % kinds.len()]);
    }
    row.faults += signals;
    wait_until(Duration::from_secs(600), "the storms", || {
        h.path("done").exists()
    });
    let done = std::fs::read_to_string(h.path("done")).unwrap();
    // Every orphan reaped: only the session is left.
    wait_until(Duration::from_secs(60), "the orphans to be reaped", || {
        children(tether) == 1
    });
    let (fds1, rss1) = fds_and_rss(tether);
    std::fs::write(h.path("exit"), "").unwrap();
    let status = wait(&mut unshare, Duration::from_secs(60), &h.debug_text());
    let debug = h.debug_text();
    let orphans: usize = debug
        .lines()
        .rev()
        .find_map(|l| l.split("orphans=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let primary = h.state().sessions[ID].clone();
    // Cases: the children's statuses, the orphans, the bomb, the flood, the session's status,
    // the fds and the memory.
    row.cases = 5;
    row.faults += 2 * n;
    if crashed(status, &debug) {
        row.crashes += 1;
    }
    if done.trim() == "bad=0" {
        row.passed += 1;
    }
    if orphans >= n {
        row.passed += 1;
    }
    if primary.exit_status == 42 && primary.started == "true" {
        row.passed += 1;
    }
    if fds1 == fds0 {
        row.passed += 1;
    } else {
        row.leaks += 1;
    }
    // Memory back to its start: within 512 KiB (what the allocator keeps for reuse).
    if rss1 <= rss0 + 512 {
        row.passed += 1;
    } else {
        row.leaks += 1;
    }
    row.notes = format!(
        "{n} children and {n} orphans{}, {signals} signals at PID 1; orphans reaped {orphans}; \
         fds {fds0} -> {fds1}; RSS {rss0} -> {rss1} KiB; {done}",
        if limit.is_some() {
            ", a fork bomb held at 256 pids for 3 s"
        } else {
            " (no pids cgroup here: no fork bomb)"
        },
    );
    eprintln!("{}", row.notes);
    assert_eq!(done.trim(), "bad=0", "{}", row.notes);
    assert!(orphans >= n, "{}", row.notes);
    assert_eq!(primary.exit_status, 42, "{}", row.notes);
    row.finish();
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// A session that ignores its stop signal and writes numbered lines both to its output and to
/// a file of its own (so that the output log can be checked for every line written).
fn stubborn(tag: &str, file: &Path, then_exit: Option<u32>) -> Vec<String> {
    let ending = match then_exit {
        Some(code) => format!("[ $i -ge 20 ] && exit {code};"),
        None => String::new(),
    };
    let script = format!(
        "trap '' TERM; i=0; while :; do i=$((i+1)); echo {tag} $i; echo {tag} $i >> {f}; \
         {ending} sleep 0.05; done",
        f = file.display()
    );
    ["/bin/sh", "-c", &script].map(String::from).to_vec()
}

#[test]
fn shutdown_by_sigterm_sigpwr_or_the_primarys_end_is_bounded_and_complete() {
    let _turn = one_at_a_time();
    let mut row = Row::new("shutdown");
    let stop = Duration::from_secs(2);
    // Bound on top of the stop timeout: the group kill, the drain, the state written.
    let bound = Duration::from_secs(3);
    let mut failures = Vec::new();
    for how in ["SIGTERM", "SIGPWR", "primary exits"] {
        row.cases += 1;
        row.faults += 1;
        let h = Harness::new(&config(&["/bin/true"]));
        let (pf, ef) = (h.path("primary.lines"), h.path("exec.lines"));
        let primary_exit = (how == "primary exits").then_some(5);
        h.update(|c| {
            let s = c.sessions.get_mut(ID).unwrap();
            s.cmd.args = stubborn("p", &pf, primary_exit);
            s.cmd.path = "/bin/sh".into();
            let mut e = session(&["/bin/true"]);
            e.cmd.args = stubborn("e", &ef, None);
            e.cmd.path = "/bin/sh".into();
            e.common.id = "e1".into();
            c.execs.insert("e1".into(), e);
        });
        let Some(mut unshare) =
            spawn_as_pid1(&h, &["--stop-timeout", "2", "--drain-timeout", "0.5"])
        else {
            return;
        };
        let tether = tether_pid(&unshare);
        wait_until(Duration::from_secs(60), "both sessions", || {
            std::fs::read_to_string(&ef).is_ok_and(|t| t.lines().count() >= 3)
        });
        let t0 = Instant::now();
        match how {
            "SIGTERM" => send_signal_pid(tether, libc::SIGTERM),
            "SIGPWR" => send_signal_pid(tether, libc::SIGPWR),
            _ => {}
        }
        let status = wait(&mut unshare, Duration::from_secs(60), &h.debug_text());
        let took = t0.elapsed();
        let debug = h.debug_text();
        if crashed(status, &debug) {
            row.crashes += 1;
            failures.push(format!("{how}: crashed"));
            continue;
        }
        let state = h.state();
        let p = &state.sessions[ID];
        let e = state.execs.get("e1");
        let want_primary = if how == "primary exits" { 5 } else { 137 };
        let mut why = Vec::new();
        // The primary's own end takes its run (20 lines) before the stop begins.
        let limit = stop
            + bound
            + if how == "primary exits" {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            };
        if took > limit {
            why.push(format!("took {took:?} (bound {limit:?})"));
        }
        if p.exit_status != want_primary || p.detail.stop_time == 0 {
            why.push(format!(
                "primary status {} stop {}",
                p.exit_status, p.detail.stop_time
            ));
        }
        // The exec was stopped and its end written (137 when the group kill took it; under a
        // loaded machine one CI run saw 2 after the primary's end: the stop is what is checked,
        // and the debug log's lines about it go with a failure).
        if e.is_none_or(|e| e.exit_status == 0 || e.detail.stop_time == 0) {
            let about: Vec<&str> = debug.lines().filter(|l| l.contains("e1")).collect();
            why.push(format!(
                "exec state {:?}; {about:?}",
                e.map(|e| (e.exit_status, e.detail.stop_time))
            ));
        }
        match (
            log_holds_every_line(&h.out, &pf, false, 1),
            log_holds_every_line(&h.out, &ef, true, 1),
        ) {
            (Ok(a), Ok(b)) => row.bytes += (a + b) as u64,
            (a, b) => why.push(format!("output log: {a:?} {b:?}")),
        }
        if why.is_empty() {
            row.passed += 1;
        } else {
            failures.push(format!("{how}: {}", why.join("; ")));
        }
        row.notes
            .push_str(&format!("{how}: ended in {:.2} s; ", took.as_secs_f64()));
    }
    row.notes
        .push_str("stop timeout 2 s, bound 3 s over it (the group kill, drain, state)");
    eprintln!("{}", row.notes);
    assert!(failures.is_empty(), "{failures:#?}");
    row.finish();
}

fn send_signal_pid(pid: i32, sig: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::try_from(sig).unwrap(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Output integrity

#[test]
fn output_reaches_the_log_byte_exact_through_pipes_and_a_pty() {
    let _turn = one_at_a_time();
    let mut row = Row::new("output integrity (no client)");
    let mib = size(1024, 8);
    for tty in [false, true] {
        row.cases += 1;
        // Pipes: one stream on stdout, another on stderr, at once. A pty: one stream, raw.
        let script = if tty {
            format!("stty raw -echo; {}", generator(1, mib))
        } else {
            format!("{} & {} >&2; wait", generator(1, mib), generator(2, mib))
        };
        let mut cfg = config(&["/bin/sh", "-c", &script]);
        cfg.sessions.get_mut(ID).unwrap().tty = tty;
        let h = Harness::new(&cfg);
        let status = h.run(&[], Duration::from_secs(3600));
        let debug = h.debug_text();
        if crashed(status, &debug) {
            row.crashes += 1;
            continue;
        }
        let got = logged(&h.out);
        let want_out = expected(1, mib);
        assert_eq!(
            want_out.1,
            (mib as u64) << 20,
            "the generator (openssl) made too little"
        );
        let want_err = if tty {
            ([0u8; 32], 0)
        } else {
            expected(2, mib)
        };
        let empty: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest([]).into()
        };
        let want_err = if tty { (empty, 0) } else { want_err };
        let ok =
            got[0] == want_out && got[1] == want_err && h.state().sessions[ID].exit_status == 0;
        row.bytes += got[0].1 + got[1].1;
        if ok {
            row.passed += 1;
        } else {
            row.notes.push_str(&format!(
                "{}: stdout {} of {} bytes, stderr {} of {} bytes, hashes {}; ",
                if tty { "pty" } else { "pipes" },
                got[0].1,
                want_out.1,
                got[1].1,
                want_err.1,
                if got[0].0 == want_out.0 {
                    "stdout same"
                } else {
                    "stdout differs"
                },
            ));
        }
    }
    row.notes.push_str(&format!(
        "{mib} MiB per stream, pipes (stdout and stderr at once) and a raw pty"
    ));
    eprintln!("{}", row.notes);
    assert_eq!(row.passed, row.cases, "{}", row.notes);
    row.finish();
}
