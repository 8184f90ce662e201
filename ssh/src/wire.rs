//! SSH's data types (RFC 4251 §5): a reader that is total on any input and a writer.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("a string is not valid UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads SSH data types from a byte slice; never panics, never allocates more than the input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, WireError> {
        Ok(self.u8()? != 0)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn string(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn utf8(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.string()?).map_err(|_| WireError::NotUtf8)
    }

    pub fn name_list(&mut self) -> Result<Vec<&'a str>, WireError> {
        let s = self.utf8()?;
        Ok(if s.is_empty() {
            Vec::new()
        } else {
            s.split(',').collect()
        })
    }

    /// An mpint's magnitude, big-endian, without leading zeros (negative numbers are refused).
    pub fn mpint(&mut self) -> Result<&'a [u8], WireError> {
        let s = self.string()?;
        if s.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(WireError::Invalid("negative mpint"));
        }
        let start = s.iter().position(|&b| b != 0).unwrap_or(s.len());
        Ok(&s[start..])
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Builds SSH data types.
#[derive(Debug, Default, Clone)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A message starting with its number.
    pub fn msg(number: u8) -> Self {
        Self(vec![number])
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn string(&mut self, v: impl AsRef<[u8]>) -> &mut Self {
        let v = v.as_ref();
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }

    pub fn name_list(&mut self, names: &[&str]) -> &mut Self {
        self.string(names.join(","))
    }

    /// An unsigned big-endian magnitude as an mpint.
    pub fn mpint(&mut self, magnitude: &[u8]) -> &mut Self {
        let start = magnitude
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(magnitude.len());
        let m = &magnitude[start..];
        if m.first().is_some_and(|b| b & 0x80 != 0) {
            self.u32(u32::try_from(m.len() + 1).unwrap_or(u32::MAX));
            self.0.push(0);
            self.0.extend_from_slice(m);
        } else {
            self.string(m);
        }
        self
    }

    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4251_examples() {
        // mpint examples from RFC 4251 §5.
        assert_eq!(Writer::new().mpint(&[]).finish(), [0, 0, 0, 0]);
        assert_eq!(
            Writer::new()
                .mpint(&[0x09, 0xa3, 0x78, 0xf9, 0xb2, 0xe3, 0x32, 0xa7])
                .finish(),
            [0, 0, 0, 8, 0x09, 0xa3, 0x78, 0xf9, 0xb2, 0xe3, 0x32, 0xa7]
        );
        assert_eq!(Writer::new().mpint(&[0x80]).finish(), [0, 0, 0, 2, 0, 0x80]);
        assert_eq!(
            Writer::new().mpint(&[0, 0, 0x7f]).finish(),
            [0, 0, 0, 1, 0x7f]
        );
        assert_eq!(
            Writer::new().name_list(&["zlib", "none"]).finish(),
            b"\0\0\0\x09zlib,none"
        );
    }

    #[test]
    fn reader_round_trip_and_truncation() {
        let bytes = Writer::new()
            .u8(7)
            .bool(true)
            .u32(9)
            .string("abc")
            .mpint(&[0x80, 1])
            .finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(
            (r.u8(), r.bool(), r.u32(), r.utf8()),
            (Ok(7), Ok(true), Ok(9), Ok("abc"))
        );
        assert_eq!(r.mpint(), Ok(&[0x80, 1][..]));
        assert!(r.is_empty());
        assert_eq!(
            Reader::new(&[0, 0, 0, 9, 1]).string(),
            Err(WireError::Truncated)
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).string(),
            Err(WireError::Truncated)
        );
        assert!(Reader::new(&[0, 0, 0, 1, 0x80]).mpint().is_err());
    }
}
