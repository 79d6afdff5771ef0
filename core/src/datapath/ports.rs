//! The local ports of a node's datapath and who may send from them.
//!
//! Design note: a port is where frames enter and leave the datapath on this node: the
//! host port (the node's own network stack, `podwire0` on Linux), one port per pod
//! interface, and optionally a raw underlay device. Port ids are dense, so the table
//! is a caller-owned slice indexed by id — one bounds-checked load per frame. A pod
//! port records the pod's one IP and MAC: anti-spoofing compares the frame's source
//! against them, so a pod can never claim another pod's identity towards policy.

use core::net::Ipv4Addr;

use smoltcp::wire::EthernetAddress;

use crate::ids::PortId;

/// What is attached to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PortKind {
    /// The node's own network stack, reached at `mac`.
    Host {
        /// The host interface's MAC address (destination of frames to the host).
        mac: EthernetAddress,
    },
    /// A pod interface: the only addresses that pod may send from.
    Pod {
        /// The pod's IP address.
        ip: Ipv4Addr,
        /// The pod interface's MAC address.
        mac: EthernetAddress,
    },
    /// A raw underlay device carrying VXLAN with full outer headers.
    Underlay,
}

/// Errors of the port table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PortError {
    /// The port id is beyond the table's capacity.
    OutOfRange,
}

/// Ports by id, over caller-owned storage.
#[derive(Debug)]
pub struct PortTable<'a> {
    slots: &'a mut [Option<PortKind>],
    host: Option<PortId>,
    underlay: Option<PortId>,
}

impl<'a> PortTable<'a> {
    /// A table for port ids `0..slots.len()`; every slot starts empty.
    pub fn new(slots: &'a mut [Option<PortKind>]) -> Self {
        slots.fill(None);
        PortTable {
            slots,
            host: None,
            underlay: None,
        }
    }

    /// Attaches (or replaces) `kind` at `port`.
    pub fn set(&mut self, port: PortId, kind: PortKind) -> Result<(), PortError> {
        let slot = self
            .slots
            .get_mut(usize::from(port.0))
            .ok_or(PortError::OutOfRange)?;
        *slot = Some(kind);
        self.refresh_special_ports();
        Ok(())
    }

    /// Detaches `port`, returning what was attached.
    pub fn remove(&mut self, port: PortId) -> Option<PortKind> {
        let removed = self.slots.get_mut(usize::from(port.0))?.take();
        self.refresh_special_ports();
        removed
    }

    /// The host port (the lowest-numbered one, if several are attached).
    pub fn host(&self) -> Option<PortId> {
        self.host
    }

    /// The raw underlay port, if any.
    pub fn underlay(&self) -> Option<PortId> {
        self.underlay
    }

    /// Recomputes the cached host and underlay ports (ports change rarely; frames
    /// look them up constantly).
    fn refresh_special_ports(&mut self) {
        let host = self
            .iter()
            .find(|(_, k)| matches!(k, PortKind::Host { .. }))
            .map(|(p, _)| p);
        let underlay = self
            .iter()
            .find(|(_, k)| matches!(k, PortKind::Underlay))
            .map(|(p, _)| p);
        self.host = host;
        self.underlay = underlay;
    }

    /// What is attached to `port`.
    pub fn get(&self, port: PortId) -> Option<PortKind> {
        self.slots.get(usize::from(port.0)).copied().flatten()
    }

    /// Every attached port.
    pub fn iter(&self) -> impl Iterator<Item = (PortId, PortKind)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|k| (PortId(i as u16), k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_remove_and_out_of_range() {
        let mut storage = [None; 4];
        let mut t = PortTable::new(&mut storage);
        let pod = PortKind::Pod {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        };
        t.set(PortId(3), pod).unwrap();
        assert_eq!(t.get(PortId(3)), Some(pod));
        assert_eq!(t.get(PortId(2)), None);
        assert_eq!(t.set(PortId(4), pod), Err(PortError::OutOfRange));
        assert_eq!(t.get(PortId(400)), None);
        assert_eq!(t.iter().count(), 1);
        assert_eq!(t.host(), None);
        t.set(
            PortId(0),
            PortKind::Host {
                mac: EthernetAddress([2; 6]),
            },
        )
        .unwrap();
        t.set(PortId(1), PortKind::Underlay).unwrap();
        assert_eq!((t.host(), t.underlay()), (Some(PortId(0)), Some(PortId(1))));
        assert_eq!(t.remove(PortId(3)), Some(pod));
        t.remove(PortId(0));
        assert_eq!((t.host(), t.underlay()), (None, Some(PortId(1))));
        assert_eq!(t.iter().count(), 1);
    }
}
