//! Batched I/O on the underlay UDP socket: `recvmmsg` on receive, `sendmmsg` with UDP
//! GSO (`UDP_SEGMENT`) on send.
//!
//! Design note: cross-node throughput was bound by one syscall per VXLAN datagram.
//! [`RecvBatch`] reads up to [`MAX_BATCH`] datagrams per call, each into its own
//! buffer with [`HEADROOM`] free in front, so each still goes through the core on
//! its own, unchanged. [`SendBatch`] is an [`Egress`](super::forward::Egress)-side queue: the encapsulated
//! payloads of one wakeup are copied back to back into one arena and flushed with one
//! `sendmmsg`. A super-frame the core encapsulated once is cut straight into the
//! arena ([`SendBatch::push_segments`]: VXLAN header + inner segment per datagram).
//! Runs of payloads to the same VTEP that have the same size (only the last may be
//! shorter) — the segments of one TCP super-frame are the natural case — are
//! contiguous in the arena, so they go out as one
//! message with a `UDP_SEGMENT` control message and the kernel cuts them into
//! datagrams (one trip down the stack for up to 64 segments). UDP GSO refuses sockets
//! with `SO_NO_CHECK`, so single datagrams keep the zero outer checksum of RFC 7348
//! and GSO runs are sent with the checksum on (offloaded by veth and by real NICs;
//! `SO_NO_CHECK` is toggled only when the kind of message changes, which in a TCP
//! stream is rare); if a GSO send fails, GSO is switched off for the socket and the
//! run is resent datagram by datagram. `PODWIRE_UDP_GSO=0` in the
//! agent's environment turns GSO off (to measure batching alone).
//!
//! On receive, [`prepare`] turns on UDP GRO: a peer's GSO packet crosses the underlay
//! as one skb and is read as one coalesced datagram (with its segment size in a
//! `UDP_GRO` control message) instead of being cut into tens of datagrams that
//! overflow the socket buffer; the worker runs each datagram of it through the core
//! on its own, in place, and coalesces what is delivered to a pod again
//! ([`super::coalesce`]). `PODWIRE_UDP_GRO=0` turns it off.
//!
//! The `unsafe` here is the two syscalls and their C structures: every pointer handed
//! to the kernel points into a buffer owned by the batch and alive for the call, with
//! the length of that buffer.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use super::coalesce::Slots;
use super::forward::{BUFFER_LEN, HEADROOM};
use super::gso::{self, SegmentSink, SoftError};
use super::vnet::VnetHdr;

/// Datagrams read, or messages sent, per syscall.
pub const MAX_BATCH: usize = 64;

/// Segments per GSO message (the kernel's limit, `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;

/// Bytes per GSO message (a UDP datagram's payload limit, with room for headers).
const MAX_GSO_BYTES: usize = 65_000;

/// Whether the underlay socket sends with UDP GSO: the kernel knows `UDP_SEGMENT`
/// (Linux 4.18+) and `PODWIRE_UDP_GSO` is not `0`.
pub fn gso_enabled(socket: &UdpSocket) -> bool {
    if std::env::var("PODWIRE_UDP_GSO").is_ok_and(|v| v == "0") {
        return false;
    }
    get_int(socket, libc::SOL_UDP, libc::UDP_SEGMENT).is_some()
}

/// Socket buffer size asked for (as root, past `net.core.[rw]mem_max`).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

fn set_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Prepares the underlay socket for batched I/O: large socket buffers (a burst of
/// GSO sends from a peer lands as tens of datagrams at once, and the default 208 KiB
/// receive buffer overflows) and UDP GRO on receive (Linux 5.0+; `PODWIRE_UDP_GRO=0`
/// turns it off): a GSO packet from a peer is then read as one coalesced datagram,
/// which [`RecvBatch`] splits at its segment size. Returns whether GRO is on.
pub fn prepare(socket: &UdpSocket) -> bool {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !set_int(socket, libc::SOL_SOCKET, force, SOCKET_BUFFER) {
            let _ = set_int(socket, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    !std::env::var("PODWIRE_UDP_GRO").is_ok_and(|v| v == "0")
        && set_int(socket, libc::SOL_UDP, libc::UDP_GRO, 1)
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in6`.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a `sockaddr_in` (family AF_INET); storage is
            // larger than and aligned for it.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One received datagram: its payload is `buf[HEADROOM..HEADROOM + len]` of its
/// buffer ([`RecvBatch::buf_mut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Payload length.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// With UDP GRO: the payload is datagrams of this size back to back (the last
    /// may be shorter), to be split before they go through the core. 0: one datagram.
    pub segment: usize,
}

/// Buffers for one `recvmmsg`: [`MAX_BATCH`] buffers of [`BUFFER_LEN`] bytes.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 4]>,
    lens: Vec<usize>,
    segments: Vec<usize>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        RecvBatch {
            bufs: (0..MAX_BATCH).map(|_| vec![0u8; BUFFER_LEN]).collect(),
            addrs: vec![zero; MAX_BATCH],
            controls: vec![[0; 4]; MAX_BATCH],
            lens: vec![0; MAX_BATCH],
            segments: vec![0; MAX_BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Reads up to [`MAX_BATCH`] datagrams without blocking; returns how many
    /// (`Ok(0)` when none is waiting).
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.count = 0;
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b[HEADROOM..].as_mut_ptr().cast(),
                iov_len: b.len() - HEADROOM,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .zip(self.controls.iter_mut())
            .map(|((iov, addr), control)| {
                // SAFETY: `msghdr` is plain old data; all-zero is a valid value.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = iov;
                h.msg_iovlen = 1;
                h.msg_control = control.as_mut_ptr().cast();
                h.msg_controllen = size_of::<[u64; 4]>() as _;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: `msgs` holds `msgs.len()` headers, each naming one iovec into a
        // distinct buffer of `self.bufs` and one `sockaddr_storage` of `self.addrs`,
        // all alive and not otherwise borrowed for the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let n = (n as usize).min(MAX_BATCH);
        for ((len, segment), m) in self
            .lens
            .iter_mut()
            .zip(self.segments.iter_mut())
            .zip(&msgs[..n])
        {
            *len = m.msg_len as usize;
            *segment = 0;
            let h = &m.msg_hdr;
            // SAFETY: the kernel filled `msg_control` up to `msg_controllen` (at most
            // the 32 bytes given); CMSG_FIRSTHDR/CMSG_NXTHDR stay within that and
            // return null past it; a UDP_GRO message carries a c_int.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let size =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        *segment = usize::try_from(size).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        self.count = n;
        Ok(n)
    }

    /// Datagrams read by the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.count
    }

    /// The last read returned nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last read (`None` past its end or for a sender address
    /// of an unknown family).
    pub fn datagram(&self, i: usize) -> Option<Datagram> {
        if i >= self.count {
            return None;
        }
        Some(Datagram {
            len: self.lens[i],
            from: from_sockaddr(&self.addrs[i])?,
            segment: self.segments[i],
        })
    }

    /// The buffer of datagram `i`, headroom included.
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        self.bufs.get_mut(i).map_or(&mut [], |b| b.as_mut_slice())
    }
}

impl Slots for RecvBatch {
    fn slot(&self, slot: usize) -> &[u8] {
        self.bufs.get(slot).map_or(&[], |b| b.as_slice())
    }
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    to: SocketAddr,
    start: usize,
    len: usize,
}

/// One message of a flush: `count` queued payloads from `first`, contiguous in the
/// arena, sent as datagrams of `segment` bytes (GSO) when `count > 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    to: SocketAddr,
    first: usize,
    count: usize,
    start: usize,
    len: usize,
    segment: usize,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams that could not be sent (socket buffer full, an error).
    pub failed: u64,
    /// `sendmmsg` calls made.
    pub syscalls: u64,
}

/// Payloads queued for the underlay, flushed with one `sendmmsg` per
/// [`MAX_BATCH`] messages.
pub struct SendBatch {
    arena: Vec<u8>,
    /// Bytes of `arena` holding queued payloads (the rest is reusable room).
    used: usize,
    queued: Vec<Queued>,
    gso: bool,
    /// The socket had `SO_NO_CHECK` (zero outer checksums) when the batch was made.
    zero_checksum: bool,
    /// `SO_NO_CHECK` as last set.
    no_check: bool,
}

fn get_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket fd; `value` and `len` are valid for writes of their size.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(value)
}

/// Bytes of a VXLAN header, in front of each datagram's inner frame.
pub const VXLAN_HEADER_LEN: usize = 8;

/// Writes segments as datagrams into a batch: the VXLAN header, then the segment.
struct Datagrams<'a> {
    batch: &'a mut SendBatch,
    to: SocketAddr,
    vxlan: &'a [u8],
    len: usize,
}

impl SegmentSink for Datagrams<'_> {
    fn next(&mut self, len: usize) -> Option<&mut [u8]> {
        self.len = VXLAN_HEADER_LEN + len;
        let room = self.batch.reserve(self.len);
        room[..VXLAN_HEADER_LEN].copy_from_slice(self.vxlan);
        Some(&mut room[VXLAN_HEADER_LEN..])
    }

    fn done(&mut self) {
        self.batch.commit(self.to, self.len);
    }
}

impl SendBatch {
    /// An empty batch; `gso`: group equal-size runs to one VTEP into GSO messages.
    pub fn new(gso: bool) -> SendBatch {
        SendBatch {
            arena: Vec::with_capacity(MAX_BATCH * 2048),
            used: 0,
            queued: Vec::with_capacity(MAX_BATCH),
            gso,
            zero_checksum: false,
            no_check: false,
        }
    }

    /// An empty batch for `socket`: GSO if [`gso_enabled`], and single datagrams keep
    /// the socket's `SO_NO_CHECK`.
    pub fn for_socket(socket: &UdpSocket) -> SendBatch {
        let zero = get_int(socket, libc::SOL_SOCKET, libc::SO_NO_CHECK).is_some_and(|v| v != 0);
        SendBatch {
            zero_checksum: zero,
            no_check: zero,
            ..SendBatch::new(gso_enabled(socket))
        }
    }

    /// Whether GSO is (still) used.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Queues a copy of `payload` for `to`.
    pub fn push(&mut self, to: SocketAddr, payload: &[u8]) {
        self.reserve(payload.len()).copy_from_slice(payload);
        self.commit(to, payload.len());
    }

    /// Room for the next payload of `len` bytes, right after the queued ones (its
    /// old contents are unspecified); nothing is queued until [`SendBatch::commit`].
    pub fn reserve(&mut self, len: usize) -> &mut [u8] {
        let end = self.used + len;
        if self.arena.len() < end {
            self.arena.resize(end, 0);
        }
        &mut self.arena[self.used..end]
    }

    /// Queues for `to` the first `len` bytes of the room last reserved.
    pub fn commit(&mut self, to: SocketAddr, len: usize) {
        let len = len.min(self.arena.len() - self.used);
        self.queued.push(Queued {
            to,
            start: self.used,
            len,
        });
        self.used += len;
    }

    /// Queues the VXLAN payload `payload` — a VXLAN header and an inner GSO
    /// super-frame, as the core encapsulates one with overlay GSO — cut into one
    /// datagram per segment as `hdr` says ([`gso::segment_into`]): each is the VXLAN
    /// header and a complete inner segment, written straight into the arena, so the
    /// run leaves as one UDP GSO message. Returns the number of datagrams.
    pub fn push_segments(
        &mut self,
        to: SocketAddr,
        payload: &[u8],
        hdr: &VnetHdr,
    ) -> Result<usize, SoftError> {
        let (Some(vxlan), Some(frame)) = (
            payload.get(..VXLAN_HEADER_LEN),
            payload.get(VXLAN_HEADER_LEN..),
        ) else {
            return Err(SoftError::Malformed);
        };
        let mut sink = Datagrams {
            batch: self,
            to,
            vxlan,
            len: 0,
        };
        gso::segment_into(frame, hdr, &mut sink)
    }

    /// Payloads queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Groups the queued payloads from index `from` into messages.
    fn messages(&self, from: usize, out: &mut Vec<Message>) {
        out.clear();
        for (i, q) in self.queued.iter().enumerate().skip(from) {
            if self.gso {
                if let Some(m) = out.last_mut() {
                    let closed = m.count > 0 && m.len != m.segment * m.count;
                    if m.to == q.to
                        && !closed
                        && m.start + m.len == q.start
                        && q.len <= m.segment
                        && q.len > 0
                        && m.count < MAX_SEGMENTS
                        && m.len + q.len <= MAX_GSO_BYTES
                    {
                        m.count += 1;
                        m.len += q.len;
                        continue;
                    }
                }
            }
            out.push(Message {
                to: q.to,
                first: i,
                count: 1,
                start: q.start,
                len: q.len,
                segment: q.len,
            });
        }
    }

    /// Sends everything queued on `socket` and empties the batch.
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut done = Flushed::default();
        let mut messages = Vec::with_capacity(self.queued.len());
        let mut from = 0;
        'regroup: while from < self.queued.len() {
            self.messages(from, &mut messages);
            let mut i = 0;
            while i < messages.len() {
                // One kind of message per call: GSO runs or single datagrams.
                let kind = messages[i].count > 1;
                let end = messages[i..]
                    .iter()
                    .take(MAX_BATCH)
                    .take_while(|m| (m.count > 1) == kind)
                    .count();
                let chunk = &messages[i..i + end];
                let no_check = self.zero_checksum && !kind;
                if no_check != self.no_check
                    && set_int(socket, libc::SOL_SOCKET, libc::SO_NO_CHECK, no_check.into())
                {
                    self.no_check = no_check;
                }
                done.syscalls += 1;
                match self.send_chunk(socket, chunk) {
                    Ok(k) if k > 0 => {
                        done.sent += chunk[..k].iter().map(|m| m.count as u64).sum::<u64>();
                        i += k;
                    }
                    Ok(_) => {
                        // Nothing taken: drop the rest.
                        done.failed += messages[i..].iter().map(|m| m.count as u64).sum::<u64>();
                        break 'regroup;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Socket buffer full: drop the rest (TCP inside recovers).
                        done.failed += messages[i..].iter().map(|m| m.count as u64).sum::<u64>();
                        break 'regroup;
                    }
                    Err(_) if chunk[0].count > 1 => {
                        // The kernel refused GSO: resend without it from this run.
                        self.gso = false;
                        from = chunk[0].first;
                        continue 'regroup;
                    }
                    Err(_) => {
                        // Skip the failing datagram (e.g. no route), keep the rest.
                        done.failed += 1;
                        i += 1;
                    }
                }
            }
            break;
        }
        self.used = 0;
        self.queued.clear();
        done
    }

    /// One `sendmmsg` of `chunk`; returns how many messages the kernel took.
    fn send_chunk(&self, socket: &UdpSocket, chunk: &[Message]) -> io::Result<usize> {
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
            chunk.iter().map(|m| to_sockaddr(m.to)).collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|m| libc::iovec {
                // The kernel only reads through this pointer (sendmmsg).
                iov_base: self.arena[m.start..m.start + m.len].as_ptr() as *mut libc::c_void,
                iov_len: m.len,
            })
            .collect();
        // Room for one cmsghdr with a u16 (CMSG_SPACE(2) is 24 on 64-bit Linux).
        let mut controls: Vec<[u64; 4]> = vec![[0; 4]; chunk.len()];
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, cmsg_len) = unsafe {
            (
                libc::CMSG_SPACE(size_of::<u16>() as u32) as usize,
                libc::CMSG_LEN(size_of::<u16>() as u32) as usize,
            )
        };
        debug_assert!(space <= size_of::<[u64; 4]>());
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(chunk.len());
        for (((m, (addr, addr_len)), iov), control) in chunk
            .iter()
            .zip(addrs.iter_mut())
            .zip(iovs.iter_mut())
            .zip(controls.iter_mut())
        {
            // SAFETY: `msghdr` is plain old data; all-zero is a valid value.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = *addr_len;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            if m.count > 1 {
                h.msg_control = control.as_mut_ptr().cast();
                h.msg_controllen = space as _;
                // SAFETY: `msg_control` points to `space` writable, 8-aligned bytes,
                // enough for one cmsghdr and a u16 (checked above), so the first
                // header and its data are in bounds.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = cmsg_len as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.segment as u16);
                }
            }
            msgs.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        // SAFETY: every header points into `addrs`, `iovs`, `controls` and the arena,
        // all alive and unchanged for the call, with their true lengths.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn equal_runs_to_one_vtep_become_gso_messages() {
        let a = addr("192.168.50.12:8472");
        let b = addr("192.168.50.13:8472");
        let mut s = SendBatch::new(true);
        for len in [1000, 1000, 1000, 400, 1000, 1000] {
            s.push(a, &vec![1u8; len]);
        }
        s.push(b, &[2u8; 1000]);
        s.push(b, &[2u8; 1200]);
        let mut m = Vec::new();
        s.messages(0, &mut m);
        let shape: Vec<_> = m
            .iter()
            .map(|m| (m.to, m.count, m.segment, m.len))
            .collect();
        assert_eq!(
            shape,
            vec![
                (a, 4, 1000, 3400),
                (a, 2, 1000, 2000),
                (b, 1, 1000, 1000),
                (b, 1, 1200, 1200),
            ]
        );
        // Without GSO every payload is its own message.
        s.gso = false;
        s.messages(0, &mut m);
        assert_eq!(m.len(), 8);
        assert!(m.iter().all(|m| m.count == 1));
    }

    #[test]
    fn runs_respect_the_segment_and_size_limits() {
        let a = addr("10.0.0.1:8472");
        let mut s = SendBatch::new(true);
        for _ in 0..70 {
            s.push(a, &[0u8; 100]);
        }
        let mut m = Vec::new();
        s.messages(0, &mut m);
        assert_eq!(m.iter().map(|m| m.count).collect::<Vec<_>>(), vec![64, 6]);
        let mut s = SendBatch::new(true);
        for _ in 0..50 {
            s.push(a, &[0u8; 1400]);
        }
        s.messages(0, &mut m);
        assert!(m.iter().all(|m| m.len <= MAX_GSO_BYTES));
        assert_eq!(m.iter().map(|m| m.count).sum::<usize>(), 50);
        assert_eq!(m[0].count, MAX_GSO_BYTES / 1400);
    }

    #[test]
    fn a_batch_round_trips_over_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for gso in [false, gso_enabled(&tx)] {
            let mut s = SendBatch::new(gso);
            let mut want = Vec::new();
            for i in 0..10u8 {
                let len = if i == 9 { 300 } else { 1200 };
                let p = vec![i; len];
                s.push(to, &p);
                want.push(p);
            }
            let f = s.flush(&tx);
            assert_eq!((f.sent, f.failed), (10, 0));
            assert!(s.is_empty());
            let mut r = RecvBatch::default();
            let mut got = Vec::new();
            for _ in 0..200 {
                r.recv(&rx).unwrap();
                for i in 0..r.len() {
                    let d = r.datagram(i).unwrap();
                    assert_eq!(d.from, tx.local_addr().unwrap());
                    got.push(r.slot(i)[HEADROOM..HEADROOM + d.len].to_vec());
                }
                if got.len() >= want.len() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(got, want, "gso={gso}");
        }
    }

    #[test]
    fn a_gro_socket_reads_a_gso_run_and_it_splits_back() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = prepare(&rx);
        let to = rx.local_addr().unwrap();
        let mut s = SendBatch::new(gso_enabled(&tx));
        let mut want = Vec::new();
        for i in 0..20u8 {
            let p = vec![i; if i == 19 { 77 } else { 1400 }];
            s.push(to, &p);
            want.push(p);
        }
        assert_eq!(s.flush(&tx).sent, 20);
        let mut r = RecvBatch::default();
        let mut got = Vec::new();
        for _ in 0..200 {
            r.recv(&rx).unwrap();
            for i in 0..r.len() {
                let d = r.datagram(i).unwrap();
                let payload = &r.slot(i)[HEADROOM..HEADROOM + d.len];
                if d.segment == 0 {
                    got.push(payload.to_vec());
                } else {
                    assert!(gro, "a coalesced read without UDP_GRO");
                    got.extend(payload.chunks(d.segment).map(<[u8]>::to_vec));
                }
            }
            if got.len() >= want.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn gso_runs_go_out_from_a_zero_checksum_socket() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(set_int(&tx, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1));
        let mut s = SendBatch::for_socket(&tx);
        let gso = s.gso();
        let to = rx.local_addr().unwrap();
        for _ in 0..5 {
            s.push(to, &[1u8; 1000]);
        }
        let f = s.flush(&tx);
        assert_eq!((f.sent, f.failed), (5, 0));
        // The kernel took the run as GSO (SO_NO_CHECK was lifted for it), so GSO
        // was not switched off; a single datagram restores the zero checksum.
        assert_eq!(s.gso(), gso);
        s.push(to, &[2u8; 10]);
        assert_eq!(s.flush(&tx).sent, 1);
        assert_eq!(get_int(&tx, libc::SOL_SOCKET, libc::SO_NO_CHECK), Some(1));
    }

    #[test]
    fn an_encapsulated_super_frame_is_queued_as_one_gso_run_of_datagrams() {
        use crate::dataplane::gso::tests::{l4_verifies, partial_tcp};
        let a = addr("10.0.0.2:8472");
        let data: Vec<u8> = (0..3500u32).map(|i| (i % 251) as u8).collect();
        let (frame, hdr) = partial_tcp(&data, 0x18);
        let vxlan = [0x08, 0, 0, 0, 0, 0, 1, 0];
        let mut payload = vxlan.to_vec();
        payload.extend_from_slice(&frame);
        let mut s = SendBatch::new(true);
        s.push(a, &[9; 30]); // something queued before keeps its place
        assert_eq!(s.push_segments(a, &payload, &hdr), Ok(4));
        assert_eq!(s.len(), 5);
        let mut joined = Vec::new();
        for q in &s.queued[1..] {
            let d = &s.arena[q.start..q.start + q.len];
            assert_eq!(&d[..8], &vxlan);
            assert!(l4_verifies(&d[8..]), "inner TCP checksum complete");
            joined.extend_from_slice(&d[8 + 54..]);
        }
        assert_eq!(joined, data);
        let mut m = Vec::new();
        s.messages(0, &mut m);
        assert_eq!(m.iter().map(|m| m.count).collect::<Vec<_>>(), vec![1, 4]);
        // Malformed: refused, nothing queued.
        assert_eq!(
            s.push_segments(a, &payload[..8 + 20], &hdr),
            Err(SoftError::Unsupported)
        );
        assert_eq!(
            s.push_segments(a, &payload[..5], &hdr),
            Err(SoftError::Malformed)
        );
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn socket_addresses_convert_both_ways() {
        for a in ["10.1.2.3:8472", "[fd00::1]:4789"] {
            let a = addr(a);
            let (ss, _) = to_sockaddr(a);
            assert_eq!(from_sockaddr(&ss), Some(a));
        }
    }
}
