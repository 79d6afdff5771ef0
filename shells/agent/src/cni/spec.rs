//! CNI specification types: versions, network configuration, results and errors.
//!
//! Design note: the CNI wire format is small and changes a little between spec
//! versions, so the types are written by hand around one version-agnostic
//! [`CniResult`] that is rendered for the `cniVersion` the runtime asked for:
//!
//! | version      | `ips[]`                                    | `interfaces[]`  | commands                 |
//! |--------------|--------------------------------------------|-----------------|--------------------------|
//! | 0.3.0, 0.3.1 | `version` ("4"/"6"), `address`, `gateway`, `interface` | name, mac, sandbox | ADD, DEL, VERSION |
//! | 0.4.0        | as 0.3.x                                   | as 0.3.x        | + CHECK                  |
//! | 1.0.0        | no `version`                               | as 0.3.x        | as 0.4.0                 |
//! | 1.1.0        | as 1.0.0                                   | + `mtu`         | + GC, STATUS             |
//!
//! A command the configuration's version does not have is error 1 (incompatible CNI
//! version), as the reference plugins' `skel` answers. Existing CNI crates were either
//! unmaintained or did not cover 1.1.0's GC/STATUS, and the plugin must not pull a large
//! dependency tree into a binary the runtime executes for every pod.
//!
//! Error codes follow the spec's "well-known error codes" table (1-11, 50-51); codes
//! of 100 and above are podwire-specific.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The spec versions this plugin implements, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version, used when the runtime did not name one.
pub const LATEST_VERSION: &str = "1.1.0";

/// A parsed `major.minor.patch` spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// 0.4.0, the first version with CHECK.
    pub const V0_4_0: Version = Version(0, 4, 0);
    /// 1.0.0, the first version without `version` on result IPs.
    pub const V1_0_0: Version = Version(1, 0, 0);
    /// 1.1.0, the first version with GC and STATUS and interface MTUs in results.
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `"a.b.c"`.
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// Whether this plugin implements the version.
    pub fn is_supported(self) -> bool {
        SUPPORTED_VERSIONS
            .iter()
            .any(|s| Version::parse(s) == Some(self))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The spec's well-known error codes plus podwire's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 2: unsupported field in the network configuration.
    UnsupportedField,
    /// 3: container unknown or does not exist.
    UnknownContainer,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment,
    /// 5: I/O failure (e.g. reading stdin).
    IoFailure,
    /// 6: failed to decode content.
    DecodingFailure,
    /// 7: invalid network configuration.
    InvalidNetworkConfig,
    /// 11: try again later (a transient condition, e.g. the agent is not reachable).
    TryAgainLater,
    /// 50: STATUS: the plugin cannot service ADD requests.
    PluginNotAvailable,
    /// 51: STATUS: not available, and existing containers may have limited connectivity.
    PluginNotAvailableLimited,
    /// 100: the agent failed to do the work (netlink, devices).
    Internal,
    /// 101: the pod CIDR has no free address.
    IpamExhausted,
    /// 102: CHECK found the interface not as configured.
    CheckFailed,
    /// Any other code received from elsewhere.
    Other(u32),
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        match c {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::PluginNotAvailableLimited => 51,
            ErrorCode::Internal => 100,
            ErrorCode::IpamExhausted => 101,
            ErrorCode::CheckFailed => 102,
            ErrorCode::Other(n) => n,
        }
    }
}

impl From<u32> for ErrorCode {
    fn from(n: u32) -> ErrorCode {
        match n {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironment,
            5 => ErrorCode::IoFailure,
            6 => ErrorCode::DecodingFailure,
            7 => ErrorCode::InvalidNetworkConfig,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::PluginNotAvailable,
            51 => ErrorCode::PluginNotAvailableLimited,
            100 => ErrorCode::Internal,
            101 => ErrorCode::IpamExhausted,
            102 => ErrorCode::CheckFailed,
            n => ErrorCode::Other(n),
        }
    }
}

/// A CNI error: printed as the spec's error JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {}: {msg}{}", u32::from(*.code), .details.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct CniError {
    /// The error code.
    pub code: ErrorCode,
    /// A short message.
    pub msg: String,
    /// A longer explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl CniError {
    /// An error without details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }

    /// The error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(cni_version));
        m.insert("code".into(), json!(u32::from(self.code)));
        m.insert("msg".into(), json!(self.msg));
        if let Some(d) = &self.details {
            m.insert("details".into(), json!(d));
        }
        Value::Object(m)
    }
}

/// DNS settings of a result or a network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A `{containerID, ifname}` pair of the GC valid-attachments list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// The plugin's network configuration (one entry of the conflist's `plugins`, with
/// `name` and `cniVersion` filled in by the runtime).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// The spec version the runtime speaks.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// The plugin type (`podwire`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's socket.
    #[serde(default)]
    pub socket: Option<String>,
    /// DNS settings to report in results.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// The previous result (CHECK, DEL, chained ADD).
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// GC: the attachments that are still valid.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// GC: the legacy (pre-release 1.1.0) name of the same list.
    #[serde(default, rename = "cni.dev/attachments")]
    pub legacy_attachments: Option<Vec<GcAttachment>>,
}

/// The default agent socket.
pub const DEFAULT_SOCKET: &str = "/run/podwire/agent.sock";

impl NetConf {
    /// Parses a network configuration: undecodable JSON is error 6, a decodable
    /// document that is not a valid configuration is error 7 (naming the field), an
    /// unsupported `cniVersion` is error 1.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                "failed to decode the network configuration",
            )
            .with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                ErrorCode::DecodingFailure,
                "the network configuration is not a JSON object",
            ));
        }
        let conf: NetConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "invalid network configuration",
            )
            .with_details(e.to_string())
        })?;
        let version = conf.version()?;
        let _ = version;
        if !valid_network_name(&conf.name) {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("invalid network name {:?}", conf.name),
            ));
        }
        Ok(conf)
    }

    /// The parsed, supported version (error 1 otherwise).
    pub fn version(&self) -> Result<Version, CniError> {
        match Version::parse(&self.cni_version) {
            Some(v) if v.is_supported() => Ok(v),
            _ => Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("incompatible CNI version {:?}", self.cni_version),
            )
            .with_details(format!(
                "podwire-cni supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ))),
        }
    }

    /// The GC valid-attachments list (`cni.dev/valid-attachments`, else the legacy
    /// `cni.dev/attachments`), or `None` if neither was given.
    pub fn gc_attachments(&self) -> Option<&[GcAttachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.legacy_attachments.as_deref())
    }
}

/// Network names: an alphanumeric first character, then alphanumerics, `_`, `.`, `-`.
pub fn valid_network_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The interface name.
    pub name: String,
    /// Its MAC address (`aa:bb:..`).
    pub mac: String,
    /// Its MTU (reported from 1.1.0 on).
    pub mtu: u32,
    /// The netns path, for interfaces inside a sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpNet,
    /// The default gateway for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// The destination.
    pub dst: IpNet,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A version-agnostic CNI result, rendered per version by [`CniResult::to_json`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces created.
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes installed.
    pub routes: Vec<RouteConfig>,
    /// DNS settings.
    pub dns: Dns,
}

impl CniResult {
    /// The result JSON for `version` (before 1.0.0: `version` on IPs; from 1.1.0:
    /// interface MTU; see the module's table).
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                m.insert("mac".into(), json!(i.mac));
                if version >= Version::V1_1_0 {
                    m.insert("mtu".into(), json!(i.mtu));
                }
                if let Some(s) = &i.sandbox {
                    m.insert("sandbox".into(), json!(s));
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if version < Version::V1_0_0 {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    m.insert("version".into(), json!(v));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    m.insert("gateway".into(), json!(g.to_string()));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect();
        json!({
            "cniVersion": version.to_string(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        })
    }

    /// The first IP address of a result JSON of any supported version (for CHECK's
    /// `prevResult`).
    pub fn addresses_of(prev: &Value) -> Vec<IpNet> {
        prev.get("ips")
            .and_then(Value::as_array)
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip.get("address")?.as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(Version::parse("1.1.0"), Some(Version(1, 1, 0)));
        assert_eq!(Version::parse("1.1"), None);
        assert_eq!(Version::parse("1.1.0.1"), None);
        assert_eq!(Version::parse("x.1.0"), None);
        assert!(Version(0, 4, 0) < Version(1, 0, 0));
        for v in [(0, 3, 0), (0, 3, 1), (0, 4, 0), (1, 0, 0), (1, 1, 0)] {
            assert!(Version(v.0, v.1, v.2).is_supported(), "{v:?}");
        }
        assert!(!Version(0, 2, 0).is_supported());
        assert!(!Version(1, 2, 0).is_supported());
        assert!(!Version(2, 0, 0).is_supported());
    }

    #[test]
    fn error_codes_follow_the_spec_table() {
        let codes = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironment, 4),
            (ErrorCode::IoFailure, 5),
            (ErrorCode::DecodingFailure, 6),
            (ErrorCode::InvalidNetworkConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::PluginNotAvailable, 50),
            (ErrorCode::PluginNotAvailableLimited, 51),
        ];
        for (c, n) in codes {
            assert_eq!(u32::from(c), n);
            assert_eq!(ErrorCode::from(n), c);
        }
        assert_eq!(ErrorCode::from(4242), ErrorCode::Other(4242));
    }

    #[test]
    fn malformed_json_is_a_decoding_failure() {
        assert_eq!(
            conf("{not json").unwrap_err().code,
            ErrorCode::DecodingFailure
        );
        assert_eq!(conf("[1,2]").unwrap_err().code, ErrorCode::DecodingFailure);
    }

    #[test]
    fn a_missing_field_is_an_invalid_network_config_naming_it() {
        let e = conf(r#"{"cniVersion":"1.1.0","type":"podwire"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidNetworkConfig);
        assert!(e.details.unwrap().contains("name"));
    }

    #[test]
    fn unsupported_version_is_incompatible() {
        let e = conf(r#"{"cniVersion":"0.2.0","name":"podwire","type":"podwire"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert!(e
            .details
            .unwrap()
            .contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
        let e = conf(r#"{"cniVersion":"banana","name":"podwire","type":"podwire"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
    }

    #[test]
    fn bad_network_names_are_rejected() {
        assert!(valid_network_name("podwire"));
        assert!(valid_network_name("a_b.c-d"));
        assert!(!valid_network_name("-x"));
        assert!(!valid_network_name(""));
        assert!(!valid_network_name("a b"));
        let e = conf(r#"{"cniVersion":"1.1.0","name":"bad name","type":"podwire"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidNetworkConfig);
    }

    #[test]
    fn gc_reads_the_valid_list_and_the_legacy_name() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"podwire","type":"podwire",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.gc_attachments().unwrap()[0].container_id, "a");
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"podwire","type":"podwire",
            "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.gc_attachments().unwrap()[0].container_id, "b");
        let c = conf(r#"{"cniVersion":"1.1.0","name":"podwire","type":"podwire"}"#).unwrap();
        assert!(c.gc_attachments().is_none());
    }

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:f4:01:05".into(),
                mtu: 1450,
                sandbox: Some("/var/run/netns/p".into()),
            }],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn result_renders_per_version() {
        let r = sample();
        let v11 = r.to_json(Version(1, 1, 0));
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1450);
        assert_eq!(v11["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(v11["ips"][0]["gateway"], "10.244.1.1");
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["routes"][0]["dst"], "0.0.0.0/0");
        let v10 = r.to_json(Version(1, 0, 0));
        assert!(v10["interfaces"][0].get("mtu").is_none());
        assert!(v10["ips"][0].get("version").is_none());
        assert_eq!(v10["ips"][0]["interface"], 0);
        for old in [Version(0, 3, 0), Version(0, 3, 1), Version(0, 4, 0)] {
            let j = r.to_json(old);
            assert_eq!(j["cniVersion"], old.to_string());
            assert_eq!(j["ips"][0]["version"], "4", "{old}");
            assert_eq!(j["ips"][0]["interface"], 0, "{old}");
            assert_eq!(j["ips"][0]["gateway"], "10.244.1.1", "{old}");
            assert_eq!(j["interfaces"][0]["sandbox"], "/var/run/netns/p", "{old}");
            assert!(j["interfaces"][0].get("mtu").is_none(), "{old}");
            assert!(j.get("cniVersions").is_none(), "{old}");
            assert_eq!(
                CniResult::addresses_of(&j),
                vec!["10.244.1.5/24".parse::<IpNet>().unwrap()]
            );
        }
    }

    #[test]
    fn error_json_has_code_msg_details() {
        let e = CniError::new(ErrorCode::TryAgainLater, "agent not reachable").with_details("x");
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], 11);
        assert_eq!(j["msg"], "agent not reachable");
        assert_eq!(j["details"], "x");
        assert_eq!(j["cniVersion"], "1.1.0");
    }
}
