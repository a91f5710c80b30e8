//! Moving executions between stores: [`Store::export`] bundles them exactly as stored, and
//! [`Store::import`] writes a bundle into another store (any backend) with the same execution
//! ids, versions, timestamps, parents and metadata, after verifying every piece.
//! [`Store::copy_to`] does both between two open stores.
//!
//! Encrypted stores take part: an encrypted store's bundle stays sealed (to that store), and a
//! store importing state that is not sealed for it (a plaintext bundle, or another store's)
//! opens it and writes it as if it had been saved there (see `transcode`). State never leaves
//! encryption this way: an encrypted bundle is refused by a plaintext store.

use std::collections::HashSet;

use super::transcode::{BlobSource, Transcoder};
use super::{reclaim, Store};
use crate::backend::LogAppend;
use crate::bundle::{Bundle, BundleLog};
use crate::checkpoint::{quote_name, validate_execution_id};
use crate::codec::frame::{self, Body};
use crate::codec::{blob, tree};
use crate::crypto::StoreCipher;
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
    /// [`Error::NotFound`]. From an encrypted store the bundle stays sealed
    /// ([`Bundle::sealed_for`]): only a store holding one of its keys can import it.
    pub async fn export(&self, executions: &[String]) -> Result<Bundle> {
        let crypto = self.crypto().await?;
        crypto.check_writable()?;
        let cipher = crypto.cipher();
        let backend = self.backend();
        let mut bundle = Bundle {
            sealed_for: cipher.map(|c| c.store_id()),
            ..Bundle::default()
        };
        let mut refs = HashSet::new();
        for exec in executions {
            validate_execution_id(exec)?;
            let next_seq = backend.next_seq(exec).await?;
            if next_seq == 1 {
                return Err(Error::not_found(format!("execution {exec}")));
            }
            let frames = self.scan_range(exec, 1, next_seq).await?;
            for (seq, bytes) in &frames {
                let decoded = frame::decode_in(exec, *seq, bytes, cipher)?;
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
    ///
    /// Into an encrypted store, a plaintext bundle is sealed on the way in, and another
    /// encrypted store's bundle is opened with this store's keys (open it with the source's key
    /// among its decryption keys) and sealed again for this one; chunk addresses are recomputed
    /// as this store computes them. A plaintext store refuses an encrypted bundle.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use ckpt::{crypto::Key, Checkpoint, Store};
    /// let plain = Store::open("memory://").await?;
    /// plain.save(Checkpoint::new("run-1", "start", &serde_json::json!({"step": 1}))?).await?;
    /// let bundle = plain.export(&["run-1".to_string()]).await?;
    ///
    /// let encrypted = Store::builder("memory://").encryption(Key::generate()).open().await?;
    /// encrypted.import(&bundle).await?;
    /// let cp = encrypted.latest("run-1").await?.expect("imported");
    /// assert_eq!(cp.state_json()?, serde_json::json!({"step": 1}));
    /// // The encrypted store's own export stays sealed.
    /// assert!(encrypted.export(&["run-1".to_string()]).await?.sealed_for.is_some());
    /// # Ok::<(), ckpt::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn import(&self, bundle: &Bundle) -> Result<ImportReport> {
        let from = match (bundle.sealed_for, self.crypto().await?.cipher()) {
            (Some(id), Some(own)) => Some(own.for_store(id)),
            _ => None,
        };
        self.import_from(bundle, from.as_ref()).await
    }

    /// Copies executions from this store into `target` (any backend), as
    /// [`Store::export`] then [`Store::import`] would, except that the target needs none of
    /// this store's keys: what is sealed here is opened here and sealed again for the target.
    /// An encrypted source refuses a plaintext target.
    pub async fn copy_to(&self, target: &Store, executions: &[String]) -> Result<ImportReport> {
        let bundle = self.export(executions).await?;
        let from = self.crypto().await?.cipher();
        target.import_from(&bundle, from).await
    }

    /// Checks, before anything is copied, that [`Store::copy_to`] of `executions` into
    /// `target` would not be refused half way: each execution has a log here
    /// ([`Error::NotFound`] naming the first that has none) and none exists in `target`
    /// ([`Error::InvalidInput`] naming every one that does), by the check the import itself
    /// makes. A caller copying one execution at a time checks them all first, so that it copies
    /// all of them or none.
    pub async fn check_copy(&self, target: &Store, executions: &[String]) -> Result<()> {
        let mut taken = Vec::new();
        for exec in executions {
            validate_execution_id(exec)?;
            let backend = self.backend();
            let next_seq = backend.next_seq(exec).await?;
            if next_seq == 1 {
                return Err(Error::not_found(format!(
                    "execution {} in the source",
                    quote_name(exec)
                )));
            }
            let first_seq = match backend.scan(exec, 1, 1).await?.first() {
                Some((seq, _)) => *seq,
                None => next_seq,
            };
            if let Some(here) = target.import_conflict(exec, first_seq).await? {
                taken.push(format!("{} (at {here})", quote_name(exec)));
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 10;
        let more = taken.len().saturating_sub(SHOWN);
        taken.truncate(SHOWN);
        let mut list = taken.join(", ");
        if more > 0 {
            list.push_str(&format!(" and {more} more"));
        }
        Err(Error::InvalidInput(format!(
            "these executions already exist in the target store: {list}; clear them there (and \
             run gc), leave them out, or copy into another store"
        )))
    }

    /// `Some(the log's next sequence number)` when this store has a log `name` that an import
    /// of a log starting at `first_seq` would overwrite or run into.
    async fn import_conflict(&self, name: &str, first_seq: u64) -> Result<Option<u64>> {
        let backend = self.backend();
        let here = backend.next_seq(name).await?;
        let has_frames = !backend.scan(name, 1, 1).await?.is_empty();
        Ok((has_frames || here > first_seq).then_some(here))
    }

    /// Imports `bundle`, whose frames and blobs `from` opens (`None`: plaintext).
    async fn import_from(
        &self,
        bundle: &Bundle,
        from: Option<&StoreCipher>,
    ) -> Result<ImportReport> {
        let crypto = self.crypto().await?;
        crypto.check_writable()?;
        match (bundle.sealed_for, crypto.cipher()) {
            (None, None) => self.write_bundle(bundle, None).await,
            (Some(_), None) => Err(Error::InvalidInput(
                "the executions come from an encrypted store and this store is not encrypted: \
                 ckpt does not decrypt state into plaintext. Import into a store opened with a \
                 key (a new store opened with a key becomes encrypted)"
                    .into(),
            )),
            (Some(_), Some(_)) if from.is_none() => Err(Error::Decrypt {
                location: "the bundle".into(),
                key_id: "?".into(),
                reason: "sealed by an encrypted store, and no key was given to open it".into(),
            }),
            (_, Some(to)) => {
                let sealed = transcode(bundle, from, to).await?;
                self.write_bundle(&sealed, Some(to)).await
            }
        }
    }

    /// Writes a bundle sealed for this store (or plaintext, for a plaintext store).
    async fn write_bundle(
        &self,
        bundle: &Bundle,
        cipher: Option<&StoreCipher>,
    ) -> Result<ImportReport> {
        verify_bundle(bundle, cipher)?;
        let backend = self.backend();
        for log in &bundle.logs {
            if let Some(here) = self.import_conflict(&log.name, log.first_seq).await? {
                return Err(Error::InvalidInput(format!(
                    "execution {} already exists in the target store (its log is at {here}); \
                     clear it there (and run gc) or import into another store",
                    quote_name(&log.name)
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

/// `bundle`, opened with `from`, as the store `to` seals it: every frame sealed for its place
/// there and every blob under the address it computes (see `transcode`).
async fn transcode(
    bundle: &Bundle,
    from: Option<&StoreCipher>,
    to: &StoreCipher,
) -> Result<Bundle> {
    verify_sequences(bundle)?;
    let mut transcoder = Transcoder::new(from, Some(to));
    let source = BlobSource::Bundle(
        bundle
            .blobs
            .iter()
            .map(|(h, b)| (*h, b.as_slice()))
            .collect(),
    );
    let mut out = Bundle {
        sealed_for: Some(to.store_id()),
        ..Bundle::default()
    };
    for log in &bundle.logs {
        let refs = transcoder.refs(&log.name, &log.frames)?;
        for b in transcoder.blobs(&refs, &source).await? {
            out.blobs.push((b.hash, b.stored));
        }
        let mut frames = Vec::with_capacity(log.frames.len());
        for (seq, bytes) in &log.frames {
            let sealed = transcoder.frame(&log.name, *seq, bytes)?;
            frames.push((*seq, sealed.unwrap_or_else(|| bytes.clone())));
        }
        out.logs.push(BundleLog {
            name: log.name.clone(),
            first_seq: log.first_seq,
            next_seq: log.next_seq,
            frames,
        });
    }
    Ok(out)
}

/// Checks a bundle before any of it is written: frames verify at their place (opened with
/// `cipher` in an encrypted store) and follow each other without gaps, blobs verify under
/// their hashes.
fn verify_bundle(bundle: &Bundle, cipher: Option<&StoreCipher>) -> Result<()> {
    verify_sequences(bundle)?;
    for log in &bundle.logs {
        for (seq, bytes) in &log.frames {
            frame::decode_in(&log.name, *seq, bytes, cipher)?;
        }
    }
    for (hash, stored) in &bundle.blobs {
        blob::decode_in(hash, stored, cipher)?;
    }
    Ok(())
}

/// Checks that each log appears once and its frames follow each other without gaps, below its
/// high-water mark.
fn verify_sequences(bundle: &Bundle) -> Result<()> {
    let mut names = HashSet::new();
    for log in &bundle.logs {
        if !names.insert(&log.name) {
            return Err(Error::corrupt(
                "bundle",
                format!("execution {} appears twice", quote_name(&log.name)),
            ));
        }
        let mut expected = log.first_seq;
        for (seq, _) in &log.frames {
            if *seq != expected {
                return Err(Error::corrupt(
                    "bundle",
                    format!(
                        "execution {}: frame {seq} where {expected} was expected",
                        quote_name(&log.name)
                    ),
                ));
            }
            expected += 1;
        }
        if expected > log.next_seq || log.first_seq == 0 {
            return Err(Error::corrupt(
                "bundle",
                format!(
                    "execution {}: sequence numbers beyond its high-water mark",
                    quote_name(&log.name)
                ),
            ));
        }
    }
    Ok(())
}
