//! Subnet leases: which node holds which pod CIDR.
//!
//! Design note: a node's block is a key created by a transaction that succeeds only
//! if the key does not exist (`create_revision == 0`), so when two nodes race for the
//! same block one wins and the other moves on to the next: no two nodes ever hold
//! one subnet, whatever the timing. The key is attached to a long etcd lease that the
//! holder renews; while the holder is down the block stays reserved, so a restarted
//! agent finds the block it held (by its node name) and takes it back rather than
//! leaving its pods' addresses behind.

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;

use super::schema::{KeyKind, NetworkConfig, Schema, SubnetHolder};

/// How long a subnet lease lives without renewal (flannel's 24 hours).
pub const SUBNET_LEASE_TTL_S: i64 = 24 * 3600;

/// A subnet this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetLease {
    /// The block.
    pub subnet: Ipv4Net,
    /// The etcd lease the key is attached to.
    pub lease_id: i64,
}

/// Every subnet lease: block, holder, the etcd lease it is attached to and the key's
/// mod revision.
pub async fn list(
    client: &mut Client,
    schema: &Schema,
) -> Result<Vec<(Ipv4Net, SubnetHolder, i64, i64)>> {
    let resp = client
        .get(schema.subnets(), Some(GetOptions::new().with_prefix()))
        .await
        .context("listing subnet leases")?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        let KeyKind::Subnet(net) = schema.classify(kv.key()) else {
            continue;
        };
        match serde_json::from_slice::<SubnetHolder>(kv.value()) {
            Ok(h) => out.push((net, h, kv.lease(), kv.mod_revision())),
            Err(e) => {
                tracing::warn!(subnet = %net, error = %e, "unreadable subnet lease; its block stays taken")
            }
        }
    }
    Ok(out)
}

/// Takes this node's subnet: the one it already holds (reattached to a live lease),
/// else `prefer` if it is free, else the first free block of the config.
pub async fn claim(
    client: &mut Client,
    schema: &Schema,
    config: &NetworkConfig,
    me: &SubnetHolder,
    prefer: Option<Ipv4Net>,
) -> Result<SubnetLease> {
    let leases = list(client, schema).await?;
    if let Some((net, held, lease, rev)) = leases.iter().find(|(_, h, _, _)| h.node == me.node) {
        if let Some(p) = prefer.filter(|p| p != net) {
            bail!("this node runs on subnet {p} but etcd gives it {net}");
        }
        return reclaim(client, schema, *net, held, me, *lease, *rev).await;
    }
    let taken: Vec<Ipv4Net> = leases.iter().map(|(n, ..)| *n).collect();
    let candidates: Vec<Ipv4Net> = match prefer {
        Some(p) => vec![p],
        None => config.blocks().filter(|b| !taken.contains(b)).collect(),
    };
    let lease_id = client
        .lease_grant(SUBNET_LEASE_TTL_S, None)
        .await
        .context("granting the subnet lease")?
        .id();
    let value = serde_json::to_vec(me)?;
    for net in candidates {
        let key = schema.subnet(net);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        if client
            .txn(txn)
            .await
            .context("claiming a subnet")?
            .succeeded()
        {
            return Ok(SubnetLease {
                subnet: net,
                lease_id,
            });
        }
        tracing::debug!(subnet = %net, "subnet taken meanwhile; trying the next");
    }
    let _ = client.lease_revoke(lease_id).await;
    match prefer {
        Some(p) => bail!("subnet {p}, which this node's pods use, is now held by another node"),
        None => bail!(
            "no free /{} block left in {}",
            config.node_block_prefix,
            config.cluster_cidr
        ),
    }
}

/// Takes back a block the node already holds: keeps its lease if it is still
/// alive, else attaches the key to a new one (only if nobody changed it meanwhile).
async fn reclaim(
    client: &mut Client,
    schema: &Schema,
    net: Ipv4Net,
    held: &SubnetHolder,
    me: &SubnetHolder,
    lease: i64,
    mod_revision: i64,
) -> Result<SubnetLease> {
    if lease != 0 && held == me {
        let alive = client
            .lease_time_to_live(lease, None)
            .await
            .map(|r| r.ttl() > 0)
            .unwrap_or(false);
        if alive {
            return Ok(SubnetLease {
                subnet: net,
                lease_id: lease,
            });
        }
    }
    let lease_id = client
        .lease_grant(SUBNET_LEASE_TTL_S, None)
        .await
        .context("granting the subnet lease")?
        .id();
    let key = schema.subnet(net);
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            mod_revision,
        )])
        .and_then([TxnOp::put(
            key,
            serde_json::to_vec(me)?,
            Some(PutOptions::new().with_lease(lease_id)),
        )]);
    if !client
        .txn(txn)
        .await
        .context("reclaiming the subnet")?
        .succeeded()
    {
        let _ = client.lease_revoke(lease_id).await;
        bail!("subnet lease {net} changed while this node took it back; retrying");
    }
    Ok(SubnetLease {
        subnet: net,
        lease_id,
    })
}
