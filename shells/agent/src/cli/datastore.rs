//! `podwire apply`, `podwire delete` and `podwire etcd init`: a cluster's state
//! written into the etcd datastore, kubectl style.
//!
//! Design note: the commands only parse arguments and print one line per object
//! (`pod/web created`); the checks and the transactions live in
//! [`crate::source::etcd::writer`], next to the source that reads what they write.

use std::path::PathBuf;

use anyhow::Result;
use ipnet::Ipv4Net;

use super::EtcdArgs;
use crate::source::etcd::schema::{Backend, NetworkConfig};
use crate::source::etcd::writer;

/// Options of `podwire apply` and `podwire delete`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// The manifests file or folder.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// `podwire etcd ...`.
#[derive(Debug, clap::Subcommand)]
pub enum EtcdCommand {
    /// Write the network config the agents take their subnets from (once per cluster).
    Init {
        /// The cluster's pod network.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: Ipv4Net,
        /// Prefix length of each node's block.
        #[arg(long, default_value_t = 24)]
        node_block_prefix: u8,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `apply` (or `delete`) and prints what happened to each object.
pub fn apply(a: &ApplyArgs, delete: bool) -> Result<()> {
    let config = a.etcd.config();
    let outcomes = runtime()?.block_on(async {
        if delete {
            writer::delete(&config, &a.file).await
        } else {
            writer::apply(&config, &a.file).await
        }
    })?;
    for o in outcomes {
        println!("{} {}", o.key.to_string().to_lowercase(), o.action);
    }
    Ok(())
}

/// Runs `podwire etcd ...`.
pub fn etcd(cmd: &EtcdCommand) -> Result<()> {
    match cmd {
        EtcdCommand::Init {
            cluster_cidr,
            node_block_prefix,
            etcd,
        } => {
            let network = NetworkConfig {
                cluster_cidr: *cluster_cidr,
                node_block_prefix: *node_block_prefix,
                backend: Backend::Vxlan,
            };
            let config = etcd.config();
            let done = runtime()?.block_on(writer::init(&config, &network))?;
            println!("network config {} {done}", config.prefix);
        }
    }
    Ok(())
}
