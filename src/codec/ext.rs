//! The MessagePack extension types ckpt reserves for its own references in stored states.
//!
//! Their own module because two sides need them: [`super::tree`] writes and reads references
//! with them, and [`super::value`] refuses them in user states (which would otherwise read back
//! as references). Both depend on this module, not on each other in a loop.

/// The MessagePack extension type of a blob reference.
pub const REF_EXT_TYPE: i8 = 0x43;
/// The MessagePack extension type of a chunked-leaf reference (its blob is a
/// [`super::tree::Manifest`]).
pub const CHUNKED_EXT_TYPE: i8 = 0x44;

/// Whether an extension type is one ckpt uses for its own references (and refuses in states).
pub fn is_reserved_ext(ext_type: i8) -> bool {
    ext_type == REF_EXT_TYPE || ext_type == CHUNKED_EXT_TYPE
}
