//! The `CNI_*` environment of a plugin invocation.
//!
//! Design note: parsing takes a lookup function instead of reading the process
//! environment, so every rule (which variables each command needs, container-id and
//! interface-name syntax, `CNI_ARGS` pairs) is unit-tested without touching global
//! state. Every missing or invalid variable is named in the error (code 4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::{CniError, ErrorCode};

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Free attachments that are not in the valid list.
    Gc,
    /// Report readiness.
    Status,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The parsed environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: Option<String>,
    /// `CNI_NETNS` (ADD, CHECK; optional for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: Option<String>,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
}

impl CniEnv {
    /// Parses the environment through `get`.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            None => return Err(invalid(&["CNI_COMMAND"], "CNI_COMMAND is not set")),
            Some(c) => Command::parse(&c)
                .ok_or_else(|| invalid(&["CNI_COMMAND"], &format!("unknown CNI_COMMAND {c:?}")))?,
        };
        let (need_id, need_netns, need_ifname, need_path) = match command {
            Command::Add | Command::Check => (true, true, true, true),
            Command::Del => (true, false, true, true),
            Command::Gc | Command::Status => (false, false, false, true),
            Command::Version => (false, false, false, false),
        };
        let mut missing = Vec::new();
        let mut take = |k: &'static str, needed: bool| {
            let v = get(k);
            if needed && v.is_none() {
                missing.push(k);
            }
            v
        };
        let container_id = take("CNI_CONTAINERID", need_id);
        let netns = take("CNI_NETNS", need_netns);
        let ifname = take("CNI_IFNAME", need_ifname);
        let path = take("CNI_PATH", need_path);
        if !missing.is_empty() {
            return Err(invalid(
                &missing,
                &format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
            ));
        }
        if let Some(id) = &container_id {
            if !valid_container_id(id) {
                return Err(invalid(
                    &["CNI_CONTAINERID"],
                    &format!("invalid CNI_CONTAINERID {id:?}"),
                ));
            }
        }
        if let Some(name) = &ifname {
            if !valid_ifname(name) {
                return Err(invalid(
                    &["CNI_IFNAME"],
                    &format!("invalid CNI_IFNAME {name:?}"),
                ));
            }
        }
        let args = match get("CNI_ARGS") {
            None => BTreeMap::new(),
            Some(a) => parse_args(&a)
                .ok_or_else(|| invalid(&["CNI_ARGS"], &format!("invalid CNI_ARGS {a:?}")))?,
        };
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The pod's namespace and name from `K8S_POD_NAMESPACE` / `K8S_POD_NAME`.
    pub fn pod(&self) -> Option<(String, String)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?.clone(),
            self.args.get("K8S_POD_NAME")?.clone(),
        ))
    }
}

fn invalid(vars: &[&str], msg: &str) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg).with_details(vars.join(", "))
}

/// `CNI_ARGS`: `K=V;K=V`.
pub fn parse_args(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        if k.is_empty() {
            return None;
        }
        out.insert(k.to_string(), v.to_string());
    }
    Some(out)
}

/// Container ids: an alphanumeric first character, then alphanumerics, `_`, `.`, `-`.
pub fn valid_container_id(s: &str) -> bool {
    super::spec::valid_network_name(s)
}

/// Linux interface names: 1-15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::parse(|k| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()))
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ];

    #[test]
    fn add_env_parses_with_pod_identity() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id.as_deref(), Some("abc123"));
        assert_eq!(e.pod(), Some(("default".into(), "web-0".into())));
    }

    #[test]
    fn missing_variables_are_named() {
        let partial: Vec<_> = ADD
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS" && *k != "CNI_IFNAME")
            .collect();
        let e = env(&partial).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"));
        assert_eq!(
            env(&[]).unwrap_err().details.as_deref(),
            Some("CNI_COMMAND")
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
    }

    #[test]
    fn del_does_not_need_a_netns_and_version_needs_nothing() {
        let del: Vec<_> = ADD
            .iter()
            .copied()
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert!(env(&del).unwrap().netns.is_none());
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert!(env(&[("CNI_COMMAND", "GC")]).is_err());
        assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).is_ok());
    }

    #[test]
    fn invalid_ids_and_names_are_rejected() {
        for (k, bad) in [
            ("CNI_CONTAINERID", "-abc"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_IFNAME", "a-very-long-interface"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_IFNAME", ".."),
            ("CNI_ARGS", "novalue"),
        ] {
            let v: Vec<_> = ADD
                .iter()
                .copied()
                .map(|(kk, v)| if kk == k { (kk, bad) } else { (kk, v) })
                .collect();
            let e = env(&v).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{k}={bad}");
            assert!(e.details.unwrap().contains(k));
        }
    }

    #[test]
    fn args_parse() {
        let a = parse_args("A=1;B=;C=x=y").unwrap();
        assert_eq!(a["A"], "1");
        assert_eq!(a["B"], "");
        assert_eq!(a["C"], "x=y");
        assert!(parse_args("=1").is_none());
        assert!(parse_args("").unwrap().is_empty());
    }
}
