//! Frames and blobs of an encrypted store as read from storage. Must never panic; anything but
//! a frame or blob sealed for its place under the fixed key is an error.
//!
//! - the input as a sealed frame at a fixed log and sequence (checksum, seal, event, body);
//! - the input after its first 32 bytes as a sealed blob under those bytes as its address.

#![no_main]

use ckpt::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::decode_sealed_frame(data);
    if let Some((hash, stored)) = data.split_first_chunk::<32>() {
        let _ = fuzzing::decode_sealed_blob(hash, stored);
    }
});
