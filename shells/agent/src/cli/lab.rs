//! `podwire lab`: build, inspect, use and remove a local cluster made of network
//! namespaces; `demo` checks the network model on it with real traffic.
//!
//! Design note: the commands are thin: the lab itself lives in [`crate::lab`] (shared
//! with the end-to-end tests), so what the README's demo shows is what the tests
//! assert. `demo` always tears down, also when a check or the build failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::lab::{self, demo, Lab, LabPaths, LabSpec};

/// Options of `lab up` and `lab demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Nodes.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Pods per node.
    #[arg(long)]
    pub pods_per_node: Option<usize>,
    /// The agents busy-poll this many microseconds after traffic (0: off).
    #[arg(long)]
    pub busy_poll_us: Option<u64>,
    /// Where the cluster state lives: `file` (the lab's manifests), `etcd` (a
    /// 3-member etcd cluster in the lab's namespaces) or `kubernetes`
    /// (kube-apiserver, kube-controller-manager and etcd in the lab's namespaces).
    #[arg(long, value_enum)]
    pub datastore: Option<crate::source::Datastore>,
    /// A lab spec (YAML: nodes, podsPerNode, underlayMtu, underlayCidr, clusterCidr,
    /// busyPollUs, datastore, manifests); the options above override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl UpArgs {
    fn spec(&self, default_pods: usize) -> Result<LabSpec> {
        let mut s = match &self.config {
            Some(p) => LabSpec::from_file(p)?,
            None => LabSpec {
                pods_per_node: default_pods,
                ..LabSpec::default()
            },
        };
        if let Some(n) = self.nodes {
            s.nodes = n;
        }
        if let Some(k) = self.pods_per_node {
            s.pods_per_node = k;
        }
        if let Some(b) = self.busy_poll_us {
            s.busy_poll_us = b;
        }
        if let Some(d) = self.datastore {
            s.datastore = d;
        }
        Ok(s)
    }
}

/// `podwire lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab: an underlay bridge, nodes with agents, pods via podwire-cni.
    Up(UpArgs),
    /// Nodes (agent health), pods (IPs, labels) and services of the lab.
    Status {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: crate::cli::OutputFormat,
    },
    /// Create or change Namespaces, Pods (with `spec.nodeName`), Services and
    /// NetworkPolicies in the running lab, as kubectl apply does.
    Apply {
        /// A manifest file or folder (YAML or JSON).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the objects a manifest names from the running lab.
    Delete {
        /// A manifest file or folder (YAML or JSON).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// The server a lab pod runs on its container ports (started by the lab).
    #[command(hide = true)]
    Serve {
        /// The lab's run directory (so `lab down` finds this process).
        #[arg(long)]
        run_dir: PathBuf,
        /// The pod, `namespace/name`.
        #[arg(long)]
        pod: String,
        /// TCP ports.
        #[arg(long)]
        tcp: Vec<u16>,
        /// UDP ports.
        #[arg(long)]
        udp: Vec<u16>,
    },
    /// Run a command inside a pod's network namespace: lab exec default/node1-pod1 -- ping 10.244.2.2
    Exec {
        /// The pod (`namespace/name` or `name`).
        pod: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove the lab (agents, namespaces, state), also after a crash or a half-built lab.
    Down,
    /// Print the path of the admin kubeconfig of a lab on `--datastore kubernetes`,
    /// for the kubectl that tests/k8s-build built, run inside the control plane's
    /// namespace: ip netns exec pwlab-cp kubectl --kubeconfig PATH get nodes
    Kubeconfig,
    /// Build a lab, check the network model with real traffic, print the results, remove it.
    Demo(UpArgs),
}

/// Runs a `podwire lab` command.
pub fn run(cmd: LabCommand) -> Result<ExitCode> {
    let paths = LabPaths::default_for_cli()?;
    match cmd {
        LabCommand::Up(a) => {
            let spec = a.spec(2)?;
            eprintln!(
                "building a lab of {} nodes × {} pods",
                spec.nodes, spec.pods_per_node
            );
            match Lab::up(spec, paths.clone(), true) {
                Ok(lab) => {
                    print!("{}", lab::status_table(&lab));
                    println!(
                        "\ntry: podwire lab exec {}/{} -- ip addr",
                        lab::POD_NAMESPACE,
                        lab.pods
                            .first()
                            .map(|p| p.name.as_str())
                            .unwrap_or("node1-pod1")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!(
                        "lab up failed: {e:#}\nrun `podwire lab down` to remove what was built"
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        LabCommand::Status { output } => {
            let lab = Lab::load(&paths.run_dir)?;
            let text = crate::cli::output::render(output, &lab::status(&lab), |_| {
                lab::status_table(&lab)
            })?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Apply { file } => {
            let mut lab = Lab::load(&paths.run_dir)?;
            for line in lab.apply(&file)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Delete { file } => {
            let mut lab = Lab::load(&paths.run_dir)?;
            for line in lab.delete(&file)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Serve { pod, tcp, udp, .. } => {
            lab::serve::run(&pod, &tcp, &udp)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec { pod, command } => {
            let lab = Lab::load(&paths.run_dir)?;
            let code = lab::exec(&lab, &pod, &command)?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        LabCommand::Kubeconfig => {
            let lab = Lab::load(&paths.run_dir)?;
            println!("{}", lab.kubeconfig()?.display());
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down => {
            let removed = lab::down(&paths.prefix, &paths.run_dir);
            if removed.is_empty() {
                println!("no lab found");
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Demo(a) => demo_cmd(a.spec(2)?, paths),
    }
}

fn demo_cmd(spec: LabSpec, paths: LabPaths) -> Result<ExitCode> {
    eprintln!(
        "podwire lab demo: {} nodes × {} pods",
        spec.nodes, spec.pods_per_node
    );
    let mut lab = match Lab::up(spec, paths.clone(), true) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab up failed: {e:#}");
            lab::down(&paths.prefix, &paths.run_dir);
            return Ok(ExitCode::from(1));
        }
    };
    eprintln!("running checks with real traffic...");
    let checks = demo::run_checks(&lab, demo::Coverage::Sample).and_then(|mut checks| {
        eprintln!("applying the service and policy scenario (namespace demo)...");
        checks.extend(lab::flow::run_checks(&mut lab)?);
        Ok(checks)
    });
    eprintln!("tearing down");
    lab.down();
    let checks = match checks {
        Ok(c) => c,
        Err(e) => {
            eprintln!("checks could not run: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    print!("{}", demo::render(&checks));
    Ok(if checks.iter().all(|c| c.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
