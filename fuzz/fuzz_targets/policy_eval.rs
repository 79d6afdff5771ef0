//! Builds a policy table from arbitrary bytes (identities, prefixes, peer sets of any
//! size, port sets, rules, endpoints, removals) and evaluates arbitrary flows and
//! packed verdicts: nothing may panic, whatever the order or the capacity limits hit.
#![no_main]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use podwire_core::policy::*;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn ip(&mut self) -> IpAddr {
        match self.u8() % 4 {
            0 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, self.u16() % 64)),
            1 => IpAddr::V4(Ipv4Addr::new(self.u8(), self.u8(), self.u8(), self.u8())),
            _ => IpAddr::V4(Ipv4Addr::new(10, 0, 0, self.u8() % 64)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut addresses = [IpSlot::EMPTY; 48];
    let mut endpoint_policies = [EndpointPolicy::default(); 8];
    let mut rules = [Rule::EMPTY; 16];
    let mut ports = [PortRange::ANY; 16];
    let mut peers = [Identity(0); 96];
    let mut prefixes = [Prefix::EMPTY; 8];
    let mut t = PolicyTable::new(PolicyStorage {
        addresses: &mut addresses,
        endpoint_policies: &mut endpoint_policies,
        rules: &mut rules,
        ports: &mut ports,
        peers: &mut peers,
        prefixes: &mut prefixes,
    });
    let mut cidrs = Vec::new();
    let mut sets = Vec::new();
    let mut port_sets = Vec::new();
    let mut dirs = vec![DirPolicy::OPEN];
    let mut refs = Vec::new();
    while !b.0.is_empty() {
        match b.u8() % 10 {
            0 => {
                let id = Identity(u32::from(b.u16()) | u32::from(b.u8() & 0x80) << 24);
                let _ = t.set_identity(b.ip(), (b.u8() % 4 != 0).then_some(id));
            }
            1 => {
                if let Ok(c) = Cidr::new(b.ip(), b.u8() % 130) {
                    let _ = t.add_prefix(c);
                    cidrs.push(c);
                }
            }
            2 => {
                let n = usize::from(b.u8() % 40);
                let ids: Vec<Identity> =
                    (0..n).map(|_| Identity(u32::from(b.u16() % 512))).collect();
                let blocks: Vec<IpBlock<'_>> = cidrs
                    .iter()
                    .take(usize::from(b.u8() % 3))
                    .map(|c| IpBlock {
                        cidr: *c,
                        except: &cidrs[..cidrs.len().min(2)],
                    })
                    .collect();
                let spec = PeerSpec {
                    any: b.u8() % 8 == 0,
                    any_pod: b.u8() % 8 == 0,
                    identities: &ids,
                    blocks: &blocks,
                };
                if let Ok(s) = t.add_peer_set(&spec) {
                    sets.push(s);
                }
            }
            3 => {
                let n = usize::from(b.u8() % 4);
                let r: Vec<PortRange> = (0..n)
                    .map(|_| PortRange {
                        protocol: [
                            PortProtocol::Tcp,
                            PortProtocol::Udp,
                            PortProtocol::Sctp,
                            PortProtocol::Any,
                        ][usize::from(b.u8() % 4)],
                        first: b.u16(),
                        last: b.u16(),
                    })
                    .collect();
                if let Ok(p) = t.add_port_set(&r) {
                    port_sets.push(p);
                }
            }
            4 => {
                if let (Some(&peers), Some(&ports)) = (
                    sets.get(usize::from(b.u8()) % sets.len().max(1)),
                    port_sets.get(usize::from(b.u8()) % port_sets.len().max(1)),
                ) {
                    let only = sets.get(usize::from(b.u8())).copied();
                    let _ = t.push_rule(&RuleSpec {
                        policy: PolicyId(b.u16()),
                        index: b.u16() >> 1,
                        peers,
                        only,
                        ports,
                    });
                }
            }
            5 => {
                let iso = (b.u8() % 4 != 0).then_some(PolicyId(b.u16()));
                dirs.push(t.finish_rule_set(iso));
            }
            6 => {
                let ingress = dirs[usize::from(b.u8()) % dirs.len()];
                let egress = dirs[usize::from(b.u8()) % dirs.len()];
                if let Ok(r) = t.add_endpoint_policy(EndpointPolicy { ingress, egress }) {
                    refs.push(r);
                }
            }
            7 => {
                let r = if b.u8() % 4 == 0 {
                    Some(EndpointRef(u32::from(b.u8())))
                } else {
                    refs.get(usize::from(b.u8())).copied()
                };
                let _ = t.set_endpoint(b.ip(), r);
            }
            8 => {
                let v = t.evaluate_connection(b.ip(), b.ip(), b.u16(), b.u8());
                assert_eq!(ConnVerdict::unpack(v.pack()), Some(v));
                let _ = t.evaluate(Direction::Ingress, b.ip(), b.ip(), b.u16(), b.u8());
                let _ = t.cidr_class(b.ip());
            }
            _ => {
                let bits = u64::from(b.u16()) << 48 | u64::from(b.u16()) << 16 | u64::from(b.u16());
                let _ = ConnVerdict::unpack(bits);
                if b.u8() == 0 {
                    t.clear();
                }
            }
        }
    }
});
