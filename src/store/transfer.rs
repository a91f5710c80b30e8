//! Moving executions between stores: [`Store::export`] bundles them exactly as stored, and
//! [`Store::import`] writes a bundle into another store (any backend) with the same execution
//! ids, versions, timestamps, parents and metadata, after verifying every piece.
//! [`Store::copy_to`] does both between two open stores.
//!
//! Export refuses damage: a bundle is a verified copy or nothing. [`Store::salvage_to`] is for a
//! damaged store: it copies every checkpoint that can still be read and reports what it left.
//!
//! Encrypted stores take part: an encrypted store's bundle stays sealed (to that store), and a
//! store importing state that is not sealed for it (a plaintext bundle, or another store's)
//! opens it and writes it as if it had been saved there (see `transcode`). State never leaves
//! encryption this way: an encrypted bundle is refused by a plaintext store.

use crate::backend::BackendExt;
use std::collections::HashSet;
use std::sync::Arc;

use super::save::{Expect, Pending};
use super::trace::op_span;
use super::transcode::{BlobSource, Transcoder};
use super::{reclaim, Store};
use crate::backend::memory::MemoryBackend;
use crate::backend::LogAppend;
use crate::bundle::{Bundle, BundleLog};
use crate::checkpoint::{quote_name, validate_execution_id, Checkpoint, CheckpointId};
use crate::codec::frame::ParentRef;
use crate::codec::{blob, Codec};
use crate::crypto::StoreCipher;
use crate::error::{Error, Result};
use tracing::field::Empty;

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

/// What [`Store::salvage_to`] copied and what it left, per execution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalvageReport {
    /// Every execution of the source, by id.
    pub executions: Vec<SalvagedExecution>,
}

/// One execution salvaged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalvagedExecution {
    /// The execution id (the same in the target).
    pub execution_id: String,
    /// Whether it was healthy and copied frame for frame, exactly as [`Store::copy_to`] copies
    /// (else its readable checkpoints were saved again, see [`Store::salvage_to`]).
    pub exact: bool,
    /// Versions copied (the same versions in the target).
    pub copied: Vec<u64>,
    /// Live versions left behind, and why (the damage they need).
    pub left: Vec<(u64, String)>,
    /// Frames of the source's log that failed verification.
    pub damaged_frames: Vec<u64>,
}

impl SalvageReport {
    /// Whether everything live was copied.
    pub fn is_complete(&self) -> bool {
        self.executions.iter().all(|e| e.left.is_empty())
    }
}

impl Store {
    /// Bundles executions exactly as stored: every frame of their logs and every blob those
    /// frames reference (with the chunks of chunked leaves). An execution with no log here is
    /// [`Error::NotFound`]. From an encrypted store the bundle stays sealed
    /// ([`Bundle::sealed_for`]): only a store holding one of its keys can import it.
    ///
    /// Damage is refused, not bundled: a frame or a blob that fails verification is
    /// [`Error::Corrupt`] naming it ([`Store::salvage_to`] copies what is readable instead).
    pub async fn export(&self, executions: &[String]) -> Result<Bundle> {
        let span =
            op_span!("ckpt.export", self; count = executions.len(), frames = Empty, blobs = Empty);
        let op = async {
            let crypto = self.crypto().await?;
            crypto.check_writable()?;
            let (cipher, codec) = (crypto.cipher(), crypto.codec());
            let backend = &self.inner.traced;
            let mut bundle = Bundle {
                sealed_for: cipher.map(|c| c.store_id()),
                ..Bundle::default()
            };
            let mut refs = HashSet::new();
            for exec in executions {
                validate_execution_id(exec)?;
                let next_seq = self.tail(exec).await?;
                if next_seq == 1 {
                    return Err(Error::not_found(format!("execution {exec}")));
                }
                let frames = self.scan_range(exec, 1, next_seq).await?;
                for (seq, bytes) in &frames {
                    let decoded = codec.frames.decode(exec, *seq, bytes)?;
                    if let Some(body) = decoded.body(exec, *seq)? {
                        body.collect_refs(&mut refs);
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
                // A bundle carries only what verifies: its importer could not tell damage from data.
                codec.blobs.decode(&hash, &stored)?;
                bundle.blobs.push((hash, stored));
            }
            Ok(bundle)
        };
        let bundle: Bundle = self.traced(&span, op).await?;
        span.record(
            "frames",
            bundle.logs.iter().map(|l| l.frames.len()).sum::<usize>(),
        );
        span.record("blobs", bundle.blobs.len());
        Ok(bundle)
    }

    /// Copies every readable checkpoint of every execution of this (damaged) store into
    /// `target`, leaving out what cannot be read, and reports both.
    ///
    /// A healthy execution is copied exactly ([`Store::copy_to`]: every frame, tombstones and
    /// timestamps included). A damaged one has its readable live checkpoints saved again in the
    /// target, in order, each with its own version, parent, node, metadata, timestamp and
    /// state (stored as the target stores a save). Each version left behind (or deleted) is
    /// filled by a tombstone of itself up to the source's next sequence number, so the
    /// target's log has no holes and the versions the damage took are never handed out again.
    ///
    /// Refuses ([`Error::InvalidInput`]) before writing anything when an execution already
    /// exists in the target. Keys work as for [`Store::copy_to`].
    pub async fn salvage_to(&self, target: &Store) -> Result<SalvageReport> {
        let span =
            op_span!("ckpt.salvage_to", self; target = target.backend().name(), count = Empty);
        let op = async {
            self.crypto().await?.check_writable()?;
            let mut logs = self.execution_logs().await?;
            logs.sort();
            for log in &logs {
                if target.tail(log).await? > 1 {
                    return Err(Error::InvalidInput(format!(
                        "execution {log:?} already exists in the target store; salvage into an \
                         empty store (nothing was written)"
                    )));
                }
            }
            let mut report = SalvageReport::default();
            for log in logs {
                report
                    .executions
                    .push(self.salvage_one(target, &log).await?);
            }
            Ok(report)
        };
        let report: SalvageReport = self.traced(&span, op).await?;
        span.record("count", report.executions.len());
        Ok(report)
    }

    /// [`Store::salvage_to`] into a bundle: every readable checkpoint, through a store in
    /// memory with this store's keys (so an encrypted store's bundle stays sealed).
    pub async fn salvage_bundle(&self) -> Result<(Bundle, SalvageReport)> {
        let span = op_span!("ckpt.salvage_bundle", self);
        let op = async {
            let staging = self.with_same_keys(Arc::new(MemoryBackend::new()));
            let report = self.salvage_to(&staging).await?;
            let bundle = staging.export_all().await?;
            Ok((bundle, report))
        };
        self.traced(&span, op).await
    }

    async fn salvage_one(&self, target: &Store, log: &str) -> Result<SalvagedExecution> {
        let damage = self.damage(log).await?;
        let mut out = SalvagedExecution {
            execution_id: log.to_owned(),
            damaged_frames: damage.frames.iter().map(|(s, _)| *s).collect(),
            ..SalvagedExecution::default()
        };
        if damage.is_empty() {
            match self.copy_to(target, &[log.to_owned()]).await {
                Ok(_) => {
                    out.exact = true;
                    out.copied = self.live_versions(log).await?;
                    return Ok(out);
                }
                // Damage the projection does not see (a blob): save what loads, below.
                Err(e) if self.is_damage(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut readable = Vec::new();
        for version in self.live_versions(log).await? {
            match self.at_version(log, version).await {
                Ok(cp) => readable.push(cp),
                Err(e) if self.is_damage(&e) => out.left.push((version, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        for (version, needs) in &damage.unreadable {
            if !out.left.iter().any(|(v, _)| v == version) {
                out.left.push((
                    *version,
                    format!("its state needs the damaged frame seq {needs}"),
                ));
            }
        }
        out.left.sort_by_key(|(v, _)| *v);
        for cp in readable {
            let version = cp.version;
            target.fill_log(log, version).await?;
            let pending = Pending {
                parent: cp.parent.as_ref().map(|p| ParentRef {
                    execution: (p.execution_id() != log).then(|| p.execution_id().to_owned()),
                    version: p.version(),
                }),
                parent_must_be_live: false,
                force_snapshot: false,
                timestamp_us: Some(micros(&cp)),
                checkpoint: Checkpoint {
                    id: CheckpointId::new_unchecked(log.into(), 0),
                    version: 0,
                    ..cp
                },
            };
            let saved = target.save_pending(vec![pending], Expect::Any).await?;
            if saved.first().map(|c| c.version) != Some(version) {
                return Err(Error::Conflict {
                    log: log.to_owned(),
                    expected: version,
                    actual: saved.first().map_or(0, |c| c.version),
                });
            }
            out.copied.push(version);
        }
        let next_seq = self.tail(log).await?;
        target.fill_log(log, next_seq).await?;
        Ok(out)
    }

    /// Appends to `log` a tombstone for each sequence number from its tail to `upto`
    /// (excluded), each deleting its own (never saved) version: the log stays gapless (a hole
    /// would read as lost frames) and the versions left behind are never handed out again.
    async fn fill_log(&self, log: &str, upto: u64) -> Result<()> {
        let codec = self.crypto().await?.codec();
        let mut next = self.tail(log).await?;
        while next < upto {
            let end = upto.min(next + IMPORT_PAGE as u64);
            let frames = (next..end)
                .map(|seq| codec.frames.encode_delete(log, seq, seq))
                .collect::<Result<Vec<_>>>()?;
            self.append(vec![LogAppend::new(log, next, frames)]).await?;
            next = end;
        }
        Ok(())
    }

    /// The versions of `log`'s live checkpoints, readable or not, oldest first.
    async fn live_versions(&self, log: &str) -> Result<Vec<u64>> {
        let idx = self.index(log).await?;
        Ok(idx.live().map(|(v, _)| v).collect())
    }

    /// Bundles every execution that has a log in this store (see [`Store::export`]).
    pub async fn export_all(&self) -> Result<Bundle> {
        let span = op_span!("ckpt.export_all", self; frames = Empty, blobs = Empty);
        let op = async {
            let mut logs = self.execution_logs().await?;
            logs.sort();
            self.export(&logs).await
        };
        let bundle: Bundle = self.traced(&span, op).await?;
        span.record(
            "frames",
            bundle.logs.iter().map(|l| l.frames.len()).sum::<usize>(),
        );
        span.record("blobs", bundle.blobs.len());
        Ok(bundle)
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
        let span = op_span!("ckpt.import", self; count = Empty, frames = Empty, blobs = Empty);
        let op = async {
            let from = match (bundle.sealed_for, self.crypto().await?.cipher()) {
                (Some(id), Some(own)) => Some(Arc::new(own.for_store(id))),
                _ => None,
            };
            self.import_from(bundle, from.as_ref()).await
        };
        let report: ImportReport = self.traced(&span, op).await?;
        span.record("count", report.executions);
        span.record("frames", report.frames);
        span.record("blobs", report.blobs);
        Ok(report)
    }

    /// Copies executions from this store into `target` (any backend), as
    /// [`Store::export`] then [`Store::import`] would, except that the target needs none of
    /// this store's keys: what is sealed here is opened here and sealed again for the target.
    /// An encrypted source refuses a plaintext target.
    pub async fn copy_to(&self, target: &Store, executions: &[String]) -> Result<ImportReport> {
        let span = op_span!(
            "ckpt.copy_to", self;
            target = target.backend().name(),
            count = Empty,
            frames = Empty,
            blobs = Empty
        );
        let op = async {
            let bundle = self.export(executions).await?;
            let from = self.crypto().await?.cipher();
            target.import_from(&bundle, from).await
        };
        let report: ImportReport = self.traced(&span, op).await?;
        span.record("count", report.executions);
        span.record("frames", report.frames);
        span.record("blobs", report.blobs);
        Ok(report)
    }

    /// Checks, before anything is copied, that [`Store::copy_to`] of `executions` into
    /// `target` would not be refused half way: each execution has a log here
    /// ([`Error::NotFound`] naming the first that has none) and none exists in `target`
    /// ([`Error::InvalidInput`] naming every one that does), by the check the import itself
    /// makes. A caller copying one execution at a time checks them all first, so that it copies
    /// all of them or none.
    pub async fn check_copy(&self, target: &Store, executions: &[String]) -> Result<()> {
        let span = op_span!("ckpt.check_copy", self; target = target.backend().name(), count = executions.len());
        let op = async {
            let mut taken = Vec::new();
            for exec in executions {
                validate_execution_id(exec)?;
                let backend = &self.inner.traced;
                let next_seq = self.tail(exec).await?;
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
        };
        self.traced(&span, op).await
    }

    /// `Some(the log's next sequence number)` when this store has a log `name` that an import
    /// of a log starting at `first_seq` would overwrite or run into.
    async fn import_conflict(&self, name: &str, first_seq: u64) -> Result<Option<u64>> {
        let backend = &self.inner.traced;
        let here = self.tail(name).await?;
        let has_frames = !backend.scan(name, 1, 1).await?.is_empty();
        Ok((has_frames || here > first_seq).then_some(here))
    }

    /// Imports `bundle`, whose frames and blobs `from` opens (`None`: plaintext).
    async fn import_from(
        &self,
        bundle: &Bundle,
        from: Option<&Arc<StoreCipher>>,
    ) -> Result<ImportReport> {
        let crypto = self.crypto().await?;
        crypto.check_writable()?;
        match (bundle.sealed_for, crypto.cipher()) {
            (None, None) => self.write_bundle(bundle, crypto.codec()).await,
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
                self.write_bundle(&sealed, crypto.codec()).await
            }
        }
    }

    /// Writes a bundle sealed for this store (or plaintext, for a plaintext store), which
    /// `codec` reads.
    async fn write_bundle(&self, bundle: &Bundle, codec: &Codec) -> Result<ImportReport> {
        verify_bundle(bundle, codec)?;
        let backend = &self.inner.traced;
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
                let frames = frames.iter().map(|(_, f)| f.clone()).collect();
                let mut appends = vec![LogAppend::new(log.name.clone(), expected, frames)];
                appends.extend(fence.clone());
                match self.append(appends).await {
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
        let backend = &self.inner.traced;
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

/// The checkpoint's timestamp in microseconds since the Unix epoch, as frames record it.
fn micros(cp: &Checkpoint) -> u64 {
    cp.timestamp
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `bundle`, opened with `from`, as the store `to` seals it: every frame sealed for its place
/// there and every blob under the address it computes (see `transcode`).
async fn transcode(
    bundle: &Bundle,
    from: Option<&Arc<StoreCipher>>,
    to: &Arc<StoreCipher>,
) -> Result<Bundle> {
    verify_sequences(bundle)?;
    let same_store = from.is_some_and(|f| f.store_id() == to.store_id());
    let from = from.map_or_else(Codec::plain, |f| Codec::sealed(f.clone()));
    let to_codec = Codec::sealed(to.clone());
    let mut transcoder = Transcoder::new(&from, &to_codec, same_store);
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

/// Checks a bundle before any of it is written: frames verify at their place (opened by
/// `codec`, which seals in an encrypted store) and follow each other without gaps, blobs
/// verify under their hashes.
fn verify_bundle(bundle: &Bundle, codec: &Codec) -> Result<()> {
    verify_sequences(bundle)?;
    for log in &bundle.logs {
        for (seq, bytes) in &log.frames {
            codec.frames.decode(&log.name, *seq, bytes)?;
        }
    }
    for (hash, stored) in &bundle.blobs {
        codec.blobs.decode(hash, stored)?;
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
