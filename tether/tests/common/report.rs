//! The reliability suite's figures (issue 18): full or short size, and one row per case group
//! appended to `$RELIABILITY_REPORT` for `scripts/reliability`'s table. Shared by the tether's
//! and vch's test binaries.
#![allow(dead_code)]

/// Full size (`RELIABILITY=full`) or CI's short run.
pub fn full() -> bool {
    std::env::var("RELIABILITY").is_ok_and(|v| v == "full")
}

/// `full` when the suite runs at full size, else `short`.
pub fn size(full_n: usize, short_n: usize) -> usize {
    if full() {
        full_n
    } else {
        short_n
    }
}

/// One group's figures.
#[derive(Default, Debug)]
pub struct Row {
    pub group: &'static str,
    pub cases: usize,
    pub passed: usize,
    pub bytes: u64,
    pub faults: usize,
    pub crashes: usize,
    pub leaks: usize,
    pub notes: String,
}

impl Row {
    pub fn new(group: &'static str) -> Self {
        Self {
            group,
            ..Self::default()
        }
    }

    /// Appends the row to `$RELIABILITY_REPORT` (when set) and fails the test on a crash or leak.
    pub fn finish(self) {
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
pub fn crashed(status: std::process::ExitStatus, debug: &str) -> bool {
    status.code().is_none() || status.code() == Some(101) || debug.contains("panicked")
}

/// Every line a session wrote to a file of its own (`file`, beside its output) is in the output
/// log `log`, in order, among the entries of execs (`exec`) or of the container's own; at least
/// `min_lines` of them. The bytes checked.
pub fn log_holds_every_line(
    log: &std::path::Path,
    file: &std::path::Path,
    exec: bool,
    min_lines: usize,
) -> Result<usize, String> {
    let written = std::fs::read_to_string(file).unwrap_or_default();
    let logged: Vec<u8> = tether_proto::iolog::decode(&std::fs::read(log).unwrap_or_default())
        .into_iter()
        .filter(|e| e.exec == exec)
        .flat_map(|e| e.data)
        .collect();
    let logged = String::from_utf8_lossy(&logged);
    let (w, l): (Vec<&str>, Vec<&str>) = (written.lines().collect(), logged.lines().collect());
    if w.len() < min_lines.max(1) {
        return Err(format!("{} holds {} lines", file.display(), w.len()));
    }
    if l.len() < w.len() || l[..w.len()] != w[..] {
        return Err(format!(
            "{} lines written, the log has {} (first difference at {:?})",
            w.len(),
            l.len(),
            w.iter().zip(&l).position(|(a, b)| a != b)
        ));
    }
    Ok(written.len())
}
