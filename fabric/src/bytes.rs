//! Little-endian field access over a buffer whose length was checked once.
//!
//! NVMe data structures are little-endian and fixed-size. A [`Fields`] is
//! only built after the buffer is known to hold the whole structure, so the
//! per-field reads below cannot run past the end for offsets inside it.

use crate::error::DecodeError;

/// A checked view over one NVMe data structure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Checks that `buf` holds at least `size` bytes of `structure`.
    pub(crate) fn new(
        buf: &'a [u8],
        structure: &'static str,
        size: usize,
    ) -> Result<Self, DecodeError> {
        if buf.len() < size {
            return Err(DecodeError::Truncated {
                structure,
                needed: size,
                got: buf.len(),
            });
        }
        Ok(Self { buf: &buf[..size] })
    }

    fn array<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[off..off + N]);
        out
    }

    pub(crate) fn u8(&self, off: usize) -> u8 {
        self.buf[off]
    }

    pub(crate) fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.array(off))
    }

    pub(crate) fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.array(off))
    }

    pub(crate) fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.array(off))
    }

    pub(crate) fn u128(&self, off: usize) -> u128 {
        u128::from_le_bytes(self.array(off))
    }

    pub(crate) fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        self.array(off)
    }

    /// An ASCII/UTF-8 string field: cut at the first NUL, trailing spaces
    /// dropped (NVMe pads identify strings with spaces, fabrics strings with
    /// NULs). Invalid UTF-8 is replaced rather than rejected because these
    /// are labels reported by a device, not identifiers we act on.
    pub(crate) fn text(&self, off: usize, len: usize) -> String {
        let raw = &self.buf[off..off + len];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end])
            .trim_end_matches(' ')
            .to_string()
    }
}

/// Writes little-endian fields into a host-to-controller data buffer.
pub(crate) struct FieldsMut<'a> {
    buf: &'a mut [u8],
}

impl<'a> FieldsMut<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn put_u8(&mut self, off: usize, v: u8) {
        self.buf[off] = v;
    }

    pub(crate) fn put_u16(&mut self, off: usize, v: u16) {
        self.buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn put_u32(&mut self, off: usize, v: u32) {
        self.buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn put_u64(&mut self, off: usize, v: u64) {
        self.buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffer_is_a_truncation_error_naming_the_structure() {
        let err = Fields::new(&[0u8; 3], "thing", 4).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                structure: "thing",
                needed: 4,
                got: 3
            }
        );
    }

    #[test]
    fn fields_are_little_endian() {
        let buf = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        let f = Fields::new(&buf, "t", 16).unwrap();
        assert_eq!(f.u8(0), 1);
        assert_eq!(f.u16(0), 0x0201);
        assert_eq!(f.u32(0), 0x0403_0201);
        assert_eq!(f.u64(8), 0x100f_0e0d_0c0b_0a09);
        assert_eq!(f.u128(0) & 0xff, 1);
    }

    #[test]
    fn text_stops_at_nul_and_trims_space_padding() {
        let mut buf = *b"abc  \0zz";
        let f = Fields::new(&buf, "t", 8).unwrap();
        assert_eq!(f.text(0, 8), "abc");
        buf = *b"SN123   ";
        let f = Fields::new(&buf, "t", 8).unwrap();
        assert_eq!(f.text(0, 8), "SN123");
    }

    #[test]
    fn fields_mut_writes_little_endian() {
        let mut buf = [0u8; 16];
        let mut w = FieldsMut::new(&mut buf);
        w.put_u8(0, 0xaa);
        w.put_u16(2, 0x0102);
        w.put_u32(4, 0x0304_0506);
        w.put_u64(8, 0x0708_090a_0b0c_0d0e);
        assert_eq!(
            buf,
            [0xaa, 0, 2, 1, 6, 5, 4, 3, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 9, 8, 7]
        );
    }
}
