//! The on-disk record format of the file store's log (`store.log`).
//!
//! A log is a sequence of records, each
//!
//! ```text
//! magic  "CSL1"            4 bytes
//! length u32 LE            bytes of payload
//! crc    u32 LE            CRC-32C of the payload
//! payload:
//!   kind      u8           1 = commit, 2 = snapshot
//!   revision  i64 LE       the store revision after this record
//!   count     u32 LE       entries that follow
//!   entries:  tag u8 (1 = put, 0 = delete), key revision i64 LE,
//!             key length u32 LE, key (UTF-8), and for a put:
//!             value length u32 LE, value
//! ```
//!
//! The first record of a log is always a snapshot (every live key with its
//! own revision); the ones after it are commits (every put at the record's
//! revision). Length-prefixed binary instead of JSON because every plugin
//! process reads the whole log: scanning lengths costs microseconds where
//! parsing a megabyte of JSON costs milliseconds.
//!
//! The checksum is what tells a complete record from a torn one: a crash in
//! the middle of an append leaves a tail whose length or checksum does not
//! match, never a record that decodes to something else.

use crate::Revision;

pub const MAGIC: [u8; 4] = *b"CSL1";
pub const HEADER_LEN: usize = 12;
/// Upper bound on one record, so a damaged length cannot make a reader
/// allocate gigabytes.
pub const MAX_PAYLOAD: usize = 1 << 30;

const KIND_COMMIT: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
const TAG_DELETE: u8 = 0;
const TAG_PUT: u8 = 1;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Commit,
    Snapshot,
}

/// One change in a record; values borrow from the buffer they were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    Put { key: &'a str, revision: Revision, value: &'a [u8] },
    Delete { key: &'a str },
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: Kind,
    pub revision: Revision,
    pub entries: Vec<Entry<'a>>,
}

/// Encode one record (header and payload).
pub fn encode<'e>(kind: Kind, revision: Revision, entries: impl IntoIterator<Item = Entry<'e>>) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out.push(match kind {
        Kind::Commit => KIND_COMMIT,
        Kind::Snapshot => KIND_SNAPSHOT,
    });
    out.extend_from_slice(&revision.to_le_bytes());
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count: u32 = 0;
    for e in entries {
        count += 1;
        match e {
            Entry::Put { key, revision, value } => {
                out.push(TAG_PUT);
                out.extend_from_slice(&revision.to_le_bytes());
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, value);
            }
            Entry::Delete { key } => {
                out.push(TAG_DELETE);
                out.extend_from_slice(&0i64.to_le_bytes());
                put_bytes(&mut out, key.as_bytes());
            }
        }
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    let payload_len = (out.len() - HEADER_LEN) as u32;
    let crc = crc32c(&out[HEADER_LEN..]);
    out[0..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&payload_len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Why the bytes at some offset are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// Fewer bytes than the header or the length asks for: an append that
    /// is still running, or one a crash cut short.
    Incomplete,
    /// Wrong magic, checksum or structure.
    Invalid(String),
}

/// Decode the record at the start of `buf`: the record and its total length.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), Bad> {
    if buf.len() < HEADER_LEN {
        return Err(Bad::Incomplete);
    }
    if buf[0..4] != MAGIC {
        return Err(Bad::Invalid("no record magic".into()));
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(Bad::Invalid(format!("record length {len} is implausible")));
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Err(Bad::Incomplete) };
    if crc32c(payload) != crc {
        return Err(Bad::Invalid("checksum mismatch".into()));
    }
    let record = payload_of(payload).map_err(Bad::Invalid)?;
    Ok((record, HEADER_LEN + len))
}

/// The structure of a payload whose checksum matched.
fn payload_of(p: &[u8]) -> Result<Record<'_>, String> {
    let mut r = Reader { buf: p, at: 0 };
    let kind = match r.u8()? {
        KIND_COMMIT => Kind::Commit,
        KIND_SNAPSHOT => Kind::Snapshot,
        k => return Err(format!("unknown record kind {k}")),
    };
    let revision = r.i64()?;
    let count = r.u32()? as usize;
    // Each entry takes at least 13 bytes: a count beyond that is damage.
    let mut entries = Vec::with_capacity(count.min(p.len() / 13));
    for _ in 0..count {
        let tag = r.u8()?;
        let key_rev = r.i64()?;
        let key = std::str::from_utf8(r.bytes()?).map_err(|_| "key is not UTF-8".to_string())?;
        entries.push(match tag {
            TAG_PUT => Entry::Put { key, revision: key_rev, value: r.bytes()? },
            TAG_DELETE => Entry::Delete { key },
            t => return Err(format!("unknown entry tag {t}")),
        });
    }
    if r.at != p.len() {
        return Err("trailing bytes in record".into());
    }
    Ok(Record { kind, revision, entries })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.buf.get(self.at..self.at.saturating_add(n)).ok_or("record ends early")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Whether a complete, valid record starts anywhere in `buf` after its
/// first byte: damage followed by good records is corruption, damage at
/// the very end is a torn append.
pub fn valid_record_after(buf: &[u8]) -> Option<usize> {
    (1..buf.len().saturating_sub(HEADER_LEN - 1))
        .filter(|&i| buf[i..i + 4] == MAGIC)
        .find(|&i| decode(&buf[i..]).is_ok())
}

/// CRC-32C (Castagnoli). Every process checks every record it reads, a
/// megabyte or more on its first read, so the CPU's CRC32 instruction is
/// used where there is one (SSE 4.2: ~8 bytes a cycle instead of one).
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU was just checked to support SSE 4.2, the only
        // target feature `crc32c_sse42` is compiled with.
        return unsafe { crc32c_sse42(data) };
    }
    crc32c_table(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut crc = !0u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(a));
    }
    let mut crc = crc as u32;
    for &b in words.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

/// CRC-32C one byte at a time, with a table built at compile time.
fn crc32c_table(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector_and_both_implementations_agree() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_table(b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 999, 1000] {
            assert_eq!(crc32c(&data[..len]), crc32c_table(&data[..len]), "len {len}");
        }
    }

    #[test]
    fn round_trip_and_every_truncation_is_incomplete() {
        let rec = encode(
            Kind::Commit,
            7,
            [Entry::Put { key: "/a", revision: 7, value: b"{\"x\":1}" }, Entry::Delete { key: "/b" }],
        );
        let (r, n) = decode(&rec).unwrap();
        assert_eq!(n, rec.len());
        assert_eq!((r.kind, r.revision), (Kind::Commit, 7));
        assert_eq!(r.entries[1], Entry::Delete { key: "/b" });
        for cut in 0..rec.len() {
            assert_eq!(decode(&rec[..cut]).unwrap_err(), Bad::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let rec = encode(Kind::Snapshot, 3, [Entry::Put { key: "/k", revision: 2, value: b"v" }]);
        for byte in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                // A flipped length may read as "incomplete"; it never decodes.
                assert!(decode(&bad).is_err(), "flip {byte}.{bit} decoded");
            }
        }
    }

    #[test]
    fn damage_before_a_good_record_is_found() {
        let a = encode(Kind::Commit, 1, [Entry::Delete { key: "/a" }]);
        let b = encode(Kind::Commit, 2, [Entry::Delete { key: "/b" }]);
        let mut buf = a.clone();
        buf[14] ^= 0xff;
        assert_eq!(valid_record_after(&buf), None);
        buf.extend_from_slice(&b);
        assert_eq!(valid_record_after(&buf), Some(a.len()));
    }
}
