//! TAP devices: create, persist, attach queues, set offloads.
//!
//! Design note: every pod interface is a TAP created by the agent, so the agent — not
//! the kernel's bridge — sees every frame and hands it to the core datapath. Devices
//! are *persistent*: a killed agent leaves the pods' interfaces (and their addresses
//! and routes) in place, and the restarted agent re-attaches new queue file
//! descriptors to them by name, so pods keep their configuration across restarts.
//! They are multi-queue (one queue per dataplane worker) and use `IFF_VNET_HDR`, which
//! prefixes each frame with a `virtio_net_hdr`; with offloads enabled
//! (`TUNSETOFFLOAD`), the kernel hands over TCP segments of up to 64 KiB with partial
//! checksums instead of MTU-sized frames, which is where TAP throughput comes from.
//!
//! A TAP queue file descriptor keeps a reference to the network namespace it was
//! *opened* in, and `TUNSETIFF` looks the device up by name in that namespace: so a
//! device that lives in a pod's netns is re-attached by opening `/dev/net/tun` from a
//! thread inside that netns (see [`crate::netlink::netns`]).
//!
//! This is the agent's only `unsafe` code: the `ioctl`s of the TUN driver.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_TUN_EXCL: libc::c_short = -0x8000; // 0x8000 as a c_short

/// `TUN_F_CSUM`: the reader accepts frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the reader accepts TCPv4 segments larger than the MTU.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the reader accepts TCPv6 segments larger than the MTU.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_USO4`: the reader accepts UDPv4 segmentation offload frames.
pub const TUN_F_USO4: u32 = 0x20;
/// `TUN_F_USO6`: the reader accepts UDPv6 segmentation offload frames.
pub const TUN_F_USO6: u32 = 0x40;

/// The offloads the dataplane accepts: partial checksums, TCP segmentation (v4/v6)
/// and UDP segmentation (v4/v6, where the kernel knows it: Linux 6.2+; without it
/// [`Tap::create`] falls back to the rest). The datapath passes such frames between
/// local TAPs as they are and segments them in software for the overlay
/// ([`super::gso`]).
pub const OFFLOADS: u32 = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;

pub use super::vnet::VNET_HDR_LEN;

/// How a TAP is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOptions {
    /// Queue file descriptors to open (at least one).
    pub queues: usize,
    /// Prefix frames with a `virtio_net_hdr` of [`VNET_HDR_LEN`] bytes.
    pub vnet_hdr: bool,
    /// `TUN_F_*` offloads the dataplane accepts ([`OFFLOADS`] by default; 0 makes
    /// the kernel hand over MTU-sized frames with complete checksums).
    pub offloads: u32,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            queues: 1,
            vnet_hdr: true,
            offloads: OFFLOADS,
        }
    }
}

/// An open TAP device: its name (in the netns it was opened in) and its queues.
#[derive(Debug)]
pub struct Tap {
    name: String,
    queues: Vec<OwnedFd>,
    options: TapOptions,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> io::Result<IfReq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    Ok(req)
}

fn ioctl_int(fd: &File, request: libc::c_ulong, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the TUN ioctls used with this helper take an integer argument by value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, value as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the device's offloads; if the kernel refuses UDP segmentation offload
/// (before Linux 6.2), sets the others. Returns what was set.
fn set_offloads(fd: &File, offloads: u32) -> io::Result<u32> {
    match ioctl_int(fd, TUNSETOFFLOAD, offloads as libc::c_int) {
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL)
                && offloads & (TUN_F_USO4 | TUN_F_USO6) != 0 =>
        {
            let without = offloads & !(TUN_F_USO4 | TUN_F_USO6);
            ioctl_int(fd, TUNSETOFFLOAD, without as libc::c_int).map(|_| without)
        }
        r => r.map(|_| offloads),
    }
}

fn open_queue(name: &str, options: &TapOptions, exclusive: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE;
    if options.vnet_hdr {
        flags |= IFF_VNET_HDR;
    }
    if exclusive {
        flags |= IFF_TUN_EXCL;
    }
    let mut req = ifreq(name, flags)?;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out
    // (16-byte name, flags, padding to 40 bytes); `req` outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if options.vnet_hdr {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, valid for the call.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                TUNSETVNETHDRSZ as _,
                &size as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

impl Tap {
    /// Creates a new persistent TAP `name` in the calling thread's netns (fails with
    /// `EBUSY` if a device of that name exists) and opens its queues.
    pub fn create(name: &str, options: TapOptions) -> io::Result<Tap> {
        let first = open_queue(name, &options, true)?;
        ioctl_int(&first, TUNSETPERSIST, 1)?;
        Tap::with_first_queue(name, first, options)
    }

    /// Attaches queues to the existing TAP `name` in the calling thread's netns.
    pub fn attach(name: &str, options: TapOptions) -> io::Result<Tap> {
        // TUNSETIFF would create a missing device: check that it exists first.
        if !exists(name) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no device {name:?} in this network namespace"),
            ));
        }
        let first = open_queue(name, &options, false)?;
        Tap::with_first_queue(name, first, options)
    }

    /// The TAP `name` from its first open queue: offloads set (as far as the kernel
    /// accepts them), then the other queues opened.
    fn with_first_queue(name: &str, first: File, options: TapOptions) -> io::Result<Tap> {
        let offloads = set_offloads(&first, options.offloads)?;
        let options = TapOptions {
            offloads,
            ..options
        };
        let mut tap = Tap {
            name: name.to_string(),
            queues: vec![first.into()],
            options,
        };
        tap.open_more_queues()?;
        Ok(tap)
    }

    /// A TAP without queues, as the recording netlink fake returns.
    pub fn detached(name: &str, options: TapOptions) -> Tap {
        Tap {
            name: name.to_string(),
            queues: Vec::new(),
            options,
        }
    }

    fn open_more_queues(&mut self) -> io::Result<()> {
        while self.queues.len() < self.options.queues.max(1) {
            self.queues
                .push(open_queue(&self.name, &self.options, false)?.into());
        }
        Ok(())
    }

    /// The device name when it was opened (it may have been renamed and moved since).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The options it was opened with.
    pub fn options(&self) -> TapOptions {
        self.options
    }

    /// The queue file descriptors (non-blocking).
    pub fn queues(&self) -> &[OwnedFd] {
        &self.queues
    }

    /// Takes the queue file descriptors out (for the dataplane workers).
    pub fn take_queues(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.queues)
    }

    /// Makes the device non-persistent, so it disappears when the last queue closes,
    /// wherever (in whichever netns) it lives. Used by DEL when the pod's netns path
    /// is already gone.
    pub fn unpersist(&self) -> io::Result<()> {
        let Some(fd) = self.queues.first() else {
            return Ok(());
        };
        let file = File::from(fd.try_clone()?);
        ioctl_int(&file, TUNSETPERSIST, 0)
    }
}

#[repr(C)]
struct IfReqHwaddr {
    name: [u8; libc::IFNAMSIZ],
    family: libc::sa_family_t,
    data: [u8; 14],
    _pad: [u8; 8],
}

#[repr(C)]
struct IfReqMtu {
    name: [u8; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

/// Sets the MAC address and/or MTU of device `name` in the calling thread's netns
/// (`SIOCSIFHWADDR` / `SIOCSIFMTU`), so a TAP gets its identity in the same
/// namespace excursion that created it.
pub fn set_mac_mtu(name: &str, mac: Option<[u8; 6]>, mtu: Option<u32>) -> io::Result<()> {
    let base = ifreq(name, 0)?;
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    let sock: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    if let Some(mac) = mac {
        let mut req = IfReqHwaddr {
            name: base.name,
            family: libc::ARPHRD_ETHER,
            data: [0; 14],
            _pad: [0; 8],
        };
        req.data[..6].copy_from_slice(&mac);
        // SAFETY: SIOCSIFHWADDR reads a `struct ifreq` with a `sockaddr` union
        // member, which `IfReqHwaddr` lays out; `req` outlives the call.
        let rc = unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCSIFHWADDR as _,
                &req as *const IfReqHwaddr,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(mtu) = mtu {
        let req = IfReqMtu {
            name: base.name,
            mtu: mtu as libc::c_int,
            _pad: [0; 20],
        };
        // SAFETY: SIOCSIFMTU reads a `struct ifreq` with an int member.
        let rc = unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCSIFMTU as _,
                &req as *const IfReqMtu,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a device `name` exists in the calling thread's netns.
pub fn exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::netns;

    #[test]
    fn names_are_checked() {
        assert!(ifreq("", 0).is_err());
        assert!(ifreq("sixteen-chars-xx", 0).is_err());
        assert!(ifreq("eth0", 0).is_ok());
    }

    #[test]
    fn create_persist_and_reattach_in_a_private_netns() {
        if !netns::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        netns::run_in_new_netns(|| {
            let opts = TapOptions {
                queues: 2,
                ..TapOptions::default()
            };
            let tap = Tap::create("pwtest0", opts)?;
            assert_eq!(tap.queues().len(), 2);
            set_mac_mtu("pwtest0", Some([0x0a, 0x58, 1, 2, 3, 4]), Some(1400))?;
            let mac = std::process::Command::new("ip")
                .args(["-o", "link", "show", "pwtest0"])
                .output()?;
            let mac = String::from_utf8_lossy(&mac.stdout).to_string();
            assert!(
                mac.contains("0a:58:01:02:03:04") && mac.contains("mtu 1400"),
                "{mac}"
            );
            // A second create of the same name must fail: the device exists.
            assert!(Tap::create("pwtest0", opts).is_err());
            drop(tap);
            // Persistent: still there after every queue closed; attach again.
            assert!(exists("pwtest0"));
            let again = Tap::attach("pwtest0", opts)?;
            assert_eq!(again.queues().len(), 2);
            again.unpersist()?;
            drop(again);
            // Not persistent any more: gone with its last queue. (A process forked
            // concurrently by another test may hold the queue until it execs, so
            // wait a bounded while.)
            for _ in 0..200 {
                if !exists("pwtest0") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(!exists("pwtest0"));
            assert!(Tap::attach("pwtest0", opts).is_err());
            Ok(())
        })
        .unwrap();
    }
}
