//! Frames as read from storage: `frame::decode` with a fixed log and sequence number, then
//! `frame::decode_body` on saves. Must never panic.
//!
//! Almost every mutated input fails the checksum, which would keep the fuzzer out of the header
//! and body decoders. So each input is decoded twice: as it is, and sealed: treated as a frame
//! without its checksum, with the correct checksum appended (computed here as the format
//! documents it: the first 8 bytes of blake3(len(log) u32 LE, log, seq u64 LE, frame bytes)).

#![no_main]

use ckpt::codec::frame;
use libfuzzer_sys::fuzz_target;

const LOG: &str = "fuzz-exec";
const SEQ: u64 = 7;

fn check(bytes: &[u8]) {
    if let Ok(decoded) = frame::decode(LOG, SEQ, bytes) {
        let _ = decoded.body(LOG, SEQ);
    }
}

fn seal(unsealed: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&(LOG.len() as u32).to_le_bytes());
    h.update(LOG.as_bytes());
    h.update(&SEQ.to_le_bytes());
    h.update(unsealed);
    let mut out = unsealed.to_vec();
    out.extend_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&seal(data));
});
