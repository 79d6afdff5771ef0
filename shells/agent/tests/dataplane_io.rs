//! The dataplane worker's I/O plumbing, end to end on real TAP devices: two pod
//! namespaces whose `eth0` TAPs are served by a worker. The forwarder here is a
//! two-port hub written for this test (the agent itself forwards only through the
//! core datapath); it proves that frames are read with headroom, handed to the
//! forwarder, and written to the port the action names — ARP and ICMP cross, so
//! `ping` works.

mod common;

use common::*;
use podwire_agent::dataplane::forward::Forwarder;
use podwire_agent::dataplane::tap::{Tap, TapOptions};
use podwire_agent::dataplane::worker::{self, Command};
use podwire_core::datapath::{Action, DropReason, Ingress, Span};
use podwire_core::ids::PortId;
use podwire_core::Instant;

struct Hub;

impl Forwarder for Hub {
    fn process(&mut self, _: Instant, ingress: Ingress, _: &mut [u8], frame: Span) -> Action {
        match ingress {
            Ingress::Port(PortId(1)) => Action::Deliver {
                port: PortId(2),
                frame,
            },
            Ingress::Port(PortId(2)) => Action::Deliver {
                port: PortId(1),
                frame,
            },
            _ => Action::Drop(DropReason::UnknownPort),
        }
    }
}

#[test]
fn a_worker_moves_frames_between_tap_ports() {
    moves_frames(std::time::Duration::ZERO);
}

#[test]
fn a_busy_polling_worker_moves_frames_and_commands_too() {
    moves_frames(std::time::Duration::from_millis(5));
}

fn moves_frames(busy_poll: std::time::Duration) {
    if !can_run() {
        return;
    }
    let ns = NetnsGuard::default();
    let a = ns.create("pod");
    let b = ns.create("pod");
    let mut taps = Vec::new();
    for (name, ip) in [(&a, "10.98.0.1/24"), (&b, "10.98.0.2/24")] {
        let tap = in_netns(name, || Tap::create("eth0", TapOptions::default()))
            .join()
            .unwrap()
            .unwrap();
        sh(&["ip", "-n", name, "addr", "add", ip, "dev", "eth0"]);
        sh(&["ip", "-n", name, "link", "set", "eth0", "up"]);
        taps.push(tap);
    }
    let w = worker::spawn(Hub, None, busy_poll).unwrap();
    for (i, tap) in taps.iter_mut().enumerate() {
        let q = tap.take_queues().pop().unwrap();
        w.send(Command::AddPort(PortId(i as u16 + 1), q)).unwrap();
    }
    assert!(
        ping(&a, "10.98.0.2".parse().unwrap()),
        "ping through the worker failed"
    );
    // TCP with the peer address reported back.
    let server = tcp_peer_reporter(&b, 7000, 1);
    assert_eq!(
        tcp_ask(&a, "10.98.0.2:7000".parse().unwrap()).unwrap(),
        "10.98.0.1"
    );
    server.join().unwrap();
    // Removing a port stops the traffic.
    w.send(Command::RemovePort(PortId(2))).unwrap();
    let (_, counters) = w.stop().unwrap();
    assert!(counters.received >= 4 && counters.sent >= 4, "{counters:?}");
    assert_eq!(counters.bad_spans, 0);
}
