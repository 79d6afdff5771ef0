//! A board-local pod: an embassy-net stack with the pod's address behind a virtual
//! Ethernet (an embassy-net-driver-channel channel whose other end the node's datapath
//! feeds, see [`crate::node`]), serving a TCP echo and a UDP echo (RFC 862) on
//! [`config::ECHO_PORT`]; ICMP echo is answered by the stack itself.
//!
//! Design note: the pod knows nothing of the board: its "wire" is the channel, its
//! gateway the datapath (which answers its ARP for the gateway, as for a Linux pod),
//! its MTU the underlay's less the VXLAN overhead. TCP echo runs in [`TCP_SESSIONS`]
//! tasks, each with its own listening socket on the same port, so that several clients
//! are served at once (smoltcp hands an incoming SYN to a listening socket of the port).
//! Buffers live in the tasks (static), nothing is allocated.

use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Ipv4Address, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};
use embassy_net_driver_channel as ch;
use embedded_io_async::Write;
use static_cell::StaticCell;

use crate::{config, log};

/// The pod's Ethernet frames: its MTU (underlay MTU − 50) plus the Ethernet header.
pub const FRAME: usize = config::UNDERLAY_MTU as usize - 50 + 14;
/// Frames buffered each way between the datapath and the pod.
const CHANNEL_FRAMES: usize = 4;
/// Concurrent TCP echo sessions.
pub const TCP_SESSIONS: usize = 2;
/// Bytes of each TCP socket's receive and send buffer.
const TCP_BUFFER: usize = 2048;
/// The largest datagram echoed.
const UDP_DATAGRAM: usize = 1536;
/// Datagrams the UDP socket queues each way (a burst beyond them is dropped by the
/// socket, as a full socket buffer drops on Linux).
const UDP_QUEUE: usize = 4;
/// Sockets the services use: the TCP sessions and the UDP socket.
const SOCKETS: usize = TCP_SESSIONS + 1;
/// The pod stack's random seed (TCP initial sequence numbers, ephemeral ports).
const SEED: u64 = 0x706f_6477_6972_6502;

/// The datapath's end of the pod's virtual Ethernet.
pub type PodLink = ch::Runner<'static, FRAME>;

/// Starts the pod — its stack and its services — and returns the datapath's end of its
/// virtual Ethernet.
pub fn start(spawner: &Spawner) -> PodLink {
    static CHANNEL: StaticCell<ch::State<FRAME, CHANNEL_FRAMES, CHANNEL_FRAMES>> =
        StaticCell::new();
    let (link, device) = ch::new(
        CHANNEL.init(ch::State::new()),
        ch::driver::HardwareAddress::Ethernet(config::POD_MAC),
    );
    let block = config::POD_BLOCK.octets();
    let net = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(config::POD_IP, config::POD_PREFIX_LEN),
        gateway: Some(Ipv4Address::new(block[0], block[1], block[2], block[3] | 1)),
        dns_servers: heapless::Vec::new(),
    });
    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    let (stack, runner) =
        embassy_net::new(device, net, RESOURCES.init(StackResources::new()), SEED);
    match stack_runner(runner) {
        Ok(token) => spawner.spawn(token),
        Err(_) => log::warn!("pod stack not started: task pool full"),
    }
    for session in 0..TCP_SESSIONS {
        match tcp_echo(stack, session) {
            Ok(token) => spawner.spawn(token),
            Err(_) => log::warn!("tcp echo session {} not started: task pool full", session),
        }
    }
    match udp_echo(stack) {
        Ok(token) => spawner.spawn(token),
        Err(_) => log::warn!("udp echo not started: task pool full"),
    }
    link
}

/// The pod stack's runner.
#[embassy_executor::task]
async fn stack_runner(mut runner: Runner<'static, ch::Device<'static, FRAME>>) -> ! {
    runner.run().await
}

/// One TCP echo session: accepts a connection, echoes it until the peer closes, repeats.
#[embassy_executor::task(pool_size = TCP_SESSIONS)]
async fn tcp_echo(stack: Stack<'static>, session: usize) -> ! {
    let mut rx = [0u8; TCP_BUFFER];
    let mut tx = [0u8; TCP_BUFFER];
    let mut buf = [0u8; TCP_BUFFER];
    loop {
        let mut socket = TcpSocket::new(stack, &mut rx, &mut tx);
        if socket.accept(config::ECHO_PORT).await.is_err() {
            log::warn!("tcp echo {}: accept failed", session);
            continue;
        }
        // The peer as the pod sees it: with no NAT on the path, the client's own address.
        let peer = socket.remote_endpoint();
        let mut echoed = 0usize;
        loop {
            let n = match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if socket.write_all(&buf[..n]).await.is_err() {
                break;
            }
            echoed += n;
        }
        socket.close();
        // Let the FIN go out before the socket is dropped (and reset).
        if socket.flush().await.is_err() {
            socket.abort();
        }
        log::info!(
            "tcp echo {}: {} bytes echoed to {:?}",
            session,
            echoed,
            peer
        );
    }
}

/// The UDP echo: every datagram goes back to its sender.
#[embassy_executor::task]
async fn udp_echo(stack: Stack<'static>) -> ! {
    let mut rx_meta = [PacketMetadata::EMPTY; UDP_QUEUE];
    let mut tx_meta = [PacketMetadata::EMPTY; UDP_QUEUE];
    let mut rx = [0u8; UDP_QUEUE * UDP_DATAGRAM];
    let mut tx = [0u8; UDP_QUEUE * UDP_DATAGRAM];
    let mut buf = [0u8; UDP_DATAGRAM];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    if socket.bind(config::ECHO_PORT).is_err() {
        log::warn!("udp echo: port {} in use", config::ECHO_PORT);
        loop {
            embassy_time::Timer::after_secs(3600).await;
        }
    }
    loop {
        let Ok((n, meta)) = socket.recv_from(&mut buf).await else {
            log::warn!(
                "udp echo: datagram larger than {} bytes dropped",
                UDP_DATAGRAM
            );
            continue;
        };
        if socket.send_to(&buf[..n], meta.endpoint).await.is_err() {
            log::warn!("udp echo: reply of {} bytes not sent", n);
        }
    }
}
