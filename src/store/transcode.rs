//! Moving stored state from one sealing and address scheme to another: a plaintext bundle into
//! an encrypted store, one encrypted store's executions into another, and a store re-keyed in
//! place.
//!
//! A [`Transcoder`] opens frames and blobs with the source's codec (sealed or not) and writes them as
//! the target would have: sealed with its newest key for its store id and their new place, and
//! with every blob reference re-addressed the way the target computes addresses (keyed under its
//! newest key, or plain blake3). State moved in therefore dedups with state saved there, and an
//! encrypted store never ends up holding plaintext hashes, nor hashes keyed under a key it
//! retired, which would let whoever holds that key test guesses of its contents.
//!
//! Chunked leaves are re-addressed bottom-up: the chunks first, then the manifest listing their
//! new addresses, whose own address changes with them.

use std::collections::{HashMap, HashSet};

use crate::backend::{Backend, BlobHash};
use crate::codec::blob;
use crate::codec::frame::{Body, Event};
use crate::codec::tree::{self, Manifest, Ref};
use crate::codec::Codec;
use crate::error::{Error, Result};

/// Where a transcoder reads the source's blobs.
pub(crate) enum BlobSource<'a> {
    /// A bundle's blobs, by hash.
    Bundle(HashMap<BlobHash, &'a [u8]>),
    /// A backend (re-keying in place).
    Backend(&'a dyn Backend),
}

/// Blobs read from a backend per call.
const FETCH_BATCH: usize = 256;

impl BlobSource<'_> {
    async fn get(&self, hash: &BlobHash) -> Result<Vec<u8>> {
        let mut found = self.get_many(std::slice::from_ref(hash)).await?;
        Ok(found.remove(0))
    }

    /// `hashes` (at most [`FETCH_BATCH`] of them) in order; a missing one is an error.
    async fn get_many(&self, hashes: &[BlobHash]) -> Result<Vec<Vec<u8>>> {
        let found: Vec<Option<Vec<u8>>> = match self {
            BlobSource::Bundle(blobs) => hashes
                .iter()
                .map(|h| blobs.get(h).map(|b| b.to_vec()))
                .collect(),
            BlobSource::Backend(backend) => backend.get_blobs(hashes).await?,
        };
        if found.len() != hashes.len() {
            return Err(Error::corrupt(
                format!("{} blobs", hashes.len()),
                format!(
                    "the backend returned {} (a bug in the backend)",
                    found.len()
                ),
            ));
        }
        hashes
            .iter()
            .zip(found)
            .map(|(hash, found)| {
                found.ok_or_else(|| {
                    Error::corrupt(
                        format!("blob {}", blob::hex(hash)),
                        "missing, but referenced by a checkpoint",
                    )
                })
            })
            .collect()
    }
}

/// A blob as the target stores it.
pub(crate) struct NewBlob {
    /// Its address in the source.
    pub old: BlobHash,
    /// Its address in the target.
    pub hash: BlobHash,
    /// Its stored form in the target.
    pub stored: Vec<u8>,
    /// Whether the source already held exactly this (same address, sealed with the newest key
    /// for the same store): re-keying in place can leave it alone.
    pub unchanged: bool,
}

/// Re-seals and re-addresses frames and blobs from a source to a target (see the module docs).
pub(crate) struct Transcoder<'a> {
    from: &'a Codec,
    to: &'a Codec,
    /// Whether source and target are the same store under the same keys, so that bytes sealed
    /// with the newest key at the same address and place stay valid.
    same_store: bool,
    /// Leaves and chunks: old address to new.
    leaves: HashMap<BlobHash, BlobHash>,
    /// Manifests of chunked leaves: old address to new.
    manifests: HashMap<BlobHash, BlobHash>,
}

impl<'a> Transcoder<'a> {
    /// Opens with `from` and writes as `to` does; `same_store` when both are the same
    /// encrypted store (the same store id), so that what is already sealed as `to` seals it
    /// can stay.
    pub(crate) fn new(from: &'a Codec, to: &'a Codec, same_store: bool) -> Self {
        Transcoder {
            from,
            to,
            same_store,
            leaves: HashMap::new(),
            manifests: HashMap::new(),
        }
    }

    /// Every blob reference in `frames` of `log` (verified and opened with the source cipher).
    pub(crate) fn refs(&self, log: &str, frames: &[(u64, Vec<u8>)]) -> Result<HashSet<Ref>> {
        let mut refs = HashSet::new();
        for (seq, bytes) in frames {
            let decoded = self.from.frames.decode(log, *seq, bytes)?;
            if let Some(body) = decoded.body(log, *seq)? {
                body.collect_refs(&mut refs);
            }
        }
        Ok(refs)
    }

    /// The blobs `refs` need (chunks of chunked leaves included) as the target stores them,
    /// except those an earlier call already returned.
    pub(crate) async fn blobs(
        &mut self,
        refs: &HashSet<Ref>,
        source: &BlobSource<'_>,
    ) -> Result<Vec<NewBlob>> {
        let mut out = Vec::new();
        let mut refs: Vec<Ref> = refs.iter().copied().collect();
        refs.sort_unstable_by_key(|r| r.hash());
        let leaves: Vec<BlobHash> = refs
            .iter()
            .filter_map(|r| match r {
                Ref::Leaf(h) => Some(*h),
                Ref::Chunked(_) => None,
            })
            .collect();
        self.leaves_of(&leaves, source, &mut out).await?;
        for r in refs {
            if let Ref::Chunked(hash) = r {
                if !self.manifests.contains_key(&hash) {
                    self.chunked(&hash, source, &mut out).await?;
                }
            }
        }
        Ok(out)
    }

    /// Maps the leaves or chunks `hashes` not mapped yet, reading them in batches.
    async fn leaves_of(
        &mut self,
        hashes: &[BlobHash],
        source: &BlobSource<'_>,
        out: &mut Vec<NewBlob>,
    ) -> Result<()> {
        let mut seen = HashSet::new();
        let todo: Vec<BlobHash> = hashes
            .iter()
            .filter(|h| !self.leaves.contains_key(*h) && seen.insert(**h))
            .copied()
            .collect();
        for group in todo.chunks(FETCH_BATCH) {
            for (hash, stored) in group.iter().zip(source.get_many(group).await?) {
                out.push(self.leaf(hash, &stored)?);
            }
        }
        Ok(())
    }

    /// A leaf or chunk: its content under its new address.
    fn leaf(&mut self, old: &BlobHash, stored: &[u8]) -> Result<NewBlob> {
        let content = self.from.blobs.decode(old, stored)?;
        let hash = self.to.blobs.address(&content);
        self.leaves.insert(*old, hash);
        self.new_blob(old, stored, hash, &content)
    }

    /// A manifest and its chunks, the chunks first.
    async fn chunked(
        &mut self,
        old: &BlobHash,
        source: &BlobSource<'_>,
        out: &mut Vec<NewBlob>,
    ) -> Result<()> {
        let stored = source.get(old).await?;
        let content = self.from.blobs.decode(old, &stored)?;
        let manifest = Manifest::decode(&content)
            .map_err(|e| Error::corrupt(format!("manifest {}", blob::hex(old)), e))?;
        self.leaves_of(&manifest.chunks, source, out).await?;
        let chunks = manifest
            .chunks
            .iter()
            .map(|c| {
                self.leaves.get(c).copied().ok_or_else(|| {
                    Error::corrupt(
                        format!("manifest {}", blob::hex(old)),
                        "a chunk was not transcoded (a bug in ckpt)",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let content = Manifest { chunks, ..manifest }.encode();
        let hash = self.to.blobs.address(&content);
        self.manifests.insert(*old, hash);
        out.push(self.new_blob(old, &stored, hash, &content)?);
        Ok(())
    }

    fn new_blob(
        &self,
        old: &BlobHash,
        stored: &[u8],
        hash: BlobHash,
        content: &[u8],
    ) -> Result<NewBlob> {
        let unchanged = hash == *old && self.same_store && self.to.blobs.sealed_with_newest(stored);
        Ok(NewBlob {
            old: *old,
            hash,
            stored: if unchanged {
                stored.to_vec()
            } else {
                self.to.blobs.encode(&hash, content)?
            },
            unchanged,
        })
    }

    /// The frame at `seq` of `log` as the target stores it; `None` when the source's bytes are
    /// already that (re-keying in place: sealed with the newest key, no address changed).
    /// Call [`Transcoder::blobs`] with the frame's references first.
    pub(crate) fn frame(&self, log: &str, seq: u64, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
        let decoded = self.from.frames.decode(log, seq, bytes)?;
        let body = decoded.body(log, seq)?;
        let remapped = body.as_ref().map(|b| self.remap(log, seq, b)).transpose()?;
        let addresses_kept = match (&body, &remapped) {
            (Some(old), Some(new)) => old == new,
            _ => true,
        };
        if addresses_kept && self.same_store && self.to.frames.sealed_with_newest(bytes) {
            return Ok(None);
        }
        let encoded = match (decoded.event, remapped) {
            (Event::Save(header), Some(body)) => {
                self.to
                    .frames
                    .encode_save(log, seq, &header, &body.encode())?
            }
            (Event::Write(header), Some(body)) => {
                self.to
                    .frames
                    .encode_write(log, seq, &header, &body.encode())?
            }
            (Event::Delete(version), _) => self.to.frames.encode_delete(log, seq, version)?,
            (Event::Clear, _) => self.to.frames.encode_clear(log, seq)?,
            _ => {
                return Err(Error::corrupt(
                    format!("execution {log:?} seq {seq}"),
                    "a store-internal frame in an execution's log",
                ))
            }
        };
        Ok(Some(encoded))
    }

    fn remap(&self, log: &str, seq: u64, body: &Body) -> Result<Body> {
        let map = |r: Ref| match r {
            Ref::Leaf(h) => self.leaves.get(&h).copied(),
            Ref::Chunked(h) => self.manifests.get(&h).copied(),
        };
        let unmapped = || {
            Error::corrupt(
                format!("execution {log:?} seq {seq}"),
                "references a blob that was not transcoded (a bug in ckpt)",
            )
        };
        Ok(match body {
            Body::Snapshot(v) => Body::Snapshot(tree::remap_refs(v, &map).ok_or_else(unmapped)?),
            Body::Delta { base, ops } => Body::Delta {
                base: *base,
                ops: tree::remap_op_refs(ops, &map).ok_or_else(unmapped)?,
            },
        })
    }

    /// Every address a transcoded blob now has (chunks included).
    pub(crate) fn new_addresses(&self) -> HashSet<BlobHash> {
        self.leaves
            .values()
            .chain(self.manifests.values())
            .copied()
            .collect()
    }
}
