//! `podwire status|pods|routes|ipam|flows|drops`: ask the agent, render the answer.

use std::time::Duration;

use anyhow::{bail, Result};

use super::output::{render, table};
use super::ViewArgs;
use crate::api::{self, Request, Response};

fn ask(args: &ViewArgs, req: Request) -> Result<Response> {
    match api::call(&args.socket, &req, Duration::from_secs(10))? {
        Response::Error(e) => bail!("agent: {e}"),
        r => Ok(r),
    }
}

fn print(s: String) -> Result<()> {
    print!("{s}");
    Ok(())
}

/// `podwire status`: one aligned line per subsystem.
pub fn status(args: &ViewArgs) -> Result<()> {
    let Response::Status(lines) = ask(args, Request::Status)? else {
        bail!("unexpected response")
    };
    print(render(args.output, &lines, |lines| {
        let w = lines
            .iter()
            .map(|l| l.subsystem.len() + 1)
            .max()
            .unwrap_or(0);
        let sw = lines.iter().map(|l| l.state.len()).max().unwrap_or(0);
        lines
            .iter()
            .map(|l| {
                format!(
                    "{:<w$}   {:<sw$}   {}\n",
                    format!("{}:", l.subsystem),
                    l.state,
                    l.detail
                )
            })
            .collect()
    })?)
}

/// `podwire pods`.
pub fn pods(args: &ViewArgs) -> Result<()> {
    let Response::Pods(rows) = ask(args, Request::Pods)? else {
        bail!("unexpected response")
    };
    print(render(args.output, &rows, |rows| {
        table(
            &[
                "NAMESPACE",
                "NAME",
                "IP",
                "MAC",
                "PORT",
                "IFNAME",
                "STATE",
                "CONTAINER",
                "LABELS",
            ],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.namespace.clone(),
                        r.name.clone(),
                        r.ip.to_string(),
                        r.mac.clone(),
                        r.port.to_string(),
                        r.ifname.clone(),
                        r.state.clone(),
                        r.container_id.chars().take(12).collect(),
                        r.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect::<Vec<_>>(),
        )
    })?)
}

/// `podwire routes`.
pub fn routes(args: &ViewArgs) -> Result<()> {
    let Response::Routes(rows) = ask(args, Request::Routes)? else {
        bail!("unexpected response")
    };
    print(render(args.output, &rows, |rows| {
        table(
            &["DESTINATION", "KIND", "NODE", "VIA"],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.destination.to_string(),
                        r.kind.clone(),
                        r.node.clone(),
                        r.via.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect::<Vec<_>>(),
        )
    })?)
}

/// `podwire ipam`.
pub fn ipam(args: &ViewArgs) -> Result<()> {
    let Response::Ipam(report) = ask(args, Request::Ipam)? else {
        bail!("unexpected response")
    };
    print(render(args.output, &report, |r| {
        let mut s = format!(
            "CIDR {}  gateway {}  {}/{} allocated\n\n",
            r.cidr.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            r.gateway
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.allocated,
            r.capacity
        );
        s.push_str(&table(
            &["IP", "POD", "IFNAME", "CONTAINER"],
            &r.allocations
                .iter()
                .map(|a| {
                    vec![
                        a.ip.to_string(),
                        a.pod.clone(),
                        a.ifname.clone(),
                        a.container_id.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
        s
    })?)
}

/// `podwire flows [--drops]` and `podwire drops`: the datapath's recent verdicts.
pub fn flows(args: &ViewArgs, drops_only: bool) -> Result<()> {
    let Response::Flows(report) = ask(args, Request::Flows { drops_only })? else {
        bail!("unexpected response")
    };
    print(render(args.output, &report, |r| flow_table(r, drops_only))?)
}

fn endpoint(ip: &std::net::IpAddr, port: u16, pod: &Option<String>) -> String {
    match pod {
        Some(p) => format!("{p} ({ip}:{port})"),
        None => format!("{ip}:{port}"),
    }
}

/// The table of `podwire flows` / `podwire drops`.
pub fn flow_table(r: &api::FlowReport, drops_only: bool) -> String {
    let rows: Vec<Vec<String>> = r
        .flows
        .iter()
        .map(|f| {
            let mut row = vec![
                f.time.clone(),
                f.protocol.clone(),
                endpoint(&f.src, f.src_port, &f.src_pod),
                match &f.translated {
                    Some(t) => format!("{}:{} -> {t}", f.dst, f.dst_port),
                    None => endpoint(&f.dst, f.dst_port, &f.dst_pod),
                },
            ];
            if !drops_only {
                row.push(f.outcome.clone());
            }
            row.push(f.reason.clone().unwrap_or_else(|| "-".into()));
            row.push(match (&f.direction, &f.policy) {
                (Some(d), Some(p)) => format!("{p} ({d})"),
                (None, Some(p)) => p.clone(),
                _ => "-".into(),
            });
            row
        })
        .collect();
    let mut headers = vec!["TIME", "PROTO", "SOURCE", "DESTINATION"];
    if !drops_only {
        headers.push("VERDICT");
    }
    headers.extend(["REASON", "POLICY"]);
    let mut s = table(&headers, &rows);
    if r.lost > 0 {
        s.push_str(&format!(
            "({} events lost: the event ring was full)\n",
            r.lost
        ));
    }
    s
}

/// `podwire metrics`: the metrics of the local agent, or of a lab node's, in the
/// Prometheus text format.
pub fn metrics(node: Option<&str>, socket: std::path::PathBuf) -> Result<()> {
    let socket = match node {
        None => socket,
        Some(n) => {
            let lab = crate::lab::Lab::load(std::path::Path::new(crate::lab::DEFAULT_RUN_DIR))?;
            lab.node(n)?;
            lab.socket(n)
        }
    };
    match api::call(&socket, &Request::Metrics, Duration::from_secs(10))? {
        Response::Metrics(text) => print(crate::observe::metrics::to_text_format(&text)),
        Response::Error(e) => bail!("agent: {e}"),
        _ => bail!("unexpected response"),
    }
}
