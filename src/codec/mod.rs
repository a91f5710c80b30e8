//! Everything that turns checkpoints into bytes and back: value trees, blobs, deltas and frames.
//!
//! Every decoder here takes bytes read from storage, verifies them (checksum or content hash)
//! and reports damage as [`crate::Error::Corrupt`]; none panics on any input (the fuzz targets in
//! `fuzz/` hold them to that).

pub mod blob;
pub mod ext;
pub mod frame;
pub mod tree;
pub mod value;
