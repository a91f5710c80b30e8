//! Everything that turns checkpoints into bytes and back: value trees, blobs, deltas and frames.
//!
//! Every decoder here takes bytes read from storage, verifies them (checksum or content hash)
//! and reports damage as [`crate::Error::Corrupt`]; none panics on any input (the fuzz targets in
//! `fuzz/` hold them to that).
//!
//! The codec depends on [`crate::hash`] and [`crate::error`] only: it knows no backend, no
//! cipher and not the checkpoint model. Encryption is a stage of its own ([`seal::Seal`]) that
//! a store's [`Codec`] carries when the store is encrypted. Within the codec, [`ext`] and
//! [`value`] are at the bottom, [`tree`] builds on them and [`blob`], and [`frame`] on all of
//! them.

use std::sync::Arc;

pub mod blob;
mod dict;
pub mod ext;
pub mod frame;
pub mod seal;
pub mod tree;
pub mod value;

/// How one store encodes what it writes and decodes what it reads: its frames and its blobs,
/// sealed alike (through one [`seal::Seal`] in an encrypted store, plainly otherwise). A store
/// builds it once from its cipher; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    /// The frames of executions' logs.
    pub frames: frame::FrameCodec,
    /// Blobs, and their addresses.
    pub blobs: blob::BlobCodec,
}

impl Codec {
    /// The codec of a plaintext store.
    pub const fn plain() -> Self {
        Codec {
            frames: frame::FrameCodec::plain(),
            blobs: blob::BlobCodec::plain(),
        }
    }

    /// The codec of an encrypted store sealing with `seal`.
    pub fn sealed(seal: Arc<dyn seal::Seal>) -> Self {
        Codec {
            frames: frame::FrameCodec::sealed(seal.clone()),
            blobs: blob::BlobCodec::sealed(seal),
        }
    }

    /// Lifting of long leaves out of states ([`tree::externalize`]), addressed as this store
    /// addresses blobs.
    pub fn lifting(&self) -> tree::Lifting {
        tree::Lifting::new(&self.blobs)
    }
}
