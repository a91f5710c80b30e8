//! Search index entries as read from a backend's search table: every family's key and value
//! decoders. Must never panic (the index is checked against the logs, never trusted).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ckpt::fuzzing::decode_search_entry(data);
});
