//! Whether a store is encrypted, and with what: read once per [`Store`] from the reserved
//! descriptor log, created by the first keyed store to write.
//!
//! Fail closed: an encrypted store opened without a key reads nothing and refuses to write; a
//! store opened with keys none of which wrote it is refused when first used; a plaintext store
//! opened with a key is refused (encryption is chosen when a store is created); a plaintext
//! frame or blob met in an encrypted store is an error, never data.

use std::sync::Arc;

use super::reclaim::{is_reserved_log, DEFAULT_LEASE};
use super::trace::op_span;
use super::transcode::{BlobSource, Transcoder};
use super::Store;
use crate::backend::LogAppend;
use crate::codec::frame::{self, Event, StoreDescriptor};
use crate::codec::seal::Seal;
use crate::codec::Codec;
use crate::crypto::{Key, Keyring, StoreCipher};
use crate::error::{Error, Result};
use tracing::field::Empty;

/// The reserved log holding the descriptor of an encrypted store (none for a plaintext store).
pub(crate) const STORE_LOG: &str = "\u{1}store";
/// What the descriptor's key check seals.
const KEY_CHECK: &[u8] = b"ckpt store key check";

/// How a store seals what it writes.
#[derive(Debug)]
pub(crate) enum Crypto {
    /// A plaintext store opened without keys.
    Plain,
    /// An encrypted store opened with a key that opens it: its cipher, and the codec sealing
    /// with it.
    Sealed(Arc<StoreCipher>, Codec),
    /// An encrypted store opened without any key: nothing can be read or written.
    Locked,
}

/// The codec of a plaintext store, and of a locked one (which thereby reads nothing sealed).
static PLAIN: Codec = Codec::plain();

impl Crypto {
    /// An encrypted store's crypto: `cipher`, and the codec sealing with it.
    fn sealed(cipher: Arc<StoreCipher>) -> Crypto {
        let codec = Codec::sealed(cipher.clone());
        Crypto::Sealed(cipher, codec)
    }

    /// The cipher (its store id, its keys), `None` for a plaintext (or locked) store.
    pub(crate) fn cipher(&self) -> Option<&Arc<StoreCipher>> {
        match self {
            Crypto::Sealed(c, _) => Some(c),
            Crypto::Plain | Crypto::Locked => None,
        }
    }

    /// The codec for reading and writing: sealing with the cipher in an encrypted store, plain
    /// for a plaintext (or locked) store.
    pub(crate) fn codec(&self) -> &Codec {
        match self {
            Crypto::Sealed(_, codec) => codec,
            Crypto::Plain | Crypto::Locked => &PLAIN,
        }
    }

    /// Refuses writes to a locked store.
    pub(crate) fn check_writable(&self) -> Result<()> {
        match self {
            Crypto::Locked => Err(locked()),
            Crypto::Plain | Crypto::Sealed(..) => Ok(()),
        }
    }
}

fn locked() -> Error {
    Error::Decrypt {
        location: "the store".into(),
        key_id: "?".into(),
        reason: "the store is encrypted and was opened without a key: nothing can be read or \
                 written. Open it with Store::builder(url).encryption(key), or with \
                 ?key_env=VAR in the URL"
            .into(),
    }
}

/// What [`Store::rekey`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Frames sealed again with the newest key (and their blob references re-addressed).
    pub frames: u64,
    /// Blobs written again: sealed with the newest key, under addresses keyed with it.
    pub blobs: u64,
    /// Blobs deleted afterwards: their old addresses, and blobs no frame referenced.
    pub blobs_removed: u64,
}

impl Store {
    /// Seals everything again with the newest key (the one given to
    /// [`crate::StoreBuilder::encryption`]) and moves every blob to the address that key gives
    /// it, so that the store holds nothing sealed or addressed under an older key; afterwards
    /// the older keys can be dropped (and whoever holds one can neither read the store nor test
    /// guesses against its addresses). Open the store with the new key first and the old ones
    /// after it (`?key_env=NEW,OLD`).
    ///
    /// Saves and gc, here and in other processes, wait while it runs (it holds the gc log, see
    /// `reclaim`), and rebuild what they cached of the old addresses afterwards. Stop writers
    /// still configured with an old key as the writing key first. A load elsewhere that read a
    /// frame before it was rewritten and finds its blob gone waits for the rekey to end and
    /// reads again. Interrupted, or past half its lease ([`Error::Busy`]), it can simply run
    /// again: it carries on where it stopped.
    pub async fn rekey(&self) -> Result<RekeyReport> {
        let span = op_span!("ckpt.rekey", self; frames = Empty, blobs = Empty);
        let op = async {
            let (cipher, codec) = match self.crypto().await? {
                Crypto::Sealed(c, codec) => (c.clone(), codec.clone()),
                Crypto::Plain => {
                    return Err(Error::InvalidInput(
                        "the store is not encrypted: there is nothing to rekey".into(),
                    ))
                }
                Crypto::Locked => return Err(locked()),
            };
            let _exclusive = self.inner.gc_lock.write().await;
            let started = std::time::Instant::now();
            let begin = self.begin_gc(DEFAULT_LEASE).await?;
            let result = self.reseal_everything(&cipher, &codec, started).await;
            self.forget_stored_states().await;
            let ended = self.end_gc(begin + 1).await;
            let report = result?;
            ended?;
            Ok(report)
        };
        let report: RekeyReport = self.traced(&span, op).await?;
        span.record("frames", report.frames);
        span.record("blobs", report.blobs);
        Ok(report)
    }

    async fn reseal_everything(
        &self,
        cipher: &StoreCipher,
        codec: &Codec,
        started: std::time::Instant,
    ) -> Result<RekeyReport> {
        let backend = &*self.inner.traced;
        let rewrite = backend.capabilities().rewrite.ok_or(Error::NotSupported {
            operation: "re-sealing in place (rekey)",
            backend: backend.name(),
        })?;
        // The same store under the same keys: what is sealed with the newest key stays.
        let mut transcoder = Transcoder::new(codec, codec, true);
        let source = BlobSource::Backend(backend);
        let mut report = RekeyReport::default();
        for log in self.execution_logs().await? {
            let mut from = 1;
            loop {
                let page = backend.scan(&log, from, super::SCAN_PAGE).await?;
                let Some(&(last, _)) = page.last() else { break };
                // Blobs first, at their new addresses: a frame is only rewritten to point at
                // blobs that are stored.
                let refs = transcoder.refs(&log, &page)?;
                let (mut moved, mut resealed) = (Vec::new(), Vec::new());
                for b in transcoder.blobs(&refs, &source).await? {
                    match (b.unchanged, b.hash == b.old) {
                        (true, _) => {}
                        (false, false) => moved.push((b.hash, b.stored)),
                        (false, true) => resealed.push((b.hash, b.stored)),
                    }
                }
                report.blobs += (moved.len() + resealed.len()) as u64;
                if !moved.is_empty() {
                    backend.put_blobs(moved).await?;
                }
                if !resealed.is_empty() {
                    rewrite.rewrite_blobs(resealed).await?;
                }
                let mut rewritten = Vec::new();
                for (seq, bytes) in &page {
                    if let Some(new) = transcoder.frame(&log, *seq, bytes)? {
                        rewritten.push((*seq, new));
                    }
                }
                report.frames += rewritten.len() as u64;
                if !rewritten.is_empty() {
                    rewrite.rewrite_frames(&log, rewritten).await?;
                }
                from = last + 1;
            }
        }
        self.reseal_descriptor(cipher).await?;
        backend.flush().await?;
        // Every frame now points at the new addresses; what else is stored is stale. Deleting
        // is safe while this rekey's gc mark fences writers off, which it does until half its
        // lease (as for gc).
        let live = transcoder.new_addresses();
        let stale: Vec<_> = backend
            .list_blobs()
            .await?
            .into_iter()
            .filter(|h| !live.contains(h))
            .collect();
        if started.elapsed() > DEFAULT_LEASE / 2 {
            return Err(Error::Busy {
                what: format!(
                    "rekey ran longer than half its lease ({} s): everything is re-sealed but \
                     {} blobs under old addresses were not deleted; run rekey again",
                    DEFAULT_LEASE.as_secs(),
                    stale.len()
                ),
            });
        }
        backend.delete_blobs(&stale).await?;
        backend.flush().await?;
        report.blobs_removed = stale.len() as u64;
        Ok(report)
    }

    /// Appends a descriptor whose key check is sealed with the newest key, so that the older
    /// keys are no longer needed to open the store.
    async fn reseal_descriptor(&self, cipher: &StoreCipher) -> Result<()> {
        let Some(d) = self.read_descriptor().await? else {
            return Ok(());
        };
        if cipher.sealed_with_newest(&d.key_check) {
            return Ok(());
        }
        let d = StoreDescriptor {
            store_id: d.store_id,
            key_check: cipher.seal_frame(STORE_LOG, 0, KEY_CHECK)?,
        };
        let seq = self.tail(STORE_LOG).await?;
        let frames = vec![frame::encode_store(STORE_LOG, seq, &d)?];
        let append = LogAppend::new(STORE_LOG, seq, frames).never_expiring();
        self.append(vec![append]).await
    }

    /// How this store seals, found on first use.
    pub(crate) async fn crypto(&self) -> Result<&Crypto> {
        self.inner
            .crypto
            .get_or_try_init(|| self.find_crypto())
            .await
    }

    /// The codec for synchronous decoding, once [`Store::crypto`] has run; fails closed when
    /// keys are configured but it has not.
    pub(crate) fn codec(&self) -> Result<&Codec> {
        match self.inner.crypto.get() {
            Some(c) => Ok(c.codec()),
            None if self.inner.keys.is_empty() => Ok(&PLAIN),
            None => Err(Error::Decrypt {
                location: "the store".into(),
                key_id: "?".into(),
                reason: "encryption was not set up before reading (a bug in ckpt)".into(),
            }),
        }
    }

    /// Whether the store is encrypted (whether or not it was opened with its key).
    pub async fn is_encrypted(&self) -> Result<bool> {
        let span = op_span!("ckpt.is_encrypted", self);
        let op = async { Ok(!matches!(self.crypto().await?, Crypto::Plain)) };
        self.traced(&span, op).await
    }

    /// Verifies a frame of this store as stored at `seq` of `log`: its checksum, its seal (in
    /// an encrypted store) and its encoding, body included.
    pub async fn verify_frame(&self, log: &str, seq: u64, bytes: &[u8]) -> Result<()> {
        let span = op_span!("ckpt.verify_frame", self; log, seq, bytes = bytes.len());
        let op = async {
            let decoded = self
                .crypto()
                .await?
                .codec()
                .frames
                .decode(log, seq, bytes)?;
            decoded.body(log, seq).map(drop)
        };
        self.traced(&span, op).await
    }

    /// Verifies a blob of this store stored under `hash`: its seal (in an encrypted store) or
    /// its content hash, and its encoding.
    pub async fn verify_blob(&self, hash: &crate::backend::BlobHash, bytes: &[u8]) -> Result<()> {
        let span = op_span!("ckpt.verify_blob", self; bytes = bytes.len());
        let op = async {
            self.crypto()
                .await?
                .codec()
                .blobs
                .decode(hash, bytes)
                .map(drop)
        };
        self.traced(&span, op).await
    }

    async fn find_crypto(&self) -> Result<Crypto> {
        let keys = &self.inner.keys;
        for _ in 0..8 {
            match (self.read_descriptor().await?, Keyring::new(keys)) {
                (Some(d), Some(ring)) => return open_with(d, ring).map(Crypto::sealed),
                (Some(_), None) => return Ok(Crypto::Locked),
                (None, None) => return Ok(Crypto::Plain),
                (None, Some(ring)) => {
                    let logs = self.inner.traced.list_logs().await?;
                    let has_executions = logs.iter().any(|l| !is_reserved_log(l));
                    // Executions may have appeared after a descriptor another store just
                    // wrote (and we did not see): look again before calling this plaintext.
                    if has_executions && self.read_descriptor().await?.is_some() {
                        continue;
                    }
                    if has_executions {
                        return Err(Error::Decrypt {
                            location: "the store".into(),
                            key_id: ring.sealing_id().to_string(),
                            reason: "this store was created without encryption and holds \
                                     plaintext checkpoints; encryption is chosen when a store \
                                     is created: open it without a key, or save into a new store"
                                .into(),
                        });
                    }
                    if self.create_descriptor(&ring).await? {
                        continue;
                    }
                }
            }
        }
        Err(Error::Busy {
            what: "the store's descriptor kept changing while it was being read".into(),
        })
    }

    /// The newest descriptor, if the store is encrypted.
    async fn read_descriptor(&self) -> Result<Option<StoreDescriptor>> {
        let frames = self.inner.traced.scan(STORE_LOG, 1, usize::MAX).await?;
        let Some((seq, bytes)) = frames.last() else {
            return Ok(None);
        };
        match frame::decode(STORE_LOG, *seq, bytes)?.event {
            Event::Store(d) => Ok(Some(d)),
            _ => Err(Error::corrupt(
                format!("the store descriptor at seq {seq}"),
                "not a store descriptor",
            )),
        }
    }

    /// Writes the first descriptor (false if another writer did first: read theirs).
    async fn create_descriptor(&self, ring: &Keyring) -> Result<bool> {
        let store_id = random_id();
        let check = StoreCipher::new(ring.clone(), store_id).seal_frame(STORE_LOG, 0, KEY_CHECK)?;
        let d = StoreDescriptor {
            store_id,
            key_check: check,
        };
        let frames = vec![frame::encode_store(STORE_LOG, 1, &d)?];
        let append = LogAppend::new(STORE_LOG, 1, frames).never_expiring();
        match self.append(vec![append]).await {
            Ok(()) | Err(Error::Conflict { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// The cipher of a store described by `d`, if `ring` holds the key that wrote its check.
fn open_with(d: StoreDescriptor, ring: Keyring) -> Result<Arc<StoreCipher>> {
    let cipher = StoreCipher::new(ring, d.store_id);
    cipher
        .open_frame(STORE_LOG, 0, &d.key_check)
        .map_err(|e| match e {
            Error::Decrypt { key_id, .. } => Error::Decrypt {
                location: "the store".into(),
                reason: format!(
                    "the store was encrypted with key {key_id}, which is not among the keys it \
                     was opened with ({}); open it with that key",
                    cipher.sealing_id()
                ),
                key_id,
            },
            other => other,
        })?;
    Ok(Arc::new(cipher))
}

fn random_id() -> [u8; 16] {
    let key = Key::generate();
    let mut id = [0u8; 16];
    id.copy_from_slice(&blake3::hash(key.to_hex().as_bytes()).as_bytes()[..16]);
    id
}
