//! Moving executions between stores: [`Store::export`] bundles them exactly as stored, and
//! [`Store::import`] writes a bundle into another store (any backend) with the same execution
//! ids, versions, timestamps, parents and metadata, after verifying every piece.

use std::collections::HashSet;

use super::{reclaim, Store};
use crate::backend::LogAppend;
use crate::bundle::{Bundle, BundleLog};
use crate::checkpoint::validate_execution_id;
use crate::codec::frame::{self, Body};
use crate::codec::{blob, tree};
use crate::error::{Error, Result};

/// Frames appended per backend call on import.
const IMPORT_PAGE: usize = 256;
/// How often an import page is retried after a gc elsewhere fenced it off.
const MAX_FENCE_RETRIES: u32 = 32;

/// What [`Store::import`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Executions imported.
    pub executions: usize,
    /// Log frames written.
    pub frames: u64,
    /// Blobs written (those the store already had are skipped).
    pub blobs: u64,
}

impl Store {
    /// Bundles executions exactly as stored: every frame of their logs and every blob those
    /// frames reference (with the chunks of chunked leaves). An execution with no log here is
    /// [`Error::NotFound`].
    pub async fn export(&self, executions: &[String]) -> Result<Bundle> {
        self.refuse_if_encrypted("export from").await?;
        let backend = self.backend();
        let mut bundle = Bundle::default();
        let mut refs = HashSet::new();
        for exec in executions {
            validate_execution_id(exec)?;
            let next_seq = backend.next_seq(exec).await?;
            if next_seq == 1 {
                return Err(Error::not_found(format!("execution {exec}")));
            }
            let frames = self.scan_range(exec, 1, next_seq).await?;
            for (seq, bytes) in &frames {
                let decoded = frame::decode(exec, *seq, bytes)?;
                if let frame::Event::Save(header) = &decoded.event {
                    match frame::decode_body(exec, *seq, header, &decoded.body)? {
                        Body::Snapshot(v) => tree::collect_refs(&v, &mut refs),
                        Body::Delta { ops, .. } => tree::collect_op_refs(&ops, &mut refs),
                    }
                }
            }
            bundle.logs.push(BundleLog {
                name: exec.clone(),
                first_seq: frames.first().map_or(next_seq, |(s, _)| *s),
                next_seq,
                frames,
            });
        }
        let mut hashes: Vec<_> = self.with_chunks(refs).await?.into_iter().collect();
        hashes.sort_unstable();
        for hash in hashes {
            let stored = backend.get_blob(&hash).await?.ok_or_else(|| {
                Error::corrupt(
                    format!("blob {}", blob::hex(&hash)),
                    "missing, but referenced by an exported execution",
                )
            })?;
            bundle.blobs.push((hash, stored));
        }
        Ok(bundle)
    }

    /// Bundles every execution that has a log in this store (see [`Store::export`]).
    pub async fn export_all(&self) -> Result<Bundle> {
        let mut logs = self.execution_logs().await?;
        logs.sort();
        self.export(&logs).await
    }

    /// Writes a bundle's executions into this store, keeping their ids, versions, timestamps,
    /// parents and metadata. Every frame checksum and blob hash is verified before anything is
    /// written; an execution that already has frames here is refused
    /// ([`Error::InvalidInput`]), so nothing stored is overwritten.
    pub async fn import(&self, bundle: &Bundle) -> Result<ImportReport> {
        self.refuse_if_encrypted("import into").await?;
        verify_bundle(bundle)?;
        let backend = self.backend();
        for log in &bundle.logs {
            let here = backend.next_seq(&log.name).await?;
            let has_frames = !backend.scan(&log.name, 1, 1).await?.is_empty();
            if has_frames || here > log.first_seq {
                return Err(Error::InvalidInput(format!(
                    "execution {:?} already exists in the target store (its log is at {here}); \
                     clear it there (and run gc) or import into another store",
                    log.name
                )));
            }
        }
        let _shared = self.inner.gc_lock.read().await;
        let mut report = ImportReport::default();
        // Blobs before the frames that reference them, after reading the gc fence (`reclaim`).
        let mut fence = self.gc_fence().await?;
        report.blobs = self.put_missing_blobs(bundle).await?;
        for log in &bundle.logs {
            backend.raise_next_seq(&log.name, log.first_seq).await?;
            let mut expected = log.first_seq;
            let mut pages = log.frames.chunks(IMPORT_PAGE);
            let mut page = pages.next();
            let mut attempt = 0;
            while let Some(frames) = page {
                let n = frames.len() as u64;
                let mut appends = vec![LogAppend {
                    log: log.name.clone(),
                    expected_seq: expected,
                    frames: frames.iter().map(|(_, f)| f.clone()).collect(),
                }];
                appends.extend(fence.clone());
                match backend.append(appends).await {
                    Ok(()) => {
                        expected += n;
                        report.frames += n;
                        page = pages.next();
                    }
                    // A gc began elsewhere and may have taken blobs not referenced yet: put
                    // them again once it has ended.
                    Err(e) if reclaim::is_fence_conflict(&e) && attempt < MAX_FENCE_RETRIES => {
                        attempt += 1;
                        self.forget_gc_fence();
                        fence = self.gc_fence().await?;
                        report.blobs += self.put_missing_blobs(bundle).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            backend.raise_next_seq(&log.name, log.next_seq).await?;
            report.executions += 1;
        }
        Ok(report)
    }
}

impl Store {
    /// Bundles carry frames byte for byte, and an encrypted store's frames are bound to it.
    async fn refuse_if_encrypted(&self, what: &str) -> Result<()> {
        if matches!(self.crypto().await?, super::encryption::Crypto::Plain) {
            return Ok(());
        }
        Err(Error::InvalidInput(format!(
            "{what} an encrypted store is not supported yet: a bundle keeps frames byte for byte, \
             and an encrypted store's frames only open in the store that wrote them"
        )))
    }

    /// Puts the bundle's blobs the backend does not have; returns how many.
    async fn put_missing_blobs(&self, bundle: &Bundle) -> Result<u64> {
        let backend = self.backend();
        let hashes: Vec<_> = bundle.blobs.iter().map(|(h, _)| *h).collect();
        let missing: HashSet<_> = backend.missing_blobs(&hashes).await?.into_iter().collect();
        let new_blobs: Vec<_> = bundle
            .blobs
            .iter()
            .filter(|(h, _)| missing.contains(h))
            .cloned()
            .collect();
        let n = new_blobs.len() as u64;
        backend.put_blobs(new_blobs).await?;
        Ok(n)
    }
}

/// Checks a bundle before any of it is written: frames verify at their place and follow each
/// other without gaps, blobs match their hashes.
fn verify_bundle(bundle: &Bundle) -> Result<()> {
    let mut names = HashSet::new();
    for log in &bundle.logs {
        if !names.insert(&log.name) {
            return Err(Error::corrupt(
                "bundle",
                format!("execution {:?} appears twice", log.name),
            ));
        }
        let mut expected = log.first_seq;
        for (seq, bytes) in &log.frames {
            if *seq != expected {
                return Err(Error::corrupt(
                    "bundle",
                    format!(
                        "execution {:?}: frame {seq} where {expected} was expected",
                        log.name
                    ),
                ));
            }
            frame::decode(&log.name, *seq, bytes)?;
            expected += 1;
        }
        if expected > log.next_seq || log.first_seq == 0 {
            return Err(Error::corrupt(
                "bundle",
                format!(
                    "execution {:?}: sequence numbers beyond its high-water mark",
                    log.name
                ),
            ));
        }
    }
    for (hash, stored) in &bundle.blobs {
        blob::decode(hash, stored)?;
    }
    Ok(())
}
