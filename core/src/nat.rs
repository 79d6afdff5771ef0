//! In-place network address translation of IPv4 packets.
//!
//! Design note: NAT is a pure function of a packet and a [`Rewrite`] (which addresses
//! and ports to replace), so it is separate from the connection table that decides the
//! rewrite ([`crate::conntrack`]). Packets are rewritten where they lie — no copy, no
//! allocation — and every checksum the change touches is adjusted incrementally with
//! [`crate::checksum`] (RFC 1624): the IPv4 header checksum for addresses, the TCP/UDP
//! checksum for ports *and* addresses (they are part of the pseudo-header), the ICMP
//! checksum for an echo identifier. The cost is independent of the payload size, and a
//! packet that arrived with a bad checksum still has a bad checksum.
//!
//! Every function validates the whole packet before it writes a byte: on error
//! ([`NatError`] names what was wrong) the packet is unchanged. Nothing here panics on
//! any input; all accesses are checked.
//!
//! **ICMP errors.** A destination-unreachable, time-exceeded or parameter-problem
//! message quotes the IP header and the first 8 bytes of the packet that caused it.
//! When that packet was translated, the quote shows the *translated* tuple, which the
//! receiver of the error does not know. [`translate_icmp_error`] therefore takes the
//! rewrite of the error's own direction (the datapath finds the connection by the
//! reversed quoted tuple, see [`parse_tuple`]) and
//! - rewrites the quoted header back (its source takes the rewrite's destination and
//!   vice versa), fixing the quoted IP checksum, the quoted UDP checksum and — when the
//!   quote is long enough to contain it — the quoted TCP checksum, or the quoted ICMP
//!   echo identifier and checksum;
//! - rewrites the outer destination like any packet of that direction, and the outer
//!   source only when the error was sent by the translated peer itself (outer source ==
//!   quoted destination); an error from a router on the path keeps the router's address;
//! - adjusts the outer ICMP checksum by every changed quoted word (the quote starts 8
//!   bytes into the ICMP message and IPv4 header lengths are multiples of 4, so every
//!   quoted field sits on a 16-bit boundary of the ICMP message).
//!
//! **Partial checksums.** A packet from a device with checksum offload (Linux
//! `CHECKSUM_PARTIAL`, a TAP frame with `NEEDS_CSUM`) carries in its TCP/UDP checksum
//! field only the pseudo-header sum, uncomplemented; whoever transmits it sums the
//! rest. [`ChecksumMode::Partial`] keeps such a field right: address changes are added
//! to it uncomplemented ([`Delta::apply_partial`], as Linux's
//! `inet_proto_csum_replace4` does for a partial skb), port and identifier changes are
//! not applied (the final sum covers them), and no UDP zero rule applies. The IPv4
//! header checksum is always complete.
//!
//! Limits: IPv4 only; non-first fragments carry no ports and are refused
//! ([`NatError::Fragment`]) — a first fragment is rewritten correctly, since an
//! incremental update of its L4 checksum stays valid for the reassembled datagram.
//! Protocols other than TCP, UDP and ICMP are refused ([`NatError::UnsupportedProtocol`]):
//! some (UDP-Lite, DCCP) checksum the pseudo-header in ways this module does not
//! adjust, and silently breaking them would be worse.

use core::net::{IpAddr, Ipv4Addr};

use crate::checksum::Delta;
use crate::flow::{FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::{EthernetFrame, EthernetProtocol};

/// The smallest IPv4 header.
const IPV4_MIN_HEADER: usize = 20;
/// ICMP header: type, code, checksum, 4 bytes of rest-of-header.
const ICMP_HEADER: usize = 8;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_REDIRECT: u8 = 5;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// What is wrong with a packet or a rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NatError {
    /// The buffer ends before a header or before the IPv4 total length.
    Truncated,
    /// The frame is not IPv4 (EtherType or IP version).
    NotIpv4,
    /// The IPv4 header length is below 20 or beyond the total length.
    BadHeaderLength,
    /// A non-first fragment: it has no L4 header to translate.
    Fragment,
    /// The protocol cannot be translated (only TCP, UDP and ICMP can).
    UnsupportedProtocol,
    /// A port change was asked for a packet that has no ports (an ICMP message other
    /// than echo).
    NoPorts,
    /// An ICMP error message, which must go through [`translate_icmp_error`].
    IcmpError,
    /// [`translate_icmp_error`] was given something other than an ICMP error message.
    NotIcmpError,
    /// A rewrite between flow keys of different families or of IPv6 addresses.
    NotIpv4Rewrite,
}

/// What the L4 checksum field of a packet holds, which decides how NAT adjusts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ChecksumMode {
    /// The complete checksum: RFC 1624 incremental update of every changed word, with
    /// the UDP zero rules.
    #[default]
    Complete,
    /// The partial pseudo-header sum of a checksum-offloaded packet: only address
    /// (pseudo-header) changes are added, uncomplemented; see the module documentation.
    Partial,
}

/// The fields to replace in a packet: `None` leaves a field as it is.
///
/// For ICMP echo the identifier plays the port's part: a request's identifier is
/// replaced by `src_port` (falling back to `dst_port`), a reply's by `dst_port`
/// (falling back to `src_port`) — conntrack keys carry the identifier in both port
/// fields, so the two agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rewrite {
    /// New source address.
    pub src: Option<Ipv4Addr>,
    /// New source port (or ICMP echo identifier).
    pub src_port: Option<u16>,
    /// New destination address.
    pub dst: Option<Ipv4Addr>,
    /// New destination port (or ICMP echo identifier).
    pub dst_port: Option<u16>,
}

impl Rewrite {
    /// The rewrite that changes nothing.
    pub const NONE: Rewrite = Rewrite {
        src: None,
        src_port: None,
        dst: None,
        dst_port: None,
    };

    /// Whether this rewrite changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Rewrite::NONE
    }

    /// The rewrite that turns a packet carrying the tuple `from` into one carrying `to`
    /// (only the fields that differ). Both keys must be IPv4, or equal.
    pub fn between(from: &FlowKey, to: &FlowKey) -> Result<Rewrite, NatError> {
        if from == to {
            return Ok(Rewrite::NONE);
        }
        let v4 = |a: IpAddr| match a {
            IpAddr::V4(a) => Ok(a),
            IpAddr::V6(_) => Err(NatError::NotIpv4Rewrite),
        };
        let (fs, fd, ts, td) = (v4(from.src)?, v4(from.dst)?, v4(to.src)?, v4(to.dst)?);
        Ok(Rewrite {
            src: pick(fs, ts),
            src_port: pick(from.src_port, to.src_port),
            dst: pick(fd, td),
            dst_port: pick(from.dst_port, to.dst_port),
        })
    }

    /// The same rewrite seen from the other direction: source and destination swapped.
    pub fn swapped(&self) -> Rewrite {
        Rewrite {
            src: self.dst,
            src_port: self.dst_port,
            dst: self.src,
            dst_port: self.src_port,
        }
    }

    fn changes_ports(&self) -> bool {
        self.src_port.is_some() || self.dst_port.is_some()
    }
}

/// The flow a packet belongs to, as [`parse_tuple`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Tuple {
    /// An ordinary packet of the flow `key`. `tcp_flags` is the TCP flags byte (FIN
    /// 0x01, SYN 0x02, RST 0x04, ACK 0x10), 0 for other protocols. Protocols without
    /// ports (and ICMP messages other than echo) have ports 0.
    Flow {
        /// The packet's tuple.
        key: FlowKey,
        /// TCP flags (0 unless TCP).
        tcp_flags: u8,
    },
    /// An ICMP error quoting a packet of the flow `inner` (the quoted packet's own
    /// tuple). Look up `inner.reversed()` to find the connection and the direction of
    /// the error, then call [`translate_icmp_error`] with that direction's rewrite.
    IcmpError {
        /// The quoted packet's tuple.
        inner: FlowKey,
    },
}

/// `Some(new)` if it differs from `old`.
fn pick<T: PartialEq>(old: T, new: T) -> Option<T> {
    if old == new {
        None
    } else {
        Some(new)
    }
}

/// The validated shape of an IPv4 header.
#[derive(Clone, Copy)]
struct Ipv4Shape {
    header_len: usize,
    total_len: usize,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    first_fragment: bool,
}

/// Parses an IPv4 header at the start of `p` whose total length must fit in `p`.
fn ipv4_shape(p: &[u8]) -> Result<Ipv4Shape, NatError> {
    let h = p.get(..IPV4_MIN_HEADER).ok_or(NatError::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(NatError::NotIpv4);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if header_len < IPV4_MIN_HEADER || header_len > total_len {
        return Err(NatError::BadHeaderLength);
    }
    if total_len > p.len() {
        return Err(NatError::Truncated);
    }
    let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    Ok(Ipv4Shape {
        header_len,
        total_len,
        protocol: h[9],
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        first_fragment: frag_offset == 0,
    })
}

/// Parses a quoted IPv4 header (inside an ICMP error): the total length refers to the
/// original datagram, so only the header itself must be present.
fn quoted_ipv4_shape(p: &[u8]) -> Result<Ipv4Shape, NatError> {
    let h = p.get(..IPV4_MIN_HEADER).ok_or(NatError::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(NatError::NotIpv4);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < IPV4_MIN_HEADER {
        return Err(NatError::BadHeaderLength);
    }
    if header_len > p.len() {
        return Err(NatError::Truncated);
    }
    let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    Ok(Ipv4Shape {
        header_len,
        total_len: p.len(),
        protocol: h[9],
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        first_fragment: frag_offset == 0,
    })
}

fn read16(p: &[u8], at: usize) -> Result<u16, NatError> {
    match p.get(at..at.checked_add(2).ok_or(NatError::Truncated)?) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(NatError::Truncated),
    }
}

/// Writes `new` at `at`, returning the old value.
fn write16(p: &mut [u8], at: usize, new: u16) -> Result<u16, NatError> {
    let old = read16(p, at)?;
    if let Some(w) = p.get_mut(at..at + 2) {
        w.copy_from_slice(&new.to_be_bytes());
    }
    Ok(old)
}

fn write_addr(p: &mut [u8], at: usize, new: Ipv4Addr) -> Result<u32, NatError> {
    let new = new.to_bits();
    let hi = write16(p, at, (new >> 16) as u16)?;
    let lo = write16(p, at + 2, new as u16)?;
    Ok(u32::from(hi) << 16 | u32::from(lo))
}

/// How the L4 header of a packet (or of a quote) is translated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum L4 {
    /// TCP; `checksum` says whether the checksum field is present (a quote may end
    /// before it).
    Tcp { checksum: bool },
    /// UDP (checksum always within the first 8 bytes).
    Udp,
    /// ICMP echo request or reply.
    IcmpEcho { request: bool },
    /// Anything else: addresses only.
    AddressesOnly,
}

/// Decides how to translate the L4 part `l4` of protocol `protocol`, checking that all
/// fields the rewrite touches are present. `quoted` relaxes the TCP checksum presence.
fn plan_l4(protocol: u8, l4: &[u8], rw: &Rewrite, quoted: bool) -> Result<L4, NatError> {
    match protocol {
        PROTO_TCP => {
            let need = if quoted { 8 } else { 18 };
            if l4.len() < need {
                return Err(NatError::Truncated);
            }
            Ok(L4::Tcp {
                checksum: l4.len() >= 18,
            })
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return Err(NatError::Truncated);
            }
            Ok(L4::Udp)
        }
        PROTO_ICMP => {
            let ty = *l4.first().ok_or(NatError::Truncated)?;
            match ty {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => {
                    if l4.len() < ICMP_HEADER {
                        return Err(NatError::Truncated);
                    }
                    Ok(L4::IcmpEcho {
                        request: ty == ICMP_ECHO_REQUEST,
                    })
                }
                ICMP_DEST_UNREACHABLE
                | ICMP_SOURCE_QUENCH
                | ICMP_REDIRECT
                | ICMP_TIME_EXCEEDED
                | ICMP_PARAMETER_PROBLEM
                    if !quoted =>
                {
                    Err(NatError::IcmpError)
                }
                _ if rw.changes_ports() => Err(NatError::NoPorts),
                _ => Ok(L4::AddressesOnly),
            }
        }
        _ => Err(NatError::UnsupportedProtocol),
    }
}

/// Rewrites the IPv4 header at `ip` (addresses; header checksum) and the L4 header at
/// `ip[header_len..]` per the plan. Returns the delta of every changed 16-bit word
/// (relative to the start of `ip`, all aligned), for a checksum that covers them.
fn apply(
    ip: &mut [u8],
    shape: &Ipv4Shape,
    l4: L4,
    rw: &Rewrite,
    mode: ChecksumMode,
) -> Result<Delta, NatError> {
    let mut all = Delta::NONE; // every word changed, for an enclosing ICMP checksum
    let mut ip_delta = Delta::NONE; // IPv4 header checksum
    let mut l4_delta = Delta::NONE; // L4 checksum: pseudo-header + ports/id
    let src = rw.src.filter(|&a| a != shape.src);
    let dst = rw.dst.filter(|&a| a != shape.dst);
    if let Some(a) = src {
        let old = write_addr(ip, 12, a)?;
        ip_delta.change32(old, a.to_bits());
    }
    if let Some(a) = dst {
        let old = write_addr(ip, 16, a)?;
        ip_delta.change32(old, a.to_bits());
    }
    if ip_delta != Delta::NONE {
        let old = read16(ip, 10)?;
        let new = ip_delta.apply(old);
        write16(ip, 10, new)?;
        all.merge(ip_delta);
        all.change16(old, new);
    }
    let base = shape.header_len;
    let with_pseudo = matches!(l4, L4::Tcp { .. } | L4::Udp);
    if with_pseudo {
        l4_delta.merge(ip_delta);
    }
    let mut set_port = |at: usize, new: Option<u16>, d: &mut Delta| -> Result<(), NatError> {
        if let Some(new) = new {
            let old = write16(ip, base + at, new)?;
            if old != new {
                d.change16(old, new);
            }
        }
        Ok(())
    };
    let mut port_delta = Delta::NONE;
    match l4 {
        L4::Tcp { .. } | L4::Udp => {
            set_port(0, rw.src_port, &mut port_delta)?;
            set_port(2, rw.dst_port, &mut port_delta)?;
        }
        L4::IcmpEcho { request } => {
            let id = if request {
                rw.src_port.or(rw.dst_port)
            } else {
                rw.dst_port.or(rw.src_port)
            };
            set_port(4, id, &mut port_delta)?;
        }
        L4::AddressesOnly => {}
    }
    all.merge(port_delta);
    l4_delta.merge(port_delta);
    let checksum_at = match l4 {
        L4::Tcp { checksum: true } => Some(16),
        L4::Udp => Some(6),
        L4::IcmpEcho { .. } => Some(2),
        L4::Tcp { checksum: false } | L4::AddressesOnly => None,
    };
    if mode == ChecksumMode::Partial {
        // Only the pseudo-header is in the field; the device sums ports and ids.
        l4_delta = if with_pseudo { ip_delta } else { Delta::NONE };
    }
    if let Some(at) = checksum_at {
        if l4_delta != Delta::NONE {
            let old = read16(ip, base + at)?;
            let new = match (mode, l4) {
                (ChecksumMode::Partial, _) => l4_delta.apply_partial(old),
                (ChecksumMode::Complete, L4::Udp) => l4_delta.apply_udp(old),
                (ChecksumMode::Complete, _) => l4_delta.apply(old),
            };
            write16(ip, base + at, new)?;
            all.change16(old, new);
        }
    }
    Ok(all)
}

/// Rewrites the IPv4 packet at the start of `packet` (TCP, UDP or ICMP echo) per `rw`,
/// updating the IPv4 header checksum and the L4 checksum incrementally. Bytes beyond
/// the IPv4 total length (e.g. Ethernet padding) are ignored. On error the packet is
/// unchanged.
pub fn rewrite_ipv4(packet: &mut [u8], rw: &Rewrite) -> Result<(), NatError> {
    rewrite_ipv4_with(packet, rw, ChecksumMode::Complete)
}

/// [`rewrite_ipv4`] for a packet whose L4 checksum field holds what `mode` says.
pub fn rewrite_ipv4_with(
    packet: &mut [u8],
    rw: &Rewrite,
    mode: ChecksumMode,
) -> Result<(), NatError> {
    let shape = ipv4_shape(packet)?;
    let ip = packet
        .get_mut(..shape.total_len)
        .ok_or(NatError::Truncated)?;
    if !shape.first_fragment {
        return Err(NatError::Fragment);
    }
    let l4 = plan_l4(
        shape.protocol,
        ip.get(shape.header_len..).ok_or(NatError::Truncated)?,
        rw,
        false,
    )?;
    apply(ip, &shape, l4, rw, mode).map(|_| ())
}

/// The IPv4 packet inside an Ethernet II frame.
fn ethernet_payload(frame: &mut [u8]) -> Result<&mut [u8], NatError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| NatError::Truncated)?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Err(NatError::NotIpv4);
    }
    Ok(eth.into_inner().get_mut(14..).unwrap_or_default())
}

/// [`rewrite_ipv4`] on the IPv4 packet inside an Ethernet II frame.
pub fn rewrite_frame(frame: &mut [u8], rw: &Rewrite) -> Result<(), NatError> {
    rewrite_ipv4(ethernet_payload(frame)?, rw)
}

/// [`rewrite_ipv4_with`] on the IPv4 packet inside an Ethernet II frame.
pub fn rewrite_frame_with(
    frame: &mut [u8],
    rw: &Rewrite,
    mode: ChecksumMode,
) -> Result<(), NatError> {
    rewrite_ipv4_with(ethernet_payload(frame)?, rw, mode)
}

/// Translates an ICMP error message (destination unreachable, source quench, redirect,
/// time exceeded, parameter problem) about a translated packet: `rw` is the rewrite of
/// the error's own direction (see the module documentation). On error the packet is
/// unchanged.
pub fn translate_icmp_error(packet: &mut [u8], rw: &Rewrite) -> Result<(), NatError> {
    translate_icmp_error_with(packet, rw, ChecksumMode::Complete)
}

/// [`translate_icmp_error`] for an error message whose ICMP checksum field holds what
/// `mode` says: with [`ChecksumMode::Partial`] the device sums the message, so the
/// changes of the quote are not added to the field. The quote is data and is always
/// translated with complete checksums.
pub fn translate_icmp_error_with(
    packet: &mut [u8],
    rw: &Rewrite,
    mode: ChecksumMode,
) -> Result<(), NatError> {
    let outer = ipv4_shape(packet)?;
    if outer.protocol != PROTO_ICMP {
        return Err(NatError::NotIcmpError);
    }
    if !outer.first_fragment {
        return Err(NatError::Fragment);
    }
    let ip = packet
        .get_mut(..outer.total_len)
        .ok_or(NatError::Truncated)?;
    let icmp_at = outer.header_len;
    let quote_at = icmp_at + ICMP_HEADER;
    let ty = *ip.get(icmp_at).ok_or(NatError::Truncated)?;
    if !matches!(
        ty,
        ICMP_DEST_UNREACHABLE
            | ICMP_SOURCE_QUENCH
            | ICMP_REDIRECT
            | ICMP_TIME_EXCEEDED
            | ICMP_PARAMETER_PROBLEM
    ) {
        return Err(NatError::NotIcmpError);
    }
    let inner_rw = rw.swapped();
    let quote = ip.get(quote_at..).ok_or(NatError::Truncated)?;
    let inner = quoted_ipv4_shape(quote)?;
    if !inner.first_fragment && inner_rw.changes_ports() {
        return Err(NatError::Fragment);
    }
    let inner_l4 = if inner.first_fragment {
        plan_l4(
            inner.protocol,
            quote.get(inner.header_len..).ok_or(NatError::Truncated)?,
            &inner_rw,
            true,
        )?
    } else {
        L4::AddressesOnly
    };
    // Outer rewrite: destination always, source only if the translated peer itself
    // sent the error.
    let outer_rw = Rewrite {
        src: rw.src.filter(|_| outer.src == inner.dst),
        dst: rw.dst,
        src_port: None,
        dst_port: None,
    };

    // Everything is validated: now write.
    let quote = ip.get_mut(quote_at..).ok_or(NatError::Truncated)?;
    let quoted_delta = apply(quote, &inner, inner_l4, &inner_rw, ChecksumMode::Complete)?;
    if quoted_delta != Delta::NONE && mode == ChecksumMode::Complete {
        let at = icmp_at + 2;
        let old = read16(ip, at)?;
        write16(ip, at, quoted_delta.apply(old))?;
    }
    // ICMP has no pseudo-header: the outer addresses only touch the IPv4 checksum.
    apply(ip, &outer, L4::AddressesOnly, &outer_rw, mode).map(|_| ())
}

/// [`translate_icmp_error`] on the IPv4 packet inside an Ethernet II frame.
pub fn translate_icmp_error_frame(frame: &mut [u8], rw: &Rewrite) -> Result<(), NatError> {
    translate_icmp_error(ethernet_payload(frame)?, rw)
}

/// [`translate_icmp_error_with`] on the IPv4 packet inside an Ethernet II frame.
pub fn translate_icmp_error_frame_with(
    frame: &mut [u8],
    rw: &Rewrite,
    mode: ChecksumMode,
) -> Result<(), NatError> {
    translate_icmp_error_with(ethernet_payload(frame)?, rw, mode)
}

/// The tuple of the IPv4 packet at the start of `packet` in conntrack zone `zone`: its
/// flow key and TCP flags, or, for an ICMP error, the quoted packet's key.
pub fn parse_tuple(packet: &[u8], zone: u16) -> Result<Tuple, NatError> {
    let shape = ipv4_shape(packet)?;
    if !shape.first_fragment {
        return Err(NatError::Fragment);
    }
    let l4 = packet
        .get(shape.header_len..shape.total_len)
        .ok_or(NatError::Truncated)?;
    let mut key = FlowKey {
        src: IpAddr::V4(shape.src),
        dst: IpAddr::V4(shape.dst),
        src_port: 0,
        dst_port: 0,
        protocol: shape.protocol,
        zone,
    };
    let mut tcp_flags = 0;
    match shape.protocol {
        PROTO_TCP => {
            key.src_port = read16(l4, 0)?;
            key.dst_port = read16(l4, 2)?;
            tcp_flags = *l4.get(13).ok_or(NatError::Truncated)?;
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return Err(NatError::Truncated);
            }
            key.src_port = read16(l4, 0)?;
            key.dst_port = read16(l4, 2)?;
        }
        PROTO_ICMP => {
            let ty = *l4.first().ok_or(NatError::Truncated)?;
            match ty {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => {
                    let id = read16(l4, 4)?;
                    key.src_port = id;
                    key.dst_port = id;
                }
                ICMP_DEST_UNREACHABLE
                | ICMP_SOURCE_QUENCH
                | ICMP_REDIRECT
                | ICMP_TIME_EXCEEDED
                | ICMP_PARAMETER_PROBLEM => {
                    let quote = l4.get(ICMP_HEADER..).ok_or(NatError::Truncated)?;
                    return quoted_key(quote, zone).map(|inner| Tuple::IcmpError { inner });
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(Tuple::Flow { key, tcp_flags })
}

/// The flow key of a quoted packet (IPv4 header + at least 8 bytes of L4).
fn quoted_key(quote: &[u8], zone: u16) -> Result<FlowKey, NatError> {
    let inner = quoted_ipv4_shape(quote)?;
    let l4 = quote.get(inner.header_len..).unwrap_or_default();
    let mut key = FlowKey {
        src: IpAddr::V4(inner.src),
        dst: IpAddr::V4(inner.dst),
        src_port: 0,
        dst_port: 0,
        protocol: inner.protocol,
        zone,
    };
    if !inner.first_fragment {
        return Ok(key);
    }
    match inner.protocol {
        PROTO_TCP | PROTO_UDP => {
            key.src_port = read16(l4, 0)?;
            key.dst_port = read16(l4, 2)?;
        }
        PROTO_ICMP => {
            if let Some(&(ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY)) = l4.first() {
                let id = read16(l4, 4)?;
                key.src_port = id;
                key.dst_port = id;
            }
        }
        _ => {}
    }
    Ok(key)
}

#[cfg(test)]
mod tests;
