//! What the store tells a `tracing` subscriber and counts in its metrics: a span on every
//! operation, backend call and graph step with the fields that say what happened (execution,
//! version, backend, bytes, outcome), never a state, a metadata or write value, or a key; one
//! event for a failed save, with its cause chain; counters that add up.
//!
//! Each test installs a capturing subscriber for its own thread only (`with_default`) and
//! runs the store on a current-thread runtime inside it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use ckpt::backend::memory::MemoryBackend;
use ckpt::testing::{Call, Fault, FaultControl, Faulty};
use ckpt::{Checkpoint, HistoryQuery, Store, Write};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A marker no id, name or number contains: found anywhere in what was traced, it leaked from
/// a state, a metadata value or a write.
const MARKER: &str = "SECRET-STATE-7f3a";

/// A span as it closed: its name and every field recorded (at creation or later).
#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    fields: BTreeMap<&'static str, String>,
    /// The name of its parent span, if any.
    parent: Option<&'static str>,
}

/// An event: its level, its fields (`message` among them) and the span it happened in.
#[derive(Debug, Clone)]
struct EventRec {
    level: Level,
    fields: BTreeMap<&'static str, String>,
    span: Option<&'static str>,
}

#[derive(Debug, Default)]
struct Log {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
}

impl Log {
    fn spans(&self, name: &str) -> Vec<&SpanRec> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    /// Every value recorded, in spans and events, with where it was.
    fn values(&self) -> Vec<(String, &str)> {
        let spans = self.spans.iter().flat_map(|s| {
            s.fields
                .iter()
                .map(move |(k, v)| (format!("span {}.{k}", s.name), v.as_str()))
        });
        let events = self.events.iter().flat_map(|e| {
            e.fields
                .iter()
                .map(move |(k, v)| (format!("event {:?}.{k}", e.level), v.as_str()))
        });
        spans.chain(events).collect()
    }

    /// Panics naming the first recorded value that contains `needle`.
    fn assert_nowhere(&self, needle: &str) {
        for (place, value) in self.values() {
            let shown: String = value.chars().take(200).collect();
            assert!(
                !value.contains(needle),
                "{needle:?} was traced in {place}: {shown}"
            );
        }
    }

    fn save_failures(&self) -> Vec<&EventRec> {
        self.events
            .iter()
            .filter(|e| e.fields.get("message").map(String::as_str) == Some("save failed"))
            .collect()
    }
}

/// The capturing layer: records spans (index kept in the span's extensions, since span ids
/// are reused) and events.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Log>>);

struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent().map(|p| p.name());
        let mut log = self.0.lock().unwrap();
        log.spans.push(SpanRec {
            name: attrs.metadata().name(),
            fields,
            parent,
        });
        let at = log.spans.len() - 1;
        span.extensions_mut().insert(Index(at));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(at) = span.extensions().get::<Index>().map(|i| i.0) else {
            return;
        };
        let mut log = self.0.lock().unwrap();
        values.record(&mut Fields(&mut log.spans[at].fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let span = ctx.event_span(event).map(|s| s.name());
        self.0.lock().unwrap().events.push(EventRec {
            level: *event.metadata().level(),
            fields,
            span,
        });
    }
}

/// Runs `f` on a current-thread runtime with the capturing subscriber as this thread's
/// default; returns its output and what was traced.
fn traced<F: Future>(f: impl FnOnce() -> F) -> (F::Output, Log) {
    traced_up_to(LevelFilter::TRACE, f)
}

/// [`traced`] with a subscriber that wants only what `max` lets through.
fn traced_up_to<F: Future>(max: LevelFilter, f: impl FnOnce() -> F) -> (F::Output, Log) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone().with_filter(max));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let out = tracing::subscriber::with_default(subscriber, || runtime.block_on(f()));
    drop(runtime);
    let log = std::mem::take(&mut *capture.0.lock().unwrap());
    (out, log)
}

fn secret_state(step: u32) -> serde_json::Value {
    serde_json::json!({
        "step": step,
        "note": format!("{MARKER} step {step}"),
        // Long enough to be lifted into a blob: the blob path is traced too.
        "document": format!("{MARKER} ").repeat(64),
    })
}

/// Saves, reads and attaches writes whose states, metadata and values all hold the marker;
/// returns the version of the last save.
async fn exercise(store: &Store) -> u64 {
    let mut last = None;
    for step in 1..=3 {
        let cp = Checkpoint::new("run-1", "plan", &secret_state(step))
            .unwrap()
            .with_metadata("note", format!("{MARKER} meta"));
        last = Some(store.save(cp).await.expect("save"));
    }
    let last = last.expect("saved");
    let loaded = store.load(&last.id).await.expect("load");
    assert!(loaded.state_json().unwrap()["note"]
        .as_str()
        .unwrap()
        .contains(MARKER));
    store.latest("run-1").await.expect("latest");
    assert_eq!(store.list("run-1").await.expect("list").len(), 3);
    store
        .history("run-1", HistoryQuery::default())
        .await
        .expect("history");
    let write = Write::new("task-1", "out", &format!("{MARKER} write")).unwrap();
    store
        .put_writes(&last.id, vec![write])
        .await
        .expect("put_writes");
    assert_eq!(store.writes(&last.id).await.expect("writes").len(), 1);
    let fork = store.fork(&last.id, "run-2").await.expect("fork");
    store.delete(&fork.id).await.expect("delete");
    store.gc().await.expect("gc");
    last.version
}

/// The spans of `exercise` on `backend`, with their fields, and no marker anywhere.
fn assert_exercise_traced(log: &Log, backend: &str, version: u64) {
    let saves = log.spans("ckpt.save");
    assert_eq!(saves.len(), 3, "{saves:#?}");
    for (i, save) in saves.iter().enumerate() {
        let f = &save.fields;
        assert_eq!(f["execution_id"], "run-1", "{save:?}");
        assert_eq!(f["version"], (i + 1).to_string(), "{save:?}");
        assert_eq!(f["backend"], backend, "{save:?}");
        assert_eq!(f["outcome"], "ok", "{save:?}");
        assert!(f["bytes"].parse::<u64>().unwrap() > 0, "{save:?}");
        assert!(f.contains_key("elapsed_us"), "{save:?}");
    }
    let load = log.spans("ckpt.load");
    // `load`, and the one `fork` made of its source.
    assert_eq!(load.len(), 2, "{load:#?}");
    let f = &load[0].fields;
    assert_eq!(f["execution_id"], "run-1");
    assert_eq!(f["version"], version.to_string());
    assert!(f["bytes"].parse::<u64>().unwrap() > 0, "{f:?}");
    assert_eq!(f["outcome"], "ok");
    assert_eq!(load[1].parent, Some("ckpt.fork"));
    for name in [
        "ckpt.latest",
        "ckpt.list",
        "ckpt.history",
        "ckpt.put_writes",
        "ckpt.writes",
        "ckpt.fork",
        "ckpt.delete",
        "ckpt.gc",
    ] {
        let spans = log.spans(name);
        assert!(!spans.is_empty(), "no {name} span");
        for span in spans {
            assert_eq!(span.fields["outcome"], "ok", "{span:?}");
            assert_eq!(span.fields["backend"], backend, "{span:?}");
        }
    }
    assert_eq!(log.spans("ckpt.list")[0].fields["count"], "3");
    assert_eq!(log.spans("ckpt.put_writes")[0].fields["count"], "1");
    // Backend calls, inside the operation that made them.
    let commits = log.spans("ckpt.backend.commit");
    assert!(
        commits.iter().any(|c| c.parent == Some("ckpt.save")
            && c.fields["outcome"] == "ok"
            && c.fields["bytes"].parse::<u64>().unwrap() > 0),
        "{commits:#?}"
    );
    assert!(!log.spans("ckpt.backend.scan").is_empty());
    assert!(log.save_failures().is_empty(), "{:#?}", log.events);
    log.assert_nowhere(MARKER);
}

#[test]
fn a_memory_store_traces_its_operations_and_never_a_state() {
    let (version, log) = traced(|| async {
        let store = Store::memory();
        exercise(&store).await
    });
    assert_exercise_traced(&log, "memory", version);
}

#[cfg(feature = "sled")]
#[test]
fn a_sled_store_traces_its_operations_and_never_a_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = dir.path().join("store");
    let url = url.to_str().expect("UTF-8 path").to_owned();
    let (version, log) = traced(|| async move {
        let store = Store::open(&url).await.expect("open sled");
        exercise(&store).await
    });
    assert_exercise_traced(&log, "sled", version);
    let open = log.spans("ckpt.open");
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0].fields["backend"], "sled");
    assert_eq!(open[0].fields["outcome"], "ok");
}

#[test]
fn an_encrypted_store_never_traces_its_key() {
    let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let key = ckpt::crypto::Key::from_bytes(bytes);
    let hex = key.to_hex();
    let (version, log) = traced(|| async move {
        let store = Store::builder("memory://")
            .encryption(key)
            .open()
            .await
            .expect("open encrypted");
        assert!(store.is_encrypted().await.expect("is_encrypted"));
        exercise(&store).await
    });
    assert_exercise_traced(&log, "memory", version);
    for needle in [
        hex.clone(),
        hex.to_uppercase(),
        format!("{bytes:?}"),
        format!("{:?}", &bytes[..8]),
    ] {
        log.assert_nowhere(&needle);
    }
}

#[cfg(feature = "graph")]
#[test]
fn graph_steps_are_traced_without_their_state() {
    use ckpt::graph::{CompileConfig, Outcome, RunConfig, StateGraph, END};

    #[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
    struct St {
        notes: Vec<String>,
    }

    let (outcome, log) = traced(|| async {
        let store: Arc<dyn ckpt::CheckpointStore> = Arc::new(Store::memory());
        let mut g = StateGraph::<St>::new();
        for (name, next) in [("think", "act"), ("act", END)] {
            g.add_node(name, move |mut s: St| async move {
                s.notes.push(format!("{MARKER} from {name}"));
                Ok::<_, std::io::Error>(s)
            });
            g.add_edge(name, next);
        }
        g.set_entry_point("think");
        let app = g
            .compile(CompileConfig::default().checkpointer(store))
            .expect("compile");
        app.invoke(St::default(), RunConfig::execution_id("graph-1"))
            .await
            .expect("run")
    });
    let Outcome::Finished(state) = outcome else {
        panic!("not finished: {outcome:?}");
    };
    assert_eq!(state.notes.len(), 2);
    let steps = log.spans("ckpt.graph.step");
    assert_eq!(steps.len(), 2, "{steps:#?}");
    for (i, (step, node)) in steps.iter().zip(["think", "act"]).enumerate() {
        let f = &step.fields;
        assert_eq!(f["execution_id"], "graph-1", "{step:?}");
        assert_eq!(f["step"], (i + 1).to_string(), "{step:?}");
        assert_eq!(f["node"], node, "{step:?}");
        assert_eq!(f["outcome"], "ok", "{step:?}");
        // Saved at once (the default durability): the input is version 1, the steps follow.
        assert_eq!(f["version"], (i + 2).to_string(), "{step:?}");
    }
    // Each step's save runs in the step's span.
    let saves: Vec<_> = log
        .spans
        .iter()
        .filter(|s| s.name.starts_with("ckpt.save") && s.parent == Some("ckpt.graph.step"))
        .collect();
    assert_eq!(saves.len(), 2, "{:#?}", log.spans);
    log.assert_nowhere(MARKER);
}

#[test]
fn a_conflicting_save_is_logged_once_as_a_warning() {
    let (result, log) = traced(|| async {
        let store = Store::memory();
        let v1 = store
            .save(Checkpoint::new("run-1", "a", &secret_state(1)).unwrap())
            .await
            .expect("v1");
        store
            .save(Checkpoint::new("run-1", "b", &secret_state(2)).unwrap())
            .await
            .expect("v2");
        // Expects v1 to be the latest: it is not any more.
        let late = Checkpoint::new("run-1", "c", &secret_state(3)).unwrap();
        store.save_after(late, Some(&v1.id)).await
    });
    assert!(result.expect_err("a conflict").is_conflict());
    let failures = log.save_failures();
    assert_eq!(failures.len(), 1, "{:#?}", log.events);
    let event = failures[0];
    assert_eq!(event.level, Level::WARN);
    assert_eq!(event.fields["operation"], "save_after");
    assert_eq!(event.fields["execution_id"], "run-1");
    assert_eq!(event.fields["error_kind"], "conflict");
    assert!(
        event.fields["error"].starts_with("conflict on execution \"run-1\""),
        "{event:?}"
    );
    assert_eq!(event.span, Some("ckpt.save_after"));
    let span = log.spans("ckpt.save_after");
    assert_eq!(span[0].fields["outcome"], "conflict");
    log.assert_nowhere(MARKER);
}

#[test]
fn a_subscriber_that_wants_only_warnings_gets_the_failure_and_no_span() {
    let (result, log) = traced_up_to(LevelFilter::WARN, || async {
        let store = Store::memory();
        let v1 = store
            .save(Checkpoint::new("run-1", "a", &secret_state(1)).unwrap())
            .await
            .expect("v1");
        store
            .save(Checkpoint::new("run-1", "b", &secret_state(2)).unwrap())
            .await
            .expect("v2");
        let late = Checkpoint::new("run-1", "c", &secret_state(3)).unwrap();
        store.save_after(late, Some(&v1.id)).await
    });
    assert!(result.expect_err("a conflict").is_conflict());
    assert!(log.spans.is_empty(), "{:#?}", log.spans);
    let failures = log.save_failures();
    assert_eq!(failures.len(), 1, "{:#?}", log.events);
    // Outside any span, it still says which execution and why.
    assert_eq!(failures[0].span, None);
    assert_eq!(failures[0].fields["execution_id"], "run-1");
    assert_eq!(failures[0].fields["error_kind"], "conflict");
    log.assert_nowhere(MARKER);
}

#[test]
fn a_failed_save_is_logged_once_with_its_cause_chain() {
    let control = FaultControl::new();
    let backend = Arc::new(Faulty::with_control(
        Arc::new(MemoryBackend::new()),
        control.clone(),
    ));
    let (result, log) = traced(|| async move {
        let store = Store::with_backend(backend);
        store
            .save(Checkpoint::new("run-1", "a", &secret_state(1)).unwrap())
            .await
            .expect("first save");
        control.on_nth(Call::Commit, 1, Fault::FailBefore);
        let cp = Checkpoint::new("run-1", "b", &secret_state(2)).unwrap();
        store.save(cp).await
    });
    let e = result.expect_err("the injected fault");
    assert!(ckpt::testing::is_injected(&e), "{e}");
    let failures = log.save_failures();
    assert_eq!(failures.len(), 1, "{:#?}", log.events);
    let event = failures[0];
    assert_eq!(event.level, Level::ERROR);
    assert_eq!(event.fields["error_kind"], "backend");
    // The message, then its source (which `Display` of the error alone leaves out).
    let chain = &event.fields["error"];
    assert!(chain.starts_with(&e.to_string()), "{chain}");
    assert!(chain.ends_with(": FailBefore"), "{chain}");
    // The layers below the save reported the failure in their spans, and logged nothing.
    let commits = log.spans("ckpt.backend.commit");
    assert_eq!(
        commits.last().map(|c| c.fields["outcome"].as_str()),
        Some("backend")
    );
    assert_eq!(log.events.len(), 1, "{:#?}", log.events);
    log.assert_nowhere(MARKER);
}

#[test]
fn a_refused_save_is_logged_once_too() {
    let (result, log) = traced(|| async {
        let store = Store::memory();
        let other = store
            .save(Checkpoint::new("run-2", "a", &secret_state(1)).unwrap())
            .await
            .expect("save");
        // A parent must be in the checkpoint's own execution.
        let cp = Checkpoint::new("run-1", "a", &secret_state(2)).unwrap();
        store.save_with_parent(cp, &other.id).await
    });
    let e = result.expect_err("a parent in another execution");
    assert_eq!(e.kind(), "invalid_input");
    let failures = log.save_failures();
    assert_eq!(failures.len(), 1, "{:#?}", log.events);
    assert_eq!(failures[0].level, Level::ERROR);
    assert_eq!(failures[0].fields["operation"], "save_with_parent");
    assert_eq!(failures[0].fields["error_kind"], "invalid_input");
    let span = log.spans("ckpt.save_with_parent");
    assert_eq!(span[0].fields["outcome"], "invalid_input");
    log.assert_nowhere(MARKER);
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

#[test]
fn metrics_count_saves_loads_and_bytes() {
    block_on(async {
        let store = Store::memory();
        let clone = store.clone();
        for step in 1..=5 {
            let cp = Checkpoint::new("run-1", "plan", &secret_state(step)).unwrap();
            clone.save(cp).await.expect("save");
        }
        let batch = (1..=3)
            .map(|n| Checkpoint::new(&format!("batch-{n}"), "x", &n).unwrap())
            .collect();
        store.save_batch(batch).await.expect("batch");
        let m = store.metrics();
        assert_eq!(m.saves, 6);
        assert_eq!(m.checkpoints_saved, 8);
        assert_eq!(m.save_failures, 0);
        assert_eq!(m.conflicts, 0);
        assert_eq!(m.frames_written, 8);
        // Every frame and blob the save path wrote, and nothing else was written.
        let w = store.write_stats();
        assert_eq!(m.bytes_written, w.frame_bytes + w.blob_bytes);
        assert!(m.blobs_written > 0, "{m:?}");
        assert_eq!(m.loads, 0);

        store.latest("run-1").await.expect("latest");
        store.list("run-1").await.expect("list");
        assert_eq!(store.metrics().loads, 6);
        // A cold store reads from the backend, and counts from 0.
        let cold = store.reopened();
        assert_eq!(cold.metrics().saves, 0);
        cold.latest("run-1").await.expect("latest");
        let m = cold.metrics();
        assert_eq!(m.loads, 1);
        assert!(m.bytes_read > 0, "{m:?}");
        assert!(m.backend_calls > 0, "{m:?}");
        assert_eq!(m.backend_errors, 0);
    });
}

#[test]
fn metrics_count_a_conflict_and_the_retry_of_a_lost_race() {
    block_on(async {
        let backend: Arc<dyn ckpt::backend::Backend> = Arc::new(MemoryBackend::new());
        let (a, b) = (
            Store::with_backend(backend.clone()),
            Store::with_backend(backend),
        );
        let v1 = b
            .save(Checkpoint::new("run-1", "b", &1).unwrap())
            .await
            .expect("v1");
        a.save(Checkpoint::new("run-1", "a", &2).unwrap())
            .await
            .expect("v2");
        // `b` still believes v1 is the latest: its plain save loses the race, looks again
        // and lands on top.
        b.save(Checkpoint::new("run-1", "b", &3).unwrap())
            .await
            .expect("v3");
        let m = b.metrics();
        assert_eq!((m.saves, m.retries, m.conflicts), (2, 1, 0), "{m:?}");
        assert_eq!(m.backend_errors, 1, "the lost compare-and-append");
        // A save that must follow v1 is refused: one conflict, one failure.
        let late = Checkpoint::new("run-1", "b", &4).unwrap();
        let e = b
            .save_after(late, Some(&v1.id))
            .await
            .expect_err("conflict");
        assert!(e.is_conflict());
        let m = b.metrics();
        assert_eq!((m.saves, m.save_failures, m.conflicts), (2, 1, 1), "{m:?}");
        assert_eq!(a.metrics().conflicts, 0);
    });
}

#[test]
fn metrics_count_what_gc_reclaims() {
    block_on(async {
        let store = Store::memory();
        for step in 1..=3 {
            let cp = Checkpoint::new("run-1", "plan", &secret_state(step)).unwrap();
            store.save(cp).await.expect("save");
        }
        let before = store.metrics();
        assert_eq!(before.gc_runs, 0);
        store.clear("run-1").await.expect("clear");
        assert_eq!(store.metrics().deletes, 1);
        let report = store.gc().await.expect("gc");
        let m = store.metrics();
        assert_eq!(m.gc_runs, 1);
        assert_eq!(m.gc_frames_reclaimed, report.frames_removed);
        assert_eq!(m.gc_blobs_reclaimed, report.blobs_removed);
        assert!(m.gc_frames_reclaimed >= 3, "{m:?}");
        assert!(m.gc_blobs_reclaimed > 0, "{m:?}");
        assert!(m.gc_bytes_reclaimed > 0, "{m:?}");
        // Nothing left to reclaim: the counters stay.
        store.gc().await.expect("gc");
        let again = store.metrics();
        assert_eq!(again.gc_runs, 2);
        assert_eq!(again.gc_frames_reclaimed, m.gc_frames_reclaimed);
        assert_eq!(again.gc_bytes_reclaimed, m.gc_bytes_reclaimed);
    });
}

#[test]
fn the_snapshot_lists_every_counter_by_name() {
    let m = ckpt::MetricsSnapshot::default();
    let names: Vec<&str> = m.counters().iter().map(|(n, _)| *n).collect();
    let json = serde_json::to_value(m).expect("serialize");
    let mut fields: Vec<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    fields.sort_unstable();
    assert_eq!(sorted, fields, "counters() and the struct's fields differ");
    assert!(m.to_string().starts_with("saves=0 checkpoints_saved=0 "));
}
