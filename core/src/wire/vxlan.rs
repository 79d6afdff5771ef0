//! The VXLAN header (RFC 7348 §5).
//!
//! Design note: smoltcp has no VXLAN, so this module adds it in smoltcp's own style: a
//! zero-copy [`Packet`] view over any `T: AsRef<[u8]>` with `new_unchecked` /
//! `new_checked` / `check_len`, field accessors and setters, and a [`Repr`] with `parse`,
//! `emit` and `buffer_len`. The header is eight bytes:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The contract follows the RFC: [`Repr::emit`] writes exactly the flags byte `0x08` (the
//! I flag) and zero reserved fields; [`Repr::parse`] requires the I flag and *ignores*
//! every reserved bit ("MUST be ignored on receipt"), which stay readable through the
//! packet accessors for diagnostics. The VNI is a [`Vni`], a 24-bit value by
//! construction, so `emit` cannot truncate and `parse(emit(x)) == x` always holds.

use core::fmt;

/// Length of the VXLAN header in bytes.
pub const HEADER_LEN: usize = 8;

/// The I flag: set when the VNI field is valid (the only defined flag).
pub const FLAG_I: u8 = 0x08;

mod field {
    pub const FLAGS: usize = 0;
    pub const RESERVED1: core::ops::Range<usize> = 1..4;
    pub const VNI: core::ops::Range<usize> = 4..7;
    pub const RESERVED2: usize = 7;
}

/// What was wrong with a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The buffer is shorter than the 8-byte header.
    Truncated,
    /// The I flag (VNI valid) is not set.
    MissingIFlag,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("VXLAN header truncated"),
            Error::MissingIFlag => f.write_str("VXLAN I flag not set"),
        }
    }
}

/// A VXLAN Network Identifier: a 24-bit value (0 ..= 0xff_ffff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: Vni = Vni(0x00ff_ffff);
    /// VNI 1, flannel's default and podwire's.
    pub const DEFAULT: Vni = Vni(1);

    /// The VNI `value`, or `None` if it does not fit in 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Self::MAX.0 {
            Some(Vni(value))
        } else {
            None
        }
    }

    /// The VNI made of the low 24 bits of `value` (the upper 8 bits are dropped).
    pub const fn from_low_bits(value: u32) -> Vni {
        Vni(value & Self::MAX.0)
    }

    /// The VNI as an integer.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl Default for Vni {
    fn default() -> Vni {
        Vni::DEFAULT
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A read/write view of a VXLAN header (and the inner frame behind it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    ///
    /// Accessors on a view over fewer than [`HEADER_LEN`] bytes panic; use
    /// [`Packet::new_checked`] for untrusted input.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds at least a whole header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds at least a whole header.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole flags byte (the I flag plus seven reserved bits).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag (VNI valid) is set.
    pub fn i_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The seven reserved flag bits (the flags byte without the I flag).
    pub fn reserved_flags(&self) -> u8 {
        self.flags() & !FLAG_I
    }

    /// The 24 reserved bits after the flags byte.
    pub fn reserved1(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::RESERVED1];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The VXLAN Network Identifier (meaningful only with the I flag set).
    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// The 8 reserved bits after the VNI.
    pub fn reserved2(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED2]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The encapsulated inner Ethernet frame (everything after the header).
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the whole flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the 24 reserved bits after the flags byte (the top 8 bits of `value` are
    /// ignored).
    pub fn set_reserved1(&mut self, value: u32) {
        let b = value.to_be_bytes();
        self.buffer.as_mut()[field::RESERVED1].copy_from_slice(&b[1..]);
    }

    /// Sets the VNI.
    pub fn set_vni(&mut self, value: Vni) {
        let b = value.0.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// Sets the 8 reserved bits after the VNI.
    pub fn set_reserved2(&mut self, value: u8) {
        self.buffer.as_mut()[field::RESERVED2] = value;
    }

    /// The inner frame, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The meaning of a VXLAN header: its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Repr {
    /// The VXLAN Network Identifier.
    pub vni: Vni,
}

impl Repr {
    /// Parses a header: checks the length and the I flag, ignores reserved bits.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        if !packet.i_flag() {
            return Err(Error::MissingIFlag);
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// The length of the emitted header: always [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: flags `0x08`, zero reserved fields, the VNI.
    ///
    /// The packet must hold at least [`HEADER_LEN`] bytes (as with smoltcp's `emit`).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_I);
        packet.set_reserved1(0);
        packet.set_vni(self.vni);
        packet.set_reserved2(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The VXLAN header of a frame captured from the Linux kernel's vxlan driver (VNI 42).
    const KERNEL_HEADER: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 0x2a, 0];

    #[test]
    fn parses_kernel_header() {
        let packet = Packet::new_checked(&KERNEL_HEADER[..]).unwrap();
        assert!(packet.i_flag());
        assert_eq!(packet.vni(), Vni::new(42).unwrap());
        assert_eq!(packet.reserved_flags(), 0);
        assert_eq!(packet.reserved1(), 0);
        assert_eq!(packet.reserved2(), 0);
        assert!(packet.payload().is_empty());
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr {
                vni: Vni::new(42).unwrap()
            })
        );
    }

    #[test]
    fn emits_kernel_header() {
        let mut bytes = [0xffu8; 8];
        let repr = Repr {
            vni: Vni::new(42).unwrap(),
        };
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, KERNEL_HEADER);
        assert_eq!(repr.buffer_len(), HEADER_LEN);
    }

    #[test]
    fn emit_clears_reserved_and_keeps_payload() {
        let mut bytes = [0xffu8; 10];
        Repr {
            vni: Vni::new(0x12_3456).unwrap(),
        }
        .emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xff, 0xff]);
    }

    #[test]
    fn reserved_bits_are_ignored_but_visible() {
        let bytes = [0xff, 0xaa, 0xbb, 0xcc, 0x00, 0x00, 0x07, 0xdd, 1, 2];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.reserved_flags(), 0xf7);
        assert_eq!(packet.reserved1(), 0xaa_bbcc);
        assert_eq!(packet.reserved2(), 0xdd);
        assert_eq!(packet.payload(), &[1, 2]);
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr {
                vni: Vni::new(7).unwrap()
            })
        );
    }

    #[test]
    fn rejects_missing_i_flag_and_truncation() {
        let bytes = [0xf7, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bytes[..])),
            Err(Error::MissingIFlag)
        );
        assert_eq!(
            Packet::new_checked(&KERNEL_HEADER[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&KERNEL_HEADER[..7])),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 8];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(0x88);
        packet.set_reserved1(0xff12_3456);
        packet.set_vni(Vni::MAX);
        packet.set_reserved2(9);
        packet.payload_mut();
        assert_eq!(packet.flags(), 0x88);
        assert_eq!(packet.reserved1(), 0x12_3456);
        assert_eq!(packet.vni(), Vni::MAX);
        assert_eq!(packet.reserved2(), 9);
        assert_eq!(
            packet.into_inner(),
            &[0x88, 0x12, 0x34, 0x56, 0xff, 0xff, 0xff, 9]
        );
    }

    #[test]
    fn vni_range() {
        assert_eq!(Vni::new(0x100_0000), None);
        assert_eq!(Vni::new(0xff_ffff), Some(Vni::MAX));
        assert_eq!(Vni::from_low_bits(0x0100_0001), Vni::DEFAULT);
        assert_eq!(Vni::default().get(), 1);
    }

    proptest! {
        #[test]
        fn parse_emit_round_trip(vni in 0u32..=0xff_ffff, tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let repr = Repr { vni: Vni::new(vni).unwrap() };
            let mut bytes = [&[0xa5u8; HEADER_LEN][..], &tail[..]].concat();
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &tail[..]);
            prop_assert_eq!(&bytes[..4], &[FLAG_I, 0, 0, 0]);
            prop_assert_eq!(bytes[7], 0);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let repr = Repr::parse(&packet);
                prop_assert_eq!(repr.is_ok(), bytes[0] & FLAG_I != 0);
            } else {
                prop_assert!(bytes.len() < HEADER_LEN);
            }
        }
    }
}
