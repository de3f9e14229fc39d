//! The UDP datagram payload: sequence number, CLOCK_MONOTONIC send time and
//! a checksum over everything else, so the receiver can tell lost,
//! duplicated and corrupted datagrams apart.
//!
//! Layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `CHT1` |
//! | 4 | 8 | sequence number |
//! | 12 | 8 | send time, CLOCK_MONOTONIC ns |
//! | 20 | 4 | total length |
//! | 24 | 4 | FNV-1a 32 of bytes 0..24 and 28..len |
//! | 28 | .. | filler derived from the sequence number |

use std::fmt;

/// `CHT1` as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CHT1");
/// Size of the header; the smallest valid datagram.
pub const HEADER_LEN: usize = 28;
/// Largest payload `encode` accepts (fits an IPv4 UDP datagram).
pub const MAX_LEN: usize = 65_000;
/// Default payload size of the traffic functions.
pub const DEFAULT_LEN: usize = 64;

/// A decoded, intact datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub seq: u64,
    pub send_ns: u64,
    pub len: usize,
}

/// Why a payload is not an intact datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooShort(usize),
    BadMagic(u32),
    LengthMismatch { header: usize, actual: usize },
    BadChecksum { stored: u32, computed: u32 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort(n) => write!(f, "datagram of {n} bytes is shorter than header"),
            DecodeError::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            DecodeError::LengthMismatch { header, actual } => {
                write!(f, "header says {header} bytes, got {actual}")
            }
            DecodeError::BadChecksum { stored, computed } => {
                write!(f, "checksum {stored:#010x} != computed {computed:#010x}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

fn fnv1a(mut h: u32, data: &[u8]) -> u32 {
    for &b in data {
        h ^= b as u32;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Checksum over the whole buffer except the checksum field (24..28).
/// Any single changed byte changes it.
fn checksum(buf: &[u8]) -> u32 {
    let h = fnv1a(FNV_OFFSET, &buf[..24]);
    fnv1a(h, &buf[28..])
}

/// Fills all of `buf` with the datagram for `seq` sent at `send_ns`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] or longer than [`MAX_LEN`].
pub fn encode(buf: &mut [u8], seq: u64, send_ns: u64) {
    let len = buf.len();
    assert!(
        (HEADER_LEN..=MAX_LEN).contains(&len),
        "payload length {len} outside {HEADER_LEN}..={MAX_LEN}"
    );
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..20].copy_from_slice(&send_ns.to_le_bytes());
    buf[20..24].copy_from_slice(&(len as u32).to_le_bytes());
    let seed = (seq as u8).wrapping_mul(31);
    for (i, b) in buf[HEADER_LEN..].iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
    let sum = checksum(buf);
    buf[24..28].copy_from_slice(&sum.to_le_bytes());
}

/// Returns a fresh datagram of `len` bytes.
pub fn encode_vec(len: usize, seq: u64, send_ns: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    encode(&mut v, seq, send_ns);
    v
}

/// Checks and decodes one received datagram.
pub fn decode(data: &[u8]) -> Result<Datagram, DecodeError> {
    if data.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(data.len()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
    let magic = u32_at(0);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let header = u32_at(20) as usize;
    if header != data.len() {
        return Err(DecodeError::LengthMismatch {
            header,
            actual: data.len(),
        });
    }
    let stored = u32_at(24);
    let computed = checksum(data);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    Ok(Datagram {
        seq: u64_at(4),
        send_ns: u64_at(12),
        len: data.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for len in [HEADER_LEN, 29, 64, 1400, MAX_LEN] {
            let v = encode_vec(len, 0xdead_beef_1234, 987_654_321);
            let d = decode(&v).unwrap();
            assert_eq!(
                d,
                Datagram {
                    seq: 0xdead_beef_1234,
                    send_ns: 987_654_321,
                    len
                }
            );
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let v = encode_vec(64, 42, 7);
        for i in 0..v.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut c = v.clone();
                c[i] ^= flip;
                assert!(decode(&c).is_err(), "flip {flip:#x} at {i} not detected");
            }
        }
    }

    #[test]
    fn rejects_truncation_and_garbage() {
        let v = encode_vec(100, 1, 2);
        assert_eq!(decode(&v[..10]), Err(DecodeError::TooShort(10)));
        assert!(matches!(
            decode(&v[..99]),
            Err(DecodeError::LengthMismatch {
                header: 100,
                actual: 99
            })
        ));
        assert!(matches!(decode(&[0u8; 64]), Err(DecodeError::BadMagic(0))));
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    #[should_panic]
    fn too_short_buffer_panics() {
        let mut b = [0u8; 10];
        encode(&mut b, 0, 0);
    }
}
