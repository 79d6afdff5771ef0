//! Running code inside another network namespace.
//!
//! Design note: `setns(CLONE_NEWNET)` changes the namespace of the *calling thread*
//! only. Doing it on a tokio worker would silently move every later task on that
//! worker, so each excursion runs on a fresh short-lived std thread that enters the
//! namespace, does its work (opens a netlink socket, attaches a TAP queue) and exits.
//! Sockets and TAP queues stay bound to the namespace they were created in, so the
//! results are usable from any thread afterwards.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, unshare, CloneFlags};

/// A command for `program` that enters the network namespace at `path` between fork
/// and exec, as a container runtime starts a process in a pod's namespace.
pub fn command_in(path: impl Into<PathBuf>, program: &str) -> Command {
    let path = path.into();
    let mut c = Command::new(program);
    // SAFETY: only async-signal-safe calls (open, setns) run between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let f = File::open(&path)?;
            setns(&f, CloneFlags::CLONE_NEWNET)?;
            Ok(())
        });
    }
    c
}

/// Whether the process runs as root (tests that need root skip otherwise).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `f` on a new thread inside the netns at `path` (a `/var/run/netns/x` bind
/// mount or a `/proc/<pid>/ns/net` path).
pub fn run_in<T, F>(path: &Path, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let ns = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("opening network namespace {}: {e}", path.display()),
        )
    })?;
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Runs `f` on a new thread inside a fresh, private netns that disappears with the
/// thread (for unit tests that need real devices without touching any shared netns).
pub fn run_in_new_netns<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Whether two netns paths refer to the same namespace.
pub fn same_netns(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_netns_is_not_ours() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let theirs = run_in_new_netns(|| std::fs::read_link("/proc/thread-self/ns/net")).unwrap();
        assert_ne!(ours, theirs);
        // Our own thread did not move.
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            ours
        );
    }

    #[test]
    fn a_missing_netns_path_is_an_error() {
        let e = run_in(Path::new("/nonexistent/netns"), || Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
