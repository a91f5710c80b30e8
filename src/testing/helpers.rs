//! Small helpers that keep the scenarios short: deterministic states, saving in bulk, and views of
//! checkpoints and headers that compare with `assert_eq!`.

use std::fmt::{Debug, Display};
use std::time::SystemTime;

use super::rng::XorShift64;
use crate::{
    Checkpoint, CheckpointHeader, CheckpointId, ExecutionSummary, Metadata, Result, Store,
};

/// Unwraps `result`, panicking with `what` and the error.
#[track_caller]
pub(crate) fn must<T>(result: Result<T>, what: impl Display) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e} ({e:?})"),
    }
}

/// Asserts `result` is [`crate::Error::NotFound`] and that its message names `id`.
#[track_caller]
pub(crate) fn assert_not_found<T: Debug>(result: Result<T>, id: &str, what: impl Display) {
    match result {
        Ok(v) => panic!("{what}: expected NotFound naming {id}, got Ok({v:?})"),
        Err(e) => {
            assert!(
                e.is_not_found(),
                "{what}: expected NotFound naming {id}, got {e} ({e:?})"
            );
            assert!(
                e.to_string().contains(id),
                "{what}: the NotFound message {:?} does not name {id}",
                e.to_string()
            );
        }
    }
}

/// `len` bytes of deterministic lowercase text, different for every `(tag, i)` (it starts with
/// both) and poorly compressible, like real prose.
pub(crate) fn text(tag: &str, i: u64, len: usize) -> String {
    let mut s: String = format!("{tag}#{i}:");
    s.truncate(len);
    let mut rng = XorShift64::from_state(
        tag.bytes().fold(
            0xcbf2_9ce4_8422_2325_u64 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3),
        ) | 1,
    );
    while s.len() < len {
        let c = (rng.next_u64() % 27) as u8;
        s.push(if c == 26 { ' ' } else { char::from(b'a' + c) });
    }
    s
}

/// A conversation-like state: `n` messages of `msg_len` bytes (unique to `tag`) and a step counter.
pub(crate) fn conv_state(tag: &str, n: u64, msg_len: usize) -> serde_json::Value {
    let messages: Vec<String> = (1..=n).map(|i| text(tag, i, msg_len)).collect();
    serde_json::json!({ "messages": messages, "step": n })
}

/// The `i`-th (1-based) checkpoint [`save_n`] saves: node `plan` for odd `i`, `act` for even;
/// metadata `step = i` and `kind = odd|even`; state `conv_state(exec, i, 40)`.
pub(crate) fn nth_checkpoint(exec: &str, i: u64) -> Checkpoint {
    let (node, kind) = if i % 2 == 1 {
        ("plan", "odd")
    } else {
        ("act", "even")
    };
    must(
        Checkpoint::new(exec, node, &conv_state(exec, i, 40)),
        "building a checkpoint",
    )
    .with_metadata("step", i)
    .with_metadata("kind", kind)
}

/// Saves `nth_checkpoint(exec, i)`.
pub(crate) async fn save_one(store: &Store, exec: &str, i: u64) -> Checkpoint {
    must(
        store.save(nth_checkpoint(exec, i)).await,
        format_args!("saving {exec} #{i}"),
    )
}

/// Saves checkpoints 1 to `n` of [`nth_checkpoint`] to `exec`, returning them as stored.
pub(crate) async fn save_n(store: &Store, exec: &str, n: u64) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(save_one(store, exec, i).await);
    }
    out
}

/// The versions of `cps`.
pub(crate) fn versions(cps: &[Checkpoint]) -> Vec<u64> {
    cps.iter().map(|c| c.version).collect()
}

/// A checkpoint's header fields (everything but state and storage sizes), comparable with a
/// [`CheckpointHeader`]'s.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Head {
    pub id: CheckpointId,
    pub execution_id: String,
    pub node_name: String,
    pub metadata: Metadata,
    pub version: u64,
    pub timestamp: SystemTime,
    pub parent: Option<CheckpointId>,
    pub state_size: u64,
}

impl From<&Checkpoint> for Head {
    fn from(c: &Checkpoint) -> Self {
        Head {
            id: c.id.clone(),
            execution_id: c.execution_id.clone(),
            node_name: c.node_name.clone(),
            metadata: c.metadata.clone(),
            version: c.version,
            timestamp: c.timestamp,
            parent: c.parent.clone(),
            state_size: c.state_size(),
        }
    }
}

impl From<&CheckpointHeader> for Head {
    fn from(h: &CheckpointHeader) -> Self {
        Head {
            id: h.id.clone(),
            execution_id: h.execution_id.clone(),
            node_name: h.node_name.clone(),
            metadata: h.metadata.clone(),
            version: h.version,
            timestamp: h.timestamp,
            parent: h.parent.clone(),
            state_size: h.state_size,
        }
    }
}

/// Heads of checkpoints, in the order given.
pub(crate) fn heads<'a>(cps: impl IntoIterator<Item = &'a Checkpoint>) -> Vec<Head> {
    cps.into_iter().map(Head::from).collect()
}

/// Heads of history headers, in the order given.
pub(crate) fn header_heads(hs: &[CheckpointHeader]) -> Vec<Head> {
    hs.iter().map(Head::from).collect()
}

/// Asserts two checkpoint lists are equal: headers first and states next, for readable messages
/// (a checkpoint's `Debug` leaves its state out), then as whole values.
#[track_caller]
pub(crate) fn assert_cps_eq(actual: &[Checkpoint], expected: &[Checkpoint], what: impl Display) {
    assert_eq!(heads(actual), heads(expected), "{what}: headers differ");
    for (a, e) in actual.iter().zip(expected) {
        if a.state_value() != e.state_value() {
            let shown = if a.state_size().max(e.state_size()) <= 2048 {
                format!(
                    ":\n  loaded: {}\n  saved:  {}",
                    a.state_value(),
                    e.state_value()
                )
            } else {
                String::new()
            };
            panic!(
                "{what}: the state of {} differs from the one saved ({} vs {} bytes encoded){shown}",
                a.id,
                a.state_size(),
                e.state_size()
            );
        }
    }
    assert_eq!(actual, expected, "{what}");
}

/// [`assert_cps_eq`] for one checkpoint.
#[track_caller]
pub(crate) fn assert_cp_eq(actual: &Checkpoint, expected: &Checkpoint, what: impl Display) {
    assert_cps_eq(
        std::slice::from_ref(actual),
        std::slice::from_ref(expected),
        what,
    );
}

/// An execution summary without `log_bytes` (which depends on the encoding).
pub(crate) type SummaryView = (String, usize, u64, String, SystemTime);

/// The comparable part of each summary.
pub(crate) fn summary_views(s: &[ExecutionSummary]) -> Vec<SummaryView> {
    s.iter()
        .map(|s| {
            (
                s.execution_id.clone(),
                s.checkpoints,
                s.latest_version,
                s.latest_node.clone(),
                s.last_timestamp,
            )
        })
        .collect()
}

/// The summary [`crate::Store::executions`] should give for `live` (oldest first, non-empty).
pub(crate) fn expected_summary(live: &[Checkpoint]) -> SummaryView {
    let last = &live[live.len() - 1];
    (
        last.execution_id.clone(),
        live.len(),
        last.version,
        last.node_name.clone(),
        last.timestamp,
    )
}
