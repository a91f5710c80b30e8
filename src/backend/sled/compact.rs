//! Compaction: [`Maintain`] for the sled backend (on-disk size, online compaction refused) and
//! [`compact`], the offline rewrite of a closed database directory into a fresh one.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::recover::HEADS_FILE;
use super::{backend_error, SledBackend, NAME, SEGMENT_SIZE};
use crate::backend::{CompactReport, Maintain};
use crate::error::{Error, Result};

/// The total size of the files under `dir`, recursively (symbolic links are not followed; entries
/// that vanish while walking, as sled rewrites its files, are skipped).
fn dir_size(dir: &Path) -> io::Result<u64> {
    let mut total: u64 = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.path().symlink_metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

#[async_trait]
impl Maintain for SledBackend {
    /// Not a server that keeps everything in memory.
    async fn server_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The total size of the files in the database directory.
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        let size = dir_size(&self.path).map_err(|e| {
            backend_error(
                format!("measuring the database directory {}", self.path.display()),
                e,
            )
        })?;
        Ok(Some(size))
    }

    /// sled compacts offline only (see [`compact`]): this store has the directory open, and
    /// sled lets one process open it.
    async fn compact(&self) -> Result<CompactReport> {
        Err(Error::InvalidInput(format!(
            "sled stores are compacted offline: close every store on {} (sled lets one process \
             open it), then run `ckpt --store {} compact`",
            self.path.display(),
            self.path.display()
        )))
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Rewrites the sled database in `path` into a fresh directory that holds only its live keys,
/// and swaps it in. sled is log-structured: deleted values (cleared checkpoints, collected blobs)
/// stay in its files until their segments are reused; after `Store::gc` and `compact`, nothing
/// of them is left in the store's files. The database must not be open (sled allows one process
/// per directory, and this opens it). A crash part way is finished (or undone) at the next open.
pub fn compact(path: &Path) -> Result<CompactReport> {
    let fail = |what: String, e: io::Error| backend_error(what, e);
    let bytes_before =
        dir_size(path).map_err(|e| fail(format!("measuring {}", path.display()), e))?;
    let fresh_path = sibling(path, ".compacting");
    let old_path = sibling(path, ".old");
    if fresh_path.exists() {
        std::fs::remove_dir_all(&fresh_path)
            .map_err(|e| fail(format!("removing {}", fresh_path.display()), e))?;
    }
    {
        // Through the backend, so that a WAL left by a crash is replayed first.
        let source = SledBackend::open(path, true)?;
        source
            .db
            .flush()
            .map_err(|e| backend_error("flushing before compaction", e))?;
        let fresh = sled::Config::new()
            .path(&fresh_path)
            .segment_size(SEGMENT_SIZE)
            .open()
            .map_err(|e| backend_error(format!("creating {}", fresh_path.display()), e))?;
        for entry in source.db.iter() {
            let (key, value) = entry.map_err(|e| backend_error("reading for compaction", e))?;
            fresh
                .insert(key, value)
                .map_err(|e| backend_error("writing the compacted copy", e))?;
        }
        fresh
            .flush()
            .map_err(|e| backend_error("flushing the compacted copy", e))?;
        // The witness of every log's head goes with the data (the WAL is empty after the open).
        let heads = path.join(HEADS_FILE);
        if heads.exists() {
            std::fs::copy(&heads, fresh_path.join(HEADS_FILE))
                .and_then(|_| std::fs::File::open(fresh_path.join(HEADS_FILE))?.sync_all())
                .map_err(|e| fail(format!("copying {}", heads.display()), e))?;
        }
    }
    // The copy is complete and durable: from here on, an open finishes the swap.
    std::fs::rename(path, &old_path)
        .map_err(|e| fail(format!("moving {} aside", path.display()), e))?;
    std::fs::rename(&fresh_path, path).map_err(|e| {
        fail(
            format!("moving the compacted copy to {}", path.display()),
            e,
        )
    })?;
    remove_dir_eventually(&old_path)?;
    let bytes_after =
        dir_size(path).map_err(|e| fail(format!("measuring {}", path.display()), e))?;
    let mut report = CompactReport::new(NAME);
    report.step(format!(
        "rewrote {} with only its live keys and removed the old files",
        path.display()
    ));
    report.bytes_before = Some(bytes_before);
    report.bytes_after = Some(bytes_after);
    Ok(report)
}

/// Completes a [`compact`] a crash interrupted: a complete copy whose swap did not finish is
/// moved in, a partial copy is removed, and the old directory goes.
pub(super) fn finish_compaction(path: &Path) -> Result<()> {
    let fresh_path = sibling(path, ".compacting");
    let old_path = sibling(path, ".old");
    let moved = |what: &Path, e: io::Error| {
        backend_error(format!("finishing a compaction of {}", what.display()), e)
    };
    if !path.exists() && old_path.exists() && fresh_path.exists() {
        std::fs::rename(&fresh_path, path).map_err(|e| moved(path, e))?;
    }
    if path.exists() {
        if fresh_path.exists() {
            std::fs::remove_dir_all(&fresh_path).map_err(|e| moved(path, e))?;
        }
        if old_path.exists() {
            remove_dir_eventually(&old_path)?;
        }
    }
    Ok(())
}

/// Removes a directory sled may still be closing (its flusher can hold a file a moment longer).
fn remove_dir_eventually(dir: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..50 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    match last {
        Some(e) => Err(backend_error(format!("removing {}", dir.display()), e)),
        None => Ok(()),
    }
}
