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

/// A shell command writing `mib` MiB of a deterministic pseudo-random stream (AES-CTR of
/// zeros under `key`): incompressible, every byte value, newlines anywhere.
pub fn generator(key: u8, mib: usize) -> String {
    format!(
        "openssl enc -aes-128-ctr -nosalt -K {key:02x}{z} -iv 00000000000000000000000000000000 \
         -in /dev/zero 2>/dev/null | head -c {bytes}",
        z = "00".repeat(15),
        bytes = mib << 20
    )
}

/// [`generator`]'s bytes, held after the first `at` of them until the file `gate` exists.
pub fn generator_gated(key: u8, mib: usize, at: u64, gate: &std::path::Path) -> String {
    // head -c reads no more than it writes, so `cat` goes on where it stopped.
    format!(
        "{} | {{ head -c {at}; while [ ! -e {} ]; do sleep 0.01; done; cat; }}",
        generator(key, mib),
        gate.display()
    )
}

/// The SHA-256 and length of what `generator(key, mib)` writes, computed here.
pub fn expected(key: u8, mib: usize) -> ([u8; 32], u64) {
    expected_range(key, mib, 0..(mib as u64) << 20)
}

/// The SHA-256 and length of the bytes `range` of what `generator(key, mib)` writes.
pub fn expected_range(key: u8, mib: usize, range: std::ops::Range<u64>) -> ([u8; 32], u64) {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut child = std::process::Command::new("sh")
        .args(["-c", &generator(key, mib)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut n) = (0u64, 0u64);
    loop {
        let got = out.read(&mut buf).unwrap() as u64;
        if got == 0 {
            break;
        }
        let (from, to) = (range.start.max(at), range.end.min(at + got));
        if from < to {
            h.update(&buf[(from - at) as usize..(to - at) as usize]);
            n += to - from;
        }
        at += got;
    }
    child.wait().unwrap();
    (h.finalize().into(), n)
}

/// The SHA-256 and length of each stream of the container's own entries in an output log,
/// read in pieces (a full run's log is over 2 GiB).
pub fn logged(path: &std::path::Path) -> [([u8; 32], u64); 2] {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).unwrap();
    let mut streams = StreamHashes::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 << 20];
    loop {
        let got = f.read(&mut buf).unwrap();
        pending.extend_from_slice(&buf[..got]);
        let (entries, used) = tether_proto::iolog::decode_complete(&pending);
        for e in entries.iter().filter(|e| !e.exec) {
            let i = usize::from(e.stream == tether_proto::iolog::Stream::Stderr);
            streams.take(i, &e.data);
        }
        pending.drain(..used);
        if got == 0 {
            break;
        }
    }
    streams.finish()
}

/// Per stream (stdout, stderr) the SHA-256 and length of what was taken of it.
#[derive(Default)]
pub struct StreamHashes {
    hashes: [sha2::Sha256; 2],
    lens: [u64; 2],
}

impl StreamHashes {
    pub fn take(&mut self, stream: usize, data: &[u8]) {
        use sha2::Digest as _;
        self.hashes[stream].update(data);
        self.lens[stream] += data.len() as u64;
    }

    /// Bytes taken of `stream` so far.
    pub fn len(&self, stream: usize) -> u64 {
        self.lens[stream]
    }

    pub fn finish(self) -> [([u8; 32], u64); 2] {
        use sha2::Digest as _;
        let [a, b] = self.hashes;
        [
            (a.finalize().into(), self.lens[0]),
            (b.finalize().into(), self.lens[1]),
        ]
    }
}
