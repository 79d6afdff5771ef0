//! Flow events: one fixed-size record per verdict, for observability.
//!
//! Design note: a datapath that can explain every packet's fate must report its
//! decisions without slowing down or allocating. Each new connection's verdict and
//! each drop becomes a small `Copy` record pushed into a caller-provided single-producer
//! ring (`heapless::spsc`); the shell drains the other end on its own schedule (a
//! Hubble-style observer, a metrics exporter, a log). Packets of an established
//! connection do not produce events — their connection's counters live in conntrack —
//! so the ring carries decisions, not traffic. A full ring never blocks or overwrites:
//! the event is counted as lost.

use heapless::spsc::Producer;

use crate::flow::FlowKey;
use crate::ids::{NodeId, PortId};
use crate::policy::ConnVerdict;
use crate::service::ServiceId;
use crate::Instant;

use super::DropReason;

/// Where the packet of an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventSource {
    /// A local port.
    Port(PortId),
    /// A remote node, through the overlay.
    Node(NodeId),
}

/// What happened to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventOutcome {
    /// Forwarded to a local port.
    Delivered(PortId),
    /// Encapsulated towards a remote node.
    Encapsulated(NodeId),
    /// Answered by the datapath itself (a reject for a service without backends).
    Rejected,
    /// Dropped.
    Dropped(DropReason),
}

/// One verdict of the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FlowEvent {
    /// When the packet was processed.
    pub time: Instant,
    /// The packet's flow as it arrived (before any NAT).
    pub key: FlowKey,
    /// The flow after service translation, when a service translated it.
    pub translated: Option<FlowKey>,
    /// Where it came from.
    pub source: EventSource,
    /// What happened to it.
    pub outcome: EventOutcome,
    /// The NetworkPolicy verdicts, when policy was evaluated.
    pub policy: Option<ConnVerdict>,
    /// The service whose frontend the packet was addressed to.
    pub service: Option<ServiceId>,
    /// The packet's length in bytes (Ethernet frame).
    pub bytes: u32,
}

/// The producing end of the event ring, with a count of events that did not fit.
pub struct EventSink<'a> {
    producer: Option<Producer<'a, FlowEvent>>,
    lost: u64,
    emitted: u64,
}

impl<'a> EventSink<'a> {
    /// A sink that only counts (no ring attached).
    pub const fn disconnected() -> Self {
        EventSink {
            producer: None,
            lost: 0,
            emitted: 0,
        }
    }

    /// Attaches the producing end of a ring.
    pub fn connect(&mut self, producer: Producer<'a, FlowEvent>) {
        self.producer = Some(producer);
    }

    /// Pushes `event`, counting it as lost if the ring is full or absent.
    pub fn emit(&mut self, event: FlowEvent) {
        match self.producer.as_mut().map(|p| p.enqueue(event)) {
            Some(Ok(())) => self.emitted += 1,
            _ => self.lost += 1,
        }
    }

    /// Events pushed into the ring.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Events that did not fit (or had no ring).
    pub fn lost(&self) -> u64 {
        self.lost
    }
}
