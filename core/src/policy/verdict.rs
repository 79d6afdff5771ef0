//! Policy verdicts: what the evaluation decided and why, in a form small enough to cache.
//!
//! Design note: a verdict is computed once per new flow and then stored in the flow's
//! conntrack entry, so it must be a small `Copy` value with a fixed-width encoding
//! ([`Verdict::pack`] → `u32`, [`ConnVerdict::pack`] → `u64`). It still carries enough to
//! explain itself — the policy and rule that allowed the flow, or the policy that
//! isolated the endpoint when nothing matched — so a shell can answer "why was this
//! dropped?" from the cached entry alone, without re-running the evaluation.

use super::rule::PolicyId;

/// Which side of a connection a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Direction {
    /// Traffic arriving at the local endpoint (the local endpoint is the destination).
    Ingress,
    /// Traffic leaving the local endpoint (the local endpoint is the source).
    Egress,
}

/// Why a flow was allowed in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AllowReason {
    /// No policy of this direction selects the endpoint: it is not isolated, so every
    /// flow is allowed by default.
    NotIsolated,
    /// The endpoint is isolated and this rule allowed the flow.
    Rule {
        /// The policy holding the rule.
        policy: PolicyId,
        /// The rule's index in the policy's list of rules of this direction.
        rule: u16,
    },
}

/// Why a flow was denied in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DenyReason {
    /// The endpoint is isolated (by `policy`, the first policy of this direction that
    /// selects it) and no rule of any policy selecting it matched the flow.
    NoRuleMatched {
        /// A policy that isolates the endpoint in this direction.
        policy: PolicyId,
    },
}

/// The outcome of evaluating one direction of a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// The flow may pass.
    Allow(AllowReason),
    /// The flow must be dropped.
    Deny(DenyReason),
}

/// The largest rule index a packed verdict can carry (14 bits).
pub const MAX_RULE_INDEX: u16 = (1 << 14) - 1;

const KIND_NOT_ISOLATED: u32 = 0;
const KIND_RULE: u32 = 1;
const KIND_DENY: u32 = 2;

impl Verdict {
    /// True when the flow may pass.
    #[inline]
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    /// Encodes the verdict in 32 bits: bits 31..30 are the kind (0 not isolated,
    /// 1 allowed by a rule, 2 denied), bits 29..14 the policy id, bits 13..0 the rule
    /// index (rule indexes above [`MAX_RULE_INDEX`] are refused when rules are added,
    /// so nothing is lost).
    #[inline]
    pub fn pack(&self) -> u32 {
        match *self {
            Verdict::Allow(AllowReason::NotIsolated) => KIND_NOT_ISOLATED << 30,
            Verdict::Allow(AllowReason::Rule { policy, rule }) => {
                KIND_RULE << 30 | u32::from(policy.0) << 14 | u32::from(rule & MAX_RULE_INDEX)
            }
            Verdict::Deny(DenyReason::NoRuleMatched { policy }) => {
                KIND_DENY << 30 | u32::from(policy.0) << 14
            }
        }
    }

    /// Decodes a value made by [`Verdict::pack`]; `None` for a value no verdict packs to.
    #[inline]
    pub fn unpack(bits: u32) -> Option<Verdict> {
        let policy = PolicyId((bits >> 14) as u16);
        let rule = (bits & u32::from(MAX_RULE_INDEX)) as u16;
        match bits >> 30 {
            KIND_NOT_ISOLATED if bits == 0 => Some(Verdict::Allow(AllowReason::NotIsolated)),
            KIND_RULE => Some(Verdict::Allow(AllowReason::Rule { policy, rule })),
            KIND_DENY if rule == 0 => Some(Verdict::Deny(DenyReason::NoRuleMatched { policy })),
            _ => None,
        }
    }
}

/// The verdict of a whole connection: the source's egress and the destination's
/// ingress. A connection is allowed only when both allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConnVerdict {
    /// The verdict of the source endpoint's egress policy.
    pub egress: Verdict,
    /// The verdict of the destination endpoint's ingress policy.
    pub ingress: Verdict,
}

impl ConnVerdict {
    /// True when both directions allow the connection.
    #[inline]
    pub fn is_allow(&self) -> bool {
        self.egress.is_allow() && self.ingress.is_allow()
    }

    /// Encodes both verdicts in 64 bits (egress in the high word), for a flow entry.
    #[inline]
    pub fn pack(&self) -> u64 {
        u64::from(self.egress.pack()) << 32 | u64::from(self.ingress.pack())
    }

    /// Decodes a value made by [`ConnVerdict::pack`].
    #[inline]
    pub fn unpack(bits: u64) -> Option<ConnVerdict> {
        Some(ConnVerdict {
            egress: Verdict::unpack((bits >> 32) as u32)?,
            ingress: Verdict::unpack(bits as u32)?,
        })
    }

    /// True when the packed connection verdict `bits` allows the flow: the test the
    /// datapath runs on every packet of an established flow. Bit 31 of each half is
    /// set only by a deny.
    #[inline]
    pub fn packed_is_allow(bits: u64) -> bool {
        bits & (1 << 63 | 1 << 31) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            Just(Verdict::Allow(AllowReason::NotIsolated)),
            (any::<u16>(), 0..=MAX_RULE_INDEX).prop_map(|(p, r)| Verdict::Allow(
                AllowReason::Rule {
                    policy: PolicyId(p),
                    rule: r
                }
            )),
            any::<u16>().prop_map(|p| Verdict::Deny(DenyReason::NoRuleMatched {
                policy: PolicyId(p)
            })),
        ]
    }

    #[test]
    fn pack_is_pinned() {
        let v = Verdict::Allow(AllowReason::Rule {
            policy: PolicyId(3),
            rule: 2,
        });
        assert_eq!(v.pack(), 0x4000_c002);
        let d = Verdict::Deny(DenyReason::NoRuleMatched {
            policy: PolicyId(1),
        });
        assert_eq!(d.pack(), 0x8000_4000);
        assert_eq!(Verdict::Allow(AllowReason::NotIsolated).pack(), 0);
        assert_eq!(Verdict::unpack(0xc000_0000), None);
        assert_eq!(Verdict::unpack(0x8000_4001), None);
        assert_eq!(Verdict::unpack(1), None);
    }

    proptest! {
        #[test]
        fn unpack_pack_roundtrip(e in verdict(), i in verdict()) {
            prop_assert_eq!(Verdict::unpack(e.pack()), Some(e));
            let c = ConnVerdict { egress: e, ingress: i };
            prop_assert_eq!(ConnVerdict::unpack(c.pack()), Some(c));
            prop_assert_eq!(ConnVerdict::packed_is_allow(c.pack()), c.is_allow());
        }

        #[test]
        fn unpack_any_bits_never_panics(bits in any::<u64>()) {
            if let Some(c) = ConnVerdict::unpack(bits) {
                prop_assert_eq!(c.pack(), bits);
            }
        }
    }
}
