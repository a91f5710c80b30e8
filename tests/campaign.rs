//! A corruption campaign over real store files: a small store is written and closed, then for
//! each of a seeded sample of byte offsets in every file of the store (every byte of the small
//! files), a copy of the store gets that one byte flipped and is opened and read in full. Each
//! flip must end as **no effect** (every checkpoint loads exactly as saved) or **detected** (the
//! open fails with a typed error, a read fails with `Corrupt`, or the store reports recorded
//! damage covering what is missing); never as different data served, a checkpoint silently
//! missing, or a panic.
//!
//! `CKPT_CAMPAIGN_FLIPS` sets the sample size per store (default 2,000); `CKPT_CAMPAIGN_SEED`
//! the seed (default: fixed, printed).

#![cfg(feature = "sled")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt::testing::rng::XorShift;
use ckpt::{Checkpoint, Error, Store};
use serde_json::{json, Value};

/// What was saved: each execution's live versions and their states.
type Truth = BTreeMap<String, BTreeMap<u64, Value>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn seed() -> u64 {
    std::env::var("CKPT_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de)
}

fn flips() -> usize {
    std::env::var("CKPT_CAMPAIGN_FLIPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000)
}

/// A conversation of `turns` saves (the state grows; long messages become blobs), a second
/// execution with a deleted checkpoint, and a third that was cleared.
async fn write_store(url: &str, turns: u64) -> Truth {
    let store = Store::open(url).await.expect("open the store");
    let mut truth = Truth::new();
    let mut messages = Vec::new();
    for i in 1..=turns {
        messages.push(
            json!({ "role": if i % 2 == 0 { "user" } else { "assistant" },
            "text": format!("turn {i}: {}", "lorem ipsum ".repeat(10 + (i as usize * 7) % 40)) }),
        );
        let state = json!({ "messages": messages, "step": i });
        let saved = store
            .save(Checkpoint::new("chat", "llm", &state).unwrap())
            .await
            .unwrap();
        truth
            .entry("chat".into())
            .or_default()
            .insert(saved.version, state);
    }
    for i in 1..=4u64 {
        let state = json!({ "i": i, "blob": "x".repeat(300 + i as usize) });
        let saved = store
            .save(Checkpoint::new("other", "n", &state).unwrap())
            .await
            .unwrap();
        truth
            .entry("other".into())
            .or_default()
            .insert(saved.version, state);
    }
    store.delete(&"other@2".parse().unwrap()).await.unwrap();
    truth.get_mut("other").unwrap().remove(&2);
    store
        .save(Checkpoint::new("gone", "n", &json!({ "x": 1 })).unwrap())
        .await
        .unwrap();
    store.clear("gone").await.unwrap();
    // Everything in the store's main files (SQLite: the WAL checkpointed into the database
    // file), so that a WAL file removed as the store closes holds nothing.
    store.flush().await.unwrap();
    truth
}

/// How one flip ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    NoEffect,
    OpenRefused,
    ReadFailed,
    MissingReported,
}

/// Opens the (damaged) store at `url` and reads every checkpoint of `truth`; `Err` says how the
/// promise was broken.
async fn check(url: &str, truth: &Truth) -> Result<Outcome, String> {
    let store = match Store::open(url).await {
        Ok(store) => store,
        Err(e @ (Error::Corrupt { .. } | Error::Backend { .. } | Error::Decrypt { .. })) => {
            let _ = e;
            return Ok(Outcome::OpenRefused);
        }
        Err(e) => return Err(format!("open failed with an unexpected error: {e}")),
    };
    let damage = store.recorded_damage().await.unwrap_or_default();
    let mut outcome = Outcome::NoEffect;
    for (exec, versions) in truth {
        for (version, state) in versions {
            match store.at_version(exec, *version).await {
                Ok(cp) => {
                    let got: Value = cp.state().map_err(|e| format!("{exec}@{version}: {e}"))?;
                    if &got != state {
                        return Err(format!("{exec}@{version} loaded different data"));
                    }
                }
                Err(Error::Corrupt { .. } | Error::Decrypt { .. }) => {
                    outcome = outcome.max(Outcome::ReadFailed)
                }
                Err(Error::NotFound { .. }) => {
                    // Missing without an error: only acceptable when the store knows (recorded
                    // damage covering it, or verify reporting damage, checked below).
                    let covered = damage.iter().any(|d| {
                        d.log.as_deref().is_none_or(|l| l == exec)
                            && d.lost.is_none_or(|(from, to)| (from..to).contains(version))
                    });
                    let verified_damage = store.verify().await.map_or(true, |r| !r.is_ok());
                    if !covered && !verified_damage {
                        return Err(format!(
                            "{exec}@{version} is silently missing (and verify passes)"
                        ));
                    }
                    outcome = outcome.max(Outcome::MissingReported);
                }
                Err(e) => outcome = outcome.max(classify_other(exec, *version, e)?),
            }
        }
    }
    if outcome == Outcome::NoEffect {
        return Ok(outcome);
    }
    // Whatever a read found, `verify` (what a user runs to learn the state of a store) must
    // report damage too: it may never pass over a store that reads wrong.
    match store.verify().await {
        Ok(report) if report.is_ok() => {
            Err(format!("reads failed ({outcome:?}) but verify passed"))
        }
        Ok(_) | Err(_) => Ok(outcome),
    }
}

/// Errors other than Corrupt/NotFound count as detection only when they are about damage.
fn classify_other(exec: &str, version: u64, e: Error) -> Result<Outcome, String> {
    match e {
        Error::Backend { .. } | Error::Codec { .. } => Ok(Outcome::ReadFailed),
        other => Err(format!("{exec}@{version}: unexpected error {other}")),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        match std::fs::copy(&file, &target) {
            Ok(_) => {}
            // SQLite removes its (emptied) WAL and shared-memory files as the last connection
            // of a closed store goes, which may be while this copies.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("copying {}: {e}", file.display()),
        }
    }
}

/// The offsets to flip in each file: every byte of files up to 256 bytes, and a share of
/// `total` proportional to size (at least 64) in the others, drawn by `rng`. A file is weighed
/// at most 16 KiB: the sled WAL is a 128 KiB file of mostly zeros after a clean close.
fn sample(files: &[(PathBuf, u64)], total: usize, rng: &mut XorShift) -> Vec<(PathBuf, u64)> {
    let weight = |len: u64| len.min(16 * 1024);
    let bytes: u64 = files.iter().map(|(_, len)| weight(*len)).sum();
    let mut out = Vec::new();
    for (file, len) in files {
        if *len == 0 {
            continue;
        }
        if *len <= 256 {
            out.extend((0..*len).map(|o| (file.clone(), o)));
            continue;
        }
        let share = ((total as u64 * weight(*len)) / bytes.max(1))
            .max(64)
            .min(*len);
        out.extend((0..share).map(|_| (file.clone(), rng.below(*len))));
    }
    out
}

/// Runs the campaign on a store written to `make_url(dir)` and returns the tally.
fn campaign(name: &str, make_url: impl Fn(&Path) -> String) -> BTreeMap<Outcome, usize> {
    let rt = runtime();
    // On tmpfs when there is one: each flip opens a copy, and the syncs of an open (sled's,
    // the WAL's, the heads file's) would dominate on a disk. The bytes are the same.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let pristine = base.path().join("pristine");
    std::fs::create_dir_all(&pristine).unwrap();
    let truth = rt.block_on(write_store(&make_url(&pristine), 24));
    // A control: the undamaged copy reads back in full.
    let control = base.path().join("control");
    copy_dir(&pristine, &control);
    assert_eq!(
        rt.block_on(check(&make_url(&control), &truth)),
        Ok(Outcome::NoEffect),
        "{name}: the undamaged store must read back exactly"
    );
    let files: Vec<(PathBuf, u64)> = files_under(&pristine)
        .into_iter()
        .map(|f| {
            let len = std::fs::metadata(&f).unwrap().len();
            (f.strip_prefix(&pristine).unwrap().to_path_buf(), len)
        })
        .collect();
    let seed = seed();
    eprintln!("{name}: campaign seed {seed}, files {files:?}");
    let mut rng = XorShift::from_state(seed);
    let offsets = sample(&files, flips(), &mut rng);
    assert!(offsets.len() >= flips().min(files.iter().map(|f| f.1 as usize).sum()));
    let mut tally = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, (file, offset)) in offsets.iter().enumerate() {
        let copy = base.path().join(format!("flip-{i}"));
        copy_dir(&pristine, &copy);
        let path = copy.join(file);
        let Ok(mut bytes) = std::fs::read(&path) else {
            // A file SQLite removed after the listing (see `copy_dir`): nothing to flip.
            std::fs::remove_dir_all(&copy).ok();
            continue;
        };
        bytes[*offset as usize] ^= 1 << rng.below(8);
        std::fs::write(&path, &bytes).unwrap();
        let url = make_url(&copy);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(check(&url, &truth))
        }));
        let failed = match result {
            Ok(Ok(outcome)) => {
                *tally.entry(outcome).or_insert(0) += 1;
                false
            }
            Ok(Err(broken)) => {
                failures.push(format!("{} @ {offset}: {broken}", file.display()));
                true
            }
            Err(_) => {
                failures.push(format!("{} @ {offset}: panicked", file.display()));
                true
            }
        };
        // CKPT_CAMPAIGN_KEEP=DIR keeps the damaged copies that broke the promise, to study.
        match std::env::var_os("CKPT_CAMPAIGN_KEEP") {
            Some(keep) if failed => {
                let kept = Path::new(&keep).join(format!("{name}-{i}"));
                copy_dir(&copy, &kept);
                // The pristine copy too, to compare with.
                copy_dir(
                    &pristine,
                    &Path::new(&keep).join(format!("{name}-pristine")),
                );
                std::fs::remove_dir_all(&copy).ok();
            }
            _ => {
                std::fs::remove_dir_all(&copy).ok();
            }
        }
    }
    let run = tally.values().sum::<usize>() + failures.len();
    eprintln!("{name}: {run} flips: {tally:?}");
    assert!(
        run >= offsets.len() * 9 / 10,
        "{name}: only {run} of {} flips ran",
        offsets.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} of {run} flips broke the promise (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    tally
}

#[test]
fn every_flip_in_a_sled_store_is_harmless_or_detected() {
    let tally = campaign("sled", |dir| format!("sled://{}", dir.join("db").display()));
    // The campaign reached the data: some flips must have been detected.
    assert!(tally.keys().any(|o| *o != Outcome::NoEffect), "{tally:?}");
}

#[cfg(feature = "sqlite")]
#[test]
fn every_flip_in_a_sqlite_store_is_harmless_or_detected() {
    let tally = campaign("sqlite", |dir| {
        format!("sqlite://{}", dir.join("store.db").display())
    });
    assert!(tally.keys().any(|o| *o != Outcome::NoEffect), "{tally:?}");
}
