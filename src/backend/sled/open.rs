//! Opening a sled directory: classifying what went wrong (busy, corrupt, unreadable), sled's panics
//! caught, and the private copy a read-only directory is opened from.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{backend_error, NAME, SEGMENT_SIZE};
use crate::error::{Error, Result};

/// A private, temporary copy of a read-only store's directory.
#[derive(Debug)]
pub(super) struct ReadOnlyCopy {
    pub(super) dir: PathBuf,
}

impl ReadOnlyCopy {
    /// Copies the directory `path` (sled's files, the WAL, the heads file) to a new directory
    /// under the system's temporary directory.
    pub(super) fn of(path: &Path) -> Result<Self> {
        static COPIES: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ckpt-read-only-{}-{}",
            std::process::id(),
            COPIES.fetch_add(1, Ordering::Relaxed)
        ));
        let copy = ReadOnlyCopy { dir };
        copy_tree(path, &copy.dir).map_err(|e| {
            backend_error(
                format!(
                    "{} cannot be written, and copying it to {} to read it failed",
                    path.display(),
                    copy.dir.display()
                ),
                e,
            )
        })?;
        Ok(copy)
    }
}

impl Drop for ReadOnlyCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies the directory tree `from` to `to` (regular files and directories).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Why an open failed, before it is classified.
pub(super) enum OpenFailure {
    Io(io::Error),
    Sled(sled::Error),
    Panic(String),
}

impl OpenFailure {
    /// Whether the file system refused a write (read-only, or no permission to write).
    pub(super) fn refused_writing(&self) -> bool {
        match self {
            OpenFailure::Io(e) | OpenFailure::Sled(sled::Error::Io(e)) => matches!(
                e.kind(),
                io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied
            ),
            _ => false,
        }
    }
}

/// The error for a failed open of the store in `path`: which of locked, corrupt, permission
/// denied, read-only, no space or unsupported format it is, and what to do.
pub(super) fn open_error(path: &Path, doing: &str, failure: OpenFailure) -> Error {
    let shown = path.display();
    let io_error = |e: io::Error| -> Error {
        let fix = match e.kind() {
            io::ErrorKind::PermissionDenied => format!(
                "permission denied: the user running ckpt cannot write {shown}; fix the \
                 directory's owner or mode"
            ),
            io::ErrorKind::ReadOnlyFilesystem => format!(
                "{shown} is on a read-only file system; copy the directory somewhere writable \
                 to open it"
            ),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => format!(
                "no space left on the device holding {shown}; free some space and open it again"
            ),
            _ if e.to_string().contains("could not acquire lock") && super::is_open_here(path) => {
                return Error::Busy {
                    what: format!(
                        "this process already has the sled store at {shown} open (sled lets a \
                         directory be opened once): share that Store (a clone is a cheap handle \
                         to the same store) or drop it, and its clones, before opening it again"
                    ),
                }
            }
            _ if e.to_string().contains("could not acquire lock") => {
                return Error::Busy {
                    what: format!(
                        "another process has the sled store at {shown} open (sled lets one \
                         process open a directory); stop it, or use a server backend (sqlite://, \
                         postgres://, redis://) to share a store between processes"
                    ),
                }
            }
            _ => format!("{doing} in {shown}"),
        };
        backend_error(fix, e)
    };
    match failure {
        OpenFailure::Io(e) | OpenFailure::Sled(sled::Error::Io(e)) => io_error(e),
        OpenFailure::Sled(sled::Error::Unsupported(what)) => Error::Backend {
            backend: NAME,
            context: format!(
                "{shown} holds a sled database in a format or configuration this ckpt cannot \
                 open; open it with the ckpt that wrote it and `ckpt export` it"
            ),
            source: what.into(),
        },
        OpenFailure::Sled(e) => Error::corrupt(
            format!("the sled database files in {shown}"),
            format!(
                "sled cannot read them ({e}); run `ckpt verify` on a copy of a backup, or \
                 restore the directory from one"
            ),
        ),
        OpenFailure::Panic(message) => Error::corrupt(
            format!("the sled database files in {shown}"),
            format!(
                "sled failed reading them ({message}); they are damaged: restore the directory \
                 from a backup"
            ),
        ),
    }
}

/// Runs `f`, turning a panic inside sled into an error: damaged files make sled 0.34 panic
/// ("tried to serialize Uninitialized"), and no dependency's panic may reach the user.
pub(super) fn catching_panics<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned())
    })
}

/// Opens sled's database in `path`.
pub(super) fn open_sled(path: &Path) -> std::result::Result<sled::Db, OpenFailure> {
    // 64 KiB segments instead of sled's 512 KiB: checkpoint logs are many small writes, and
    // smaller segments cut the directory's size by a third on the conversation workload
    // (2.2 MB -> 1.4 MB) at no measurable cost in throughput.
    let config = sled::Config::new().path(path).segment_size(SEGMENT_SIZE);
    match catching_panics(|| config.open()) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(OpenFailure::Sled(e)),
        Err(panic) => Err(OpenFailure::Panic(panic)),
    }
}
