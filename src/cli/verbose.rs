//! `ckpt -v`: the library's spans on stderr while the command runs (`-v`: store operations and
//! graph steps, each printed when it closes with its fields and time; `-vv`: every backend
//! call too), and each store's metrics when it ends. stdout is untouched, so `-v` never
//! changes what a script reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ckpt::store::Metrics;
use ckpt::Store;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt as _;

/// Whether `-v` was given (stores are then remembered for their metrics).
static ON: AtomicBool = AtomicBool::new(false);

/// The counters of every store the command opened, with the URL it was opened on (as messages
/// show it): handles on the counters, not the stores, so that a store closes when the command
/// drops it (sled holds a lock on its directory until then).
static OPENED: Mutex<Vec<(String, Arc<Metrics>)>> = Mutex::new(Vec::new());

/// Installs the stderr subscriber for verbosity `level` (the count of `-v`; 0 installs
/// nothing: without a subscriber the spans cost next to nothing).
pub fn install(level: u8) {
    if level == 0 {
        return;
    }
    let max = if level == 1 {
        tracing::Level::DEBUG
    } else {
        tracing::Level::TRACE
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false);
    let subscriber = tracing_subscriber::registry()
        .with(stderr)
        .with(Targets::new().with_target("ckpt", max));
    // Only fails when a subscriber is already installed: then that one reports.
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        ON.store(true, Ordering::Relaxed);
    }
}

/// Remembers `store`, opened on `url`, for [`report`] (when `-v` was given).
pub fn opened(url: &str, store: &Store) {
    if ON.load(Ordering::Relaxed) {
        OPENED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((ckpt::url::redact(url), store.metrics_handle()));
    }
}

/// Prints, on stderr, the metrics of the stores the command opened: one line per URL, the
/// sum over every store opened on it (a command that reopens its store, like `demo`, prints
/// one line for both).
pub fn report() {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
    let mut by_url: BTreeMap<&str, Vec<(&'static str, u64)>> = BTreeMap::new();
    for (url, metrics) in opened.iter() {
        let counters = metrics.snapshot().counters();
        let sum = by_url.entry(url.as_str()).or_default();
        if sum.is_empty() {
            sum.extend(counters);
        } else {
            for ((_, total), (_, n)) in sum.iter_mut().zip(counters) {
                *total += n;
            }
        }
    }
    for (url, counters) in by_url {
        let line: Vec<String> = counters
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        eprintln!("ckpt metrics for {url}: {}", line.join(" "));
    }
}
