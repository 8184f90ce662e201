//! `vch logs FILE`: a container's `output.log` back as plain text, as `docker logs` shows it.

use std::io::Write;

use tether_proto::iolog::{self, Stream};

/// Which streams to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Streams {
    All,
    Stdout,
    Stderr,
}

#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    pub timestamps: bool,
    pub streams: Streams,
    /// Include the output of exec sessions (docker logs does not).
    pub execs: bool,
}

/// Writes the entries of `log` to `out` (stdout entries) and `err` (stderr entries).
pub fn render(
    log: &[u8],
    opts: LogOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<()> {
    // Per stream: does the next entry start a line (and so get a timestamp)?
    let mut at_line_start = [true, true];
    for e in iolog::decode(log) {
        if e.exec && !opts.execs {
            continue;
        }
        let (idx, wanted) = match e.stream {
            Stream::Stdout => (0, opts.streams != Streams::Stderr),
            Stream::Stderr => (1, opts.streams != Streams::Stdout),
        };
        if !wanted {
            continue;
        }
        let w: &mut dyn Write = if idx == 0 { &mut *out } else { &mut *err };
        if opts.timestamps && at_line_start[idx] {
            write!(w, "{} ", iolog::rfc3339_nanos(e.time_nanos))?;
        }
        w.write_all(&e.data)?;
        at_line_start[idx] = e.data.ends_with(b"\n");
    }
    out.flush()?;
    err.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut log = Vec::new();
        iolog::encode_entry(&mut log, 1_000_000_000, Stream::Stdout, false, b"one\n");
        iolog::encode_entry(&mut log, 2_000_000_000, Stream::Stderr, false, b"warn\n");
        iolog::encode_entry(&mut log, 3_000_000_000, Stream::Stdout, false, b"par");
        iolog::encode_entry(&mut log, 4_000_000_000, Stream::Stdout, false, b"tial\n");
        iolog::encode_entry(&mut log, 5_000_000_000, Stream::Stdout, true, b"exec\n");
        log
    }

    fn run(opts: LogOptions) -> (String, String) {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        render(&sample(), opts, &mut o, &mut e).unwrap();
        (String::from_utf8(o).unwrap(), String::from_utf8(e).unwrap())
    }

    #[test]
    fn plain_split_by_stream_without_exec_output() {
        let opts = LogOptions {
            timestamps: false,
            streams: Streams::All,
            execs: false,
        };
        assert_eq!(run(opts), ("one\npartial\n".into(), "warn\n".into()));
        assert_eq!(
            run(LogOptions {
                execs: true,
                ..opts
            })
            .0,
            "one\npartial\nexec\n"
        );
        assert_eq!(
            run(LogOptions {
                streams: Streams::Stderr,
                ..opts
            }),
            ("".into(), "warn\n".into())
        );
    }

    #[test]
    fn timestamps_start_each_line_only() {
        let opts = LogOptions {
            timestamps: true,
            streams: Streams::Stdout,
            execs: false,
        };
        assert_eq!(
            run(opts).0,
            "1970-01-01T00:00:01.000000000Z one\n1970-01-01T00:00:03.000000000Z partial\n"
        );
    }
}
