//! Next hops and their compact encoding.
//!
//! Design note: the trie's leaves are 32-bit words, so a next hop must fit in one. Every
//! variant but [`NextHop::Gateway`] is encoded inline (a tag in bits 16..19 and a 16-bit
//! id below it), so a lookup decodes the leaf with a shift and a match and touches no
//! other memory. A gateway address does not fit beside a tag; it is interned in a small
//! caller-owned [`GatewaySlot`] table with reference counts and the leaf carries its
//! index. Code 0 means "no route", which lets an empty leaf need no extra bit.

use core::net::Ipv4Addr;

use super::RouteError;
use crate::ids::{NodeId, PortId};

/// Where a matched route sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NextHop {
    /// A local pod interface.
    Port(PortId),
    /// The node's host port.
    Host,
    /// A remote node: VXLAN to its VTEP or a direct route (the datapath decides).
    Node(NodeId),
    /// A directly connected next-hop router.
    Gateway(Ipv4Addr),
    /// Drop the packet.
    Blackhole,
}

/// One slot of the gateway interning table (caller-owned storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GatewaySlot {
    addr: u32,
    refs: u32,
}

impl GatewaySlot {
    /// An unused slot (for static storage: `[GatewaySlot::EMPTY; n]`).
    pub const EMPTY: GatewaySlot = GatewaySlot { addr: 0, refs: 0 };
}

/// The "no route" leaf.
pub(crate) const CODE_NONE: u32 = 0;
const TAG_SHIFT: u32 = 16;
const TAG_PORT: u32 = 1;
const TAG_HOST: u32 = 2;
const TAG_NODE: u32 = 3;
const TAG_GATEWAY: u32 = 4;
const TAG_BLACKHOLE: u32 = 5;

/// Decodes a leaf. Never panics: an unknown code or gateway index reads as no route.
#[inline(always)]
pub(crate) fn decode(code: u32, gateways: &[GatewaySlot]) -> Option<NextHop> {
    let id = code as u16;
    match code >> TAG_SHIFT {
        TAG_PORT => Some(NextHop::Port(PortId(id))),
        TAG_HOST => Some(NextHop::Host),
        TAG_NODE => Some(NextHop::Node(NodeId(id))),
        TAG_GATEWAY => gateways
            .get(usize::from(id))
            .map(|g| NextHop::Gateway(Ipv4Addr::from(g.addr))),
        TAG_BLACKHOLE => Some(NextHop::Blackhole),
        _ => None,
    }
}

/// Encodes `hop`, taking a reference on its gateway slot if it has one.
pub(crate) fn acquire(hop: NextHop, gateways: &mut [GatewaySlot]) -> Result<u32, RouteError> {
    Ok(match hop {
        NextHop::Port(PortId(id)) => TAG_PORT << TAG_SHIFT | u32::from(id),
        NextHop::Host => TAG_HOST << TAG_SHIFT,
        NextHop::Node(NodeId(id)) => TAG_NODE << TAG_SHIFT | u32::from(id),
        NextHop::Blackhole => TAG_BLACKHOLE << TAG_SHIFT,
        NextHop::Gateway(addr) => {
            let addr = u32::from(addr);
            let mut free = None;
            let mut found = None;
            for (i, g) in gateways.iter().enumerate().take(1 << 16) {
                if g.refs == 0 {
                    free = free.or(Some(i));
                } else if g.addr == addr {
                    found = Some(i);
                    break;
                }
            }
            let i = found.or(free).ok_or(RouteError::GatewaysFull)?;
            let slot = gateways.get_mut(i).ok_or(RouteError::GatewaysFull)?;
            if slot.refs == 0 {
                slot.addr = addr;
            }
            slot.refs = slot.refs.saturating_add(1);
            TAG_GATEWAY << TAG_SHIFT | i as u32
        }
    })
}

/// Drops the reference `code` holds on a gateway slot, if any.
pub(crate) fn release(code: u32, gateways: &mut [GatewaySlot]) {
    if code >> TAG_SHIFT == TAG_GATEWAY {
        if let Some(g) = gateways.get_mut(usize::from(code as u16)) {
            g.refs = g.refs.saturating_sub(1);
        }
    }
}

/// Number of gateway slots in use.
pub(crate) fn gateways_used(gateways: &[GatewaySlot]) -> usize {
    gateways.iter().filter(|g| g.refs != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_interning() {
        let mut gw = [GatewaySlot::default(); 2];
        let hops = [
            NextHop::Port(PortId(7)),
            NextHop::Host,
            NextHop::Node(NodeId(65535)),
            NextHop::Blackhole,
            NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 1)),
        ];
        for h in hops {
            let c = acquire(h, &mut gw).unwrap();
            assert_ne!(c, CODE_NONE);
            assert!(c < 1 << 23);
            assert_eq!(decode(c, &gw), Some(h));
        }
        let a = acquire(NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 1)), &mut gw).unwrap();
        let b = acquire(NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 2)), &mut gw).unwrap();
        assert_ne!(a, b);
        assert_eq!(gateways_used(&gw), 2);
        assert_eq!(
            acquire(NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 3)), &mut gw),
            Err(RouteError::GatewaysFull)
        );
        release(b, &mut gw);
        assert_eq!(gateways_used(&gw), 1);
        let c = acquire(NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 3)), &mut gw).unwrap();
        assert_eq!(c, b);
        assert_eq!(decode(CODE_NONE, &gw), None);
    }
}
