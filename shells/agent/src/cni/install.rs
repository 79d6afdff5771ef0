//! `podwire install-cni`: what a DaemonSet init container does on each node.
//!
//! Design note: both files are written next to their destination and renamed into
//! place, so a runtime scanning the configuration directory never reads a half-written
//! conflist and never executes a half-copied plugin.
//!
//! Version negotiation: the conflist's top-level `cniVersion` is [`CONFLIST_VERSION`]
//! (1.0.0), the newest version libcni before 1.2 knows — containerd 1.6/1.7, podman 4
//! and CRI-O of that age read only that field and refuse a list whose version they do
//! not know. libcni 1.2 and later read `cniVersions` instead and use the newest entry
//! they support, so they speak 1.1.0 (GC, STATUS, interface MTUs) with the plugin.
//! [`plugin_config`] does what such a runtime does.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cni::spec::Version;

/// The conflist's network name.
pub const NETWORK_NAME: &str = "podwire";
/// The plugin's executable name (the conflist's `type`).
pub const PLUGIN_TYPE: &str = "podwire-cni";
/// The conflist file name (sorted early so runtimes pick it as the default network).
pub const CONFLIST_NAME: &str = "10-podwire.conflist";

/// The conflist's top-level `cniVersion`: what runtimes on libcni before 1.2 use.
pub const CONFLIST_VERSION: &str = "1.0.0";

/// The conflist's `cniVersions`: libcni 1.2 and later use the newest they support.
pub const CONFLIST_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The conflist for an agent listening on `socket`.
pub fn conflist(socket: &Path) -> Value {
    json!({
        "cniVersion": CONFLIST_VERSION,
        "cniVersions": CONFLIST_VERSIONS,
        "name": NETWORK_NAME,
        "plugins": [
            {"type": PLUGIN_TYPE, "socket": socket.display().to_string()}
        ]
    })
}

/// The version a runtime on libcni 1.2 or later uses for `conflist`: the newest
/// entry of `cniVersions` that this plugin supports, else the top-level
/// `cniVersion`.
pub fn negotiated_version(conflist: &Value) -> Option<String> {
    let newest = conflist
        .get("cniVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| Version::parse(v.as_str()?))
        .filter(|v| v.is_supported())
        .max();
    match newest {
        Some(v) => Some(v.to_string()),
        None => Some(conflist.get("cniVersion")?.as_str()?.to_string()),
    }
}

/// The network configuration a runtime on libcni 1.2 or later passes to the plugin
/// for `conflist`: the first plugin entry with the list's `name` and the negotiated
/// `cniVersion` filled in.
pub fn plugin_config(conflist: &Value) -> Option<Value> {
    let mut p = conflist.get("plugins")?.get(0)?.clone();
    let obj = p.as_object_mut()?;
    obj.insert("name".into(), conflist.get("name")?.clone());
    obj.insert("cniVersion".into(), json!(negotiated_version(conflist)?));
    Some(p)
}

/// What was installed.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The conflist path.
    pub conflist: PathBuf,
    /// The plugin path.
    pub plugin: PathBuf,
}

/// Writes the conflist into `conf_dir` and copies `plugin_binary` into `bin_dir`.
pub fn install(
    conf_dir: &Path,
    bin_dir: &Path,
    socket: &Path,
    plugin_binary: &Path,
) -> Result<Installed> {
    fs::create_dir_all(conf_dir).with_context(|| format!("creating {}", conf_dir.display()))?;
    fs::create_dir_all(bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    let conf_path = conf_dir.join(CONFLIST_NAME);
    let body = serde_json::to_vec_pretty(&conflist(socket))?;
    write_atomic(&conf_path, &body, 0o644)?;
    let plugin_path = bin_dir.join(PLUGIN_TYPE);
    let bytes = fs::read(plugin_binary)
        .with_context(|| format!("reading plugin binary {}", plugin_binary.display()))?;
    write_atomic(&plugin_path, &bytes, 0o755)?;
    Ok(Installed {
        conflist: conf_path,
        plugin: plugin_path,
    })
}

/// The `podwire-cni` binary next to the running executable.
pub fn default_plugin_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    Ok(dir.join(PLUGIN_TYPE))
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("podwire-tmp");
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::spec::NetConf;

    #[test]
    fn installs_conflist_and_plugin() {
        let dir = std::env::temp_dir().join(format!("podwire-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let src = dir.join("src-plugin");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&src, b"#!/bin/true\n").unwrap();
        let out = install(
            &dir.join("net.d"),
            &dir.join("bin"),
            Path::new("/run/x.sock"),
            &src,
        )
        .unwrap();
        let list: Value = serde_json::from_slice(&fs::read(&out.conflist).unwrap()).unwrap();
        assert_eq!(list["name"], "podwire");
        assert_eq!(list["cniVersion"], "1.0.0", "what libcni before 1.2 reads");
        assert_eq!(list["cniVersions"], json!(["1.0.0", "1.1.0"]));
        let conf = plugin_config(&list).unwrap();
        assert_eq!(conf["cniVersion"], "1.1.0", "what libcni 1.2+ negotiates");
        let parsed = NetConf::parse(conf.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.socket.as_deref(), Some("/run/x.sock"));
        assert_eq!(parsed.plugin_type, PLUGIN_TYPE);
        let mode = fs::metadata(&out.plugin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(fs::read(&out.plugin).unwrap(), b"#!/bin/true\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn negotiation_takes_the_newest_supported_entry_else_the_top_level() {
        let v = |j: Value| negotiated_version(&j);
        assert_eq!(v(conflist(Path::new("/s"))).as_deref(), Some("1.1.0"));
        assert_eq!(
            v(json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "9.0.0"]})).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(v(json!({"cniVersion": "0.4.0"})).as_deref(), Some("0.4.0"));
        assert_eq!(v(json!({})), None);
    }
}
