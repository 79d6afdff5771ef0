//! The flow log: the datapath's flow events, drained from its ring into a bounded
//! in-memory log that the agent serves (`podwire flows`, `podwire drops`).
//!
//! Design note: the core pushes one `FlowEvent` per decision into a lock-free
//! single-producer ring (`heapless::spsc`) and never waits; the consuming end lives
//! on a small drain thread here, so the dataplane worker does no extra work and takes
//! no lock for observability. The drain thread wakes every [`DRAIN_EVERY`], turns
//! events into rows with names (pods by address, policies by id — the names of the
//! policy compilation installed when the event is drained), and keeps the last
//! [`KEEP`] events and, separately, the last [`KEEP`] drops, so a busy stream of
//! allowed connections never pushes the drops someone is looking for out of the log.
//! A full ring loses events (counted by the core, reported as `lost`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use heapless::spsc::Consumer;
use podwire_core::datapath::{DropReason, EventOutcome, FlowEvent};
use podwire_core::flow::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use podwire_core::policy::{AllowReason, DenyReason, Verdict};

use crate::api::{FlowReport, FlowRow};

/// Events (and, separately, drops) kept.
pub const KEEP: usize = 1000;

/// How often the drain thread empties the ring.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Names for explaining events.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// `namespace/name` of NetworkPolicies by `PolicyId`.
    pub policies: Vec<String>,
    /// `namespace/name` of pods by address.
    pub pods: HashMap<IpAddr, String>,
}

#[derive(Debug, Default)]
struct Inner {
    names: Names,
    all: VecDeque<FlowRow>,
    drops: VecDeque<FlowRow>,
}

/// Running totals of every event drained, for the metrics (the log itself is
/// bounded, the totals are not).
#[derive(Debug, Default)]
pub struct Tallies {
    /// Events by outcome: delivered, encapsulated, rejected, dropped.
    pub outcomes: [AtomicU64; 4],
    /// Policy verdicts by direction (egress, ingress) and kind (not isolated,
    /// allowed by a rule, denied).
    pub policy: [[AtomicU64; 3]; 2],
}

impl Tallies {
    /// The outcome labels, in the order of [`Tallies::outcomes`].
    pub const OUTCOMES: [&'static str; 4] = ["delivered", "encapsulated", "rejected", "dropped"];
    /// The direction labels, in the order of [`Tallies::policy`].
    pub const DIRECTIONS: [&'static str; 2] = ["egress", "ingress"];
    /// The verdict labels, in the order of [`Tallies::policy`]'s inner arrays.
    pub const VERDICTS: [&'static str; 3] = ["not_isolated", "allowed", "denied"];

    fn count(&self, e: &FlowEvent) {
        let outcome = match e.outcome {
            EventOutcome::Delivered(_) => 0,
            EventOutcome::Encapsulated(_) => 1,
            EventOutcome::Rejected => 2,
            EventOutcome::Dropped(_) => 3,
        };
        self.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
        if let Some(v) = e.policy {
            for (d, verdict) in [v.egress, v.ingress].into_iter().enumerate() {
                let k = match verdict {
                    Verdict::Allow(AllowReason::NotIsolated) => 0,
                    Verdict::Allow(_) => 1,
                    Verdict::Deny(_) => 2,
                };
                self.policy[d][k].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The shared log.
#[derive(Debug, Clone, Default)]
pub struct FlowLog {
    inner: Arc<Mutex<Inner>>,
    lost: Arc<AtomicU64>,
    tallies: Arc<Tallies>,
}

fn protocol_name(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_ICMP => "ICMP".into(),
        PROTO_SCTP => "SCTP".into(),
        n => n.to_string(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a wall-clock time.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl FlowLog {
    /// Replaces the names used for new rows.
    pub fn set_names(&self, names: Names) {
        if let Ok(mut g) = self.inner.lock() {
            g.names = names;
        }
    }

    /// Records the datapath's count of lost events.
    pub fn set_lost(&self, lost: u64) {
        self.lost.store(lost, std::sync::atomic::Ordering::Relaxed);
    }

    /// Turns one event into a row and keeps it.
    pub fn record(&self, event: &FlowEvent, at: SystemTime) {
        self.tallies.count(event);
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let row = row(&g.names, event, at);
        let dropped = row.outcome == "dropped";
        push(&mut g.all, row.clone());
        if dropped {
            push(&mut g.drops, row);
        }
    }

    /// The totals of every event recorded.
    pub fn tallies(&self) -> &Tallies {
        &self.tallies
    }

    /// Events the datapath could not hand over, as last read from it.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The kept rows, oldest first.
    pub fn report(&self, drops_only: bool) -> FlowReport {
        let flows = match self.inner.lock() {
            Ok(g) => {
                let q = if drops_only { &g.drops } else { &g.all };
                q.iter().cloned().collect()
            }
            Err(_) => Vec::new(),
        };
        FlowReport {
            flows,
            lost: self.lost.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Starts the drain thread for the consuming end of the datapath's ring.
    pub fn spawn_drain(&self, mut consumer: Consumer<'static, FlowEvent>) -> std::io::Result<()> {
        let log = self.clone();
        std::thread::Builder::new()
            .name("podwire-flows".into())
            .spawn(move || loop {
                let now = SystemTime::now();
                while let Some(e) = consumer.dequeue() {
                    log.record(&e, now);
                }
                std::thread::sleep(DRAIN_EVERY);
            })?;
        Ok(())
    }
}

fn push(q: &mut VecDeque<FlowRow>, row: FlowRow) {
    if q.len() >= KEEP {
        q.pop_front();
    }
    q.push_back(row);
}

fn row(names: &Names, e: &FlowEvent, at: SystemTime) -> FlowRow {
    let dst_after = e.translated.map(|t| t.dst).unwrap_or(e.key.dst);
    let (outcome, reason) = match e.outcome {
        EventOutcome::Delivered(_) => ("delivered", None),
        EventOutcome::Encapsulated(_) => ("encapsulated", None),
        EventOutcome::Rejected => ("rejected", None),
        EventOutcome::Dropped(r) => ("dropped", Some(r)),
    };
    let policy_name = |id: u16| {
        names
            .policies
            .get(usize::from(id))
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    };
    let (direction, policy) = match (reason, e.policy) {
        (Some(DropReason::PolicyDeniedEgress), Some(v)) => match v.egress {
            Verdict::Deny(DenyReason::NoRuleMatched { policy }) => {
                (Some("egress"), Some(policy_name(policy.0)))
            }
            _ => (Some("egress"), None),
        },
        (Some(DropReason::PolicyDeniedIngress), Some(v)) => match v.ingress {
            Verdict::Deny(DenyReason::NoRuleMatched { policy }) => {
                (Some("ingress"), Some(policy_name(policy.0)))
            }
            _ => (Some("ingress"), None),
        },
        (None, Some(v)) => {
            // The rule that admitted it: ingress first (the destination's choice).
            let rule = [v.ingress, v.egress].into_iter().find_map(|d| match d {
                Verdict::Allow(AllowReason::Rule { policy, .. }) => Some(policy),
                _ => None,
            });
            (None, rule.map(|p| policy_name(p.0)))
        }
        _ => (None, None),
    };
    FlowRow {
        time: rfc3339(at),
        src: e.key.src,
        src_port: e.key.src_port,
        src_pod: names.pods.get(&e.key.src).cloned(),
        dst: e.key.dst,
        dst_port: e.key.dst_port,
        dst_pod: names.pods.get(&dst_after).cloned(),
        protocol: protocol_name(e.key.protocol),
        outcome: outcome.into(),
        reason: reason.map(|r| r.name().to_string()),
        direction: direction.map(str::to_string),
        policy,
        translated: e
            .translated
            .filter(|t| t.dst != e.key.dst || t.dst_port != e.key.dst_port)
            .map(|t| format!("{}:{}", t.dst, t.dst_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_core::datapath::EventSource;
    use podwire_core::flow::FlowKey;
    use podwire_core::ids::PortId;
    use podwire_core::policy::{ConnVerdict, PolicyId};
    use podwire_core::Instant;

    fn event(outcome: EventOutcome, policy: Option<ConnVerdict>) -> FlowEvent {
        FlowEvent {
            time: Instant::from_millis(0),
            key: FlowKey {
                src: "10.244.1.2".parse().unwrap(),
                dst: "10.244.1.3".parse().unwrap(),
                src_port: 40000,
                dst_port: 80,
                protocol: PROTO_TCP,
                zone: 0,
            },
            translated: None,
            source: EventSource::Port(PortId(2)),
            outcome,
            policy,
            service: None,
            bytes: 60,
        }
    }

    #[test]
    fn policy_drops_name_the_policy_and_the_pods() {
        let log = FlowLog::default();
        log.set_names(Names {
            policies: vec!["default/deny-all".into()],
            pods: [("10.244.1.3".parse().unwrap(), "default/web".to_string())].into(),
        });
        let open = Verdict::Allow(AllowReason::NotIsolated);
        let deny = ConnVerdict {
            egress: open,
            ingress: Verdict::Deny(DenyReason::NoRuleMatched {
                policy: PolicyId(0),
            }),
        };
        log.record(
            &event(
                EventOutcome::Dropped(DropReason::PolicyDeniedIngress),
                Some(deny),
            ),
            SystemTime::UNIX_EPOCH,
        );
        log.record(
            &event(
                EventOutcome::Delivered(PortId(3)),
                Some(ConnVerdict {
                    egress: open,
                    ingress: open,
                }),
            ),
            SystemTime::UNIX_EPOCH,
        );
        let drops = log.report(true);
        assert_eq!(drops.flows.len(), 1);
        let d = &drops.flows[0];
        assert_eq!(d.policy.as_deref(), Some("default/deny-all"));
        assert_eq!(d.direction.as_deref(), Some("ingress"));
        assert_eq!(d.reason.as_deref(), Some("policy_denied_ingress"));
        assert_eq!(d.dst_pod.as_deref(), Some("default/web"));
        assert_eq!(d.time, "1970-01-01T00:00:00.000Z");
        assert_eq!(log.report(false).flows.len(), 2);
    }

    #[test]
    fn the_log_is_bounded() {
        let log = FlowLog::default();
        for _ in 0..KEEP + 5 {
            log.record(
                &event(EventOutcome::Dropped(DropReason::NoRoute), None),
                SystemTime::UNIX_EPOCH,
            );
        }
        assert_eq!(log.report(true).flows.len(), KEEP);
    }

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_996_800 + 3661);
        assert_eq!(rfc3339(t), "2026-11-30T01:01:01.000Z");
    }
}
