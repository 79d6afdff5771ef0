//! The `podwire-cni` plugin: environment and stdin in, the agent does the work,
//! result or error JSON out.
//!
//! Design note: the plugin is a thin translator so that every pod operation is
//! serialised in one long-lived process (the agent) that owns IPAM, devices and the
//! datapath. [`run`] is a pure function of (stdin bytes, environment lookup, agent
//! call) to (exit code, stdout), so the whole CNI surface — versions, error codes,
//! rendering — is unit-tested with a fake agent; the binary only wires it to the real
//! process environment and socket.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{self, ClientError, CniRequest, PodRef, Request, Response};
use crate::cni::env::{CniEnv, Command};
use crate::cni::spec::{
    CniError, CniResult, ErrorCode, NetConf, Version, DEFAULT_SOCKET, LATEST_VERSION,
    SUPPORTED_VERSIONS,
};

/// How long the plugin waits for the agent (ADD may create devices and write state).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The process exit code (0 on success).
    pub exit_code: i32,
    /// What goes to stdout (empty for DEL/CHECK/GC/STATUS successes).
    pub stdout: String,
}

/// Runs one invocation. `agent` sends a request to the agent at a socket path.
pub fn run(
    stdin: &[u8],
    env: impl Fn(&str) -> Option<String>,
    agent: impl FnOnce(&std::path::Path, &Request) -> Result<Response, ClientError>,
) -> Outcome {
    // The version to answer in: the configuration's, if it names a supported one.
    let conf_version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| Version::parse(v).is_some_and(Version::is_supported));
    let answer_version = conf_version
        .clone()
        .unwrap_or_else(|| LATEST_VERSION.into());
    match run_inner(stdin, env, agent) {
        Ok(None) => Outcome {
            exit_code: 0,
            stdout: String::new(),
        },
        Ok(Some(v)) => Outcome {
            exit_code: 0,
            stdout: v.to_string(),
        },
        Err(e) => Outcome {
            exit_code: 1,
            stdout: e.to_json(&answer_version).to_string(),
        },
    }
}

fn run_inner(
    stdin: &[u8],
    env: impl Fn(&str) -> Option<String>,
    agent: impl FnOnce(&std::path::Path, &Request) -> Result<Response, ClientError>,
) -> Result<Option<Value>, CniError> {
    let env = CniEnv::parse(env)?;
    if env.command == Command::Version {
        let version = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .filter(|v| Version::parse(v).is_some_and(Version::is_supported))
            .unwrap_or_else(|| LATEST_VERSION.into());
        return Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    let version = conf.version()?;
    if let Some(first) = first_version_with(env.command) {
        if version < first {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion {version} does not allow {}",
                    command_name(env.command)
                ),
            )
            .with_details(format!(
                "{} needs cniVersion {first} or later",
                command_name(env.command)
            )));
        }
    }
    let valid_attachments = match env.command {
        Command::Gc => conf
            .gc_attachments()
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    "GC without cni.dev/valid-attachments",
                )
            })?
            .to_vec(),
        _ => Vec::new(),
    };
    let prev_addresses = conf
        .prev_result
        .as_ref()
        .map(CniResult::addresses_of)
        .unwrap_or_default();
    if env.command == Command::Check && conf.prev_result.is_none() {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "CHECK without prevResult",
        ));
    }
    let request = Request::Cni(CniRequest {
        command: env.command,
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        ifname: env.ifname.clone(),
        pod: env
            .pod()
            .map(|(namespace, name)| PodRef { namespace, name }),
        prev_addresses,
        valid_attachments,
    });
    let socket = PathBuf::from(conf.socket.as_deref().unwrap_or(DEFAULT_SOCKET));
    let response = agent(&socket, &request).map_err(|e| match (&e, env.command) {
        (ClientError::Unreachable { .. }, Command::Status) => CniError::new(
            ErrorCode::PluginNotAvailable,
            "podwire agent is not running",
        )
        .with_details(e.to_string()),
        (ClientError::Unreachable { .. }, _) => {
            CniError::new(ErrorCode::TryAgainLater, "podwire agent is not reachable")
                .with_details(e.to_string())
        }
        _ => CniError::new(ErrorCode::TryAgainLater, "podwire agent did not answer")
            .with_details(e.to_string()),
    })?;
    match response {
        Response::Cni(Some(mut result)) if env.command == Command::Add => {
            if let Some(dns) = &conf.dns {
                if result.dns == Default::default() {
                    result.dns = dns.clone();
                }
            }
            Ok(Some(result.to_json(version)))
        }
        Response::Cni(_) => Ok(None),
        Response::CniError(e) => Err(e),
        other => Err(CniError::new(
            ErrorCode::Internal,
            format!("unexpected agent response {other:?}"),
        )),
    }
}

/// The first spec version that has `command`, for the commands added after 0.3.0.
fn first_version_with(command: Command) -> Option<Version> {
    match command {
        Command::Check => Some(Version::V0_4_0),
        Command::Gc | Command::Status => Some(Version::V1_1_0),
        Command::Add | Command::Del | Command::Version => None,
    }
}

/// The command as `CNI_COMMAND` spells it.
fn command_name(command: Command) -> &'static str {
    match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Gc => "GC",
        Command::Status => "STATUS",
        Command::Version => "VERSION",
    }
}

/// The binary's entry point: reads stdin and the process environment, talks to the
/// agent socket, prints, and returns the exit code.
pub fn main() -> i32 {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(
            &stdin,
            |k| std::env::var(k).ok(),
            |socket, req| api::call(socket, req, AGENT_TIMEOUT),
        ),
        Err(e) => Outcome {
            exit_code: 1,
            stdout: CniError::new(ErrorCode::IoFailure, "failed to read stdin")
                .with_details(e.to_string())
                .to_json(LATEST_VERSION)
                .to_string(),
        },
    };
    if !outcome.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", outcome.stdout);
        let _ = out.flush();
    }
    outcome.exit_code
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::cni::spec::{Interface, IpConfig};

    const CONF: &str =
        r#"{"cniVersion":"1.1.0","name":"podwire","type":"podwire","socket":"/tmp/x.sock"}"#;

    fn env_of(cmd: &'static str) -> impl Fn(&str) -> Option<String> {
        move |k| {
            Some(
                match k {
                    "CNI_COMMAND" => cmd,
                    "CNI_CONTAINERID" => "c1",
                    "CNI_NETNS" => "/var/run/netns/p1",
                    "CNI_IFNAME" => "eth0",
                    "CNI_PATH" => "/opt/cni/bin",
                    "CNI_ARGS" => "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
                    _ => return None,
                }
                .to_string(),
            )
        }
    }

    fn result() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:f4:01:05".into(),
                mtu: 1450,
                sandbox: Some("/var/run/netns/p1".into()),
            }],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            ..Default::default()
        }
    }

    fn json_of(o: &Outcome) -> Value {
        serde_json::from_str(&o.stdout).unwrap()
    }

    #[test]
    fn add_forwards_to_the_agent_and_renders_the_result() {
        let seen = RefCell::new(None);
        let o = run(CONF.as_bytes(), env_of("ADD"), |sock, req| {
            assert_eq!(sock, std::path::Path::new("/tmp/x.sock"));
            *seen.borrow_mut() = Some(req.clone());
            Ok(Response::Cni(Some(result())))
        });
        assert_eq!(o.exit_code, 0);
        let j = json_of(&o);
        assert_eq!(j["cniVersion"], "1.1.0");
        assert_eq!(j["ips"][0]["address"], "10.244.1.5/24");
        let Some(Request::Cni(req)) = seen.into_inner() else {
            panic!("no request")
        };
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.pod.unwrap().name, "web");
        assert_eq!(req.netns.as_deref(), Some("/var/run/netns/p1"));
    }

    #[test]
    fn add_answers_in_the_configuration_version() {
        for version in SUPPORTED_VERSIONS {
            let conf =
                format!(r#"{{"cniVersion":"{version}","name":"podwire","type":"podwire-cni"}}"#);
            let o = run(conf.as_bytes(), env_of("ADD"), |_, _| {
                Ok(Response::Cni(Some(result())))
            });
            assert_eq!(o.exit_code, 0, "{version}: {}", o.stdout);
            let j = json_of(&o);
            assert_eq!(j["cniVersion"], *version);
            assert_eq!(j["ips"][0]["address"], "10.244.1.5/24");
            let v = Version::parse(version).unwrap();
            assert_eq!(j["ips"][0].get("version").is_some(), v < Version::V1_0_0);
            assert_eq!(
                j["interfaces"][0].get("mtu").is_some(),
                v >= Version::V1_1_0
            );
        }
    }

    #[test]
    fn unreachable_agent_is_try_again_later_and_status_not_available() {
        let unreachable = |_: &std::path::Path, _: &Request| {
            Err(ClientError::Unreachable {
                path: "/tmp/x.sock".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        };
        let o = run(CONF.as_bytes(), env_of("ADD"), unreachable);
        assert_eq!(o.exit_code, 1);
        assert_eq!(json_of(&o)["code"], 11);
        let o = run(CONF.as_bytes(), env_of("STATUS"), unreachable);
        assert_eq!(json_of(&o)["code"], 50);
    }

    #[test]
    fn version_reports_supported_versions_without_the_agent() {
        let o = run(br#"{"cniVersion":"1.0.0"}"#, env_of("VERSION"), |_, _| {
            panic!("VERSION must not call the agent")
        });
        assert_eq!(o.exit_code, 0);
        let j = json_of(&o);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(
            j["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let o = run(b"", env_of("VERSION"), |_, _| unreachable!());
        assert_eq!(json_of(&o)["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn bad_input_gets_the_spec_codes() {
        let never = |_: &std::path::Path, _: &Request| -> Result<Response, ClientError> {
            panic!("must not reach the agent")
        };
        let o = run(b"{oops", env_of("ADD"), never);
        assert_eq!((o.exit_code, json_of(&o)["code"].clone()), (1, json!(6)));
        let o = run(
            br#"{"cniVersion":"1.1.0","type":"podwire"}"#,
            env_of("ADD"),
            never,
        );
        assert_eq!(json_of(&o)["code"], 7);
        let o = run(
            br#"{"cniVersion":"0.2.0","name":"podwire","type":"podwire"}"#,
            env_of("ADD"),
            never,
        );
        assert_eq!(json_of(&o)["code"], 1);
        assert_eq!(json_of(&o)["cniVersion"], LATEST_VERSION);
        for (version, command) in [
            ("1.0.0", "GC"),
            ("1.0.0", "STATUS"),
            ("0.3.1", "CHECK"),
            ("0.3.0", "CHECK"),
        ] {
            let conf = format!(r#"{{"cniVersion":"{version}","name":"podwire","type":"podwire"}}"#);
            let o = run(conf.as_bytes(), env_of(command), never);
            let j = json_of(&o);
            assert_eq!(
                (o.exit_code, j["code"].clone()),
                (1, json!(1)),
                "{command} {version}"
            );
            assert_eq!(
                j["cniVersion"], version,
                "answered in the configuration's version"
            );
            assert!(j["msg"].as_str().unwrap().contains(command), "{j}");
        }
        let o = run(CONF.as_bytes(), |_| None, never);
        assert_eq!(json_of(&o)["code"], 4);
        let o = run(CONF.as_bytes(), env_of("CHECK"), never);
        assert_eq!(json_of(&o)["code"], 7);
    }

    #[test]
    fn agent_errors_pass_through_and_del_prints_nothing() {
        let o = run(CONF.as_bytes(), env_of("ADD"), |_, _| {
            Ok(Response::CniError(CniError::new(
                ErrorCode::IpamExhausted,
                "no free address",
            )))
        });
        assert_eq!(json_of(&o)["code"], 101);
        let o = run(CONF.as_bytes(), env_of("DEL"), |_, _| {
            Ok(Response::Cni(None))
        });
        assert_eq!(
            o,
            Outcome {
                exit_code: 0,
                stdout: String::new()
            }
        );
    }

    #[test]
    fn gc_sends_the_valid_list() {
        let conf = r#"{"cniVersion":"1.1.0","name":"podwire","type":"podwire",
            "cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}"#;
        let o = run(conf.as_bytes(), env_of("GC"), |_, req| {
            let Request::Cni(r) = req else { panic!() };
            assert_eq!(r.valid_attachments.len(), 1);
            assert_eq!(r.valid_attachments[0].container_id, "keep");
            Ok(Response::Cni(None))
        });
        assert_eq!(o.exit_code, 0);
        assert!(o.stdout.is_empty());
    }
}
