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

/// One owner of the kernel rules per network namespace: an exclusive `flock` on the namespace
/// itself (`/proc/self/ns/net`: every process of the namespace opens the same inode), taken
/// before any rule is touched and held for the daemon's life. A second daemon that would install
/// rules in the same namespace is refused before it changes anything (it would flush and
/// rewrite the first one's chain, and its stop would remove the first one's jumps). There is no
/// file to lose: no package purge, no runtime-directory cleanup, no `rm` can take the lock from
/// a running daemon; it goes with the daemon's last descriptor (at exit, or kill -9).
pub(super) struct RulesLock {
    _held: File,
}

impl RulesLock {
    const NS: &'static str = "/proc/self/ns/net";

    pub(super) fn take() -> Result<RulesLock, DaemonError> {
        use std::os::unix::fs::MetadataExt;
        let f = File::open(Self::NS).map_err(|e| DaemonError::start_from(Self::NS, e))?;
        let ino = f
            .metadata()
            .map(|m| m.ino())
            .map_err(|e| DaemonError::start_from(Self::NS, e))?;
        match f.try_lock() {
            Ok(()) => Ok(RulesLock { _held: f }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = lock_holder(ino).map_or("?".to_string(), |p| p.to_string());
                Err(DaemonError::start(format!(
                    "another stringban (pid {holder}) manages the kernel rules in this network namespace; refusing to touch them (run this one without --install-rules, or in another namespace)"
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(DaemonError::start_from(Self::NS, e)),
        }
    }
}

/// The pid holding a `flock` on inode `ino` (from `/proc/locks`), if any.
fn lock_holder(ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(":{ino}");
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:04:4026531840 0 EOF"
        (f.get(1) == Some(&"FLOCK") && f.get(5).is_some_and(|d| d.ends_with(&want)))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// A pidfile held locked for the daemon's life.
pub(super) struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    /// Opens (creating it 0600) and locks the pidfile; never through a symbolic link (a link
    /// there, planted to make the daemon truncate another file, is refused: `ELOOP`), never
    /// anything but a regular file.
    pub(super) fn lock(path: PathBuf) -> Result<PidFile, DaemonError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    DaemonError::start(format!(
                        "{}: a symbolic link is there; refusing to follow it",
                        path.display()
                    ))
                } else {
                    DaemonError::start_from(path.display(), e)
                }
            })?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(DaemonError::start(format!(
                "{}: not a regular file; refusing to use it as the pidfile",
                path.display()
            )));
        }
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
