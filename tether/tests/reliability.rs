//! The reliability suite (issue 18): malformed configurations, process storms, output integrity,
//! shutdown and security checks against a process-mode tether (an ordinary process, or PID 1 of a
//! new PID namespace). `RELIABILITY=full` runs each case at full size (`scripts/reliability`);
//! otherwise a short version for CI. With `RELIABILITY_REPORT=FILE` each group appends one JSON
//! line (cases, passed, bytes checked, faults injected, crashes, leaks) that
//! `scripts/reliability` turns into the table of `docs/reliability.md`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tether_proto::extraconfig::KeyValues;

/// Full size (`RELIABILITY=full`) or CI's short run.
fn full() -> bool {
    std::env::var("RELIABILITY").is_ok_and(|v| v == "full")
}

/// `full` when the suite runs at full size, else `short`.
fn size(full_n: usize, short_n: usize) -> usize {
    if full() {
        full_n
    } else {
        short_n
    }
}

/// One group's figures.
#[derive(Default, Debug)]
struct Row {
    group: &'static str,
    cases: usize,
    passed: usize,
    bytes: u64,
    faults: usize,
    crashes: usize,
    leaks: usize,
    notes: String,
}

impl Row {
    fn new(group: &'static str) -> Self {
        Self {
            group,
            ..Self::default()
        }
    }

    /// Appends the row to `$RELIABILITY_REPORT` (when set) and fails the test on a crash or leak.
    fn finish(self) {
        if let Some(path) = std::env::var_os("RELIABILITY_REPORT") {
            use std::io::Write as _;
            let line = serde_json::json!({
                "group": self.group,
                "size": if full() { "full" } else { "short" },
                "cases": self.cases,
                "passed": self.passed,
                "bytes_checked": self.bytes,
                "faults_injected": self.faults,
                "crashes": self.crashes,
                "leaks": self.leaks,
                "notes": self.notes,
            });
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(f, "{line}").unwrap();
        }
        assert_eq!(self.crashes, 0, "{}: crashes", self.group);
        assert_eq!(self.leaks, 0, "{}: leaks", self.group);
        assert_eq!(self.passed, self.cases, "{}: failed cases", self.group);
    }
}

/// Whether a finished tether crashed: killed by a signal, a panic's 101, or a panic in its log.
fn crashed(status: std::process::ExitStatus, debug: &str) -> bool {
    status.code().is_none() || status.code() == Some(101) || debug.contains("panicked")
}

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
    let mut row = Row::new("malformed configuration");
    let base = config(&["/bin/echo", "ok"]);
    let mut failures = Vec::new();
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
    row.notes = failures.join("\n---\n");
    assert!(failures.is_empty(), "{}", row.notes);
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
