//! The snapshot envelope shared by block and pool snapshots: header, length, CRC-32.
//!
//! Design note: a shell persists IPAM state after every change and restores it on
//! start, so a snapshot must either load exactly as written or be rejected with the
//! reason — never half-loaded. Every snapshot is therefore one self-delimiting record
//! (a declared total length) sealed by a CRC-32, and the envelope is checked in full
//! (length, magic, version, family, checksum) before any field is interpreted; only
//! then are the contents validated against the invariants of the type, and the value
//! is built in a local and returned whole. The CRC uses a table computed at compile
//! time (`const fn`), so it costs no RAM and no start-up work on a microcontroller.
//! The byte layouts are documented in the [`ipam`](super) module documentation.

use crate::ids::NodeId;

/// Length of the common header: magic (4), version, family, two type bytes, length (4).
pub(crate) const HEADER_LEN: usize = 12;
/// Length of the trailing CRC-32.
pub(crate) const CRC_LEN: usize = 4;
/// The snapshot format version written and accepted by this code.
pub const SNAPSHOT_VERSION: u8 = 1;

/// Why a snapshot could not be written or was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SnapshotError {
    /// `to_bytes`: the output buffer is shorter than `snapshot_len()`.
    BufferTooSmall {
        /// Bytes the snapshot needs.
        needed: usize,
        /// Bytes the buffer has.
        got: usize,
    },
    /// The input ends before the header, or before the declared length.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The input is longer than the declared length of the snapshot.
    TrailingBytes {
        /// The declared length.
        declared: usize,
        /// Bytes given.
        got: usize,
    },
    /// The magic bytes are not those of this snapshot kind.
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The format version is not [`SNAPSHOT_VERSION`].
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// The address family byte does not match the type being restored.
    BadFamily {
        /// The family byte found.
        found: u8,
    },
    /// A reserved flags byte is not zero.
    BadFlags {
        /// The flags byte found.
        found: u8,
    },
    /// `from_bytes`: the declared length is shorter than an empty snapshot;
    /// `to_bytes`: the snapshot would not fit the 32-bit length field.
    BadLength {
        /// The declared length.
        declared: usize,
    },
    /// The CRC-32 over the snapshot does not match the stored one.
    BadChecksum {
        /// The CRC stored in the snapshot.
        stored: u32,
        /// The CRC computed over the bytes.
        computed: u32,
    },
    /// The declared length does not match what the contents need.
    LengthMismatch {
        /// The declared length.
        declared: usize,
        /// The length the header fields imply.
        expected: usize,
    },
    /// A prefix length is outside the range this family and type allow.
    PrefixOutOfRange {
        /// The prefix length found.
        prefix_len: u8,
    },
    /// A network address has host bits set below its prefix.
    HostBitsSet,
    /// The block needs more bitmap words than the type being restored has.
    BlockTooLarge {
        /// The prefix length of the block.
        prefix_len: u8,
    },
    /// The pool has more blocks than the type being restored can hold.
    TooManyBlocks {
        /// log2 of the number of blocks the pool needs.
        block_bits: u8,
    },
    /// The next-fit cursor points outside the block.
    CursorOutOfRange {
        /// The cursor found.
        cursor: u32,
    },
    /// A reserved address (network, gateway, broadcast) is marked allocated.
    ReservedAddressAllocated {
        /// Offset of the address in the block.
        offset: u32,
    },
    /// A bitmap bit beyond the end of the block is set.
    BitOutsideBlock,
    /// The allocated count does not match the number of bits set.
    CountMismatch {
        /// The count stored.
        declared: u32,
        /// The count of bits set in the bitmap.
        counted: u32,
    },
    /// A pool entry names a block index beyond the pool.
    BlockIndexOutOfRange {
        /// The index found.
        index: u32,
    },
    /// Pool entries are not in strictly ascending block order (unsorted or duplicate).
    EntriesNotSorted {
        /// The offending index.
        index: u32,
    },
    /// A node owns more than one block.
    DuplicateNode {
        /// The node found twice.
        node: NodeId,
    },
}

impl core::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use SnapshotError::*;
        match *self {
            BufferTooSmall { needed, got } => {
                write!(
                    f,
                    "snapshot buffer too small: need {needed} bytes, have {got}"
                )
            }
            Truncated { needed, got } => {
                write!(f, "snapshot truncated: need {needed} bytes, got {got}")
            }
            TrailingBytes { declared, got } => write!(
                f,
                "snapshot has trailing bytes: declared {declared} bytes, got {got}"
            ),
            BadMagic { found } => write!(f, "bad snapshot magic {found:02x?}"),
            BadVersion { found } => write!(
                f,
                "unsupported snapshot version {found} (expected {SNAPSHOT_VERSION})"
            ),
            BadFamily { found } => write!(f, "snapshot address family {found} does not match"),
            BadFlags { found } => write!(f, "snapshot reserved flags byte is {found:#04x}"),
            BadLength { declared } => write!(f, "snapshot declared length {declared} is too short"),
            BadChecksum { stored, computed } => write!(
                f,
                "snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            LengthMismatch { declared, expected } => write!(
                f,
                "snapshot length {declared} does not match its contents ({expected})"
            ),
            PrefixOutOfRange { prefix_len } => {
                write!(f, "snapshot prefix length /{prefix_len} out of range")
            }
            HostBitsSet => f.write_str("snapshot network address has host bits set"),
            BlockTooLarge { prefix_len } => {
                write!(f, "snapshot block /{prefix_len} does not fit this bitmap")
            }
            TooManyBlocks { block_bits } => write!(
                f,
                "snapshot pool has 2^{block_bits} blocks, more than this pool holds"
            ),
            CursorOutOfRange { cursor } => write!(f, "snapshot cursor {cursor} outside the block"),
            ReservedAddressAllocated { offset } => write!(
                f,
                "snapshot marks reserved address at offset {offset} allocated"
            ),
            BitOutsideBlock => f.write_str("snapshot bitmap has bits beyond the block"),
            CountMismatch { declared, counted } => write!(
                f,
                "snapshot allocated count {declared} but {counted} bits set"
            ),
            BlockIndexOutOfRange { index } => {
                write!(f, "snapshot pool entry for block {index} beyond the pool")
            }
            EntriesNotSorted { index } => write!(
                f,
                "snapshot pool entries not strictly ascending at block {index}"
            ),
            DuplicateNode { node } => {
                write!(f, "snapshot pool gives node {} more than one block", node.0)
            }
        }
    }
}

impl core::error::Error for SnapshotError {}

/// The CRC-32 lookup table of the reflected polynomial 0xEDB88320, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32/ISO-HDLC (the zlib, Ethernet and PNG CRC): reflected polynomial 0xEDB88320,
/// initial value 0xFFFFFFFF, final XOR 0xFFFFFFFF; `crc32(b"123456789") == 0xCBF43926`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// The fields of a checked envelope.
pub(crate) struct Envelope<'a> {
    /// Byte 6 of the header (type specific).
    pub(crate) b6: u8,
    /// Byte 7 of the header (type specific).
    pub(crate) b7: u8,
    /// The declared total length (equal to the input length).
    pub(crate) len: usize,
    /// The bytes after the header, up to (excluding) the CRC.
    pub(crate) body: Reader<'a>,
}

/// Checks length, magic, version, family and CRC of a snapshot, in that order.
pub(crate) fn open(
    bytes: &[u8],
    magic: [u8; 4],
    family: u8,
) -> Result<Envelope<'_>, SnapshotError> {
    let got = bytes.len();
    let mut r = Reader::new(bytes);
    let too_short = SnapshotError::Truncated {
        needed: HEADER_LEN,
        got,
    };
    let found = r.array::<4>().ok_or(too_short)?;
    if found != magic {
        return Err(SnapshotError::BadMagic { found });
    }
    let version = r.u8().ok_or(too_short)?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::BadVersion { found: version });
    }
    let fam = r.u8().ok_or(too_short)?;
    if fam != family {
        return Err(SnapshotError::BadFamily { found: fam });
    }
    let b6 = r.u8().ok_or(too_short)?;
    let b7 = r.u8().ok_or(too_short)?;
    let declared = r.u32().ok_or(too_short)? as usize;
    if declared < HEADER_LEN + CRC_LEN {
        return Err(SnapshotError::BadLength { declared });
    }
    if got < declared {
        return Err(SnapshotError::Truncated {
            needed: declared,
            got,
        });
    }
    if got > declared {
        return Err(SnapshotError::TrailingBytes { declared, got });
    }
    let crc_at = declared - CRC_LEN;
    let (sealed, crc_bytes) = bytes.split_at(crc_at);
    let mut crc_r = Reader::new(crc_bytes);
    let stored = crc_r.u32().ok_or(too_short)?;
    let computed = crc32(sealed);
    if stored != computed {
        return Err(SnapshotError::BadChecksum { stored, computed });
    }
    let body = sealed.get(HEADER_LEN..).ok_or(too_short)?;
    Ok(Envelope {
        b6,
        b7,
        len: declared,
        body: Reader::new(body),
    })
}

/// A checked big-endian reader over untrusted bytes; every read returns `None` past the end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    /// An address of `len` bytes, big-endian, as an integer.
    pub(crate) fn addr_bits(&mut self, len: usize) -> Option<u128> {
        let bytes = self.take(len)?;
        if len > 16 {
            return None;
        }
        Some(bytes.iter().fold(0u128, |acc, &b| acc << 8 | u128::from(b)))
    }
}

/// A checked writer into a caller buffer; writing past the end is an error, not a panic.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer over `out`, which must hold `needed` bytes.
    pub(crate) fn new(out: &'a mut [u8], needed: usize) -> Result<Self, SnapshotError> {
        let got = out.len();
        match out.get_mut(..needed) {
            Some(buf) => Ok(Writer { buf, pos: 0 }),
            None => Err(SnapshotError::BufferTooSmall { needed, got }),
        }
    }

    pub(crate) fn put(&mut self, src: &[u8]) -> Result<(), SnapshotError> {
        let needed = self.pos.saturating_add(src.len());
        let got = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.pos..needed)
            .ok_or(SnapshotError::BufferTooSmall { needed, got })?;
        dst.copy_from_slice(src);
        self.pos = needed;
        Ok(())
    }

    /// Writes the low `len` bytes of `bits`, big-endian.
    pub(crate) fn put_addr_bits(&mut self, bits: u128, len: usize) -> Result<(), SnapshotError> {
        let all = bits.to_be_bytes();
        let start = all.len().saturating_sub(len);
        self.put(all.get(start..).unwrap_or(&[]))
    }

    /// Appends the CRC-32 of everything written so far and returns the total length.
    pub(crate) fn seal(mut self) -> Result<usize, SnapshotError> {
        let crc = crc32(self.buf.get(..self.pos).unwrap_or(&[]));
        self.put(&crc.to_be_bytes())?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The catalogue check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"a"), 0xE8B7_BE43);
    }

    #[test]
    fn reader_stops_at_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(3));
        assert_eq!(r.u8(), None);
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut buf = [0u8; 4];
        assert!(matches!(
            Writer::new(&mut buf, 5),
            Err(SnapshotError::BufferTooSmall { needed: 5, got: 4 })
        ));
        let mut w = Writer::new(&mut buf, 3).unwrap();
        w.put(&[1, 2]).unwrap();
        assert!(w.put(&[3, 4]).is_err());
    }
}
