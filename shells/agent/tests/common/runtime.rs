//! Real container runtimes for end-to-end tests: podman on its CNI backend and
//! containerd through `ctr run --cni`, each confined to one node namespace.
//!
//! Design note: a runtime runs in the root *mount* namespace — podman bind-mounts each
//! container's netns under /run/netns, and the node's agent (in a mount namespace of
//! its own, made by `ip netns exec`) must see that mount — but in the node's *network*
//! namespace (`nsenter --net`), so every CNI plugin it executes (podwire-cni, tuning,
//! portmap's iptables rules) acts inside the node and nothing lands in the root
//! network namespace. Each runtime keeps its state under the test's temporary
//! directory: podman its own `containers.conf` (`network_backend = "cni"`, runc,
//! cgroupfs), storage, run root and network configuration directory; containerd its
//! own root, state and socket, with the CRI plugin disabled. `ctr run --cni` reads
//! go-cni's fixed /etc/cni/net.d and /opt/cni/bin, so every `ctr` runs in a private
//! mount namespace where those two paths are bind mounts of the test's directories
//! (/etc/cni/net.d exists wherever Debian's podman package is installed; /opt gets a
//! private tmpfs, so /opt/cni/bin need not exist on the machine).
//! The one file a runtime writes elsewhere is libcni's result cache
//! (`/var/lib/cni/results/<network>-<container id>-<ifname>`), which DEL removes; the
//! guards remove what a failed test leaves there. Container names carry the test's
//! random suffix, so two runs never share a cache entry.
//!
//! Images: no registry is reachable, so the image is a root filesystem built from
//! Debian's busybox-static; podman imports it as a tarball (`podman import`), ctr runs
//! a copy of it per container (`ctr run --rootfs`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{in_netns, netns_path, sh};

/// The image podman imports the busybox root filesystem as.
pub const IMAGE: &str = "localhost/podwire-busybox:test";

/// The port of the whoami server in a container.
pub const WHOAMI_PORT: u16 = 80;

/// The interface name runtimes ask for.
const IFNAME: &str = "eth0";

/// The sysctl the chained tuning plugin sets in every pod (default 0).
pub const TUNED_SYSCTL: (&str, &str) = ("net.ipv4.conf.eth0.accept_local", "1");

/// Builds a busybox root filesystem in `dir`: /bin/busybox (Debian's static build)
/// with a symlink per applet, root in /etc/passwd, and a CGI script
/// /www/cgi-bin/whoami that answers `<$POD> <client address>`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "www/cgi-bin",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static)");
    let applets = sh(&["/bin/busybox", "--list"]);
    for applet in applets.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let cgi = root.join("www/cgi-bin/whoami");
    std::fs::write(
        &cgi,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s %s\\n' \"$POD\" \"$REMOTE_ADDR\"\n",
    )
    .unwrap();
    sh(&["chmod", "755", cgi.to_str().unwrap()]);
    root
}

/// A container command that serves /cgi-bin/whoami on [`WHOAMI_PORT`] as `name`.
pub fn whoami_server(name: &str) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("export POD={name}; exec httpd -f -p 0.0.0.0:{WHOAMI_PORT} -h /www"),
    ]
}

/// A container command that asks the whoami server at `ip:port` (busybox nc).
pub fn whoami_client(ip: Ipv4Addr, port: u16) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("printf 'GET /cgi-bin/whoami HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}"),
    ]
}

/// The (server name, client address it saw) of a whoami HTTP response.
pub fn parse_whoami(response: &str) -> Option<(String, String)> {
    let body = response.split("\r\n\r\n").nth(1)?;
    let (name, peer) = body.trim().split_once(' ')?;
    let peer = peer.trim_start_matches("[::ffff:").trim_end_matches(']');
    Some((name.to_string(), peer.to_string()))
}

/// Asks the whoami server at `to` from a socket in `netns` (a node).
pub fn whoami_from(netns: &str, to: SocketAddr) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let response = in_netns(netns, move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /cgi-bin/whoami HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .unwrap()?;
    parse_whoami(&response)
        .ok_or_else(|| std::io::Error::other(format!("not a whoami response: {response:?}")))
}

/// The command that shows eth0's IPv4 address inside a container (busybox `ip`).
fn eth0_addr_command() -> Vec<String> {
    ["ip", "-4", "-o", "addr", "show", "dev", IFNAME]
        .map(String::from)
        .to_vec()
}

/// The address in the output of [`eth0_addr_command`].
fn eth0_ipv4(ip_output: &str) -> Option<Ipv4Addr> {
    let word = ip_output
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    word.split('/').next()?.parse().ok()
}

/// `conflist` with the reference tuning (setting [`TUNED_SYSCTL`]), portmap and
/// bandwidth plugins chained after podwire.
pub fn chained(conflist: &Value) -> Value {
    let mut list = conflist.clone();
    let plugins = list["plugins"].as_array_mut().expect("plugins");
    plugins.push(json!({"type": "tuning", "sysctl": {TUNED_SYSCTL.0: TUNED_SYSCTL.1}}));
    plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    list
}

/// Where a lab node keeps its installed conflist and plugin binary.
pub struct NodeCni {
    /// The node's network namespace.
    pub netns: String,
    /// The conflist `podwire install-cni` wrote.
    pub conflist: Value,
    /// The directory holding `podwire-cni`.
    pub bin_dir: PathBuf,
}

impl NodeCni {
    /// The CNI installation of a lab node whose agent listens on `socket`.
    pub fn of_lab_node(netns: &str, socket: &Path) -> NodeCni {
        let dir = socket.parent().expect("node dir");
        let conflist = serde_json::from_slice(
            &std::fs::read(dir.join("net.d").join("10-podwire.conflist")).unwrap(),
        )
        .unwrap();
        NodeCni {
            netns: netns.into(),
            conflist,
            bin_dir: dir.join("bin"),
        }
    }

    fn network(&self) -> String {
        self.conflist["name"].as_str().expect("name").to_string()
    }
}

/// Removes libcni's cached result of `container_id` on `network`, if DEL did not.
fn remove_cached_result(network: &str, container_id: &str) {
    let _ = std::fs::remove_file(format!(
        "/var/lib/cni/results/{network}-{container_id}-{IFNAME}"
    ));
}

/// Runs `cmd`; stdout, or stdout+stderr as the error.
fn output(mut cmd: Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// podman 4 on its CNI backend, running in a node's network namespace with private
/// storage and configuration; removes its containers on drop.
pub struct Podman {
    node: NodeCni,
    dir: PathBuf,
    ids: Mutex<Vec<String>>,
}

impl Podman {
    /// Configures podman under `dir` for `node` with `conflist` as its only network
    /// and imports the busybox `rootfs` as [`IMAGE`].
    pub fn new(node: NodeCni, conflist: &Value, dir: &Path, rootfs: &Path) -> Podman {
        let dir = dir.to_path_buf();
        let net_dir = dir.join("networks");
        std::fs::create_dir_all(&net_dir).unwrap();
        std::fs::write(
            net_dir.join("10-podwire.conflist"),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .unwrap();
        // runc and cgroupfs as the README says; ulimits within this process's hard
        // limits (podman's defaults for root exceed a lowered hard RLIMIT_NOFILE).
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{:?}, \"/usr/lib/cni\"]\n\
             network_config_dir = {:?}\ndefault_network = {:?}\n",
            node.bin_dir.display().to_string(),
            net_dir.display().to_string(),
            node.network(),
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        let podman = Podman {
            node,
            dir,
            ids: Mutex::new(Vec::new()),
        };
        let mut import = podman.command(&["import", "-", IMAGE]);
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = import
            .stdin(tar.stdout.take().unwrap())
            .output()
            .expect("podman import");
        assert!(tar.wait().unwrap().success(), "tar of {}", rootfs.display());
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        podman
    }

    /// A podman command in the node's network namespace with this instance's
    /// configuration and storage.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = &self.dir;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", netns_path(&self.node.netns)))
            .arg("podman")
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .arg("--network-config-dir")
            .arg(d.join("networks"))
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"));
        c
    }

    /// Runs podman; stdout or the error with podman's output.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        output(self.command(args))
    }

    /// Runs podman, panicking on failure.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `podman run -d --name <name> <options> IMAGE <cmd>` on the podwire network;
    /// returns the container id.
    pub fn start_container(&self, name: &str, options: &[&str], cmd: &[String]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", "podwire"];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend(cmd.iter().map(String::as_str));
        let id = self.run(&args).trim().to_string();
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    /// Runs `cmd` inside container `name`.
    pub fn exec(&self, name: &str, cmd: &[String]) -> Result<String, String> {
        let mut args = vec!["exec", name];
        args.extend(cmd.iter().map(String::as_str));
        self.try_run(&args)
    }

    /// The IPv4 address on eth0 inside `name`, as `ip` in the container shows it.
    pub fn eth0_ip(&self, name: &str) -> Ipv4Addr {
        let out = self
            .exec(name, &eth0_addr_command())
            .unwrap_or_else(|e| panic!("{e}"));
        eth0_ipv4(&out).unwrap_or_else(|| panic!("no IPv4 address on eth0 in {name}: {out}"))
    }

    /// The address podman recorded for `name` on the podwire network (from the
    /// result the CNI chain returned).
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        self.inspect(name, "{{.NetworkSettings.Networks.podwire.IPAddress}}")
            .parse()
            .unwrap_or_else(|e| panic!("IP of {name}: {e}"))
    }

    /// `podman inspect --format <format> <name>`.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.run(&["inspect", "--format", format, name])
            .trim()
            .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.try_run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.try_run(&["rmi", "--all", "--force"]);
        for id in self.ids.lock().unwrap().iter() {
            remove_cached_result(&self.node.network(), id);
        }
    }
}

static EXEC_IDS: AtomicU32 = AtomicU32::new(0);

/// containerd 1.6 with its own root, state and socket, running in a node's network
/// namespace; `ctr run --cni` invokes the CNI chain. Kills its tasks and stops on
/// drop.
pub struct Containerd {
    node: NodeCni,
    dir: PathBuf,
    daemon: Option<Child>,
    /// `ctr run` processes of foreground containers, by container id.
    foreground: Vec<(String, Child)>,
    ids: Vec<String>,
}

/// The ctr namespace the tests use (libcni container ids are `<namespace>-<id>`).
pub const CTR_NAMESPACE: &str = "podwire";

impl Containerd {
    /// Writes containerd's configuration and go-cni's directories under `dir` (the
    /// conflist, and a plugin directory with podwire-cni and the reference plugins)
    /// and starts the daemon.
    pub fn start(node: NodeCni, conflist: &Value, dir: &Path) -> Containerd {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("net.d")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(
            dir.join("net.d/10-podwire.conflist"),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            node.bin_dir.join("podwire-cni"),
            dir.join("bin/podwire-cni"),
        )
        .unwrap();
        for p in ["tuning", "portmap", "bandwidth", "loopback"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), dir.join("bin").join(p))
                .unwrap();
        }
        let d = dir.display();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
            ),
        )
        .unwrap();
        let mut c = Containerd {
            node,
            dir,
            daemon: None,
            foreground: Vec::new(),
            ids: Vec::new(),
        };
        assert!(c.start_daemon(), "containerd did not start: {}", c.log());
        c
    }

    /// Starts the daemon; whether it answers within 20 s.
    fn start_daemon(&mut self) -> bool {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        // nsenter execs containerd: the child is the daemon.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(&self.node.netns)))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_ctr(&["version"]).is_err() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Stops the daemon (SIGTERM, as a service manager does) and starts it again;
    /// the shims and their containers keep running.
    pub fn restart(&mut self) {
        self.stop_daemon();
        assert!(self.start_daemon(), "containerd restart: {}", self.log());
    }

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A ctr command in the node's network namespace and a private mount namespace
    /// where /etc/cni/net.d and /opt/cni/bin are this instance's directories.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let d = &self.dir;
        let script = format!(
            "mount --bind '{net}' /etc/cni/net.d && mount -t tmpfs tmpfs /opt && \
             mkdir -p /opt/cni/bin && mount --bind '{bin}' /opt/cni/bin && \
             exec ctr --address '{sock}' --namespace {CTR_NAMESPACE} \"$@\"",
            net = d.join("net.d").display(),
            bin = d.join("bin").display(),
            sock = d.join("containerd.sock").display(),
        );
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", netns_path(&self.node.netns)))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["/bin/sh", "-c", &script, "ctr"])
            .args(args);
        c
    }

    /// Runs ctr; stdout or the error with ctr's output.
    pub fn try_ctr(&self, args: &[&str]) -> Result<String, String> {
        output(self.ctr(args))
    }

    fn rootfs_copy(&self, id: &str, rootfs: &Path) -> PathBuf {
        let copy = self.dir.join(format!("rootfs-{id}"));
        sh(&["cp", "-a", rootfs.to_str().unwrap(), copy.to_str().unwrap()]);
        copy
    }

    fn run_args(&self, id: &str, rootfs: &Path, detach: bool, cmd: &[String]) -> Command {
        let copy = self.rootfs_copy(id, rootfs);
        let mut args = vec!["run", "--cni", "--rootfs", "--env", "PATH=/bin"];
        args.push(if detach { "--detach" } else { "--rm" });
        args.push(copy.to_str().unwrap());
        args.push(id);
        args.extend(cmd.iter().map(String::as_str));
        self.ctr(&args)
    }

    /// `ctr run --cni --rm` in the foreground (as a user would in a terminal; ctr
    /// calls CNI DEL when the task exits); returns once the container has its pod
    /// address.
    pub fn run_foreground(&mut self, id: &str, rootfs: &Path, cmd: &[String]) -> Ipv4Addr {
        let log = std::fs::File::create(self.dir.join(format!("ctr-run-{id}.log"))).unwrap();
        let child = self
            .run_args(id, rootfs, false, cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ctr run");
        self.foreground.push((id.to_string(), child));
        self.ids.push(id.to_string());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(ip) = self.try_ip(id) {
                return ip;
            }
            let exited = self
                .foreground
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "ctr run {id} ({exited:?}) gave no address: {}",
                self.run_log(id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr run --cni --detach`: ctr sets the network up, starts the task and exits.
    pub fn run_detached(&mut self, id: &str, rootfs: &Path, cmd: &[String]) -> Ipv4Addr {
        self.ids.push(id.to_string());
        output(self.run_args(id, rootfs, true, cmd)).unwrap_or_else(|e| panic!("{e}"));
        self.try_ip(id)
            .unwrap_or_else(|| panic!("{id} has no address after ctr run"))
    }

    /// The output of the `ctr run` of foreground container `id`.
    pub fn run_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("ctr-run-{id}.log"))).unwrap_or_default()
    }

    /// Runs `cmd` in the task of `id` (`ctr task exec`).
    pub fn exec(&self, id: &str, cmd: &[String]) -> Result<String, String> {
        let exec_id = format!("e{}", EXEC_IDS.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, id];
        args.extend(cmd.iter().map(String::as_str));
        self.try_ctr(&args)
    }

    /// The IPv4 address on eth0 inside `id`, as `ip` in the container shows it.
    pub fn try_ip(&self, id: &str) -> Option<Ipv4Addr> {
        eth0_ipv4(&self.exec(id, &eth0_addr_command()).ok()?)
    }

    /// SIGKILLs the task of `id`.
    pub fn kill(&self, id: &str) {
        self.try_ctr(&["task", "kill", "--signal", "SIGKILL", id])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits for the `ctr run` of foreground container `id` to exit; whether it
    /// exited.
    pub fn wait_foreground(&mut self, id: &str) -> bool {
        let Some(i) = self.foreground.iter().position(|(f, _)| f == id) else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.foreground[i].1.try_wait().unwrap().is_some() {
                self.foreground.remove(i);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The id libcni and podwire know container `id` by.
    pub fn cni_container_id(id: &str) -> String {
        format!("{CTR_NAMESPACE}-{id}")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.daemon.is_none() {
            // Best effort: the tasks can only be killed through a daemon.
            let _ = self.start_daemon();
        }
        for id in self.ids.clone() {
            let _ = self.try_ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
        }
        for (_, mut child) in std::mem::take(&mut self.foreground) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for id in self.ids.clone() {
            let _ = self.try_ctr(&["task", "delete", "--force", &id]);
            let _ = self.try_ctr(&["container", "delete", &id]);
            remove_cached_result(&self.node.network(), &Containerd::cni_container_id(&id));
        }
        self.stop_daemon();
    }
}
