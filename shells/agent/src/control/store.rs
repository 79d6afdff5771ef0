//! Crash-safe state files: write to a temporary file, fsync it, rename it over the
//! old one, fsync the directory.
//!
//! Design note: after `rename` returns and the directory is synced, a reader (the
//! agent restarted after `kill -9`, or after a power cut) sees either the complete
//! old document or the complete new one, never a mix; that is what makes "persist on
//! every change" mean "lose nothing".

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One state file.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The file `name` in `dir` (created with mode 0700 if missing).
    pub fn new(dir: &Path, name: &str) -> io::Result<StateFile> {
        fs::create_dir_all(dir)?;
        Ok(StateFile {
            path: dir.join(name),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current contents, or `None` if the file does not exist.
    pub fn load(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the contents atomically and durably.
    pub fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_replaces_and_load_reads_back() {
        let dir = std::env::temp_dir().join(format!("podwire-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let f = StateFile::new(&dir, "state.json").unwrap();
        assert_eq!(f.load().unwrap(), None);
        f.save(b"one").unwrap();
        f.save(b"two").unwrap();
        assert_eq!(f.load().unwrap().as_deref(), Some(&b"two"[..]));
        assert!(!f.path().with_extension("tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
