//! Persisted projections as read from a backend's side table: checksum, decompression, then the
//! record's head and window. Must never panic (a record is a cache: anything wrong is ignored).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ckpt::fuzzing::decode_projection_record(data);
});
