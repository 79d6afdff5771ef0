//! The real [`Netlink`]: rtnetlink for links, addresses and routes; the TUN ioctls
//! for TAP devices.
//!
//! Design note: an rtnetlink socket talks to the namespace it was created in, so the
//! node's namespace gets one long-lived connection and a pod's namespace gets a
//! connection opened from a thread inside it (see [`super::netns`]) for each
//! operation. Pod namespaces come and go (the runtime may reuse a path for a new
//! namespace), so caching those connections by path would be a correctness bug for a
//! saving of well under a millisecond per ADD.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteScope, RouteType};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{
    netns, LinkChange, LinkSetup, LinkState, Netlink, NetlinkError, NlResult, Ns, Route,
    TapIdentity,
};
use crate::dataplane::tap::{self, Tap, TapOptions};

/// rtnetlink-backed [`Netlink`]. Create it inside a tokio runtime.
#[derive(Clone)]
pub struct RtNetlink {
    node: Handle,
}

fn failed(op: &'static str, what: impl Into<String>, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::Failed {
        op,
        what: what.into(),
        message: e.to_string(),
    }
}

fn map_err(op: &'static str, what: String, e: rtnetlink::Error) -> NetlinkError {
    if let rtnetlink::Error::NetlinkError(m) = &e {
        match -m.raw_code() {
            libc::ENODEV | libc::ENOENT | libc::ESRCH => {
                return NetlinkError::NotFound { op, what }
            }
            libc::EEXIST | libc::EBUSY => return NetlinkError::Exists { op, what },
            _ => {}
        }
    }
    failed(op, what, e)
}

fn map_io(op: &'static str, what: String, e: std::io::Error) -> NetlinkError {
    match e.kind() {
        std::io::ErrorKind::NotFound => NetlinkError::NotFound { op, what },
        _ if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) => {
            NetlinkError::Exists { op, what }
        }
        _ => failed(op, what, e),
    }
}

impl RtNetlink {
    /// Connects to the node's (the calling process's) namespace.
    pub fn new() -> std::io::Result<RtNetlink> {
        let (conn, node, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(RtNetlink { node })
    }

    async fn handle(&self, op: &'static str, ns: &Ns) -> NlResult<Handle> {
        match ns {
            Ns::Node => Ok(self.node.clone()),
            Ns::Path(path) => {
                let rt = tokio::runtime::Handle::current();
                let p = path.clone();
                let (conn, handle) = tokio::task::spawn_blocking(move || {
                    netns::run_in(&p, move || {
                        let _guard = rt.enter();
                        let (conn, handle, _) = rtnetlink::new_connection()?;
                        Ok((conn, handle))
                    })
                })
                .await
                .map_err(|e| failed(op, ns.to_string(), e))?
                .map_err(|e| map_io(op, ns.to_string(), e))?;
                tokio::spawn(conn);
                Ok(handle)
            }
        }
    }

    async fn link_message(
        h: &Handle,
        op: &'static str,
        ns: &Ns,
        name: &str,
    ) -> NlResult<Option<LinkMessage>> {
        let mut s = h.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) => match map_err(op, format!("link {name} in {ns}"), e) {
                NetlinkError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn index(h: &Handle, op: &'static str, ns: &Ns, name: &str) -> NlResult<u32> {
        Self::link_message(h, op, ns, name)
            .await?
            .map(|m| m.header.index)
            .ok_or_else(|| NetlinkError::NotFound {
                op,
                what: format!("link {name} in {ns}"),
            })
    }
}

impl Netlink for RtNetlink {
    async fn create_tap(
        &self,
        ns: &Ns,
        name: &str,
        identity: TapIdentity,
        options: TapOptions,
    ) -> NlResult<Tap> {
        let n = name.to_string();
        let create = move || {
            let t = Tap::create(&n, options)?;
            if let Err(e) = tap::set_mac_mtu(&n, Some(identity.mac), Some(identity.mtu)) {
                let _ = t.unpersist();
                return Err(e);
            }
            Ok(t)
        };
        let ns2 = ns.clone();
        tokio::task::spawn_blocking(move || match ns2 {
            Ns::Node => create(),
            Ns::Path(p) => netns::run_in(&p, create),
        })
        .await
        .map_err(|e| failed("create_tap", name, e))?
        .map_err(|e| map_io("create_tap", format!("tap {name} in {ns}"), e))
    }

    async fn setup_link(&self, ns: &Ns, name: &str, setup: &LinkSetup) -> NlResult<()> {
        let h = self.handle("setup_link", ns).await?;
        let index = Self::index(&h, "setup_link", ns, name).await?;
        let what = || format!("{} on {name} in {ns}", setup.address);
        h.address()
            .add(index, setup.address.addr(), setup.address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| map_err("setup_link", what(), e))?;
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| map_err("setup_link", what(), e))?;
        if let Some(gw) = setup.default_gateway {
            let IpAddr::V4(gw) = gw else {
                return Err(failed("setup_link", what(), "IPv6 gateway"));
            };
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(gw)
                .output_interface(index)
                .build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    map_err(
                        "setup_link",
                        format!("default via {gw} dev {name} in {ns}"),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    async fn attach_tap(&self, ns: &Ns, name: &str, options: TapOptions) -> NlResult<Tap> {
        let n = name.to_string();
        let ns2 = ns.clone();
        tokio::task::spawn_blocking(move || match ns2 {
            Ns::Node => Tap::attach(&n, options),
            Ns::Path(p) => netns::run_in(&p, move || Tap::attach(&n, options)),
        })
        .await
        .map_err(|e| failed("attach_tap", name, e))?
        .map_err(|e| map_io("attach_tap", format!("tap {name} in {ns}"), e))
    }

    async fn link(&self, ns: &Ns, name: &str) -> NlResult<Option<LinkState>> {
        let h = self.handle("link", ns).await?;
        let Some(m) = Self::link_message(&h, "link", ns, name).await? else {
            return Ok(None);
        };
        let mut state = LinkState {
            index: m.header.index,
            mac: [0; 6],
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            addresses: Vec::new(),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Address(mac) if mac.len() == 6 => state.mac.copy_from_slice(mac),
                LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
                _ => {}
            }
        }
        let mut addrs = h
            .address()
            .get()
            .set_link_index_filter(state.index)
            .execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(|e| map_err("link", format!("addresses of {name}"), e))?
        {
            if a.header.index != state.index {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    if let Ok(net) = IpNet::new(*ip, a.header.prefix_len) {
                        state.addresses.push(net);
                    }
                }
            }
        }
        Ok(Some(state))
    }

    async fn set_link(&self, ns: &Ns, name: &str, change: &LinkChange) -> NlResult<()> {
        let h = self.handle("set_link", ns).await?;
        let index = Self::index(&h, "set_link", ns, name).await?;
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mac) = change.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(mtu) = change.mtu {
            b = b.mtu(mtu);
        }
        if let Some(new) = &change.rename {
            b = b.name(new.clone());
        }
        match change.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        h.link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| map_err("set_link", format!("link {name} in {ns}"), e))
    }

    async fn add_address(&self, ns: &Ns, name: &str, address: IpNet) -> NlResult<()> {
        let h = self.handle("add_address", ns).await?;
        let index = Self::index(&h, "add_address", ns, name).await?;
        h.address()
            .add(index, address.addr(), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| map_err("add_address", format!("{address} on {name} in {ns}"), e))
    }

    async fn replace_route(&self, ns: &Ns, route: &Route) -> NlResult<()> {
        let h = self.handle("replace_route", ns).await?;
        let index = Self::index(&h, "replace_route", ns, &route.device).await?;
        let IpNet::V4(dst) = route.destination else {
            return Err(failed(
                "replace_route",
                route.destination.to_string(),
                "IPv6 routes are not supported yet",
            ));
        };
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .output_interface(index);
        match route.gateway {
            Some(IpAddr::V4(gw)) => b = b.gateway(gw),
            Some(IpAddr::V6(_)) => {
                return Err(failed(
                    "replace_route",
                    route.destination.to_string(),
                    "IPv6 gateway",
                ))
            }
            None => b = b.scope(RouteScope::Link),
        }
        h.route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(|e| {
                map_err(
                    "replace_route",
                    format!("{} dev {} in {ns}", route.destination, route.device),
                    e,
                )
            })
    }

    async fn routes(&self, ns: &Ns) -> NlResult<Vec<Route>> {
        let h = self.handle("routes", ns).await?;
        let mut names = std::collections::HashMap::new();
        let mut links = h.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| map_err("routes", ns.to_string(), e))?
        {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    names.insert(l.header.index, n.clone());
                }
            }
        }
        let mut out = Vec::new();
        let mut s = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s
            .try_next()
            .await
            .map_err(|e| map_err("routes", ns.to_string(), e))?
        {
            let mut table = u32::from(r.header.table);
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            let mut oif = 0;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::V4(*g)),
                    RouteAttribute::Oif(i) => oif = *i,
                    _ => {}
                }
            }
            if table != 254 || r.header.kind != RouteType::Unicast {
                continue;
            }
            let Ok(net) = ipnet::Ipv4Net::new(dst, r.header.destination_prefix_length) else {
                continue;
            };
            out.push(Route {
                destination: IpNet::V4(net),
                gateway: gw,
                device: names.get(&oif).cloned().unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn delete_route(&self, ns: &Ns, destination: IpNet) -> NlResult<bool> {
        let h = self.handle("delete_route", ns).await?;
        let IpNet::V4(dst) = destination else {
            return Ok(false);
        };
        // Scope "nowhere" matches any scope on delete (as `ip route del` does).
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .scope(RouteScope::NoWhere)
            .build();
        match h.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => match map_err("delete_route", format!("{destination} in {ns}"), e) {
                NetlinkError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn links(&self, ns: &Ns) -> NlResult<Vec<(String, LinkState)>> {
        let h = self.handle("links", ns).await?;
        let mut names = Vec::new();
        let mut s = h.link().get().execute();
        while let Some(l) = s
            .try_next()
            .await
            .map_err(|e| map_err("links", ns.to_string(), e))?
        {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    names.push(n.clone());
                }
            }
        }
        let mut out = Vec::new();
        for n in names {
            if let Some(state) = self.link(ns, &n).await? {
                out.push((n, state));
            }
        }
        Ok(out)
    }

    fn ns_exists(&self, ns: &Ns) -> bool {
        match ns {
            Ns::Node => true,
            Ns::Path(p) => p.exists(),
        }
    }

    async fn delete_link(&self, ns: &Ns, name: &str) -> NlResult<bool> {
        let h = match self.handle("delete_link", ns).await {
            Ok(h) => h,
            Err(NetlinkError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(m) = Self::link_message(&h, "delete_link", ns, name).await? else {
            return Ok(false);
        };
        match h.link().del(m.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => match map_err("delete_link", format!("link {name} in {ns}"), e) {
                NetlinkError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }
}
