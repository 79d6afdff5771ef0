//! The board's static configuration, fixed at build time until the table-sync protocol
//! delivers it from an agent: the address of its Ethernet interface and the port of the
//! echo services.

use embassy_net::{Ipv4Address, Ipv4Cidr, StaticConfigV4};

/// The board's MAC address on its Ethernet (locally administered, unicast).
pub const MAC: [u8; 6] = [0x02, 0x50, 0x57, 0x00, 0x00, 0x02];

/// The board's address and prefix on its Ethernet.
pub const ADDRESS: Ipv4Address = Ipv4Address::new(192, 168, 77, 2);
/// The prefix length of [`ADDRESS`]'s subnet.
pub const PREFIX_LEN: u8 = 24;

/// The TCP and UDP port of the echo services (RFC 862's port).
pub const ECHO_PORT: u16 = 7;

/// The embassy-net configuration of the board's Ethernet interface.
pub fn ipv4() -> embassy_net::Config {
    embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ADDRESS, PREFIX_LEN),
        gateway: None,
        dns_servers: heapless::Vec::new(),
    })
}
