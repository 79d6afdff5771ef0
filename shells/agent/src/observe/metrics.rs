//! Prometheus metrics of a node agent, in the text exposition format.
//!
//! Design note: the datapath's counters live in the core, which never allocates
//! and knows nothing of Prometheus, so nothing is mirrored into metric objects on
//! the packet path. A scrape takes one [`Snapshot`] of plain numbers (read from the
//! core through the dataplane worker, from IPAM, the cluster state and the flow
//! log's totals) and a [`prometheus_client`] collector encodes it; the only metric
//! the agent updates as it goes is the CNI latency histogram, which has no other
//! source. Label sets are bounded: drop reasons, outcomes, directions and commands
//! are fixed vocabularies, and there are no per-pod labels.
//!
//! prometheus-client writes OpenMetrics, where a counter family is named without its
//! `_total` suffix. Prometheus negotiates OpenMetrics and reads that; tools that only
//! speak the older text format (version 0.0.4: `promtool check metrics`, a person
//! with curl) expect the family named like its samples and no `# UNIT`/`# EOF`
//! lines, which [`to_text_format`] gives them from the same encoding.

use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cni::env::Command;
use crate::dataplane::flows::Tallies;
use crate::dataplane::node::Stats;

/// Labels of the CNI latency histogram.
pub type CommandLabel = [(&'static str, &'static str); 1];

/// Metrics the agent records as things happen (everything else is read at scrape
/// time).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// CNI operation latency by command.
    pub cni_seconds: Family<CommandLabel, Histogram>,
}

impl Default for Recorded {
    fn default() -> Recorded {
        Recorded {
            cni_seconds: Family::new_with_constructor(|| {
                // 0.5 ms … 2 s: an ADD takes a few milliseconds here.
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
                ])
            }),
        }
    }
}

impl Recorded {
    /// Records one CNI operation.
    pub fn cni(&self, command: Command, took: Duration) {
        let name = match command {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        };
        self.cni_seconds
            .get_or_create(&[("command", name)])
            .observe(took.as_secs_f64());
    }
}

/// The numbers of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The datapath's counters (`None` while no dataplane runs).
    pub datapath: Option<Stats>,
    /// Flow events by outcome, and policy verdicts by direction and kind.
    pub outcomes: [u64; 4],
    /// Policy verdicts, `[direction][kind]` as in [`Tallies`].
    pub policy: [[u64; 3]; 2],
    /// Flow events the datapath's ring could not hold.
    pub events_lost: u64,
    /// Addresses allocated in the node's pod CIDR.
    pub ipam_allocated: u64,
    /// Addresses the pod CIDR can hand out.
    pub ipam_capacity: u64,
    /// Good cluster states applied.
    pub cluster_generation: u64,
    /// When the last good state was applied.
    pub cluster_loaded_at: Option<SystemTime>,
    /// Since when the source has been unavailable.
    pub cluster_unavailable_since: Option<SystemTime>,
    /// Whether the last state offered was rejected.
    pub cluster_rejected: bool,
    /// Pods attached on this node.
    pub pods: u64,
}

impl Snapshot {
    /// Copies the flow log's totals.
    pub fn set_tallies(&mut self, t: &Tallies, lost: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        for (o, c) in self.outcomes.iter_mut().zip(&t.outcomes) {
            *o = c.load(Relaxed);
        }
        for (row, counters) in self.policy.iter_mut().zip(&t.policy) {
            for (v, c) in row.iter_mut().zip(counters) {
                *v = c.load(Relaxed);
            }
        }
        self.events_lost = lost;
    }

    /// Encodes the snapshot and the recorded metrics as OpenMetrics text.
    pub fn render(self, recorded: &Recorded) -> String {
        let mut registry = Registry::with_prefix("podwire");
        registry.register_with_unit(
            "cni_operation_duration",
            "Time to serve a CNI operation, by command",
            Unit::Seconds,
            recorded.cni_seconds.clone(),
        );
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

type Labels<'a> = &'a [(&'static str, &'a str)];

struct Encoder<'e, 'r> {
    out: &'e mut DescriptorEncoder<'r>,
}

impl Encoder<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, rows: &[(Labels<'_>, u64)]) -> std::fmt::Result {
        let mut family = self.out.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        if let [(&[], value)] = rows {
            return ConstCounter::new(*value).encode(family);
        }
        for (labels, value) in rows {
            ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        rows: &[(Labels<'_>, f64)],
    ) -> std::fmt::Result {
        let mut family = self.out.encode_descriptor(
            name,
            help,
            unit,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        if let [(&[], value)] = rows {
            return ConstGauge::new(*value).encode(family);
        }
        for (labels, value) in rows {
            ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut e = Encoder { out: &mut out };
        if let Some(dp) = &self.datapath {
            let s = &dp.stats;
            e.counter(
                "datapath_packets",
                "Frames the datapath handled, by what it did with them",
                &[
                    (&[("action", "delivered")], s.delivered),
                    (&[("action", "encapsulated")], s.encapsulated),
                    (&[("action", "decapsulated")], s.decapsulated),
                    (&[("action", "replied")], s.replied),
                    (&[("action", "dropped")], s.dropped),
                ],
            )?;
            let drops: Vec<([(&'static str, &str); 2], u64)> = dp
                .drops
                .iter()
                .map(|(reason, n)| {
                    (
                        [("reason", *reason), ("direction", direction_of(reason))],
                        *n,
                    )
                })
                .collect();
            let rows: Vec<(Labels<'_>, u64)> = drops.iter().map(|(l, n)| (&l[..], *n)).collect();
            e.counter(
                "datapath_drops",
                "Frames dropped, by reason and direction",
                &rows,
            )?;
            let c = &dp.conntrack;
            e.gauge(
                "conntrack_entries",
                "Tracked connections",
                None,
                &[(&[], c.entries as f64)],
            )?;
            e.gauge(
                "conntrack_capacity",
                "Connections the table can hold",
                None,
                &[(&[], c.capacity as f64)],
            )?;
            e.gauge(
                "conntrack_pressure_ratio",
                "Share of the table in use (evictions start near 1)",
                None,
                &[(
                    &[],
                    if c.capacity == 0 {
                        0.0
                    } else {
                        c.entries as f64 / c.capacity as f64
                    },
                )],
            )?;
            let k = &c.counters;
            e.counter(
                "conntrack_events",
                "Connection-tracking events",
                &[
                    (&[("event", "insert")], k.inserts),
                    (&[("event", "hit")], k.hits),
                    (&[("event", "miss")], k.misses),
                    (&[("event", "eviction")], k.evictions),
                    (&[("event", "insert_refused")], k.drops),
                    (&[("event", "expiration")], k.expirations),
                    (&[("event", "invalid")], k.invalid),
                ],
            )?;
        }
        let outcome_labels: Vec<[(&'static str, &str); 1]> = Tallies::OUTCOMES
            .iter()
            .map(|o| [("outcome", *o)])
            .collect();
        let outcomes: Vec<(Labels<'_>, u64)> = outcome_labels
            .iter()
            .zip(&self.outcomes)
            .map(|(l, n)| (&l[..], *n))
            .collect();
        e.counter("flows", "Flow verdicts recorded, by outcome", &outcomes)?;
        let mut policy_labels = Vec::new();
        for (d, direction) in Tallies::DIRECTIONS.iter().enumerate() {
            for (k, verdict) in Tallies::VERDICTS.iter().enumerate() {
                policy_labels.push((
                    [("direction", *direction), ("verdict", *verdict)],
                    self.policy[d][k],
                ));
            }
        }
        let policy: Vec<(Labels<'_>, u64)> =
            policy_labels.iter().map(|(l, n)| (&l[..], *n)).collect();
        e.counter(
            "policy_verdicts",
            "NetworkPolicy verdicts on new connections, by direction",
            &policy,
        )?;
        e.counter(
            "flow_events_lost",
            "Flow events the datapath's ring could not hold",
            &[(&[], self.events_lost)],
        )?;
        e.gauge(
            "ipam_allocated_addresses",
            "Addresses allocated from the node's pod CIDR",
            None,
            &[(&[], self.ipam_allocated as f64)],
        )?;
        e.gauge(
            "ipam_capacity_addresses",
            "Addresses the node's pod CIDR can hand out",
            None,
            &[(&[], self.ipam_capacity as f64)],
        )?;
        e.gauge(
            "pods",
            "Pods attached on this node",
            None,
            &[(&[], self.pods as f64)],
        )?;
        e.gauge(
            "cluster_state_generation",
            "Good cluster states applied since start",
            None,
            &[(&[], self.cluster_generation as f64)],
        )?;
        e.gauge(
            "cluster_state_last_applied_timestamp",
            "When the last good cluster state was applied",
            Some(&Unit::Seconds),
            &[(&[], self.cluster_loaded_at.map_or(0.0, unix_seconds))],
        )?;
        let stale = self
            .cluster_unavailable_since
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64());
        e.gauge(
            "cluster_state_stale",
            "How long the cluster-state source has been unavailable (0 when it is available)",
            Some(&Unit::Seconds),
            &[(&[], stale)],
        )?;
        e.gauge(
            "cluster_state_rejected",
            "1 when the last cluster state offered was rejected (the last good one runs)",
            None,
            &[(&[], if self.cluster_rejected { 1.0 } else { 0.0 })],
        )?;
        Ok(())
    }
}

/// The direction a drop reason concerns, from its stable name.
fn direction_of(reason: &str) -> &'static str {
    if reason.ends_with("_egress") {
        "egress"
    } else if reason.ends_with("_ingress") {
        "ingress"
    } else {
        "none"
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics text: counter families take
/// their samples' `_total` name in `# HELP` and `# TYPE`, and the `# UNIT` and
/// `# EOF` lines that format does not have are left out.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counter_families_like_their_samples() {
        let om = "# HELP x_packets Frames.\n# TYPE x_packets counter\nx_packets_total{a=\"b\"} 3\n\
                  # HELP x_age Age.\n# TYPE x_age gauge\n# UNIT x_age seconds\nx_age 1.0\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP x_packets_total Frames.\n# TYPE x_packets_total counter\nx_packets_total{a=\"b\"} 3\n\
             # HELP x_age Age.\n# TYPE x_age gauge\nx_age 1.0\n"
        );
    }

    #[test]
    fn a_snapshot_renders_every_family_once_without_a_dataplane() {
        let text = Snapshot::default().render(&Recorded::default());
        assert!(text.ends_with("# EOF\n"), "{text}");
        for family in [
            "podwire_ipam_allocated_addresses",
            "podwire_cluster_state_stale_seconds",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{text}"
            );
        }
        assert!(
            !text.contains("podwire_datapath_packets"),
            "no dataplane, no datapath counters"
        );
    }
}
