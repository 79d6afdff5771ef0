//! The node's static configuration, fixed at build time until the table-sync protocol
//! delivers the cluster's tables from an agent: who this node is on the underlay, its
//! pod block and its one pod, and the other nodes of the cluster (their VTEPs and pod
//! blocks).
//!
//! The defaults describe the test cluster of `tests/firmware`: this board is node 9 at
//! 192.168.77.2 with pod block 10.244.9.0/24 and a pod at 10.244.9.2; node 1, a Linux
//! namespace with a kernel VXLAN device, is at 192.168.77.1 with 10.244.1.0/24.

use core::net::Ipv4Addr;

/// One other node of the cluster: where its VTEP is and which pod block is behind it.
pub struct Peer {
    /// Its node id.
    pub node: u16,
    /// Its underlay address (InternalIP).
    pub ip: Ipv4Addr,
    /// Its VTEP MAC: the outer destination on the shared segment and the inner
    /// destination a kernel VXLAN device accepts (both are this MAC).
    pub mac: [u8; 6],
    /// Its pod block.
    pub pod_block: Ipv4Addr,
    /// The prefix length of `pod_block`.
    pub pod_prefix_len: u8,
}

/// This node's id.
pub const NODE: u16 = 9;
/// The board's underlay address (its Node's InternalIP), on its Ethernet.
pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// The board's Ethernet MAC address (locally administered, unicast).
pub const UNDERLAY_MAC: [u8; 6] = [0x02, 0x50, 0x57, 0x00, 0x00, 0x02];
/// The datapath's MAC towards the pods and as inner source of VXLAN frames.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x50, 0x57, 0x00, 0x09, 0x01];
/// This node's pod block.
pub const POD_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 0);
/// The prefix length of [`POD_BLOCK`].
pub const POD_PREFIX_LEN: u8 = 24;
/// The board-local pod's address.
pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 2);
/// The board-local pod's MAC address.
pub const POD_MAC: [u8; 6] = [0x02, 0x50, 0x57, 0x00, 0x09, 0x02];
/// The underlay MTU (the pod's MTU is 50 bytes less: VXLAN never fragments).
pub const UNDERLAY_MTU: u16 = 1500;
/// Seed of the flow hash for service backends and VXLAN source ports (the cluster's).
pub const FLOW_SEED: u64 = 0;

/// The other nodes of the cluster.
pub const PEERS: &[Peer] = &[Peer {
    node: 1,
    ip: Ipv4Addr::new(192, 168, 77, 1),
    mac: [0x02, 0x50, 0x57, 0x00, 0x00, 0x01],
    pod_block: Ipv4Addr::new(10, 244, 1, 0),
    pod_prefix_len: 24,
}];

/// The TCP and UDP port of the pod's echo services (RFC 862's port).
pub const ECHO_PORT: u16 = 7;
