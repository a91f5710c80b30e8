//! Trains a zstd dictionary on the frames of existing stores: how `src/codec/frames-1.dict`
//! was made (see `src/codec/dict.rs`).
//!
//! ```sh
//! cargo run --release --example train_frame_dict -- OUT.dict URL [URL...]
//! ```
//!
//! Every frame of every log of each store (plaintext stores only) is opened (checksum verified,
//! decompressed) and its payload becomes one sample, at most 4,000 per store (evenly spaced), so
//! that no one workload outweighs the others; zstd's trainer (`ZDICT_trainFromBuffer`)
//! then builds a 16 KiB dictionary. The program prints how many samples it read and what the
//! dictionary saves on them, compressed one by one as frames are (level 3), against plain zstd.

use std::process::ExitCode;

use ckpt::codec::frame;
use ckpt::Store;

/// The dictionary's size: past 16 KiB the frames of the measured stores shrank by less than 1%.
const DICT_SIZE: usize = 16 * 1024;
const LEVEL: i32 = 3;
const MAX_PER_STORE: usize = 4_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, urls @ ..] = &args[..] else {
        eprintln!("usage: train_frame_dict OUT.dict URL [URL...]");
        return ExitCode::from(2);
    };
    if urls.is_empty() {
        eprintln!("usage: train_frame_dict OUT.dict URL [URL...]");
        return ExitCode::from(2);
    }
    match train(out, urls).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn train(out: &str, urls: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let mut samples = Vec::new();
    for url in urls {
        let mut of_store = Vec::new();
        let store = Store::open(url).await?;
        let backend = store.backend();
        for log in backend.list_logs().await? {
            let mut from = 0;
            loop {
                let frames = backend.scan(&log, from, 1000).await?;
                let Some((last, _)) = frames.last() else {
                    break;
                };
                from = last + 1;
                for (seq, bytes) in frames {
                    of_store.push(frame::payload(&log, seq, &bytes)?);
                }
            }
        }
        let step = of_store.len().div_ceil(MAX_PER_STORE).max(1);
        eprintln!("{url}: {} frames, every {step} taken", of_store.len());
        samples.extend(of_store.into_iter().step_by(step));
    }
    let dict = zstd::dict::from_samples(&samples, DICT_SIZE)?;
    std::fs::write(out, &dict)?;
    let raw: usize = samples.iter().map(Vec::len).sum();
    let mut plain = zstd::bulk::Compressor::new(LEVEL)?;
    let mut primed = zstd::bulk::Compressor::with_dictionary(LEVEL, &dict)?;
    let (mut plain_bytes, mut primed_bytes) = (0, 0);
    for s in &samples {
        plain_bytes += plain.compress(s)?.len().min(s.len());
        primed_bytes += primed.compress(s)?.len().min(s.len());
    }
    println!(
        "{} samples, {raw} bytes: plain zstd {plain_bytes}, with the dictionary {primed_bytes}; \
         wrote {} bytes to {out}",
        samples.len(),
        dict.len()
    );
    Ok(())
}
