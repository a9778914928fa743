//! What a daemon owns and must give back: the rules it installed, its control socket, the
//! per-network-namespace rules lock and the pidfile.

use super::*;

/// The kernel rules this daemon installed: removed when dropped before the daemon's own orderly
/// removal at exit took them — that is, when a start fails after installing them.
pub(super) struct RulesGuard(pub(super) Option<RulesConfig>);

impl Drop for RulesGuard {
    fn drop(&mut self) {
        if let Some(cfg) = self.0.take() {
            match firewall::remove(&cfg) {
                Ok(()) => warn!("start failed: removed the rules it had installed"),
                Err(e) => {
                    error!("start failed, and removing the rules it had installed failed: {e}")
                }
            }
        }
    }
}

/// The control socket this daemon bound: removed when the daemon stops (or fails to start).
pub(super) struct SocketGuard(pub(super) Option<PathBuf>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One owner of the kernel rules per network namespace: an exclusive lock on
/// `/run/stringban/rules-net-<namespace inode>.lock`, taken before any rule is touched and held
/// for the daemon's life. A second daemon that would install rules in the same namespace is
/// refused before it changes anything (it would flush and rewrite the first one's chain, and its
/// stop would remove the first one's jumps).
pub(super) struct RulesLock {
    _held: File,
}

impl RulesLock {
    const DIR: &'static str = "/run/stringban";

    pub(super) fn take() -> Result<RulesLock, DaemonError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        let ns = std::fs::metadata("/proc/self/ns/net")
            .map(|m| m.ino())
            .map_err(|e| DaemonError::start_from("/proc/self/ns/net", e))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(Self::DIR)
            .map_err(|e| DaemonError::start_from(Self::DIR, e))?;
        let path = format!("{}/rules-net-{ns}.lock", Self::DIR);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| DaemonError::start_from(&path, e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(DaemonError::start(format!(
                    "another stringban (pid {}) manages the kernel rules in this network namespace; refusing to touch them (run this one without --install-rules, or in another namespace)",
                    holder.trim()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(DaemonError::start_from(&path, e)),
        }
        let _ = f.set_len(0);
        let _ = write!(f, "{}", std::process::id());
        Ok(RulesLock { _held: f })
    }
}

/// A pidfile held locked for the daemon's life.
pub(super) struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    pub(super) fn lock(path: PathBuf) -> Result<PidFile, DaemonError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DaemonError::start_from(path.display(), e))?;
        match file.try_lock() {
            Ok(()) => Ok(PidFile { path, file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                Err(DaemonError::start(format!(
                    "already running (pid {}, pidfile {})",
                    pid.trim(),
                    path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(DaemonError::start_from(path.display(), e)),
        }
    }

    pub(super) fn write_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        writeln!(self.file, "{}", std::process::id())?;
        self.file.flush()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Destroys the offload sets when dropped: at exit, and when a start fails after creating them
/// (declared after the rules lock and before the rules guard, it runs after the rules are gone).
pub(super) struct OffloadGuard(pub(super) Option<crate::sys::offload::Offload>);

impl Drop for OffloadGuard {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            o.destroy();
        }
    }
}
