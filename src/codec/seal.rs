//! The sealing stage: what the codec asks of an encryption at rest, and nothing more.
//!
//! The codec knows where sealing goes in a frame or a blob and how sealed bytes are marked, but
//! not how they are sealed, nor with what key: it calls a [`Seal`], which `crypto::StoreCipher`
//! implements for an encrypted store. The dependency runs one way (crypto uses the codec's
//! trait; the codec never names the cipher), and a plaintext store has no sealing stage at all
//! (a [`super::frame::FrameCodec`] or [`super::blob::BlobCodec`] without one).

use std::fmt;

use crate::error::Result;
use crate::hash::BlobHash;

/// Seals and opens frames and blobs in place for one encrypted store, and addresses its blobs.
///
/// Sealed bytes are bound to their place (a frame to its log and sequence number, a blob to its
/// address, both to the store): bytes moved anywhere else fail to open, with
/// [`crate::Error::Decrypt`] naming the place.
pub trait Seal: fmt::Debug + Send + Sync {
    /// The address of `content` in this store (a keyed hash, so that addresses reveal nothing
    /// about contents to whoever lacks the key).
    fn address(&self, content: &[u8]) -> BlobHash;

    /// Seals a frame's inner bytes (`[flags][payload]`) for position `seq` of `log`.
    fn seal_frame(&self, log: &str, seq: u64, inner: &[u8]) -> Result<Vec<u8>>;

    /// Opens what [`Seal::seal_frame`] sealed for exactly this place.
    fn open_frame(&self, log: &str, seq: u64, sealed: &[u8]) -> Result<Vec<u8>>;

    /// Seals a blob's stored form under its address.
    fn seal_blob(&self, hash: &BlobHash, stored: &[u8]) -> Result<Vec<u8>>;

    /// Opens what [`Seal::seal_blob`] sealed under exactly this address.
    fn open_blob(&self, hash: &BlobHash, sealed: &[u8]) -> Result<Vec<u8>>;

    /// The id of the key that seals, as messages name it.
    fn sealing_id(&self) -> String;

    /// Whether `sealed` (as [`Seal::seal_frame`] or [`Seal::seal_blob`] made it) is sealed with
    /// the newest key. Says nothing about whether it opens.
    fn sealed_with_newest(&self, sealed: &[u8]) -> bool;
}
