//! A recording [`Netlink`] for unit tests: every call is logged, and a small model of
//! links per namespace makes lookups, moves and renames behave like the kernel's.
//!
//! Design note: asserting on the call log tests the *order* of configuration (e.g.
//! rename before up, address before the default route); the model makes error paths
//! (name clashes, a vanished namespace) testable; [`RecordingNetlink::fail_on`] injects
//! a failure at any operation to test rollback.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ipnet::IpNet;

use super::{
    LinkChange, LinkSetup, LinkState, Netlink, NetlinkError, NlResult, Ns, Route, TapIdentity,
};
use crate::dataplane::tap::{Tap, TapOptions};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `create_tap(ns, name, identity)`.
    CreateTap(Ns, String, TapIdentity),
    /// `setup_link(ns, name, setup)`.
    SetupLink(Ns, String, LinkSetup),
    /// `attach_tap(ns, name)`.
    AttachTap(Ns, String),
    /// `set_link(ns, name, change)`.
    SetLink(Ns, String, LinkChange),
    /// `add_address(ns, name, address)`.
    AddAddress(Ns, String, IpNet),
    /// `replace_route(ns, route)`.
    ReplaceRoute(Ns, Route),
    /// `delete_link(ns, name)`.
    DeleteLink(Ns, String),
    /// `delete_route(ns, destination)`.
    DeleteRoute(Ns, IpNet),
}

#[derive(Debug, Default)]
struct Model {
    next_index: u32,
    links: BTreeMap<(Ns, String), LinkState>,
    routes: Vec<(Ns, Route)>,
    calls: Vec<Call>,
    fail_on: Option<String>,
    missing_ns: Vec<Ns>,
}

/// The recording fake.
#[derive(Debug, Default)]
pub struct RecordingNetlink {
    model: Mutex<Model>,
}

impl RecordingNetlink {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.model.lock().unwrap().calls.clone()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.model.lock().unwrap().calls.clear();
    }

    /// Makes the next call whose debug form starts with `prefix` fail (e.g. `"AddAddress"`).
    pub fn fail_on(&self, prefix: &str) {
        self.model.lock().unwrap().fail_on = Some(prefix.to_string());
    }

    /// Makes `ns` behave as deleted.
    pub fn remove_ns(&self, ns: Ns) {
        let mut m = self.model.lock().unwrap();
        m.links.retain(|(n, _), _| *n != ns);
        m.routes.retain(|(n, _)| *n != ns);
        m.missing_ns.push(ns);
    }

    /// Links in `ns`.
    pub fn links_in(&self, ns: &Ns) -> Vec<(String, LinkState)> {
        let m = self.model.lock().unwrap();
        m.links
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|((_, name), s)| (name.clone(), s.clone()))
            .collect()
    }

    /// Routes in `ns`.
    pub fn routes_in(&self, ns: &Ns) -> Vec<Route> {
        let m = self.model.lock().unwrap();
        m.routes
            .iter()
            .filter(|(n, _)| n == ns)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Removes an address directly (to simulate tampering for CHECK tests).
    pub fn strip_address(&self, ns: &Ns, name: &str, address: IpNet) {
        let mut m = self.model.lock().unwrap();
        if let Some(l) = m.links.get_mut(&(ns.clone(), name.to_string())) {
            l.addresses.retain(|a| *a != address);
        }
    }

    fn record(&self, call: Call) -> NlResult<std::sync::MutexGuard<'_, Model>> {
        let mut m = self.model.lock().unwrap();
        let dbg = format!("{call:?}");
        m.calls.push(call);
        if let Some(p) = m.fail_on.clone() {
            if dbg.starts_with(&p) {
                m.fail_on = None;
                return Err(NetlinkError::Failed {
                    op: "injected",
                    what: dbg,
                    message: "injected failure".into(),
                });
            }
        }
        Ok(m)
    }
}

fn not_found(op: &'static str, ns: &Ns, name: &str) -> NetlinkError {
    NetlinkError::NotFound {
        op,
        what: format!("link {name} in {ns}"),
    }
}

impl Model {
    fn check_ns(&self, op: &'static str, ns: &Ns) -> NlResult<()> {
        if self.missing_ns.contains(ns) {
            return Err(NetlinkError::NotFound {
                op,
                what: ns.to_string(),
            });
        }
        Ok(())
    }
}

impl Netlink for RecordingNetlink {
    async fn create_tap(
        &self,
        ns: &Ns,
        name: &str,
        identity: TapIdentity,
        options: TapOptions,
    ) -> NlResult<Tap> {
        let mut m = self.record(Call::CreateTap(ns.clone(), name.into(), identity))?;
        m.check_ns("create_tap", ns)?;
        let key = (ns.clone(), name.to_string());
        if m.links.contains_key(&key) {
            return Err(NetlinkError::Exists {
                op: "create_tap",
                what: name.into(),
            });
        }
        m.next_index += 1;
        let index = m.next_index;
        m.links.insert(
            key,
            LinkState {
                index,
                mac: identity.mac,
                mtu: identity.mtu,
                up: false,
                addresses: vec![],
            },
        );
        Ok(Tap::detached(name, options))
    }

    async fn setup_link(&self, ns: &Ns, name: &str, setup: &LinkSetup) -> NlResult<()> {
        let mut m = self.record(Call::SetupLink(ns.clone(), name.into(), setup.clone()))?;
        m.check_ns("setup_link", ns)?;
        let link = m
            .links
            .get_mut(&(ns.clone(), name.to_string()))
            .ok_or_else(|| not_found("setup_link", ns, name))?;
        if !link.addresses.contains(&setup.address) {
            link.addresses.push(setup.address);
        }
        link.up = true;
        if let Some(gw) = setup.default_gateway {
            let dst: IpNet = "0.0.0.0/0".parse().expect("literal");
            m.routes.retain(|(n, r)| !(n == ns && r.destination == dst));
            m.routes.push((
                ns.clone(),
                Route {
                    destination: dst,
                    gateway: Some(gw),
                    device: name.to_string(),
                },
            ));
        }
        Ok(())
    }

    async fn attach_tap(&self, ns: &Ns, name: &str, options: TapOptions) -> NlResult<Tap> {
        let m = self.record(Call::AttachTap(ns.clone(), name.into()))?;
        m.check_ns("attach_tap", ns)?;
        if !m.links.contains_key(&(ns.clone(), name.to_string())) {
            return Err(not_found("attach_tap", ns, name));
        }
        Ok(Tap::detached(name, options))
    }

    async fn link(&self, ns: &Ns, name: &str) -> NlResult<Option<LinkState>> {
        let m = self.model.lock().unwrap();
        m.check_ns("link", ns)?;
        Ok(m.links.get(&(ns.clone(), name.to_string())).cloned())
    }

    async fn set_link(&self, ns: &Ns, name: &str, change: &LinkChange) -> NlResult<()> {
        let mut m = self.record(Call::SetLink(ns.clone(), name.into(), change.clone()))?;
        m.check_ns("set_link", ns)?;
        let key = (ns.clone(), name.to_string());
        let mut link = m
            .links
            .remove(&key)
            .ok_or_else(|| not_found("set_link", ns, name))?;
        if let Some(mac) = change.mac {
            link.mac = mac;
        }
        if let Some(mtu) = change.mtu {
            link.mtu = mtu;
        }
        if let Some(up) = change.up {
            link.up = up;
        }
        let mut new_key = key.clone();
        if let Some(new) = &change.rename {
            new_key.1 = new.clone();
            if m.links.contains_key(&new_key) {
                m.links.insert(key, link);
                return Err(NetlinkError::Exists {
                    op: "set_link",
                    what: new.clone(),
                });
            }
        }
        m.links.insert(new_key, link);
        Ok(())
    }

    async fn add_address(&self, ns: &Ns, name: &str, address: IpNet) -> NlResult<()> {
        let mut m = self.record(Call::AddAddress(ns.clone(), name.into(), address))?;
        m.check_ns("add_address", ns)?;
        let link = m
            .links
            .get_mut(&(ns.clone(), name.to_string()))
            .ok_or_else(|| not_found("add_address", ns, name))?;
        if !link.addresses.contains(&address) {
            link.addresses.push(address);
        }
        Ok(())
    }

    async fn replace_route(&self, ns: &Ns, route: &Route) -> NlResult<()> {
        let mut m = self.record(Call::ReplaceRoute(ns.clone(), route.clone()))?;
        m.check_ns("replace_route", ns)?;
        if !m.links.contains_key(&(ns.clone(), route.device.clone())) {
            return Err(not_found("replace_route", ns, &route.device));
        }
        m.routes
            .retain(|(n, r)| !(n == ns && r.destination == route.destination));
        m.routes.push((ns.clone(), route.clone()));
        Ok(())
    }

    async fn routes(&self, ns: &Ns) -> NlResult<Vec<Route>> {
        let m = self.model.lock().unwrap();
        m.check_ns("routes", ns)?;
        Ok(m.routes
            .iter()
            .filter(|(n, _)| n == ns)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn delete_route(&self, ns: &Ns, destination: IpNet) -> NlResult<bool> {
        let mut m = self.record(Call::DeleteRoute(ns.clone(), destination))?;
        let before = m.routes.len();
        m.routes
            .retain(|(n, r)| !(n == ns && r.destination == destination));
        Ok(m.routes.len() != before)
    }

    async fn links(&self, ns: &Ns) -> NlResult<Vec<(String, LinkState)>> {
        let m = self.model.lock().unwrap();
        m.check_ns("links", ns)?;
        Ok(m.links
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|((_, name), s)| (name.clone(), s.clone()))
            .collect())
    }

    fn ns_exists(&self, ns: &Ns) -> bool {
        !self.model.lock().unwrap().missing_ns.contains(ns)
    }

    async fn delete_link(&self, ns: &Ns, name: &str) -> NlResult<bool> {
        let mut m = self.record(Call::DeleteLink(ns.clone(), name.into()))?;
        if m.missing_ns.contains(ns) {
            return Ok(false);
        }
        let existed = m.links.remove(&(ns.clone(), name.to_string())).is_some();
        m.routes.retain(|(n, r)| !(n == ns && r.device == name));
        Ok(existed)
    }
}
