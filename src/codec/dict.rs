//! The built-in zstd dictionary that frames and records are compressed with.
//!
//! Most frames are small (a delta of a few hundred bytes, a pending write of about a hundred),
//! and zstd alone finds little to reuse inside one. Primed with a dictionary of what such frames
//! usually say, it does: MessagePack op lists and paths, metadata keys, and the vocabulary of the
//! runtime that saves through ckpt. The one built in is LangGraph's (through `ckpt_langgraph`):
//! `checkpoint`, `channel_versions`, `versions_seen`, zero-padded version strings, `lg:id`,
//! langchain-core message fields. It was trained on other graphs than the one it is measured
//! on: on `python/bench.py`'s conversation it shrinks frames by a third (2.12 -> 1.54 MB of
//! frames); on `ckpt bench`'s workloads, whose states share no vocabulary with it, it gains 2
//! to 5% (where plain zstd, which frames of under 512 bytes used to skip, gained nothing).
//!
//! The dictionary is data compiled into the binary (`frames-1.dict`, 16 KiB), never stored: a
//! frame compressed with it says so in its flags (`FLAG_ZSTD_DICT` in [`super::frame`]), and
//! every later ckpt keeps these exact bytes to read it (a test checks their blake3). A better
//! dictionary would be a new file under a new flag, never an edit of this one.
//!
//! How it was made: `python python/examples/agent_corpus.py sled://CORPUS` (a tool-calling
//! agent over langchain-core messages and the README's plan/answer graph, 6 threads x 40 turns,
//! seed 5), then `cargo run --release --example train_frame_dict -- frames-1.dict
//! sled://CORPUS` (zstd's trainer, 16 KiB). Its bytes come from that synthetic run (random
//! words, ids, versions), no one's state. LangGraph's ids and timestamps differ from run to
//! run, so a new run trains a slightly different dictionary: this file is the reference.

use std::cell::RefCell;
use std::sync::LazyLock;

use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::CParameter;

use super::blob::{self, ZSTD_LEVEL};

/// The dictionary's bytes (a zstd dictionary, as zstd's trainer writes it).
pub(crate) const FRAMES_1: &[u8] = include_bytes!("frames-1.dict");

static ENCODER: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(FRAMES_1, ZSTD_LEVEL));
static DECODER: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(FRAMES_1));

thread_local! {
    // A context per thread, bound to the prepared dictionary once: loading a dictionary costs
    // more than compressing a delta with it.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` with the dictionary. The zstd frame carries neither the dictionary's id nor
/// the content size: the frame's flags name the dictionary and its header the length.
pub(crate) fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    blob::compress_in(
        &COMPRESSOR,
        || {
            let mut c = zstd::bulk::Compressor::with_prepared_dictionary(&ENCODER)?;
            c.set_parameter(CParameter::DictIdFlag(false))?;
            c.set_parameter(CParameter::ContentSizeFlag(false))?;
            Ok(c)
        },
        data,
    )
}

/// Decompresses `payload` (from [`compress`]) expected to hold `len` bytes, never allocating much
/// more than it actually decodes (plus one byte, to detect overlong output).
pub(crate) fn decompress_bounded(payload: &[u8], len: usize) -> Result<Vec<u8>, String> {
    blob::decompress_bounded_in(
        &DECOMPRESSOR,
        || zstd::bulk::Decompressor::with_prepared_dictionary(&DECODER),
        |p| {
            zstd::stream::read::Decoder::with_prepared_dictionary(
                std::io::BufReader::new(p),
                &DECODER,
            )
        },
        payload,
        len,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAMES_1_LEN: usize = 16_384;
    const FRAMES_1_BLAKE3: &str =
        "9f0defbe538effc58de0d800dde404fc720340da775d4d621ae5591ea50d6bee";

    #[test]
    fn round_trips_small_large_and_empty() {
        let small = b"\x93\x00\x93\xaacheckpoint\x01\xa2ts\xd9 2026-12-04T20:20:01.279686+00:00";
        let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for data in [&b""[..], &small[..], &large[..]] {
            let c = compress(data).unwrap();
            assert_eq!(decompress_bounded(&c, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn the_dictionary_is_the_one_frames_were_written_with() {
        // Frames written with `FLAG_ZSTD_DICT` need these exact bytes forever.
        assert_eq!(FRAMES_1.len(), FRAMES_1_LEN);
        assert_eq!(
            crate::hash::hex(blake3::hash(FRAMES_1).as_bytes()),
            FRAMES_1_BLAKE3
        );
    }

    #[test]
    fn damaged_or_truncated_input_is_an_error_not_a_panic() {
        let data = b"channel_versions versions_seen updated_channels".repeat(20);
        let c = compress(&data).unwrap();
        // A cut stream decodes to less (the frame decoder checks the length) or fails.
        assert!(decompress_bounded(&c[..c.len() / 2], data.len()).map_or(true, |out| out != data));
        assert!(decompress_bounded(&c, blob::MAX_BLOB_LEN + 1).is_err());
    }
}
