//! A board-local pod's services, independent of the board: a TCP echo and a UDP echo
//! (RFC 862) on [`config::ECHO_PORT`] of an embassy-net stack. ICMP echo is answered by
//! the stack itself.
//!
//! Design note: TCP echo runs in [`TCP_SESSIONS`] tasks, each with its own listening
//! socket on the same port, so that many clients are served at once (smoltcp hands an
//! incoming SYN to the first listening socket of the port). Buffers are the tasks' own
//! (static, inside the task's future), nothing is allocated.

use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::Stack;
use embedded_io_async::Write;

use crate::config;
use crate::log;

/// Concurrent TCP echo sessions.
pub const TCP_SESSIONS: usize = 2;
/// Bytes of each TCP socket's receive and send buffer.
const TCP_BUFFER: usize = 2048;
/// Bytes of the UDP socket's receive and send buffers, and of the largest datagram.
const UDP_BUFFER: usize = 1536;
/// Sockets the services use: the TCP sessions and the UDP socket (for `StackResources`).
pub const SOCKETS: usize = TCP_SESSIONS + 1;

/// Starts the services on `stack`.
pub fn spawn_services(spawner: &Spawner, stack: Stack<'static>) {
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
            "tcp echo {}: connection closed after {} bytes",
            session,
            echoed
        );
    }
}

/// The UDP echo: every datagram goes back to its sender.
#[embassy_executor::task]
async fn udp_echo(stack: Stack<'static>) -> ! {
    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx = [0u8; UDP_BUFFER];
    let mut tx = [0u8; UDP_BUFFER];
    let mut buf = [0u8; UDP_BUFFER];
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
                UDP_BUFFER
            );
            continue;
        };
        if socket.send_to(&buf[..n], meta.endpoint).await.is_err() {
            log::warn!("udp echo: reply of {} bytes not sent", n);
        }
    }
}
