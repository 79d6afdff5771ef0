//! The node's pod IPAM: the core's block allocator for the node's pod CIDR plus the
//! record of who holds each address, persisted together after every change.
//!
//! Design note: the bitmap (from `podwire_core::ipam`) and the attachment records
//! are written as *one* document through [`StateFile`] (write, fsync, rename), so no
//! crash can separate an address from its owner: `kill -9` at any moment leaves
//! either the state before an ADD/DEL or the state after it — nothing leaked, nothing
//! handed out twice. On load the two halves are cross-checked; if they disagree (a
//! hand-edited file), the records win and the bitmap is rebuilt from them, because a
//! record is what lets DEL free an address. Every change is made on a copy and only
//! committed to memory once the document is on disk.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use podwire_core::ipam::{BlockError, Cidr, Ipv4Block16};
use serde::{Deserialize, Serialize};

use super::store::StateFile;
use crate::api::PodRef;

/// The state file's name inside the state dir.
pub const STATE_FILE: &str = "ipam.json";

/// An attachment's identity: the container and the interface inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// One pod interface and the resources it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container and interface.
    pub key: AttachmentKey,
    /// The CNI network name.
    pub network: String,
    /// The pod's netns path.
    pub netns: String,
    /// The pod's Kubernetes identity, if the runtime passed it.
    pub pod: Option<PodRef>,
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// The interface's MAC.
    pub mac: [u8; 6],
    /// The datapath port id.
    pub port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    version: u32,
    cidr: Ipv4Net,
    /// The core block allocator's snapshot, hex-encoded.
    block: String,
    attachments: Vec<Attachment>,
}

/// Why an IPAM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The pod CIDR cannot be served by the block allocator.
    #[error("pod CIDR {0} is not usable: {1:?}")]
    BadCidr(Ipv4Net, BlockError),
    /// No free address.
    #[error("pod CIDR {0} has no free address")]
    Exhausted(Ipv4Net),
    /// No free datapath port id.
    #[error("no free datapath port id")]
    NoPort,
    /// Writing or reading the state failed.
    #[error("IPAM state {path}: {message}")]
    State {
        /// The state file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The node's IPAM.
#[derive(Debug)]
pub struct NodeIpam {
    cidr: Ipv4Net,
    block: Ipv4Block16,
    attachments: BTreeMap<AttachmentKey, Attachment>,
    file: StateFile,
    /// A warning from loading (CIDR changed, state repaired), for `podwire status`.
    pub warning: Option<String>,
}

fn block_for(cidr: Ipv4Net) -> Result<Ipv4Block16, IpamError> {
    let c = Cidr::new(cidr.network(), cidr.prefix_len())
        .map_err(|_| IpamError::BadCidr(cidr, BlockError::OutOfBlock))?;
    Ipv4Block16::new(c).map_err(|e| IpamError::BadCidr(cidr, e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl NodeIpam {
    /// Opens the IPAM state in `dir` for the node's `cidr`, restoring what was saved.
    /// If the saved state is for another CIDR and still has attachments, the saved
    /// CIDR is kept (those pods still use its addresses) and a warning is set.
    pub fn open(dir: &Path, cidr: Ipv4Net) -> Result<NodeIpam, IpamError> {
        let file = StateFile::new(dir, STATE_FILE).map_err(|e| IpamError::State {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let state_err = |message: String| IpamError::State {
            path: file.path().display().to_string(),
            message,
        };
        let cidr = cidr.trunc();
        let Some(bytes) = file.load().map_err(|e| state_err(e.to_string()))? else {
            let ipam = NodeIpam {
                cidr,
                block: block_for(cidr)?,
                attachments: BTreeMap::new(),
                file,
                warning: None,
            };
            ipam.persist(&ipam.block, &ipam.attachments)?;
            return Ok(ipam);
        };
        let doc: Document =
            serde_json::from_slice(&bytes).map_err(|e| state_err(format!("unreadable: {e}")))?;
        let mut warning = None;
        let mut use_cidr = doc.cidr;
        if doc.cidr != cidr {
            if doc.attachments.is_empty() {
                use_cidr = cidr;
            } else {
                warning = Some(format!(
                    "node podCIDR is {cidr} but {} pods still hold addresses of {}; keeping {}",
                    doc.attachments.len(),
                    doc.cidr,
                    doc.cidr
                ));
            }
        }
        let restored = unhex(&doc.block)
            .and_then(|b| Ipv4Block16::from_bytes(&b).ok())
            .filter(|b| use_cidr == doc.cidr && b.cidr().network() == doc.cidr.network());
        let attachments: BTreeMap<_, _> = doc
            .attachments
            .into_iter()
            .map(|a| (a.key.clone(), a))
            .collect();
        let consistent = restored.as_ref().is_some_and(|b| {
            b.allocated() as usize == attachments.len()
                && attachments.values().all(|a| b.is_allocated(a.ip))
        });
        let block = match restored {
            Some(b) if consistent => b,
            _ => {
                let mut b = block_for(use_cidr)?;
                for a in attachments.values() {
                    b.allocate_addr(a.ip).map_err(|e| {
                        state_err(format!("attachment {:?} holds {}: {e:?}", a.key, a.ip))
                    })?;
                }
                if use_cidr == doc.cidr {
                    warning.get_or_insert_with(|| {
                        "IPAM bitmap disagreed with the attachment records; rebuilt from the records"
                            .to_string()
                    });
                }
                b
            }
        };
        let ipam = NodeIpam {
            cidr: use_cidr,
            block,
            attachments,
            file,
            warning,
        };
        ipam.persist(&ipam.block, &ipam.attachments)?;
        Ok(ipam)
    }

    fn persist(
        &self,
        block: &Ipv4Block16,
        attachments: &BTreeMap<AttachmentKey, Attachment>,
    ) -> Result<(), IpamError> {
        let mut buf = vec![0u8; Ipv4Block16::MAX_SNAPSHOT_LEN];
        let n = block.to_bytes(&mut buf).map_err(|e| IpamError::State {
            path: self.file.path().display().to_string(),
            message: format!("snapshot: {e:?}"),
        })?;
        let doc = Document {
            version: 1,
            cidr: self.cidr,
            block: hex(&buf[..n]),
            attachments: attachments.values().cloned().collect(),
        };
        let body = serde_json::to_vec_pretty(&doc).map_err(|e| IpamError::State {
            path: self.file.path().display().to_string(),
            message: e.to_string(),
        })?;
        self.file.save(&body).map_err(|e| IpamError::State {
            path: self.file.path().display().to_string(),
            message: e.to_string(),
        })
    }

    /// The pod CIDR in use.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The gateway (the block's first address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.block.gateway()
    }

    /// Assignable addresses.
    pub fn capacity(&self) -> u32 {
        self.block.capacity()
    }

    /// Addresses in use.
    pub fn allocated(&self) -> u32 {
        self.block.allocated()
    }

    /// The attachment `key`.
    pub fn get(&self, key: &AttachmentKey) -> Option<&Attachment> {
        self.attachments.get(key)
    }

    /// Every attachment.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attachments.values()
    }

    /// Allocates an address and a port for `key`, builds the attachment with `make`
    /// and persists it; nothing changes if persisting fails.
    pub fn attach(
        &mut self,
        key: AttachmentKey,
        make: impl FnOnce(Ipv4Addr, u16) -> Attachment,
    ) -> Result<Attachment, IpamError> {
        let mut block = self.block.clone();
        let ip = block.allocate().map_err(|e| match e {
            BlockError::Exhausted => IpamError::Exhausted(self.cidr),
            other => IpamError::BadCidr(self.cidr, other),
        })?;
        let used: std::collections::BTreeSet<u16> =
            self.attachments.values().map(|a| a.port).collect();
        let port = (1..=u16::MAX)
            .find(|p| !used.contains(p))
            .ok_or(IpamError::NoPort)?;
        let attachment = make(ip, port);
        let mut attachments = self.attachments.clone();
        attachments.insert(key, attachment.clone());
        self.persist(&block, &attachments)?;
        self.block = block;
        self.attachments = attachments;
        Ok(attachment)
    }

    /// Frees `key`'s address and forgets it, persisting the change; `Ok(None)` if
    /// `key` held nothing.
    pub fn detach(&mut self, key: &AttachmentKey) -> Result<Option<Attachment>, IpamError> {
        let Some(a) = self.attachments.get(key).cloned() else {
            return Ok(None);
        };
        let mut block = self.block.clone();
        let _ = block.release(a.ip);
        let mut attachments = self.attachments.clone();
        attachments.remove(key);
        self.persist(&block, &attachments)?;
        self.block = block;
        self.attachments = attachments;
        Ok(Some(a))
    }

    /// Records the pod identity of `key` (persisted).
    pub fn set_pod(&mut self, key: &AttachmentKey, pod: Option<PodRef>) -> Result<(), IpamError> {
        let mut attachments = self.attachments.clone();
        if let Some(a) = attachments.get_mut(key) {
            if a.pod == pod {
                return Ok(());
            }
            a.pod = pod;
        }
        self.persist(&self.block, &attachments)?;
        self.attachments = attachments;
        Ok(())
    }
}

/// A stable, locally administered unicast MAC for a pod IP: `0a:58:` + the IPv4
/// address (the convention of kubenet and OVN-Kubernetes).
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "podwire-ipam-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn attach(ipam: &mut NodeIpam, c: &str) -> Attachment {
        let k = key(c);
        ipam.attach(k.clone(), |ip, port| Attachment {
            key: k,
            network: "podwire".into(),
            netns: format!("/run/netns/{c}"),
            pod: None,
            ip,
            mac: mac_for(ip),
            port,
        })
        .unwrap()
    }

    const CIDR: &str = "10.244.1.0/24";

    #[test]
    fn allocations_survive_reopen() {
        let d = TempDir::new("reopen");
        let mut ipam = NodeIpam::open(&d.0, CIDR.parse().unwrap()).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        let a = attach(&mut ipam, "a");
        let b = attach(&mut ipam, "b");
        assert_ne!(a.ip, b.ip);
        assert_ne!(a.port, b.port);
        assert_eq!(a.mac, [0x0a, 0x58, 10, 244, 1, a.ip.octets()[3]]);
        drop(ipam);
        let mut again = NodeIpam::open(&d.0, CIDR.parse().unwrap()).unwrap();
        assert_eq!(again.allocated(), 2);
        assert_eq!(again.get(&key("a")).unwrap().ip, a.ip);
        assert!(again.warning.is_none());
        // Next-fit continues after the last address, not at a freed one.
        again.detach(&key("a")).unwrap();
        let c = attach(&mut again, "c");
        assert_ne!(c.ip, a.ip);
        assert_ne!(c.ip, b.ip);
    }

    #[test]
    fn detach_is_idempotent_and_frees() {
        let d = TempDir::new("detach");
        let mut ipam = NodeIpam::open(&d.0, CIDR.parse().unwrap()).unwrap();
        attach(&mut ipam, "a");
        assert!(ipam.detach(&key("a")).unwrap().is_some());
        assert!(ipam.detach(&key("a")).unwrap().is_none());
        assert_eq!(ipam.allocated(), 0);
        drop(ipam);
        assert_eq!(
            NodeIpam::open(&d.0, CIDR.parse().unwrap())
                .unwrap()
                .allocated(),
            0
        );
    }

    #[test]
    fn exhaustion_is_an_error_and_changes_nothing() {
        let d = TempDir::new("full");
        let mut ipam = NodeIpam::open(&d.0, "10.244.1.0/30".parse().unwrap()).unwrap();
        assert_eq!(ipam.capacity(), 1);
        attach(&mut ipam, "a");
        let k = key("b");
        let e = ipam
            .attach(k.clone(), |_, _| unreachable!("no address to build with"))
            .unwrap_err();
        assert!(matches!(e, IpamError::Exhausted(_)));
        assert_eq!(ipam.allocated(), 1);
    }

    #[test]
    fn a_tampered_bitmap_is_rebuilt_from_the_records() {
        let d = TempDir::new("repair");
        let mut ipam = NodeIpam::open(&d.0, CIDR.parse().unwrap()).unwrap();
        let a = attach(&mut ipam, "a");
        drop(ipam);
        let path = d.0.join(STATE_FILE);
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["block"] = "00".into();
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let ipam = NodeIpam::open(&d.0, CIDR.parse().unwrap()).unwrap();
        assert!(ipam.warning.is_some());
        assert_eq!(ipam.allocated(), 1);
        assert_eq!(ipam.get(&key("a")).unwrap().ip, a.ip);
    }

    #[test]
    fn a_changed_cidr_keeps_the_old_one_while_pods_hold_addresses() {
        let d = TempDir::new("cidr");
        let mut ipam = NodeIpam::open(&d.0, CIDR.parse().unwrap()).unwrap();
        attach(&mut ipam, "a");
        drop(ipam);
        let mut ipam = NodeIpam::open(&d.0, "10.244.2.0/24".parse().unwrap()).unwrap();
        assert_eq!(ipam.cidr(), CIDR.parse().unwrap());
        assert!(ipam.warning.as_ref().unwrap().contains("10.244.2.0/24"));
        ipam.detach(&key("a")).unwrap();
        drop(ipam);
        let ipam = NodeIpam::open(&d.0, "10.244.2.0/24".parse().unwrap()).unwrap();
        assert_eq!(ipam.cidr(), "10.244.2.0/24".parse().unwrap());
    }

    #[test]
    fn hex_roundtrips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(),
            vec![0, 1, 0xab, 0xff]
        );
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
