//! The `output.log` format (VIC `lib/iolog`): the session's output split into entries at each
//! newline (kept) and at 4095 bytes; each entry is 16 base64 characters of a 10-byte header and then
//! the raw bytes. Header: bytes 0–7 the time in Unix nanoseconds (little-endian), bytes 8–9 a
//! little-endian u16 = `size << 4 | stream << 3 | flags`.
//!
//! VIC wrote stream 0 for everything; we write 1 for stderr. Of the three reserved flag bits we use
//! bit 0 for output of an exec session, which `docker logs` does not show; a reader that ignores
//! the bit (VIC's) shows it with the container's output.

use base64::Engine as _;

/// The largest payload of one entry.
pub const MAX_ENTRY: usize = 4095;
const HEADER: usize = 10;
const HEADER_B64: usize = 16;
const FLAG_EXEC: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One decoded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub time_nanos: u64,
    pub stream: Stream,
    pub exec: bool,
    pub data: Vec<u8>,
}

/// Encodes one entry (`data` at most [`MAX_ENTRY`] bytes).
pub fn encode_entry(out: &mut Vec<u8>, time_nanos: u64, stream: Stream, exec: bool, data: &[u8]) {
    debug_assert!(data.len() <= MAX_ENTRY);
    let size = data.len().min(MAX_ENTRY) as u16;
    let mut word = size << 4;
    if stream == Stream::Stderr {
        word |= 1 << 3;
    }
    if exec {
        word |= FLAG_EXEC;
    }
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&time_nanos.to_le_bytes());
    header[8..].copy_from_slice(&word.to_le_bytes());
    let mut b64 = [0u8; HEADER_B64];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(header, &mut b64)
        .unwrap_or(0);
    out.extend_from_slice(&b64[..n]);
    out.extend_from_slice(&data[..size as usize]);
}

/// Splits one stream's output into entries: at newlines, at [`MAX_ENTRY`] bytes, and whatever is
/// pending when [`LineFramer::flush`] is called.
#[derive(Debug, Default)]
pub struct LineFramer {
    pending: Vec<u8>,
}

impl LineFramer {
    /// Appends `data` and returns the complete entries it finishes.
    pub fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut done = Vec::new();
        self.push_each(data, |entry| done.push(entry.to_vec()));
        done
    }

    /// Appends `data` and hands each complete entry it finishes to `each`, without allocating:
    /// an entry that lies whole in `data` is handed as a slice of it, and the pending part of a
    /// line keeps its buffer (the output log frames every byte a container writes).
    pub fn push_each(&mut self, mut data: &[u8], mut each: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = MAX_ENTRY - self.pending.len();
            // memchr, not a loop of our own: this is inlined into the tether, whose code is
            // built for size, and a byte loop there was a tenth of its CPU on bulk output.
            let upto = memchr::memchr(b'\n', &data[..room.min(data.len())]).map(|i| i + 1);
            let take = upto.unwrap_or(room.min(data.len()));
            let complete = upto.is_some() || self.pending.len() + take == MAX_ENTRY;
            match (complete, self.pending.is_empty()) {
                (true, true) => each(&data[..take]),
                (true, false) => {
                    self.pending.extend_from_slice(&data[..take]);
                    each(&self.pending);
                    self.pending.clear();
                }
                (false, _) => self.pending.extend_from_slice(&data[..take]),
            }
            data = &data[take..];
        }
    }

    /// Whatever is pending (a line without its newline yet), as one last entry.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Decodes a whole log. Bytes that do not start a valid header are skipped one at a time, as VIC's
/// reader resynchronises; a last entry cut short keeps the bytes that are there.
pub fn decode(bytes: &[u8]) -> Vec<Entry> {
    decode_from(bytes, true).0
}

/// Decodes the complete entries at the start of `bytes` (a log still being written); how many
/// bytes they took. The rest (an entry cut short) is for a later call with more bytes.
pub fn decode_complete(bytes: &[u8]) -> (Vec<Entry>, usize) {
    decode_from(bytes, false)
}

fn decode_from(mut bytes: &[u8], keep_partial: bool) -> (Vec<Entry>, usize) {
    let total = bytes.len();
    let mut out = Vec::new();
    while bytes.len() >= HEADER_B64 {
        let Some((time_nanos, word)) = header(&bytes[..HEADER_B64]) else {
            bytes = &bytes[1..];
            continue;
        };
        let size = usize::from(word >> 4);
        let body = &bytes[HEADER_B64..];
        if !keep_partial && body.len() < size {
            break;
        }
        let take = size.min(body.len());
        out.push(Entry {
            time_nanos,
            stream: if word & (1 << 3) != 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            exec: word & FLAG_EXEC != 0,
            data: body[..take].to_vec(),
        });
        bytes = &body[take..];
    }
    (out, total - bytes.len())
}

fn header(b64: &[u8]) -> Option<(u64, u16)> {
    let mut raw = [0u8; 12];
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(b64, &mut raw)
        .ok()?;
    if n != HEADER {
        return None;
    }
    let time = u64::from_le_bytes(raw[..8].try_into().ok()?);
    let word = u16::from_le_bytes([raw[8], raw[9]]);
    Some((time, word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_complete_leaves_an_entry_cut_short_for_later() {
        let mut log = Vec::new();
        encode_entry(&mut log, 1, Stream::Stdout, false, b"one\n");
        let first = log.len();
        encode_entry(&mut log, 2, Stream::Stderr, false, b"two\n");
        for cut in [first, first + 3, log.len() - 1] {
            let (entries, used) = decode_complete(&log[..cut]);
            assert_eq!(used, first, "cut at {cut}");
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].data, b"one\n");
        }
        let (entries, used) = decode_complete(&log);
        assert_eq!((entries.len(), used), (2, log.len()));
        assert_eq!(entries[1].stream, Stream::Stderr);
    }

    #[test]
    fn golden_entry_from_vic() {
        let mut out = Vec::new();
        encode_entry(
            &mut out,
            1_600_000_000_000_000_000,
            Stream::Stdout,
            false,
            b"hello\n",
        );
        assert_eq!(out, b"AACg2IVXNBZgAA==hello\n");
    }

    #[test]
    fn stderr_and_exec_bits() {
        let mut out = Vec::new();
        encode_entry(&mut out, 5, Stream::Stderr, true, b"x");
        let e = decode(&out);
        assert_eq!(
            e,
            [Entry {
                time_nanos: 5,
                stream: Stream::Stderr,
                exec: true,
                data: b"x".to_vec()
            }]
        );
    }

    #[test]
    fn framer_splits_at_newlines_and_size() {
        let mut f = LineFramer::default();
        assert_eq!(f.push(b"ab\ncd"), [b"ab\n".to_vec()]);
        assert!(f.has_pending());
        assert_eq!(f.push(b"e\n\n"), [b"cde\n".to_vec(), b"\n".to_vec()]);
        let big = vec![b'x'; MAX_ENTRY * 2 + 10];
        let done = f.push(&big);
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|d| d.len() == MAX_ENTRY));
        // A pending part filled up to the size by the next chunk.
        let done = f.push(&vec![b'y'; MAX_ENTRY]);
        assert_eq!(done.len(), 1);
        assert_eq!(&done[0][..11], b"xxxxxxxxxxy");
        assert_eq!(done[0].len(), MAX_ENTRY);
        assert_eq!(f.flush().unwrap(), vec![b'y'; 10]);
        assert_eq!(f.flush(), None);
    }

    #[test]
    fn reader_skips_garbage_and_keeps_a_truncated_tail() {
        let mut log = b"junk!".to_vec();
        encode_entry(&mut log, 1, Stream::Stdout, false, b"one\n");
        encode_entry(&mut log, 2, Stream::Stdout, false, b"two\n");
        log.truncate(log.len() - 2);
        let e = decode(&log);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].data, b"one\n");
        assert_eq!(e[1].data, b"tw");
    }

    proptest::proptest! {
        #[test]
        fn round_trip(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..9000), 0..5)) {
            let mut f = LineFramer::default();
            let mut log = Vec::new();
            for c in &chunks {
                for e in f.push(c) {
                    encode_entry(&mut log, 7, Stream::Stdout, false, &e);
                }
            }
            if let Some(e) = f.flush() {
                encode_entry(&mut log, 7, Stream::Stdout, false, &e);
            }
            let back: Vec<u8> = decode(&log).into_iter().flat_map(|e| e.data).collect();
            proptest::prop_assert_eq!(back, chunks.concat());
        }

        #[test]
        fn reader_is_total(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode(&bytes);
        }
    }
}

/// `2006-01-02T15:04:05.000000000Z` for a time in Unix nanoseconds (UTC), as `docker logs -t`.
pub fn rfc3339_nanos(time_nanos: u64) -> String {
    let secs = time_nanos / 1_000_000_000;
    let nanos = time_nanos % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339_nanos(1_600_000_000_000_000_123),
            "2020-09-13T12:26:40.000000123Z"
        );
        assert_eq!(
            super::rfc3339_nanos(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
