//! The scenarios of the conformance suite: one `pub async fn` each, taking the [`Harness`] to run
//! on. Each panics, naming the harness and what differed, when the store does not behave.

use crate::backend::BackendExt;
use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::helpers::{
    assert_cp_eq, assert_cps_eq, assert_not_found, conv_state, expected_summary, header_heads,
    heads, must, nth_checkpoint, save_n, save_one, summary_views, text, versions,
};
use super::Harness;
use crate::backend::LogAppend;
use crate::{
    Checkpoint, CheckpointHeader, CheckpointId, Error, ExecutionSummary, HistoryQuery, Store, Watch,
};

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// Saves each value to `exec` (one checkpoint each) and checks that load, list, the typed state
/// and the JSON state all give it back, before and after a reopen.
async fn check_round_trips<T>(h: &dyn Harness, exec: &str, node: &str, values: &[T])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let name = h.name();
    let store = h.open().await;
    let mut saved = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let what = format!("[{name}] {exec} case {i}");
        let json = match serde_json::to_value(v) {
            Ok(j) => j,
            Err(e) => panic!("{what}: serde_json cannot represent the test value: {e}"),
        };
        let cp = must(Checkpoint::new(exec, node, v), &what).with_metadata("case", i);
        assert_eq!(
            must(cp.state::<T>(), &what),
            *v,
            "{what}: unsaved typed state"
        );
        let cp = must(store.save(cp).await, &what);
        let loaded = must(store.load(&cp.id).await, &what);
        assert_cp_eq(&loaded, &cp, format!("{what}: load after save"));
        assert_eq!(
            must(loaded.state::<T>(), &what),
            *v,
            "{what}: typed state after load"
        );
        assert_eq!(
            must(loaded.state_json(), &what),
            json,
            "{what}: state_json disagrees with serde_json"
        );
        assert_eq!(loaded.state_size(), cp.state_size(), "{what}: state size");
        saved.push(cp);
    }
    let list = must(store.list(exec).await, exec);
    assert_cps_eq(&list, &saved, format!("[{name}] list of {exec}"));
    drop(store);

    let store = h.open().await;
    let list = must(store.list(exec).await, exec);
    assert_cps_eq(
        &list,
        &saved,
        format!("[{name}] list of {exec} after reopen"),
    );
    for (i, (cp, v)) in saved.iter().zip(values).enumerate() {
        let what = format!("[{name}] {exec} case {i} after reopen");
        let loaded = must(store.load(&cp.id).await, &what);
        assert_cp_eq(&loaded, cp, &what);
        assert_eq!(must(loaded.state::<T>(), &what), *v, "{what}: typed state");
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Nested {
    name: String,
    count: u64,
    delta: i64,
    ratio: f64,
    flag: bool,
    tags: Vec<String>,
    scores: BTreeMap<String, Vec<i32>>,
    by_id: BTreeMap<u32, String>,
    pair: (u8, String),
    kind: Kind,
    child: Option<Box<Nested>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Idle,
    Count(u32),
    Span(i16, i16),
    Named { label: String },
}

fn nested(depth: u32, seed: i64) -> Nested {
    let kind = match seed.rem_euclid(4) {
        0 => Kind::Idle,
        1 => Kind::Count(seed as u32),
        2 => Kind::Span(-3, seed as i16),
        _ => Kind::Named {
            label: format!("label-{seed}"),
        },
    };
    Nested {
        name: format!("node {depth}/{seed}"),
        count: if seed % 2 == 0 { u64::MAX } else { seed as u64 },
        delta: if seed % 3 == 0 { i64::MIN } else { -seed },
        ratio: seed as f64 / 7.0,
        flag: seed % 2 == 1,
        tags: (0..depth).map(|i| format!("t{i}")).collect(),
        scores: (0..depth)
            .map(|i| (format!("k{i}"), vec![i as i32, -(i as i32), i32::MAX]))
            .collect(),
        by_id: (0..depth).map(|i| (i * 1000, format!("id {i}"))).collect(),
        pair: (depth as u8, "pair".into()),
        kind,
        child: (depth > 0).then(|| Box::new(nested(depth - 1, seed + 1))),
    }
}

/// Nested structs, enums, options, maps, tuples, extreme integers and a long string deep inside:
/// saved, loaded (also after a reopen), equal as typed values and as JSON.
pub async fn round_trips_nested_states(h: &dyn Harness) {
    let mut values: Vec<Nested> = (0..6).map(|d| nested(d, i64::from(d) * 5 + 1)).collect();
    let mut deep_long = nested(3, 2);
    if let Some(child) = deep_long.child.as_mut() {
        child.name = text("nested-long", 1, 700);
    }
    values.push(deep_long);
    values.push(nested(4, 4));
    check_round_trips(h, "nested", "build", &values).await;
}

/// States nested almost as deep as [`MAX_DEPTH`](crate::codec::value::MAX_DEPTH) documents as
/// accepted (alternating maps and arrays, `MAX_DEPTH - 8` levels, and one level more) round trip.
pub async fn round_trips_deep_states(h: &dyn Harness) {
    let levels = crate::codec::value::MAX_DEPTH - 8;
    let mut deep = json!({ "leaf": [1, "two", null, 3.5, true] });
    for level in 2..levels {
        deep = if level % 2 == 0 {
            json!({ format!("level-{level}"): deep, "n": level })
        } else {
            json!([level, deep])
        };
    }
    check_round_trips(
        h,
        "deep-json",
        "build",
        &[deep.clone(), json!({ "wrapped": deep })],
    )
    .await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Uni {
    text: String,
    keys: BTreeMap<String, String>,
}

/// Unicode everywhere: accented, CJK, emoji (with joiners), right-to-left and bidi controls,
/// combining marks, astral-plane letters, NUL inside strings, unicode map keys, a long emoji string
/// (a blob), and unicode in execution ids, node names and metadata.
pub async fn round_trips_unicode(h: &dyn Harness) {
    let samples = [
        "héllo wörld".to_string(),
        "日本語のテキスト、中文，한국어".into(),
        "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇫🇷".into(),
        "مرحبا بالعالم".into(),
        "שָׁלוֹם עוֹלָם".into(),
        "\u{202E}overridden\u{202C} \u{200F}rtl mark".into(),
        "e\u{301}\u{20DD} combining".into(),
        "nul\0inside\0".into(),
        "\0".into(),
        "\u{FEFF}bom and \u{10FFFF} and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢".into(),
        "🦀".repeat(150),
        "אבג ".repeat(100),
    ];
    let keys: BTreeMap<String, String> = [
        ("ключ", "значение"),
        ("🔑", "🚪"),
        ("\0k", "nul key"),
        ("", "empty key"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let values: Vec<Uni> = samples
        .iter()
        .map(|s| Uni {
            text: s.clone(),
            keys: keys.clone(),
        })
        .collect();
    check_round_trips(h, "exéc-✓-שלום-🚀", "nœud-😀", &values).await;
    check_round_trips(h, "unicode-plain", "n", &samples).await;

    let name = h.name();
    let store = h.open().await;
    let cp = must(
        Checkpoint::new("exéc-✓-שלום-🚀", "nœud-😀", &samples),
        "unicode",
    )
    .with_metadata("note", "👋 مرحبا \0 ok");
    let cp = must(store.save(cp).await, "unicode save");
    assert_eq!(
        cp.id.to_string().parse::<CheckpointId>().ok(),
        Some(cp.id.clone()),
        "[{name}] id text round trip"
    );
    drop(store);
    let store = h.open().await;
    let history = must(
        store
            .history("exéc-✓-שלום-🚀", HistoryQuery::default().limit(1))
            .await,
        "history",
    );
    assert_eq!(
        header_heads(&history),
        heads([&cp]),
        "[{name}] unicode headers after reopen"
    );
}

/// Bytes serialized as bytes (MessagePack `bin`), the way `serde_bytes` would.
#[derive(Debug, Clone, PartialEq)]
struct Bin(Vec<u8>);

impl Serialize for Bin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct BytesOnly;
        impl serde::de::Visitor<'_> for BytesOnly {
            type Value = Bin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Bin, E> {
                Ok(Bin(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                v: Vec<u8>,
            ) -> std::result::Result<Bin, E> {
                Ok(Bin(v))
            }
        }
        d.deserialize_bytes(BytesOnly)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Binary {
    raw: Bin,
    seq: Vec<u8>,
    name: String,
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    text("bytes", seed, len)
        .bytes()
        .enumerate()
        .map(|(i, b)| b.wrapping_mul(i as u8 | 1))
        .collect()
}

/// Binary states: MessagePack `bin` values (short, empty, with every byte value, and long enough
/// to be a blob; inside a struct and at the root) and `Vec<u8>` as a sequence of numbers.
pub async fn round_trips_binary(h: &dyn Harness) {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let values = vec![
        Binary {
            raw: Bin(vec![0, 1, 255, 0, 128]),
            seq: vec![0, 255, 7],
            name: "short".into(),
        },
        Binary {
            raw: Bin(Vec::new()),
            seq: Vec::new(),
            name: "empty".into(),
        },
        Binary {
            raw: Bin(all_bytes.clone()),
            seq: all_bytes,
            name: "every byte".into(),
        },
        Binary {
            raw: Bin(bytes(1, 3000)),
            seq: bytes(2, 1000),
            name: "long".into(),
        },
    ];
    check_round_trips(h, "binary", "bytes", &values).await;
    check_round_trips(
        h,
        "binary-root",
        "bytes",
        &[Bin(bytes(3, 10_000)), Bin(vec![0]), Bin(bytes(3, 10_000))],
    )
    .await;

    let store = h.open().await;
    for cp in must(store.list("binary").await, "list binary") {
        let raw = field(cp.state_value(), "raw");
        assert!(
            matches!(raw, Some(rmpv::Value::Binary(_))),
            "[{}] {}: bytes did not come back as MessagePack bin: {raw:?}",
            h.name(),
            cp.id
        );
    }
    let root = must(store.latest("binary-root").await, "latest binary-root");
    let root = root.unwrap_or_else(|| panic!("[{}] binary-root has no latest", h.name()));
    assert_eq!(
        root.state_value(),
        &rmpv::Value::Binary(bytes(3, 10_000)),
        "[{}] binary root",
        h.name()
    );
}

/// The value under `key` in a MessagePack map.
fn field<'a>(v: &'a rmpv::Value, key: &str) -> Option<&'a rmpv::Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Empty states (`()`, empty map, empty vec, empty string, `None`) and one execution that moves
/// between empty and non-empty states of different shapes (so deltas replace the root).
pub async fn round_trips_empty_states(h: &dyn Harness) {
    check_round_trips(h, "empty-unit", "n", &[(), ()]).await;
    check_round_trips(
        h,
        "empty-map",
        "n",
        &[BTreeMap::<String, u8>::new(), BTreeMap::new()],
    )
    .await;
    check_round_trips(h, "empty-vec", "n", &[Vec::<u32>::new(), Vec::new()]).await;
    check_round_trips(h, "empty-string", "n", &[String::new(), String::new()]).await;
    check_round_trips(h, "empty-option", "n", &[None::<u8>, None]).await;
    let shapes = vec![
        json!({}),
        json!([]),
        json!(""),
        json!(null),
        json!({ "a": [1, {}], "b": "" }),
        json!({}),
        json!([[]]),
        json!({ "a": {} }),
        json!(0),
        json!({ "long": text("empty-shapes", 1, 500) }),
        json!({}),
        json!([text("empty-shapes", 2, 500), ""]),
        json!([]),
    ];
    check_round_trips(h, "empty-shapes", "n", &shapes).await;
}

/// A map serialized with its entries in the given order, duplicates included (MessagePack allows
/// both; `serde_json` would sort and merge them).
#[derive(Debug, Clone, PartialEq)]
struct Ordered(Vec<(String, serde_json::Value)>);

impl Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// One execution whose successive states exercise every kind of change between two states: deep
/// element edits, arrays shrinking, growing and rewritten, keys removed, types changed, long
/// strings (blobs) replaced, moved and removed from the middle of an array, the root replaced.
pub async fn round_trips_edit_sequences(h: &dyn Harness) {
    let long = |i| text("edits", i, 450);
    let states = vec![
        json!({ "list": [1, 2, 3, 4, 5, 6, 7, 8], "m": { "a": 1, "b": { "c": [1, { "d": "x" }] } }, "s": "short" }),
        json!({ "list": [1, 2, 3, 4, 5, 6, 7, 8], "m": { "a": 1, "b": { "c": [1, { "d": "y" }] } }, "s": "short" }),
        json!({ "list": [1, 2, 3], "m": { "a": 1, "b": { "c": [1, { "d": "y" }] } }, "s": "short" }),
        json!({ "list": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "m": { "a": 1, "b": { "c": [] } }, "s": "short" }),
        json!({ "list": [10, 9, 8, 7, 6, 5, 4, 3, 2, 1], "m": { "a": 1, "b": { "c": [] } }, "s": "short" }),
        json!({ "list": [0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "m": { "a": 1 }, "s": "short" }),
        json!({ "list": [0], "m": "now a string", "s": long(1) }),
        json!({ "list": [0], "m": { "back": true }, "s": long(2) }),
        json!({ "list": [0], "m": { "back": true }, "t": long(2) }),
        json!({ "longs": [long(3), long(4), long(5)], "t": long(2) }),
        json!({ "longs": [long(3), long(5)], "t": long(2) }),
        json!({ "longs": [long(5), long(3)], "nested": [[1, 2], [3]] }),
        json!({ "longs": [], "nested": [[1], [3, 4]] }),
        json!([long(1), { "root": "is an array now" }]),
        json!(long(4)),
        json!({ "list": [1, 2, 3, 4, 5, 6, 7, 8], "m": { "a": 1, "b": { "c": [1, { "d": "x" }] } }, "s": "short" }),
    ];
    check_round_trips(h, "edits", "edit", &states).await;
}

/// One execution of maps whose keys are reordered, removed, added before kept keys, and
/// duplicated: each state comes back with exactly its entries in exactly its order.
pub async fn round_trips_map_key_orders(h: &dyn Harness) {
    let long = |i| text("edits", i, 450);
    let e = |k: &str, v: serde_json::Value| (k.to_string(), v);
    let maps = vec![
        Ordered(vec![e("a", json!(1)), e("b", json!(2)), e("c", json!(3))]),
        Ordered(vec![e("c", json!(3)), e("a", json!(1))]),
        Ordered(vec![
            e("a", json!(1)),
            e("c", json!({ "x": long(6) })),
            e("b", json!([1, 2])),
            e("d", json!(null)),
        ]),
        Ordered(vec![e("a", json!(1)), e("a", json!(2))]),
        Ordered(vec![e("a", json!(2))]),
        Ordered(Vec::new()),
        Ordered(vec![
            e("z", json!(long(7))),
            e("a", json!(1)),
            e("b", json!(2)),
            e("c", json!(3)),
        ]),
        Ordered(vec![
            e("z", json!(long(7))),
            e("a", json!(1)),
            e("b", json!(2)),
            e("c", json!(3)),
            e("a", json!(9)),
        ]),
        Ordered(vec![
            e("a", json!(1)),
            e("b", json!(2)),
            e("c", json!(3)),
            e("z", json!(long(7))),
        ]),
        Ordered(vec![e("b", json!(1))]),
        Ordered(vec![e("a", json!(1)), e("b", json!(1))]),
        Ordered(vec![e("a", json!(1)), e("c", json!(3))]),
        Ordered(vec![e("a", json!(1)), e("b", json!(2)), e("c", json!(3))]),
    ];
    check_round_trips(h, "edits-ordered", "edit", &maps).await;
}

/// Metadata of every JSON kind (null, bools, negative and extreme integers, floats, unicode,
/// nested arrays and objects, empty key) round trips through save, load, history and a reopen, and
/// history's metadata filter matches each value before and after the reopen.
pub async fn metadata_round_trips(h: &dyn Harness) {
    let name = h.name();
    let values = [
        json!(null),
        json!(true),
        json!(-5),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(2.5),
        json!(1e300),
        json!(3.0),
        json!("ünï 🚀 مرحبا"),
        json!([1, "two", [3.5], {}]),
        json!({ "nested": { "k": [null, false] } }),
        json!({}),
        json!(""),
    ];
    let mut cp = must(Checkpoint::new("meta", "n", &1), "cp");
    for (i, v) in values.iter().enumerate() {
        cp = cp.with_metadata(format!("k{i}"), v.clone());
    }
    cp = cp
        .with_metadata("", "empty key")
        .with_metadata("🔑", "unicode key");
    let store = h.open().await;
    let other = must(
        store
            .save(must(Checkpoint::new("meta", "n", &0), "cp"))
            .await,
        "save",
    );
    let saved = must(store.save(cp.clone()).await, "save");
    assert_eq!(saved.metadata, cp.metadata, "[{name}] returned metadata");
    let expected = [other, saved];
    check_metadata(&store, &format!("[{name}]"), &values, &expected).await;
    drop(store);
    let store = h.open().await;
    check_metadata(
        &store,
        &format!("[{name}] after reopen"),
        &values,
        &expected,
    )
    .await;
}

/// The checks of [`metadata_round_trips`]: `expected[1]` holds `values` as `k0`, `k1`, ...
async fn check_metadata(
    store: &Store,
    what: &str,
    values: &[serde_json::Value],
    expected: &[Checkpoint; 2],
) {
    let saved = &expected[1];
    assert_eq!(
        must(store.load(&saved.id).await, what).metadata,
        saved.metadata,
        "{what}: loaded metadata"
    );
    let history = must(
        store
            .history("meta", HistoryQuery::default().limit(1))
            .await,
        what,
    );
    assert_eq!(
        history.first().map(|h| &h.metadata),
        Some(&saved.metadata),
        "{what}: history metadata"
    );
    for (i, v) in values.iter().enumerate() {
        let q = HistoryQuery::default().metadata(format!("k{i}"), v.clone());
        let found = must(store.history("meta", q).await, what);
        assert_eq!(
            found.iter().map(|h| h.version).collect::<Vec<_>>(),
            [saved.version],
            "{what}: filter k{i} = {v}"
        );
    }
    assert_cps_eq(
        &must(store.list("meta").await, what),
        expected,
        format!("{what}: list"),
    );
}

/// A 10 MB string (a blob), a small state after it and the same 10 MB again; and a vector of a
/// million small numbers (several MB inline).
pub async fn round_trips_large_states(h: &dyn Harness) {
    let big = text("large", 1, 10 << 20);
    check_round_trips(
        h,
        "large-text",
        "n",
        &[big.clone(), "small".to_string(), big],
    )
    .await;
    let many: Vec<u32> = (0..1_000_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761) >> 8)
        .collect();
    check_round_trips(h, "large-vec", "n", &[many]).await;
}

// ---------------------------------------------------------------------------------------------
// Versions, ids, projections
// ---------------------------------------------------------------------------------------------

/// Versions strictly increase; ids are `EXECUTION@VERSION` and parse back (also with `@` in the
/// execution id); each save's parent is the previous checkpoint; timestamps do not decrease.
pub async fn versions_ids_parents_and_timestamps(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let saved = save_n(&store, "ids", 8).await;
    for (i, cp) in saved.iter().enumerate() {
        let what = format!("[{name}] save #{i} ({})", cp.id);
        assert!(cp.is_saved() && cp.version > 0, "{what}: not marked saved");
        assert_eq!(cp.execution_id, "ids", "{what}");
        assert_eq!(
            cp.id,
            must(CheckpointId::new("ids", cp.version), &what),
            "{what}"
        );
        assert_eq!(cp.id.to_string(), format!("ids@{}", cp.version), "{what}");
        assert_eq!(
            cp.id.to_string().parse::<CheckpointId>().ok(),
            Some(cp.id.clone()),
            "{what}"
        );
        let expected_parent = i.checked_sub(1).map(|p| saved[p].id.clone());
        assert_eq!(cp.parent, expected_parent, "{what}: parent");
        if i > 0 {
            assert!(
                cp.version > saved[i - 1].version,
                "{what}: version not increasing: {:?}",
                versions(&saved)
            );
            assert!(
                cp.timestamp >= saved[i - 1].timestamp,
                "{what}: timestamp went back"
            );
        }
    }

    let at = must(
        store
            .save(must(Checkpoint::new("team@corp", "n", &1), "at"))
            .await,
        "save team@corp",
    );
    assert_eq!(
        at.id.to_string(),
        format!("team@corp@{}", at.version),
        "[{name}]"
    );
    let parsed: CheckpointId = must(at.id.to_string().parse(), "parse");
    assert_eq!(
        (parsed.execution_id(), parsed.version()),
        ("team@corp", at.version),
        "[{name}]"
    );
    assert_cp_eq(
        &must(store.load(&parsed).await, "load team@corp"),
        &at,
        format!("[{name}] load by parsed id"),
    );
}

/// `list` is oldest first, `latest` is the newest, `at_version` and `load` give each checkpoint;
/// two interleaved executions do not see each other; an unknown execution is empty.
pub async fn list_latest_and_at_version(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 1..=5 {
        a.push(save_one(&store, "list-a", i).await);
        b.push(save_one(&store, "list-b", i).await);
    }
    for (exec, saved) in [("list-a", &a), ("list-b", &b)] {
        let what = format!("[{name}] {exec}");
        assert_cps_eq(
            &must(store.list(exec).await, &what),
            saved,
            format!("{what}: list"),
        );
        let latest = must(store.latest(exec).await, &what);
        assert_eq!(latest.as_ref(), saved.last(), "{what}: latest");
        for cp in saved {
            assert_cp_eq(
                &must(store.at_version(exec, cp.version).await, &what),
                cp,
                format!("{what}: at_version"),
            );
            assert_cp_eq(
                &must(store.load(&cp.id).await, &what),
                cp,
                format!("{what}: load"),
            );
        }
    }
    assert!(
        must(store.list("list-nobody").await, "list").is_empty(),
        "[{name}] unknown execution listed"
    );
    assert!(
        must(store.latest("list-nobody").await, "latest").is_none(),
        "[{name}] unknown execution has a latest"
    );
    let history = must(
        store.history("list-nobody", HistoryQuery::default()).await,
        "history",
    );
    assert!(history.is_empty(), "[{name}] unknown execution has history");
}

/// Loading an unknown version, version 0, an unknown execution, a deleted checkpoint, and
/// deleting or forking unknown ids: `NotFound`, naming the id.
pub async fn not_found_names_what_was_missing(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let saved = save_n(&store, "nf", 2).await;
    let high = saved[1].version + 100;
    let unknown = must(CheckpointId::new("nf", high), "id");
    assert_not_found(
        store.load(&unknown).await,
        &format!("nf@{high}"),
        format!("[{name}] load unknown version"),
    );
    assert_not_found(
        store.at_version("nf", high).await,
        &format!("nf@{high}"),
        format!("[{name}] at_version"),
    );
    assert_not_found(
        store.at_version("nf", 0).await,
        "nf@0",
        format!("[{name}] version 0"),
    );
    let ghost = must(CheckpointId::new("nf-ghost", 1), "id");
    assert_not_found(
        store.load(&ghost).await,
        "nf-ghost@1",
        format!("[{name}] load unknown execution"),
    );
    assert_not_found(
        store.delete(&ghost).await,
        "nf-ghost@1",
        format!("[{name}] delete unknown"),
    );
    assert_not_found(
        store.delete(&unknown).await,
        &format!("nf@{high}"),
        format!("[{name}] delete unknown version"),
    );
    assert_not_found(
        store.fork(&ghost, "nf-fork").await,
        "nf-ghost@1",
        format!("[{name}] fork unknown"),
    );
    must(store.delete(&saved[0].id).await, "delete");
    let id = saved[0].id.to_string();
    assert_not_found(
        store.load(&saved[0].id).await,
        &id,
        format!("[{name}] load deleted"),
    );
    assert_cps_eq(
        &must(store.list("nf").await, "list"),
        &saved[1..],
        format!("[{name}] list after the errors"),
    );
}

/// History is newest first; `limit`, `before`, `metadata` (one or several), `node` and their
/// combinations filter it; headers equal the loaded checkpoints' headers.
pub async fn history_is_newest_first_and_filters(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    // #1..#6: odd ones are node "plan", kind "odd"; even ones node "act", kind "even".
    let s = save_n(&store, "hist", 6).await;
    let _other = save_n(&store, "hist-other", 3).await;
    let hist = |q: HistoryQuery| {
        let store = store.clone();
        async move { header_heads(&must(store.history("hist", q).await, "history")) }
    };
    let pick = |idx: &[usize]| heads(idx.iter().map(|&i| &s[i]));
    let q = HistoryQuery::default;

    assert_eq!(
        hist(q()).await,
        pick(&[5, 4, 3, 2, 1, 0]),
        "[{name}] default"
    );
    assert_eq!(hist(q().limit(2)).await, pick(&[5, 4]), "[{name}] limit 2");
    assert_eq!(hist(q().limit(0)).await, pick(&[]), "[{name}] limit 0");
    assert_eq!(
        hist(q().limit(100)).await,
        pick(&[5, 4, 3, 2, 1, 0]),
        "[{name}] limit 100"
    );
    assert_eq!(
        hist(q().before(s[3].version)).await,
        pick(&[2, 1, 0]),
        "[{name}] before #4"
    );
    assert_eq!(
        hist(q().before(s[0].version)).await,
        pick(&[]),
        "[{name}] before the first"
    );
    assert_eq!(
        hist(q().metadata("kind", "even")).await,
        pick(&[5, 3, 1]),
        "[{name}] kind=even"
    );
    assert_eq!(
        hist(q().metadata("kind", "even").metadata("step", 4)).await,
        pick(&[3]),
        "[{name}] kind=even, step=4"
    );
    assert_eq!(
        hist(q().metadata("step", 3)).await,
        pick(&[2]),
        "[{name}] step=3 (a number)"
    );
    assert_eq!(
        hist(q().metadata("step", "3")).await,
        pick(&[]),
        "[{name}] step=\"3\" (a string)"
    );
    assert_eq!(
        hist(q().metadata("kind", "none")).await,
        pick(&[]),
        "[{name}] kind=none"
    );
    assert_eq!(
        hist(q().metadata("missing", 1)).await,
        pick(&[]),
        "[{name}] missing key"
    );
    assert_eq!(
        hist(q().node("plan")).await,
        pick(&[4, 2, 0]),
        "[{name}] node plan"
    );
    assert_eq!(
        hist(q().node("nobody")).await,
        pick(&[]),
        "[{name}] node nobody"
    );
    assert_eq!(
        hist(q().node("act").before(s[5].version).limit(1)).await,
        pick(&[3]),
        "[{name}] node act, before #6, limit 1"
    );
    assert_eq!(
        hist(
            q().node("plan")
                .metadata("kind", "odd")
                .before(s[4].version)
                .limit(5)
        )
        .await,
        pick(&[2, 0]),
        "[{name}] node plan, kind=odd, before #5"
    );

    let full = must(store.history("hist", q()).await, "history");
    for header in &full {
        let loaded = must(store.load(&header.id).await, "load");
        assert_eq!(
            header_heads(std::slice::from_ref(header)),
            heads([&loaded]),
            "[{name}] header vs load"
        );
        assert!(
            header.stored_size > 0,
            "[{name}] {}: stored_size is 0",
            header.id
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Delete, clear
// ---------------------------------------------------------------------------------------------

/// Deleting one checkpoint: it no longer loads (NotFound), list/history skip it, latest and every
/// other checkpoint (also of another execution) are untouched, deleting it again is NotFound; all
/// of which holds after a reopen.
pub async fn delete_hides_exactly_one_checkpoint(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let saved = save_n(&store, "del", 5).await;
    let other = save_n(&store, "del-other", 2).await;
    must(store.delete(&saved[2].id).await, "delete");
    check_one_deleted(&store, &format!("[{name}]"), &saved, &other).await;
    drop(store);
    let store = h.open().await;
    check_one_deleted(&store, &format!("[{name}] after reopen"), &saved, &other).await;
}

/// The checks of [`delete_hides_exactly_one_checkpoint`]: `saved[2]` of `del` is deleted.
async fn check_one_deleted(store: &Store, what: &str, saved: &[Checkpoint], other: &[Checkpoint]) {
    let live: Vec<Checkpoint> = [0, 1, 3, 4].iter().map(|&i| saved[i].clone()).collect();
    let gone = saved[2].id.to_string();
    assert_not_found(
        store.load(&saved[2].id).await,
        &gone,
        format!("{what}: load deleted"),
    );
    assert_not_found(
        store.at_version("del", saved[2].version).await,
        &gone,
        format!("{what}: at_version"),
    );
    assert_cps_eq(
        &must(store.list("del").await, what),
        &live,
        format!("{what}: list"),
    );
    let history = must(store.history("del", HistoryQuery::default()).await, what);
    assert_eq!(
        header_heads(&history),
        heads(live.iter().rev()),
        "{what}: history"
    );
    assert_eq!(
        must(store.latest("del").await, what).as_ref(),
        Some(&saved[4]),
        "{what}: latest"
    );
    for cp in &live {
        assert_cp_eq(
            &must(store.load(&cp.id).await, what),
            cp,
            format!("{what}: load"),
        );
    }
    assert_cps_eq(
        &must(store.list("del-other").await, what),
        other,
        format!("{what}: other execution"),
    );
    let summaries = summary_views(&must(store.executions().await, what));
    assert_eq!(
        summaries,
        vec![expected_summary(&live), expected_summary(other)],
        "{what}: executions"
    );
    assert_not_found(
        store.delete(&saved[2].id).await,
        &gone,
        format!("{what}: delete twice"),
    );
}

/// Deleting the latest makes the previous live checkpoint the latest, and the next save's parent;
/// deleting every checkpoint empties the execution, and a later save has no parent and a version
/// above every earlier one. States saved on top of deleted ones still load after a reopen.
pub async fn delete_of_the_latest_moves_latest_back(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let s = save_n(&store, "dl", 3).await;
    must(store.delete(&s[2].id).await, "delete #3");
    assert_eq!(
        must(store.latest("dl").await, "latest").as_ref(),
        Some(&s[1]),
        "[{name}] latest after delete"
    );
    let history = must(
        store.history("dl", HistoryQuery::default().limit(1)).await,
        "history",
    );
    assert_eq!(
        header_heads(&history),
        heads([&s[1]]),
        "[{name}] history head after delete"
    );

    let next = save_one(&store, "dl", 4).await;
    assert_eq!(
        next.parent.as_ref(),
        Some(&s[1].id),
        "[{name}] parent of the save after deleting the latest"
    );
    assert!(
        next.version > s[2].version,
        "[{name}] version {} reused",
        next.version
    );
    assert_cps_eq(
        &must(store.list("dl").await, "list"),
        &[s[0].clone(), s[1].clone(), next.clone()],
        format!("[{name}] list"),
    );

    for cp in [&next, &s[1], &s[0]] {
        must(store.delete(&cp.id).await, "delete");
    }
    assert!(
        must(store.latest("dl").await, "latest").is_none(),
        "[{name}] latest of an all-deleted execution"
    );
    assert!(
        must(store.list("dl").await, "list").is_empty(),
        "[{name}] list of an all-deleted execution"
    );
    let execs = must(store.executions().await, "executions");
    assert!(
        execs.iter().all(|e| e.execution_id != "dl"),
        "[{name}] all-deleted execution still summarised"
    );

    let again = save_one(&store, "dl", 5).await;
    assert_eq!(again.parent, None, "[{name}] parent when nothing is live");
    assert!(
        again.version > next.version,
        "[{name}] version reused after deleting everything"
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("dl").await, "list"),
        &[again],
        format!("[{name}] list after reopen"),
    );
    assert_not_found(
        store.load(&next.id).await,
        &next.id.to_string(),
        format!("[{name}] deleted after reopen"),
    );
}

/// Clearing removes one execution from every projection (list, latest, load, history,
/// executions) and leaves another untouched; clearing an unknown or already cleared execution is
/// Ok; all of it holds after a reopen.
pub async fn clear_removes_only_its_execution(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let a = save_n(&store, "clr", 3).await;
    let b = save_n(&store, "clr-keep", 2).await;
    must(store.clear("clr").await, "clear");
    must(store.clear("clr").await, "clear again");
    must(store.clear("clr-never-existed").await, "clear unknown");
    check_cleared(&store, &format!("[{name}]"), &a, &b).await;
    drop(store);
    let store = h.open().await;
    check_cleared(&store, &format!("[{name}] after reopen"), &a, &b).await;
}

/// The checks of [`clear_removes_only_its_execution`]: `clr` (once `cleared`) is cleared, `clr-keep`
/// holds `kept`.
async fn check_cleared(store: &Store, what: &str, cleared: &[Checkpoint], kept: &[Checkpoint]) {
    assert!(
        must(store.list("clr").await, what).is_empty(),
        "{what}: list of a cleared execution"
    );
    assert!(
        must(store.latest("clr").await, what).is_none(),
        "{what}: latest of a cleared execution"
    );
    let history = must(store.history("clr", HistoryQuery::default()).await, what);
    assert!(history.is_empty(), "{what}: history of a cleared execution");
    for cp in cleared {
        assert_not_found(
            store.load(&cp.id).await,
            &cp.id.to_string(),
            format!("{what}: load cleared"),
        );
    }
    assert_cps_eq(
        &must(store.list("clr-keep").await, what),
        kept,
        format!("{what}: other execution"),
    );
    let summaries = summary_views(&must(store.executions().await, what));
    assert_eq!(
        summaries,
        vec![expected_summary(kept)],
        "{what}: executions"
    );
}

/// After a clear, new saves get versions above every version before the clear (also across a
/// reopen, and across a second clear), and start without a parent.
pub async fn clear_never_reuses_versions(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let first = save_n(&store, "reuse", 4).await;
    must(store.clear("reuse").await, "clear");
    let again = save_one(&store, "reuse", 1).await;
    assert!(
        again.version > first[3].version,
        "[{name}] version {} reused after clear",
        again.version
    );
    assert_eq!(
        again.parent, None,
        "[{name}] first save after a clear has a parent"
    );
    assert_cps_eq(
        &must(store.list("reuse").await, "list"),
        std::slice::from_ref(&again),
        format!("[{name}] list"),
    );
    must(store.clear("reuse").await, "second clear");
    drop(store);

    let store = h.open().await;
    let third = save_one(&store, "reuse", 1).await;
    assert!(
        third.version > again.version,
        "[{name}] version {} reused after clear + reopen",
        third.version
    );
    assert_cps_eq(
        &must(store.list("reuse").await, "list"),
        std::slice::from_ref(&third),
        format!("[{name}] list"),
    );
    assert_not_found(
        store.load(&again.id).await,
        &again.id.to_string(),
        format!("[{name}] cleared id"),
    );
}

// ---------------------------------------------------------------------------------------------
// Fork
// ---------------------------------------------------------------------------------------------

/// A fork starts a new execution with the source's state, node and metadata, the source as
/// parent and a version of its own; saves continue from it; the source is untouched, and the fork
/// outlives a clear of its source.
pub async fn fork_copies_the_source(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let src = save_n(&store, "fork-src", 3).await;
    let fork = must(store.fork(&src[1].id, "fork-dst").await, "fork");
    let what = format!("[{name}] fork of {}", src[1].id);
    assert_eq!(fork.execution_id, "fork-dst", "{what}");
    assert_eq!(
        fork.id,
        must(CheckpointId::new("fork-dst", fork.version), "id"),
        "{what}"
    );
    assert!(fork.is_saved(), "{what}: not saved");
    assert_eq!(fork.node_name, src[1].node_name, "{what}: node");
    assert_eq!(fork.metadata, src[1].metadata, "{what}: metadata");
    assert_eq!(fork.parent.as_ref(), Some(&src[1].id), "{what}: parent");
    assert_eq!(fork.state_value(), src[1].state_value(), "{what}: state");
    assert_cps_eq(
        &must(store.list("fork-dst").await, "list"),
        std::slice::from_ref(&fork),
        format!("{what}: list"),
    );
    assert_cp_eq(
        &must(store.load(&fork.id).await, "load"),
        &fork,
        format!("{what}: load"),
    );

    let next = save_one(&store, "fork-dst", 10).await;
    assert_eq!(
        next.parent.as_ref(),
        Some(&fork.id),
        "{what}: parent of the next save"
    );
    assert!(next.version > fork.version, "{what}: next version");
    assert_cps_eq(
        &must(store.list("fork-dst").await, "list"),
        &[fork.clone(), next.clone()],
        format!("{what}: list"),
    );
    assert_cps_eq(
        &must(store.list("fork-src").await, "list"),
        &src,
        format!("{what}: source untouched"),
    );

    let fork2 = must(store.fork(&next.id, "fork-dst2").await, "fork of a fork");
    assert_eq!(
        fork2.parent.as_ref(),
        Some(&next.id),
        "{what}: fork of a fork"
    );
    must(store.delete(&next.id).await, "delete fork source");
    must(store.clear("fork-src").await, "clear the source");
    drop(store);

    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("fork-dst").await, "list"),
        std::slice::from_ref(&fork),
        format!("{what}: after reopen"),
    );
    assert_cps_eq(
        &must(store.list("fork-dst2").await, "list"),
        std::slice::from_ref(&fork2),
        format!("{what}: fork of a fork after reopen"),
    );
}

/// Forking a deleted, unknown or cleared id is NotFound; forking into an execution with live
/// checkpoints, into the source's own execution or into an invalid id is an error that writes
/// nothing; forking into a cleared execution works, above its old versions.
pub async fn fork_refuses_bad_sources_and_targets(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let src = save_n(&store, "fr-src", 2).await;
    must(store.delete(&src[0].id).await, "delete");
    assert_not_found(
        store.fork(&src[0].id, "fr-new").await,
        &src[0].id.to_string(),
        format!("[{name}] fork deleted"),
    );
    let high = must(CheckpointId::new("fr-src", 999), "id");
    assert_not_found(
        store.fork(&high, "fr-new").await,
        "fr-src@999",
        format!("[{name}] fork unknown version"),
    );
    assert!(
        must(store.list("fr-new").await, "list").is_empty(),
        "[{name}] failed fork wrote something"
    );

    let busy = save_n(&store, "fr-busy", 1).await;
    let err = store.fork(&src[1].id, "fr-busy").await;
    assert!(
        err.is_err(),
        "[{name}] fork into an execution with live checkpoints succeeded"
    );
    assert_cps_eq(
        &must(store.list("fr-busy").await, "list"),
        &busy,
        format!("[{name}] busy target untouched"),
    );
    assert!(
        store.fork(&src[1].id, "fr-src").await.is_err(),
        "[{name}] fork into its own execution"
    );
    let invalid = store.fork(&src[1].id, "").await;
    assert!(
        matches!(invalid, Err(Error::InvalidInput(_))),
        "[{name}] fork into \"\": {invalid:?}"
    );
    assert_cps_eq(
        &must(store.list("fr-src").await, "list"),
        &src[1..],
        format!("[{name}] source untouched"),
    );

    must(store.clear("fr-busy").await, "clear");
    let f = must(
        store.fork(&src[1].id, "fr-busy").await,
        "fork into a cleared execution",
    );
    assert!(
        f.version > busy[0].version,
        "[{name}] fork into a cleared execution reused a version"
    );
    assert_eq!(f.parent.as_ref(), Some(&src[1].id), "[{name}] parent");
    must(store.clear("fr-src").await, "clear source");
    assert_not_found(
        store.fork(&src[1].id, "fr-other").await,
        &src[1].id.to_string(),
        format!("[{name}] fork cleared"),
    );
    assert_cps_eq(
        &must(store.list("fr-busy").await, "list"),
        &[f],
        format!("[{name}] fork survives its source"),
    );
}

// ---------------------------------------------------------------------------------------------
// Batches, summaries
// ---------------------------------------------------------------------------------------------

/// A batch over two executions is returned in the order given, with consecutive versions and
/// chained parents within each execution, continuing from what was saved before; an empty batch
/// is Ok and empty.
pub async fn save_batch_is_ordered_and_consecutive(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let pre = save_n(&store, "batch-a", 1).await;
    let batch = vec![
        nth_checkpoint("batch-a", 2),
        nth_checkpoint("batch-b", 1),
        nth_checkpoint("batch-a", 3),
        nth_checkpoint("batch-b", 2),
        nth_checkpoint("batch-a", 4),
    ];
    let out = must(store.save_batch(batch.clone()).await, "save_batch");
    let shape = |cps: &[Checkpoint]| {
        cps.iter()
            .map(|c| {
                (
                    c.execution_id.clone(),
                    c.node_name.clone(),
                    c.metadata.clone(),
                    c.state_value().clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shape(&out),
        shape(&batch),
        "[{name}] batch returned out of order"
    );
    let a = [out[0].clone(), out[2].clone(), out[4].clone()];
    let b = [out[1].clone(), out[3].clone()];
    let what = format!(
        "[{name}] versions a {:?}, b {:?}",
        versions(&a),
        versions(&b)
    );
    assert_eq!(
        versions(&a),
        vec![a[0].version, a[0].version + 1, a[0].version + 2],
        "{what}"
    );
    assert_eq!(versions(&b), vec![b[0].version, b[0].version + 1], "{what}");
    assert!(a[0].version > pre[0].version, "{what}");
    let parents = |cps: &[Checkpoint]| cps.iter().map(|c| c.parent.clone()).collect::<Vec<_>>();
    assert_eq!(
        parents(&a),
        vec![
            Some(pre[0].id.clone()),
            Some(a[0].id.clone()),
            Some(a[1].id.clone())
        ],
        "{what}"
    );
    assert_eq!(parents(&b), vec![None, Some(b[0].id.clone())], "{what}");
    assert!(
        must(store.save_batch(Vec::new()).await, "empty batch").is_empty(),
        "[{name}] empty batch"
    );

    let all_a: Vec<Checkpoint> = pre.iter().chain(&a).cloned().collect();
    assert_cps_eq(
        &must(store.list("batch-a").await, "list"),
        &all_a,
        format!("[{name}] list a"),
    );
    assert_cps_eq(
        &must(store.list("batch-b").await, "list"),
        &b,
        format!("[{name}] list b"),
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("batch-a").await, "list"),
        &all_a,
        format!("[{name}] list a after reopen"),
    );
    assert_cps_eq(
        &must(store.list("batch-b").await, "list"),
        &b,
        format!("[{name}] list b after reopen"),
    );
}

/// A batch holding one invalid checkpoint (empty, control-character or over-long execution id; at
/// the start, middle or end) fails with InvalidInput and stores none of the batch; a valid batch
/// afterwards continues where the store was.
pub async fn save_batch_is_all_or_nothing(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let pre = save_n(&store, "atom-a", 2).await;
    for (pos, bad_id) in [
        (3, String::new()),
        (0, "bell\u{7}".to_string()),
        (1, "x".repeat(300)),
    ] {
        let mut batch = vec![
            nth_checkpoint("atom-a", 10),
            nth_checkpoint("atom-b", 1),
            nth_checkpoint("atom-a", 11),
        ];
        let mut bad = nth_checkpoint("atom-a", 99);
        bad.execution_id = bad_id.clone();
        batch.insert(pos, bad);
        let what = format!("[{name}] batch with execution id {bad_id:?} at {pos}");
        let result = store.save_batch(batch).await;
        assert!(
            matches!(result, Err(Error::InvalidInput(_))),
            "{what}: {result:?}"
        );
        assert_cps_eq(
            &must(store.list("atom-a").await, &what),
            &pre,
            format!("{what}: atom-a changed"),
        );
        assert!(
            must(store.list("atom-b").await, &what).is_empty(),
            "{what}: atom-b was written"
        );
        let summaries = summary_views(&must(store.executions().await, &what));
        assert_eq!(
            summaries,
            vec![expected_summary(&pre)],
            "{what}: executions"
        );
    }
    let out = must(
        store
            .save_batch(vec![
                nth_checkpoint("atom-a", 3),
                nth_checkpoint("atom-b", 1),
            ])
            .await,
        "valid batch",
    );
    assert_eq!(
        out[0].parent.as_ref(),
        Some(&pre[1].id),
        "[{name}] parent after the failed batches"
    );
    drop(store);
    let store = h.open().await;
    let all_a: Vec<Checkpoint> = pre.iter().chain(&out[..1]).cloned().collect();
    assert_cps_eq(
        &must(store.list("atom-a").await, "list"),
        &all_a,
        format!("[{name}] atom-a after reopen"),
    );
    assert_cps_eq(
        &must(store.list("atom-b").await, "list"),
        &out[1..],
        format!("[{name}] atom-b after reopen"),
    );
}

/// `executions()` summarises every execution with live checkpoints, sorted by id: count, latest
/// version and node, last timestamp; cleared and all-deleted executions are absent. Equal after a
/// reopen (log sizes included).
pub async fn executions_summarise_live_checkpoints(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let b = save_n(&store, "ex-b", 2).await;
    let a = save_n(&store, "ex-a", 3).await;
    let _c = save_n(&store, "ex-c", 1).await;
    let d = save_n(&store, "ex-d", 2).await;
    let e = save_n(&store, "ex-e", 1).await;
    must(store.clear("ex-c").await, "clear");
    must(store.delete(&d[1].id).await, "delete");
    must(store.delete(&a[2].id).await, "delete");
    must(store.delete(&e[0].id).await, "delete");
    let summaries = must(store.executions().await, "executions");
    let expected = vec![
        expected_summary(&a[..2]),
        expected_summary(&b),
        expected_summary(&d[..1]),
    ];
    assert_eq!(summary_views(&summaries), expected, "[{name}] executions");
    assert!(
        summaries.iter().all(|s| s.log_bytes > 0),
        "[{name}] log_bytes 0: {summaries:?}"
    );
    drop(store);
    let store = h.open().await;
    assert_eq!(
        must(store.executions().await, "executions"),
        summaries,
        "[{name}] executions after reopen"
    );
}

// ---------------------------------------------------------------------------------------------
// Reopen, several stores
// ---------------------------------------------------------------------------------------------

/// Everything a store answers about some executions.
#[derive(Debug, PartialEq)]
struct Projections {
    lists: Vec<Vec<Checkpoint>>,
    latest: Vec<Option<Checkpoint>>,
    history: Vec<Vec<CheckpointHeader>>,
    loads: Vec<Checkpoint>,
    executions: Vec<ExecutionSummary>,
}

async fn capture(store: &Store, execs: &[&str]) -> Projections {
    let mut p = Projections {
        lists: Vec::new(),
        latest: Vec::new(),
        history: Vec::new(),
        loads: Vec::new(),
        executions: must(store.executions().await, "executions"),
    };
    for exec in execs {
        let list = must(store.list(exec).await, exec);
        for cp in &list {
            p.loads.push(must(store.load(&cp.id).await, &cp.id));
        }
        p.lists.push(list);
        p.latest.push(must(store.latest(exec).await, exec));
        p.history.push(must(
            store.history(exec, HistoryQuery::default()).await,
            exec,
        ));
    }
    p
}

#[track_caller]
fn assert_same_projections(actual: &Projections, expected: &Projections, what: &str) {
    for (a, e) in actual.lists.iter().zip(&expected.lists) {
        assert_cps_eq(a, e, format!("{what}: list"));
    }
    assert_cps_eq(&actual.loads, &expected.loads, format!("{what}: loads"));
    assert_eq!(actual.history, expected.history, "{what}: history");
    assert_eq!(actual.executions, expected.executions, "{what}: executions");
    assert_eq!(actual, expected, "{what}");
}

/// Saves, deletes and a fork, then a reopen: list, latest, history, load by id and executions are
/// all equal to before; saving continues above every earlier version with the right parent.
pub async fn reopen_keeps_every_projection(h: &dyn Harness) {
    let name = h.name();
    let execs = ["re-a", "re-b", "re-f"];
    let store = h.open().await;
    let a = save_n(&store, "re-a", 4).await;
    let b = save_n(&store, "re-b", 2).await;
    must(store.delete(&a[1].id).await, "delete");
    must(store.delete(&a[3].id).await, "delete latest");
    must(store.fork(&b[0].id, "re-f").await, "fork");
    let before = capture(&store, &execs).await;
    assert_eq!(
        before.lists.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 2, 1],
        "[{name}] setup"
    );
    drop(store);

    let store = h.open().await;
    let after = capture(&store, &execs).await;
    assert_same_projections(&after, &before, &format!("[{name}] after reopen"));
    let next = save_one(&store, "re-a", 5).await;
    assert!(
        next.version > a[3].version,
        "[{name}] version {} reused after reopen",
        next.version
    );
    assert_eq!(
        next.parent.as_ref(),
        Some(&a[2].id),
        "[{name}] parent after reopen"
    );
    let before = capture(&store, &execs).await;
    drop(store);
    let store = h.open().await;
    assert_same_projections(
        &capture(&store, &execs).await,
        &before,
        &format!("[{name}] after second reopen"),
    );
}

/// A second store on the same storage (a second `open` where the harness allows it, otherwise a
/// second `Store` on the same backend) sees the first one's saves, deletes and clears, and the
/// first sees the second's; parents and versions follow across them.
pub async fn two_stores_see_each_other(h: &dyn Harness) {
    let name = h.name();
    let one = h.open().await;
    let two = if h.allows_concurrent_opens() {
        h.open().await
    } else {
        one.with_same_keys(one.backend().clone())
    };
    let a = save_n(&one, "two", 2).await;
    assert_cps_eq(
        &must(two.list("two").await, "list"),
        &a,
        format!("[{name}] second store lists the first's saves"),
    );
    let b = save_one(&two, "two", 3).await;
    assert_eq!(
        b.parent.as_ref(),
        Some(&a[1].id),
        "[{name}] parent across stores"
    );
    assert!(b.version > a[1].version, "[{name}] version across stores");
    assert_eq!(
        must(one.latest("two").await, "latest").as_ref(),
        Some(&b),
        "[{name}] first store sees the second's save"
    );
    let c = save_one(&one, "two", 4).await;
    assert_eq!(
        c.parent.as_ref(),
        Some(&b.id),
        "[{name}] parent back across stores"
    );
    must(two.delete(&a[0].id).await, "delete");
    assert_not_found(
        one.load(&a[0].id).await,
        &a[0].id.to_string(),
        format!("[{name}] delete across stores"),
    );
    let expected = [a[1].clone(), b.clone(), c.clone()];
    assert_cps_eq(
        &must(one.list("two").await, "list"),
        &expected,
        format!("[{name}] first store's list"),
    );
    assert_cps_eq(
        &must(two.list("two").await, "list"),
        &expected,
        format!("[{name}] second store's list"),
    );
    must(one.clear("two").await, "clear");
    assert!(
        must(two.list("two").await, "list").is_empty(),
        "[{name}] clear across stores"
    );
    assert!(
        must(two.executions().await, "executions").is_empty(),
        "[{name}] executions after clear"
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// 16 tasks save 10 checkpoints each to one execution through clones of one store: all 160 are
/// kept, with consecutive versions, each one's parent the one before, and each task's saves in
/// its own order.
pub async fn concurrent_saves_are_all_kept(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10u64 {
                let state = json!({ "task": t, "i": i, "note": text("conc", t * 100 + i, 60) });
                let cp = Checkpoint::new("conc", &format!("task-{t}"), &state)
                    .map(|c| c.with_metadata("i", i));
                out.push(match cp {
                    Ok(cp) => store.save(cp).await,
                    Err(e) => Err(e),
                });
            }
            out
        }));
    }
    let mut returned = Vec::new();
    for task in tasks {
        let results = task
            .await
            .unwrap_or_else(|e| panic!("[{name}] saving task panicked: {e}"));
        returned.extend(
            results
                .into_iter()
                .map(|r| must(r, format!("[{name}] concurrent save"))),
        );
    }
    returned.sort_by_key(|c| c.version);
    let list = must(store.list("conc").await, "list");
    assert_eq!(
        list.len(),
        160,
        "[{name}] saves lost: versions {:?}",
        versions(&list)
    );
    assert_cps_eq(
        &list,
        &returned,
        format!("[{name}] list vs what save returned"),
    );
    for (i, cp) in list.iter().enumerate().skip(1) {
        assert_eq!(
            cp.version,
            list[i - 1].version + 1,
            "[{name}] versions not consecutive: {:?}",
            versions(&list)
        );
        assert_eq!(
            cp.parent.as_ref(),
            Some(&list[i - 1].id),
            "[{name}] parent of {}",
            cp.id
        );
    }
    assert_eq!(list[0].parent, None, "[{name}] parent of the first");
    for t in 0..16u64 {
        let own: Vec<u64> = list
            .iter()
            .filter(|c| c.node_name == format!("task-{t}"))
            .map(|c| c.metadata["i"].as_u64().unwrap_or(u64::MAX))
            .collect();
        assert_eq!(
            own,
            (0..10).collect::<Vec<_>>(),
            "[{name}] task {t}'s saves out of order or lost"
        );
    }
}

/// `save_after(cp, expected)` saves only when `expected` is the execution's newest live
/// checkpoint (`None`: no live checkpoint), otherwise it is a Conflict that writes nothing; a
/// parent from another execution is refused.
pub async fn save_after_checks_the_latest(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let first = must(
        store.save_after(nth_checkpoint("sa", 1), None).await,
        "save_after None",
    );
    assert_eq!(first.parent, None, "[{name}] parent");
    let second = must(
        store
            .save_after(nth_checkpoint("sa", 2), Some(&first.id))
            .await,
        "save_after first",
    );
    assert_eq!(second.parent.as_ref(), Some(&first.id), "[{name}] parent");
    let stale = store
        .save_after(nth_checkpoint("sa", 3), Some(&first.id))
        .await;
    assert!(
        stale.as_ref().is_err_and(Error::is_conflict),
        "[{name}] stale parent: {stale:?}"
    );
    let none = store.save_after(nth_checkpoint("sa", 3), None).await;
    assert!(
        none.as_ref().is_err_and(Error::is_conflict),
        "[{name}] None on a non-empty execution: {none:?}"
    );
    let foreign = must(CheckpointId::new("sa-other", second.version), "id");
    let wrong = store
        .save_after(nth_checkpoint("sa", 3), Some(&foreign))
        .await;
    assert!(
        wrong.is_err(),
        "[{name}] parent from another execution accepted"
    );
    assert_cps_eq(
        &must(store.list("sa").await, "list"),
        &[first.clone(), second.clone()],
        format!("[{name}] refused saves wrote"),
    );
    must(store.delete(&second.id).await, "delete");
    let third = must(
        store
            .save_after(nth_checkpoint("sa", 3), Some(&first.id))
            .await,
        "save_after after delete",
    );
    assert_eq!(
        third.parent.as_ref(),
        Some(&first.id),
        "[{name}] parent after delete"
    );
}

/// Two stores on one backend race `save_after` on the same expected parent (five rounds): exactly
/// one wins, the other gets Conflict, and the winner is the new latest.
pub async fn save_after_races_have_one_winner(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    save_n(&store, "race", 1).await;
    let s1 = store.with_same_keys(store.backend().clone());
    let s2 = store.with_same_keys(store.backend().clone());
    for round in 0..5u64 {
        let latest =
            must(s1.latest("race").await, "latest").unwrap_or_else(|| panic!("[{name}] no latest"));
        let race = |s: &Store, i: u64| {
            let (s, id) = (s.clone(), latest.id.clone());
            tokio::spawn(async move { s.save_after(nth_checkpoint("race", i), Some(&id)).await })
        };
        let (r1, r2) = tokio::join!(race(&s1, 10 + round), race(&s2, 20 + round));
        let (r1, r2) = match (r1, r2) {
            (Ok(r1), Ok(r2)) => (r1, r2),
            _ => panic!("[{name}] a racing task panicked"),
        };
        let what = format!("[{name}] round {round}: {r1:?} / {r2:?}");
        let winner = match (r1, r2) {
            (Ok(w), Err(e)) | (Err(e), Ok(w)) => {
                assert!(
                    e.is_conflict(),
                    "{what}: the loser's error is not a conflict"
                );
                w
            }
            _ => panic!("{what}: expected exactly one winner"),
        };
        assert_eq!(
            winner.parent.as_ref(),
            Some(&latest.id),
            "{what}: winner's parent"
        );
        assert_eq!(
            must(store.latest("race").await, "latest").as_ref(),
            Some(&winner),
            "{what}: latest"
        );
        assert_eq!(
            must(store.list("race").await, "list").len() as u64,
            round + 2,
            "{what}: count"
        );
    }
}

/// The backend primitive: `append` is compare-and-append (a second append at the same expected
/// sequence is a Conflict and the log keeps only the first frame), atomic across logs, numbers
/// frames consecutively, and `truncate` keeps the next sequence number; all durable across a
/// reopen.
pub async fn backend_append_is_compare_and_append(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let backend = store.backend().clone();
    let log = "raw-append";
    let seq = must(backend.next_seq(log).await, "next_seq");
    assert_eq!(seq, 1, "[{name}] next_seq of a log never appended to");
    let append = |log: &str, expected_seq: u64, frames: &[&str]| {
        append_owned(
            log,
            expected_seq,
            frames.iter().map(|f| f.as_bytes().to_vec()).collect(),
        )
    };
    must(
        backend.append(append(log, 1, &["first"])).await,
        "first append",
    );
    let second = backend.append(append(log, 1, &["second"])).await;
    assert!(
        second.as_ref().is_err_and(Error::is_conflict),
        "[{name}] second append at seq 1: {second:?}"
    );
    assert_eq!(
        must(backend.next_seq(log).await, "next_seq"),
        2,
        "[{name}] next_seq after one append"
    );
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        vec![(1, b"first".to_vec())],
        "[{name}] log"
    );

    let mut both = append("raw-other", 1, &["x"]);
    both.extend(append(log, 1, &["stale"]));
    let result = backend.append(both).await;
    assert!(
        result.as_ref().is_err_and(Error::is_conflict),
        "[{name}] multi-log append with a stale part: {result:?}"
    );
    assert_eq!(
        must(backend.next_seq("raw-other").await, "next_seq"),
        1,
        "[{name}] partial multi-log append"
    );
    assert!(
        must(backend.scan("raw-other", 1, 10).await, "scan").is_empty(),
        "[{name}] partial multi-log append"
    );

    let mut both = append("raw-other", 1, &["x"]);
    both.extend(append(log, 2, &["a", "b"]));
    must(backend.append(both).await, "multi-log append");
    let expected: Vec<(u64, Vec<u8>)> = vec![
        (1, b"first".to_vec()),
        (2, b"a".to_vec()),
        (3, b"b".to_vec()),
    ];
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        expected,
        "[{name}] frames numbered consecutively"
    );
    assert_eq!(
        must(backend.scan(log, 2, 1).await, "scan"),
        expected[1..2].to_vec(),
        "[{name}] scan from, limit"
    );
    must(backend.truncate(log, 3).await, "truncate");
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        expected[2..].to_vec(),
        "[{name}] truncate"
    );
    assert_eq!(
        must(backend.next_seq(log).await, "next_seq"),
        4,
        "[{name}] truncate moved next_seq"
    );
    let stale = backend.append(append(log, 1, &["reuse"])).await;
    assert!(
        stale.as_ref().is_err_and(Error::is_conflict),
        "[{name}] append reusing a truncated seq: {stale:?}"
    );

    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let b = backend.clone();
            tokio::spawn(
                async move { b.append(append_owned("raw-append", 4, vec![vec![i]])).await },
            )
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await {
            Ok(Ok(())) => wins += 1,
            Ok(Err(e)) => assert!(e.is_conflict(), "[{name}] racing append: {e}"),
            Err(e) => panic!("[{name}] racing append panicked: {e}"),
        }
    }
    assert_eq!(wins, 1, "[{name}] racing appends at the same seq");
    let mut logs = must(backend.list_logs().await, "list_logs");
    logs.sort();
    assert_eq!(logs, ["raw-append", "raw-other"], "[{name}] list_logs");
    let tail = must(backend.scan(log, 1, 10).await, "scan");
    drop((backend, store));

    let store = h.open().await;
    let backend = store.backend();
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        tail,
        "[{name}] log after reopen"
    );
    assert_eq!(
        must(backend.next_seq(log).await, "next_seq"),
        5,
        "[{name}] next_seq after reopen"
    );
}

fn append_owned(log: &str, expected_seq: u64, frames: Vec<Vec<u8>>) -> Vec<LogAppend> {
    vec![LogAppend::new(log, expected_seq, frames)]
}

/// The backend's blobs: get/has of a missing hash, put, idempotent put (the first content stays),
/// get_blobs (in order, `None` where missing, repeats), list, delete (unknown hashes ignored), durable across a reopen.
pub async fn backend_blobs_follow_the_contract(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let b = store.backend().clone();
    let (h1, h2, h9) = ([1u8; 32], [2u8; 32], [9u8; 32]);
    assert_eq!(
        must(b.get_blob(&h1).await, "get"),
        None,
        "[{name}] missing blob"
    );
    assert!(
        !must(b.has_blob(&h1).await, "has"),
        "[{name}] has missing blob"
    );
    must(
        b.put_blobs(vec![(h1, b"one".to_vec()), (h2, b"two".to_vec())])
            .await,
        "put",
    );
    must(
        b.put_blobs(vec![(h1, b"other".to_vec())]).await,
        "put again",
    );
    assert_eq!(
        must(b.get_blob(&h1).await, "get"),
        Some(b"one".to_vec()),
        "[{name}] put is not idempotent"
    );
    assert!(must(b.has_blob(&h2).await, "has"), "[{name}] has");
    assert_eq!(
        must(b.get_blobs(&[h2, h9, h1, h2]).await, "get_blobs"),
        vec![
            Some(b"two".to_vec()),
            None,
            Some(b"one".to_vec()),
            Some(b"two".to_vec())
        ],
        "[{name}] get_blobs: in order, None where missing"
    );
    assert!(
        must(b.get_blobs(&[]).await, "get_blobs").is_empty(),
        "[{name}] get_blobs of nothing"
    );
    let mut all = must(b.list_blobs().await, "list");
    all.sort();
    assert_eq!(all, vec![h1, h2], "[{name}] list_blobs");
    assert!(
        must(b.list_logs().await, "list_logs").is_empty(),
        "[{name}] blobs show up as logs"
    );
    must(b.delete_blobs(&[h1, h9]).await, "delete");
    assert_eq!(
        must(b.list_blobs().await, "list"),
        vec![h2],
        "[{name}] after delete"
    );
    assert_eq!(
        must(b.get_blob(&h1).await, "get"),
        None,
        "[{name}] deleted blob"
    );
    must(b.flush().await, "flush");
    drop((b, store));
    let store = h.open().await;
    assert_eq!(
        must(store.backend().list_blobs().await, "list"),
        vec![h2],
        "[{name}] blobs after reopen"
    );
    assert_eq!(
        must(store.backend().get_blob(&h2).await, "get"),
        Some(b"two".to_vec()),
        "[{name}] blob after reopen"
    );
}

/// Two stores on one backend save concurrently (plain `save`, which retries on conflict): every
/// save of both is kept, in one chain of consecutive versions.
pub async fn concurrent_plain_saves_from_two_stores(h: &dyn Harness) {
    saves_from_several_stores(h, "plain2", 2, 10).await;
}

/// Eight stores on one backend save 25 checkpoints each to one execution at the same time: plain
/// `save` is documented to keep both sides of a race, so none of the 200 may fail (with a
/// conflict or anything else), however often it has to retry.
pub async fn plain_saves_survive_contention(h: &dyn Harness) {
    saves_from_several_stores(h, "plain8", 8, 25).await;
}

/// `stores` stores on one backend, one task each, save `saves` checkpoints each to `exec`: all are
/// kept, with consecutive versions and chained parents.
async fn saves_from_several_stores(h: &dyn Harness, exec: &'static str, stores: u64, saves: u64) {
    let name = h.name();
    let store = h.open().await;
    let writers: Vec<_> = (0..stores)
        .map(|w| {
            let s = store.with_same_keys(store.backend().clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 1..=saves {
                    out.push(s.save(nth_checkpoint(exec, w * 1000 + i)).await);
                }
                out
            })
        })
        .collect();
    let mut returned = Vec::new();
    let mut failed = Vec::new();
    for w in writers {
        let results = w
            .await
            .unwrap_or_else(|e| panic!("[{name}] writer panicked: {e}"));
        for r in results {
            match r {
                Ok(cp) => returned.push(cp),
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    assert!(
        failed.is_empty(),
        "[{name}] {} of {} plain saves from {stores} stores failed, e.g. {}",
        failed.len(),
        stores * saves,
        failed[0]
    );
    returned.sort_by_key(|c| c.version);
    let list = must(store.list(exec).await, "list");
    assert_eq!(
        list.len() as u64,
        stores * saves,
        "[{name}] saves lost: {:?}",
        versions(&list)
    );
    assert_cps_eq(&list, &returned, format!("[{name}] list vs returned"));
    for (i, cp) in list.iter().enumerate().skip(1) {
        assert_eq!(
            cp.version,
            list[i - 1].version + 1,
            "[{name}] versions {:?}",
            versions(&list)
        );
        assert_eq!(
            cp.parent.as_ref(),
            Some(&list[i - 1].id),
            "[{name}] parent of {}",
            cp.id
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

async fn next_within(w: &mut Watch, what: &str) -> Checkpoint {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Err(_) => panic!("{what}: nothing within 10 s"),
        Ok(None) => panic!("{what}: the stream ended"),
        Ok(Some(Err(e))) => panic!("{what}: the stream yielded an error: {e}"),
        Ok(Some(Ok(cp))) => cp,
    }
}

async fn assert_quiet(w: &mut Watch, what: &str) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        panic!("{what}: unexpected item {item:?}");
    }
}

/// A watch yields, in version order and with their states, the checkpoints saved after it started:
/// by a spawned task through the same store, then by a second store on the same backend; not
/// those saved before it, nor those of other executions, nor one deleted before it was read.
pub async fn watch_yields_new_saves_in_order(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    save_n(&store, "watch", 2).await;
    let mut w = store.watch("watch");
    // The first poll; see `watch_starts_at_the_call` for saves made before it.
    assert_quiet(&mut w, &format!("[{name}] saves made before the watch")).await;
    let s = store.clone();
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 3..=5 {
            out.push(save_one(&s, "watch", i).await);
        }
        out
    });
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(next_within(&mut w, &format!("[{name}] item {i} from the same store")).await);
    }
    let saved = writer
        .await
        .unwrap_or_else(|e| panic!("[{name}] writer panicked: {e}"));
    assert_cps_eq(
        &got,
        &saved,
        format!("[{name}] watched saves of the same store"),
    );

    let other = store.with_same_keys(store.backend().clone());
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 6..=8 {
            out.push(save_one(&other, "watch", i).await);
        }
        out
    });
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(next_within(&mut w, &format!("[{name}] item {i} from another store")).await);
    }
    let saved = writer
        .await
        .unwrap_or_else(|e| panic!("[{name}] writer panicked: {e}"));
    assert_cps_eq(
        &got,
        &saved,
        format!("[{name}] watched saves of another store"),
    );
    save_one(&store, "watch-elsewhere", 1).await;
    assert_quiet(&mut w, &format!("[{name}] save to another execution")).await;

    let doomed = save_one(&store, "watch", 9).await;
    let kept = save_one(&store, "watch", 10).await;
    must(store.delete(&doomed.id).await, "delete");
    let got = next_within(&mut w, &format!("[{name}] after a delete")).await;
    assert_cp_eq(
        &got,
        &kept,
        format!("[{name}] a checkpoint deleted before it was read is skipped"),
    );
    assert_quiet(&mut w, &format!("[{name}] nothing after the delete")).await;
}

/// A watch starts when `watch()` is called, not when the stream is first polled: a save by
/// another writer in between is yielded (before a later save of the watching store), and one
/// saved just before the call is not.
pub async fn watch_starts_at_the_call(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let other = store.with_same_keys(store.backend().clone());
    save_n(&other, "ws", 1).await;
    let mut w = store.watch("ws");
    let a = save_one(&other, "ws", 2).await;
    let b = save_one(&store, "ws", 3).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Ok(cp))) => got.push(cp),
            Ok(other) => panic!("[{name}] the watch yielded {other:?}"),
            Err(_) => break,
        }
    }
    assert_cps_eq(
        &got,
        &[a, b],
        format!("[{name}] saves after watch() but before the first poll"),
    );
    assert_quiet(&mut w, &format!("[{name}] nothing more")).await;
}

// ---------------------------------------------------------------------------------------------
// gc, storage
// ---------------------------------------------------------------------------------------------

/// A state with a long (blob) string unique to `(tag, i)`.
fn blob_state(tag: &str, i: u64) -> serde_json::Value {
    json!({ "step": i, "text": text(tag, i, 400), "short": format!("{tag}-{i}") })
}

async fn save_blobs(store: &Store, exec: &str, n: u64) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    for i in 1..=n {
        let cp = must(Checkpoint::new(exec, "n", &blob_state(exec, i)), exec);
        out.push(must(store.save(cp).await, exec));
    }
    out
}

/// After clearing one execution, deleting in another, and clearing and saving again in a third, gc
/// removes blobs (and frames, truncating the third's log), every live checkpoint still loads with
/// its exact state, the blob count shrinks by what gc reports, a
/// second gc removes nothing, and saving and reopening afterwards work.
pub async fn gc_reclaims_cleared_and_deleted(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let a = save_blobs(&store, "gc-a", 4).await;
    let b = save_blobs(&store, "gc-b", 5).await;
    let c = save_blobs(&store, "gc-c", 2).await;
    // gc-d: saved, cleared and saved again, so gc truncates the head of a log that has live checkpoints.
    let d_old = save_blobs(&store, "gc-d", 3).await;
    must(store.clear("gc-d").await, "clear");
    let d = save_blobs(&store, "gc-d", 2).await;
    must(store.clear("gc-a").await, "clear");
    must(store.delete(&b[1].id).await, "delete");
    must(store.delete(&b[3].id).await, "delete");
    let live_b = vec![b[0].clone(), b[2].clone(), b[4].clone()];
    let blobs_before = must(store.backend().list_blobs().await, "list_blobs").len() as u64;

    let report = must(store.gc().await, "gc");
    let blobs_after = must(store.backend().list_blobs().await, "list_blobs").len() as u64;
    let what = format!("[{name}] gc {report:?}, blobs {blobs_before} -> {blobs_after}");
    assert!(report.blobs_removed > 0, "{what}: nothing removed");
    assert!(
        report.frames_removed > (a.len() + d_old.len()) as u64,
        "{what}: cleared frames kept"
    );
    assert_eq!(
        blobs_after,
        blobs_before - report.blobs_removed,
        "{what}: report vs backend"
    );
    assert_eq!(report.blobs_kept, blobs_after, "{what}: blobs_kept");
    assert!(
        must(store.list("gc-a").await, "list").is_empty(),
        "{what}: cleared execution back"
    );
    assert_cps_eq(
        &must(store.list("gc-b").await, "list"),
        &live_b,
        format!("{what}: gc-b"),
    );
    assert_cps_eq(
        &must(store.list("gc-c").await, "list"),
        &c,
        format!("{what}: gc-c"),
    );
    assert_cps_eq(
        &must(store.list("gc-d").await, "list"),
        &d,
        format!("{what}: gc-d"),
    );
    for cp in live_b.iter().chain(&c).chain(&d) {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("{what}: load"),
        );
    }

    let again = must(store.gc().await, "second gc");
    assert_eq!(
        (again.blobs_removed, again.frames_removed),
        (0, 0),
        "[{name}] second gc removed more: {again:?}"
    );

    let a2 = must(
        store
            .save(must(
                Checkpoint::new("gc-a", "n", &blob_state("gc-a", 9)),
                "cp",
            ))
            .await,
        "save",
    );
    assert!(
        a2.version > a[3].version,
        "[{name}] version reused after gc"
    );
    assert_eq!(a2.parent, None, "[{name}] parent after clear + gc");
    let b2 = must(
        store
            .save(must(
                Checkpoint::new("gc-b", "n", &blob_state("gc-b", 9)),
                "cp",
            ))
            .await,
        "save",
    );
    assert_eq!(
        b2.parent.as_ref(),
        Some(&b[4].id),
        "[{name}] parent after gc"
    );
    drop(store);

    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("gc-a").await, "list"),
        &[a2],
        format!("[{name}] gc-a after reopen"),
    );
    let all_b: Vec<Checkpoint> = live_b.iter().cloned().chain([b2]).collect();
    assert_cps_eq(
        &must(store.list("gc-b").await, "list"),
        &all_b,
        format!("[{name}] gc-b after reopen"),
    );
    assert_cps_eq(
        &must(store.list("gc-c").await, "list"),
        &c,
        format!("[{name}] gc-c after reopen"),
    );
    assert_cps_eq(
        &must(store.list("gc-d").await, "list"),
        &d,
        format!("[{name}] gc-d after reopen"),
    );
    let d3 = save_blobs(&store, "gc-d", 1).await;
    assert_eq!(
        d3[0].parent.as_ref(),
        Some(&d[1].id),
        "[{name}] parent after gc truncated the log"
    );
    assert!(
        d3[0].version > d[1].version,
        "[{name}] version after gc truncated the log"
    );
}

/// gc keeps a blob that a cleared execution shares with a live one, and the blobs of a fork whose
/// source execution was cleared; both still load, also after a reopen.
pub async fn gc_keeps_blobs_shared_with_live_checkpoints(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let shared = text("shared", 1, 500);
    let save = |exec: &'static str, state: serde_json::Value| {
        let store = store.clone();
        async move {
            must(
                store
                    .save(must(Checkpoint::new(exec, "n", &state), exec))
                    .await,
                exec,
            )
        }
    };
    save(
        "sh-a",
        json!({ "text": shared, "own": text("sh-a", 1, 400) }),
    )
    .await;
    let b = save("sh-b", json!({ "text": shared, "n": 1 })).await;
    let src = save("sh-src", json!({ "doc": text("sh-src", 1, 900) })).await;
    let fork = must(store.fork(&src.id, "sh-fork").await, "fork");
    must(store.clear("sh-a").await, "clear");
    must(store.clear("sh-src").await, "clear");
    let report = must(store.gc().await, "gc");
    assert!(
        report.blobs_removed >= 1,
        "[{name}] the cleared execution's own blob was kept: {report:?}"
    );
    assert_cp_eq(
        &must(store.load(&b.id).await, "load"),
        &b,
        format!("[{name}] shared blob after gc"),
    );
    assert_cp_eq(
        &must(store.load(&fork.id).await, "load"),
        &fork,
        format!("[{name}] fork after gc"),
    );
    drop(store);
    let store = h.open().await;
    assert_cp_eq(
        &must(store.load(&b.id).await, "load"),
        &b,
        format!("[{name}] shared blob after reopen"),
    );
    assert_cp_eq(
        &must(store.load(&fork.id).await, "load"),
        &fork,
        format!("[{name}] fork after reopen"),
    );
}

/// 100 saves of a conversation that gains one 600-byte message per save write far less than the
/// ~3 MB of whole states (frames + blobs < 150 kB), and every version loads back exactly.
pub async fn deltas_keep_storage_small(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut saved = Vec::new();
    let mut states = Vec::new();
    for n in 1..=100u64 {
        let state = conv_state("eff", n, 600);
        let cp = must(Checkpoint::new("eff", "chat", &state), "cp");
        saved.push(must(store.save(cp).await, "save"));
        states.push(state);
    }
    let stats = store.write_stats();
    assert_eq!(stats.frames, 100, "[{name}] frames written: {stats:?}");
    assert!(
        stats.frame_bytes + stats.blob_bytes < 150_000,
        "[{name}] too many bytes written: {stats:?}"
    );
    for (cp, state) in saved.iter().zip(&states) {
        let loaded = must(store.at_version("eff", cp.version).await, "at_version");
        assert_eq!(
            &must(loaded.state_json(), "json"),
            state,
            "[{name}] state of {}",
            cp.id
        );
    }
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("eff").await, "list"),
        &saved,
        format!("[{name}] all 100 after reopen"),
    );
}

/// 250 small saves to one execution (longer than any delta chain may grow), then the first 120
/// deleted and gc run: gc truncates the log's head, and every remaining version loads exactly,
/// also after a reopen; saving continues on top.
pub async fn long_delta_chains_load_every_version(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let state = |n: u64| json!({ "step": n, "recent": [n.saturating_sub(2), n.saturating_sub(1), n], "note": text("chain", n % 7, 30) });
    let mut saved = Vec::new();
    for n in 1..=250 {
        saved.push(must(
            store
                .save(must(Checkpoint::new("chain", "n", &state(n)), "cp"))
                .await,
            "save",
        ));
    }
    for cp in &saved[..120] {
        must(store.delete(&cp.id).await, "delete");
    }
    let live = &saved[120..];
    let report = must(store.gc().await, "gc");
    assert!(
        report.frames_removed > 0,
        "[{name}] gc kept the head of a 250-save log: {report:?}"
    );
    for (cp, n) in live.iter().zip(121..) {
        let loaded = must(store.at_version("chain", cp.version).await, "at_version");
        assert_eq!(
            must(loaded.state_json(), "json"),
            state(n),
            "[{name}] state of {}",
            cp.id
        );
        assert_cp_eq(&loaded, cp, format!("[{name}] {} after gc", cp.id));
    }
    assert_cps_eq(
        &must(store.list("chain").await, "list"),
        live,
        format!("[{name}] list after gc"),
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("chain").await, "list"),
        live,
        format!("[{name}] list after reopen"),
    );
    let next = must(
        store
            .save(must(Checkpoint::new("chain", "n", &state(251)), "cp"))
            .await,
        "save",
    );
    assert_eq!(
        next.parent.as_ref(),
        live.last().map(|c| &c.id),
        "[{name}] parent after gc + reopen"
    );
    assert_cp_eq(
        &must(store.load(&next.id).await, "load"),
        &next,
        format!("[{name}] save after gc + reopen"),
    );
}

/// gc run by one store while a second store on the same backend is alive: blobs the first
/// removes are stored again when the second saves the same content afterwards, and the second
/// store's reads stay right.
pub async fn gc_does_not_break_other_stores(h: &dyn Harness) {
    let name = h.name();
    let one = h.open().await;
    let two = one.with_same_keys(one.backend().clone());
    let shared = json!({ "doc": text("gc-other", 1, 800) });
    let first = must(
        two.save(must(Checkpoint::new("gco-x", "n", &shared), "cp"))
            .await,
        "save",
    );
    assert_cp_eq(
        &must(two.load(&first.id).await, "load"),
        &first,
        format!("[{name}] load before gc"),
    );
    must(two.clear("gco-x").await, "clear");
    let report = must(one.gc().await, "gc");
    assert!(
        report.blobs_removed >= 1,
        "[{name}] gc kept the cleared execution's blob: {report:?}"
    );
    let again = must(
        two.save(must(Checkpoint::new("gco-y", "n", &shared), "cp"))
            .await,
        "save after gc",
    );
    let later = must(
        two.save(must(Checkpoint::new("gco-x", "n", &shared), "cp"))
            .await,
        "save after gc",
    );
    for store in [&one, &two] {
        for cp in [&again, &later] {
            assert_cp_eq(
                &must(store.load(&cp.id).await, "load"),
                cp,
                format!("[{name}] {} after gc", cp.id),
            );
        }
    }
    drop((one, two));
    let store = h.open().await;
    for cp in [&again, &later] {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("[{name}] {} after reopen", cp.id),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid input
// ---------------------------------------------------------------------------------------------

/// Bad execution ids and node names, malformed checkpoint ids and over-deep states are refused with
/// InvalidInput (not a panic); store calls with bad ids fail; none of it leaves a trace, and the
/// store works afterwards.
pub async fn invalid_input_is_refused_and_harmless(h: &dyn Harness) {
    let name = h.name();
    let is_invalid = |r: &crate::Result<Checkpoint>| matches!(r, Err(Error::InvalidInput(_)));
    let long = "x".repeat(300);
    for bad in [
        "",
        long.as_str(),
        &"y".repeat(257),
        "tab\there",
        "nl\n",
        "nul\0",
        "del\u{7f}",
    ] {
        let r = Checkpoint::new(bad, "n", &1);
        assert!(is_invalid(&r), "[{name}] execution id {bad:?}: {r:?}");
        assert!(
            CheckpointId::new(bad, 1).is_err(),
            "[{name}] CheckpointId::new({bad:?})"
        );
    }
    assert!(
        Checkpoint::new(&"z".repeat(256), "n", &1).is_ok(),
        "[{name}] 256-byte execution id refused"
    );
    for bad in ["", "line\nbreak", &"n".repeat(257)] {
        let r = Checkpoint::new("ok", bad, &1);
        assert!(is_invalid(&r), "[{name}] node name {bad:?}: {r:?}");
    }
    for bad in [
        "no-at-sign",
        "e@",
        "e@x",
        "@5",
        "e@-1",
        "e@1.5",
        "e@99999999999999999999999",
        "",
    ] {
        assert!(
            bad.parse::<CheckpointId>().is_err(),
            "[{name}] {bad:?} parsed as a checkpoint id"
        );
    }
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let r = Checkpoint::new("ok", "n", &deep);
    assert!(is_invalid(&r), "[{name}] a 200-level state: {r:?}");

    let store = h.open().await;
    assert!(
        store.at_version("", 1).await.is_err(),
        "[{name}] at_version(\"\")"
    );
    assert!(
        store.list("a\nb").await.is_err(),
        "[{name}] list with a control character"
    );
    assert!(store.latest("").await.is_err(), "[{name}] latest(\"\")");
    assert!(
        store.history("", HistoryQuery::default()).await.is_err(),
        "[{name}] history(\"\")"
    );
    assert!(store.clear("").await.is_err(), "[{name}] clear(\"\")");
    let mut bad = nth_checkpoint("valid", 1);
    bad.execution_id = String::new();
    assert!(
        is_invalid(&store.save(bad.clone()).await),
        "[{name}] save with an empty execution id"
    );
    assert!(
        is_invalid(&store.save_after(bad, None).await),
        "[{name}] save_after with an empty execution id"
    );

    let saved = save_n(&store, "valid", 2).await;
    assert_cps_eq(
        &must(store.list("valid").await, "list"),
        &saved,
        format!("[{name}] store after errors"),
    );
    let summaries = summary_views(&must(store.executions().await, "executions"));
    assert_eq!(
        summaries,
        vec![expected_summary(&saved)],
        "[{name}] executions after errors"
    );
}

/// gc running again and again while other tasks save (long, unique states: new blobs), delete
/// and clear never removes anything a live checkpoint needs: afterwards, and after a reopen,
/// every live checkpoint loads with its exact state.
pub async fn gc_racing_saves_keeps_every_live_checkpoint(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let exec = format!("gcr-{w}");
            let mut live = Vec::new();
            for i in 1..=30u64 {
                let state = json!({ "i": i, "text": text(&exec, i, 500), "all": live.len() });
                let cp = must(Checkpoint::new(&exec, "n", &state), "checkpoint");
                let saved = must(store.save(cp).await, "save while gc runs");
                live.push(saved);
                if i % 3 == 0 {
                    let gone = live.remove(live.len() / 2);
                    must(store.delete(&gone.id).await, "delete while gc runs");
                }
                if w == 2 && i == 15 {
                    must(store.clear(&exec).await, "clear while gc runs");
                    live.clear();
                }
                tokio::task::yield_now().await;
            }
            live
        }));
    }
    let collector = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut removed = 0;
            for _ in 0..15 {
                removed += must(store.gc().await, "gc while saves run").blobs_removed;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            removed
        })
    };
    let mut live = Vec::new();
    for w in writers {
        live.extend(w.await.expect("writer task"));
    }
    let removed = collector.await.expect("gc task");
    must(store.gc().await, "final gc");
    for cp in &live {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load after gc"),
            cp,
            format!(
                "[{name}] {} after gc raced saves ({removed} blobs removed)",
                cp.id
            ),
        );
    }
    drop(store);
    let store = h.open().await;
    for cp in &live {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load after reopen"),
            cp,
            format!("[{name}] {} after reopen", cp.id),
        );
    }
}

/// gc in one process while another saves (a store on [`crate::testing::Elsewhere`]: no shared
/// lock): the saver relies on blobs that exist but that only cleared checkpoints reference, the
/// very blobs gc deletes. The gc fence must make every such save either land before gc looks, or
/// notice gc and write its blobs again: every acknowledged checkpoint loads after a final gc.
pub async fn gc_elsewhere_never_takes_what_a_save_needs(h: &dyn Harness) {
    gc_elsewhere(h, super::Elsewhere::new).await;
}

/// The same race where the saver's backend cannot append to several logs atomically (as Redis
/// Cluster): its saves cannot be fenced, so each checks the gc log after appending and puts
/// back what a gc took; every acknowledged checkpoint loads afterwards.
pub async fn gc_elsewhere_is_repaired_without_cross_log_atomicity(h: &dyn Harness) {
    gc_elsewhere(h, super::Elsewhere::without_cross_log_atomicity).await;
}

async fn gc_elsewhere(
    h: &dyn Harness,
    elsewhere: fn(std::sync::Arc<dyn crate::backend::Backend>) -> super::Elsewhere,
) {
    let name = h.name();
    let here = h.open().await;
    gc_during_a_held_save(name, &here, elsewhere).await;
    let there = here.with_same_keys(std::sync::Arc::new(elsewhere(here.backend().clone())));
    let steps = 120u64;
    let pool = |i: u64| text("pooled", i, 700);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(4);
    // Makes blob `pool(i)` exist with nothing live referencing it, then hands `i` over.
    let churn = {
        let store = here.clone();
        tokio::spawn(async move {
            for i in 0..steps {
                let cp = must(
                    Checkpoint::new("churn", "n", &json!({ "p": pool(i) })),
                    "cp",
                );
                must(store.save(cp).await, "churn save");
                must(store.clear("churn").await, "churn clear");
                if tx.send(i).await.is_err() {
                    break;
                }
            }
        })
    };
    let saver = {
        let store = there.clone();
        tokio::spawn(async move {
            let mut saved = Vec::new();
            while let Some(i) = rx.recv().await {
                let state = json!({ "p": pool(i), "i": i });
                let cp = must(Checkpoint::new("user", "n", &state), "cp");
                saved.push(must(store.save(cp).await, "save while gc runs elsewhere"));
            }
            saved
        })
    };
    let collector = {
        let store = here.clone();
        let done = churn;
        tokio::spawn(async move {
            let mut runs = 0u32;
            while !done.is_finished() {
                match store.gc().await {
                    Ok(_) => runs += 1,
                    Err(Error::Busy { .. }) => {}
                    Err(e) => panic!("gc: {e}"),
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            runs
        })
    };
    let saved = saver.await.expect("saver task");
    let runs = collector.await.expect("gc task");
    must(here.gc().await, "final gc");
    assert_eq!(
        saved.len() as u64,
        steps,
        "[{name}] every save was acknowledged"
    );
    assert!(runs > 0, "[{name}] gc never ran");
    let fresh = here.with_same_keys(here.backend().clone());
    for cp in &saved {
        match fresh.load(&cp.id).await {
            Ok(loaded) => assert_cp_eq(&loaded, cp, format!("[{name}] {}", cp.id)),
            Err(e) => panic!(
                "[{name}] {} was acknowledged but does not load after gc ran elsewhere \
                 ({runs} gc runs): {e}",
                cp.id
            ),
        }
    }
}

/// A gc that died (a begin mark, no end) blocks saves only until its lease runs out; then a
/// writer ends it, and both saves and the next gc go on. A live gc makes another gc `Busy`.
pub async fn a_dead_gc_is_ended_after_its_lease(h: &dyn Harness) {
    use crate::codec::frame::{encode_gc, GcMark};
    let name = h.name();
    let store = h.open().await;
    if !store.backend().capabilities().atomic_across_logs {
        return;
    }
    let backend = store.backend().clone();
    let gc_log = "\u{1}gc";
    let next = must(backend.next_seq(gc_log).await, "next_seq");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    // Marks as a live gc of this process writes them (where one process holds the storage at
    // a time, sled, a live gc can only be one of this process).
    let this_process = Some(crate::store::reclaim::process_id());
    let begin = |lease_us| GcMark {
        begin: true,
        time_us: now_us,
        lease_us,
        owner: this_process,
    };
    // A gc elsewhere that holds a long lease: gc here is Busy.
    let frame = must(encode_gc(gc_log, next, begin(3_600_000_000)), "encode");
    let append = LogAppend::new(gc_log, next, vec![frame]).never_expiring();
    must(backend.append(vec![append]).await, "append a begin mark");
    match store.gc().await {
        Err(Error::Busy { what }) => assert!(what.contains("gc"), "[{name}] {what}"),
        other => panic!("[{name}] gc while another holds its lease: {other:?}"),
    }
    // It ends; then one that dies with a short lease.
    let end = GcMark {
        begin: false,
        time_us: now_us,
        lease_us: 0,
        owner: this_process,
    };
    let frame = must(encode_gc(gc_log, next + 1, end), "encode");
    let append = LogAppend::new(gc_log, next + 1, vec![frame]).never_expiring();
    must(backend.append(vec![append]).await, "append an end mark");
    let frame = must(encode_gc(gc_log, next + 2, begin(300_000)), "encode");
    let append = LogAppend::new(gc_log, next + 2, vec![frame]).never_expiring();
    must(
        backend.append(vec![append]).await,
        "append a dying begin mark",
    );
    let fresh = store.with_same_keys(std::sync::Arc::new(super::Elsewhere::new(backend.clone())));
    let saved = must(
        fresh.save(nth_checkpoint("after-dead-gc", 1)).await,
        "save after a dead gc's lease",
    );
    assert_eq!(saved.version, 1, "[{name}] saved");
    let after = must(backend.next_seq(gc_log).await, "next_seq");
    assert_eq!(after, next + 4, "[{name}] the writer ended the dead gc");
    must(store.gc().await, "gc after the dead one was ended");
    if backend.capabilities().single_process {
        // The storage is this process's alone: a gc another process began (and never ended,
        // killed part way) is dead whatever its lease, and the next save ends it at once.
        let next = must(backend.next_seq(gc_log).await, "next_seq");
        let killed = GcMark {
            owner: Some(crate::store::reclaim::process_id() ^ 1),
            ..begin(3_600_000_000)
        };
        let frame = must(encode_gc(gc_log, next, killed), "encode");
        let append = LogAppend::new(gc_log, next, vec![frame]).never_expiring();
        must(
            backend.append(vec![append]).await,
            "append a killed gc's mark",
        );
        let fresh = store.with_same_keys(backend.clone());
        let saved = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            fresh.save(nth_checkpoint("after-killed-gc", 1)),
        )
        .await
        .unwrap_or_else(|_| panic!("[{name}] a save waited for a killed gc's lease"));
        must(saved, "save after a killed gc");
        assert_eq!(
            must(backend.next_seq(gc_log).await, "next_seq"),
            next + 2,
            "[{name}] the save ended the killed gc"
        );
    }
    let executions = must(store.executions().await, "executions");
    assert!(
        executions
            .iter()
            .all(|e| !e.execution_id.starts_with('\u{1}')),
        "[{name}] the gc log is not an execution"
    );
}

/// Retention keeps exactly what it must: the newest N, every interrupted checkpoint and every
/// latest one; drops untouched executions unless a run waits on their latest, and spares one
/// saved to after the plan; what remains loads and lists as before; the background task prunes
/// on its own.
pub async fn retention_keeps_what_it_must(h: &dyn Harness) {
    use crate::RetentionPolicy;
    let name = h.name();
    let store = h.open().await;
    let mut a = Vec::new();
    for i in 1..=6u64 {
        let mut cp = nth_checkpoint("ret-a", i);
        if i == 3 {
            cp = cp.with_metadata("interrupted", true);
        }
        a.push(must(store.save(cp).await, "save"));
    }
    save_n(&store, "ret-b", 1).await;
    let b_latest = must(
        store
            .save(nth_checkpoint("ret-b", 2).with_metadata("interrupted", true))
            .await,
        "save",
    );
    save_n(&store, "ret-c", 1).await;

    let report = must(
        store
            .prune(&RetentionPolicy::default().keep_latest(2))
            .await,
        "prune",
    );
    assert_eq!(report.checkpoints_deleted, 3, "[{name}] keep_latest(2)");
    let kept = vec![a[2].clone(), a[4].clone(), a[5].clone()];
    assert_cps_eq(
        &must(store.list("ret-a").await, "list"),
        &kept,
        format!("[{name}] ret-a after keep_latest(2)"),
    );
    for cp in &kept {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("[{name}] {}", cp.id),
        );
    }
    assert_eq!(
        must(store.list("ret-b").await, "list").len(),
        2,
        "[{name}] ret-b had only 2 (one is the latest)"
    );

    let report = must(
        store
            .prune(&RetentionPolicy::default().drop_untouched(Duration::ZERO))
            .await,
        "prune untouched",
    );
    assert_eq!(
        report.executions_dropped, 2,
        "[{name}] ret-a and ret-c dropped"
    );
    assert!(
        must(store.list("ret-a").await, "list").is_empty(),
        "[{name}] ret-a gone"
    );
    assert_eq!(
        must(store.latest("ret-b").await, "latest").map(|c| c.id),
        Some(b_latest.id.clone()),
        "[{name}] an interrupted latest keeps its execution"
    );

    // A save between the plan and the drop spares the execution.
    save_n(&store, "ret-d", 2).await;
    let plans = must(
        store
            .retention_plan(&RetentionPolicy::default().drop_untouched(Duration::ZERO))
            .await,
        "plan",
    );
    assert!(
        plans.iter().any(|p| p.execution_id == "ret-d" && p.drop),
        "[{name}] plan"
    );
    let fresh = must(
        store.save(nth_checkpoint("ret-d", 3)).await,
        "save after plan",
    );
    let report = must(store.apply_retention(&plans).await, "apply");
    assert_eq!(report.executions_spared, 1, "[{name}] ret-d spared");
    assert_eq!(
        must(store.latest("ret-d").await, "latest").map(|c| c.id),
        Some(fresh.id),
        "[{name}] the save after the plan survives"
    );

    let refused = store
        .prune(&RetentionPolicy::default().keep_latest(0))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "[{name}] keep_latest(0): {refused:?}"
    );

    let task = store.spawn_retention(
        RetentionPolicy::default().keep_latest(1),
        Duration::from_millis(20),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = must(store.list("ret-d").await, "list").len();
        if left == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "[{name}] the background task left {left} checkpoints (last error: {:?})",
            task.last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(task.last_error(), None, "[{name}] background retention");
    task.stop();
}

/// Key rotation on this backend: a store sealed with one key is opened with a new key before
/// it, rekeyed, and then opens with the new key alone (every live checkpoint exactly as saved)
/// and not with the old one; no blob keeps an address keyed under the old key. A writer that
/// cached a state before the rekey (its blob addresses now gone) writes a correct snapshot
/// from it afterwards: it rebuilds what it cached.
pub async fn rekey_reseals_everything_in_place(h: &dyn Harness) {
    use crate::crypto::Key;
    let name = h.name();
    let backend = h.open().await.backend().clone();
    let (k1, k2) = (Key::generate(), Key::generate());
    let old = Store::with_backend_and_keys(backend.clone(), vec![k1.clone()]);
    let mut live = save_blobs(&old, "rk-a", 4).await;
    live.extend(save_blobs(&old, "rk-b", 2).await);
    must(old.delete(&live[0].id).await, "delete");
    live.remove(0);
    // A state with a long leaf (a blob) and many small fields, saved under k1; a writer that
    // already has k2 first caches it by saving a small change.
    let counters = |n: u64| -> serde_json::Value {
        (0..500)
            .map(|i| (format!("k{i:03}"), json!(n * 1000 + i)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let long = text("rk-c", 1, 2_000);
    let first = json!({"long": long, "n": counters(0)});
    must(
        old.save(must(Checkpoint::new("rk-c", "n", &first), "cp"))
            .await,
        "save rk-c",
    );
    let writer = Store::with_backend_and_keys(backend.clone(), vec![k2.clone(), k1.clone()]);
    let mut small = first.clone();
    small["n"]["k000"] = json!(-1);
    must(
        writer
            .save(must(Checkpoint::new("rk-c", "n", &small), "cp"))
            .await,
        "save rk-c",
    );
    let before: HashSet<_> = must(backend.list_blobs().await, "list_blobs")
        .into_iter()
        .collect();

    let rotated = Store::with_backend_and_keys(backend.clone(), vec![k2.clone(), k1.clone()]);
    let report = must(rotated.rekey().await, "rekey");
    assert!(
        report.frames >= 8 && report.blobs >= before.len() as u64,
        "[{name}] rekey re-sealed {report:?}"
    );
    let after = must(backend.list_blobs().await, "list_blobs");
    assert!(
        after.iter().all(|h| !before.contains(h)) && report.blobs_removed >= before.len() as u64,
        "[{name}] blobs kept addresses keyed under the old key: {report:?}"
    );
    // Every counter changes: the delta outgrows its budget, so the writer stores a snapshot
    // built from its cached state.
    let big_change = json!({"long": long, "n": counters(1)});
    let snapshot = must(
        writer
            .save(must(Checkpoint::new("rk-c", "n", &big_change), "cp"))
            .await,
        "save after rekey",
    );
    let new_only = Store::with_backend_and_keys(backend.clone(), vec![k2]);
    let frame = must(backend.scan("rk-c", snapshot.version, 1).await, "scan");
    let codec = must(new_only.crypto().await, "crypto").codec().clone();
    let decoded = must(
        codec.frames.decode("rk-c", snapshot.version, &frame[0].1),
        "decode",
    );
    assert!(
        matches!(decoded.event, crate::codec::frame::Event::Save(ref h) if h.delta_base.is_none()),
        "[{name}] the writer stored a delta, not the snapshot this checks"
    );
    live.push(snapshot);

    for cp in &live {
        assert_cp_eq(
            &must(new_only.load(&cp.id).await, "load with the new key"),
            cp,
            format!("[{name}] {} after rekey", cp.id),
        );
    }
    let old_only = Store::with_backend_and_keys(backend.clone(), vec![k1]);
    assert!(
        matches!(old_only.load(&live[0].id).await, Err(Error::Decrypt { .. })),
        "[{name}] the old key still opens the store after rekey"
    );
    must(new_only.gc().await, "gc after rekey");
}

/// Readers in another "process" (stores of their own, nothing cached) load while rekeys keep
/// moving every blob to new addresses: a load that read frames before a rekey rewrote them and
/// fetches their blobs after it deleted the old addresses waits for the rekey and reads again,
/// so no load fails and every one returns the state saved.
pub async fn loads_survive_a_rekey_elsewhere(h: &dyn Harness) {
    use crate::crypto::Key;
    let name = h.name();
    let backend = h.open().await.backend().clone();
    let (k1, k2) = (Key::generate(), Key::generate());
    let writer = Store::with_backend_and_keys(backend.clone(), vec![k1.clone(), k2.clone()]);
    let saved = save_blobs(&writer, "rr", 6).await;
    let want = must(saved[5].state_json(), "state");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rekeys = {
        let (backend, stop) = (backend.clone(), stop.clone());
        let rings = [vec![k2.clone(), k1.clone()], vec![k1.clone(), k2.clone()]];
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 2 {
                let other = Store::with_backend_and_keys(backend.clone(), rings[n % 2].clone());
                must(other.rekey().await, "rekey");
                n += 1;
            }
            n
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let mut loads = 0;
    while std::time::Instant::now() < deadline {
        let reader = Store::with_backend_and_keys(backend.clone(), vec![k1.clone(), k2.clone()]);
        let got = must(reader.latest("rr").await, "load during a rekey elsewhere");
        let got = must(got.expect("rr has checkpoints").state_json(), "state");
        assert_eq!(got, want, "[{name}] load {loads} during rekeys");
        loads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rekeyed = must(
        rekeys.await.map_err(|e| Error::InvalidInput(e.to_string())),
        "join",
    );
    assert!(
        rekeyed >= 2 && loads > 0,
        "[{name}] {rekeyed} rekeys, {loads} loads"
    );
}

/// A long string that grows a little with every save (a transcript, a scratchpad) is stored as
/// content-defined chunks: each save costs its new chunks and a manifest, not the whole string
/// again; every version loads exactly, after gc and after a reopen.
pub async fn growing_long_strings_cost_what_changed(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut doc = text("transcript", 0, 400_000);
    let mut saved = Vec::new();
    let before = store.write_stats();
    for i in 1..=6u64 {
        doc.push_str(&text("transcript", i, 2_000));
        let cp = must(
            Checkpoint::new("grow", "n", &json!({ "doc": doc, "i": i })),
            "checkpoint",
        );
        saved.push(must(store.save(cp).await, "save"));
    }
    let after = store.write_stats();
    let written = (after.frame_bytes + after.blob_bytes) - (before.frame_bytes + before.blob_bytes);
    // The first save stores ~400 KB (compressed to ~300 KB); five more saves of whole copies
    // would add ~1.5 MB. Chunking keeps each at a few chunks (~32 KB each) and a manifest.
    assert!(
        written < 800_000,
        "[{name}] six saves of a growing 400 KB string wrote {written} bytes"
    );
    must(store.delete(&saved[0].id).await, "delete");
    must(store.gc().await, "gc");
    for cp in &saved[1..] {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("[{name}] {} after gc", cp.id),
        );
    }
    drop(store);
    let store = h.open().await;
    for cp in &saved[1..] {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load after reopen"),
            cp,
            format!("[{name}] {} after reopen", cp.id),
        );
    }
}

/// Export to a bundle file's bytes and import into a store on another backend (and back) keeps
/// every checkpoint exactly: ids, versions, timestamps, parents, metadata and states, including
/// a log that gc truncated; importing an execution that exists is refused and changes nothing.
/// An encrypted store's bundle stays sealed: another store with its key imports it, a
/// plaintext store refuses it. Copying into a store with a key of its own re-seals and
/// re-addresses everything.
pub async fn export_import_keeps_everything(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let encrypted = must(store.is_encrypted().await, "is_encrypted");
    let a = save_blobs(&store, "xa", 5).await;
    must(store.delete(&a[0].id).await, "delete");
    must(store.delete(&a[1].id).await, "delete");
    must(store.gc().await, "gc");
    let fork = must(store.fork(&a[3].id, "xb").await, "fork");
    // A log gc truncated: its first frame is no longer sequence 1.
    save_blobs(&store, "xd", 2).await;
    must(store.clear("xd").await, "clear");
    let d = save_blobs(&store, "xd", 2).await;
    must(store.gc().await, "gc");
    assert!(
        store
            .backend()
            .scan("xd", 1, 1)
            .await
            .map(|f| f[0].0)
            .unwrap_or(0)
            > 1,
        "[{name}] gc did not truncate the cleared prefix"
    );
    let execs = ["xa".to_owned(), "xb".to_owned(), "xd".to_owned()];
    let expect_a = must(store.list("xa").await, "list");
    let bytes = must(store.export(&execs).await, "export").encode();
    let bundle = must(crate::bundle::Bundle::decode(&bytes), "decode");
    assert_eq!(
        bundle.sealed_for.is_some(),
        encrypted,
        "[{name}] a bundle is sealed exactly when its store is encrypted"
    );

    // Another store: with the same keys when this one is encrypted (it must open the bundle).
    let other = if encrypted {
        let refused = Store::memory().import(&bundle).await;
        assert!(
            matches!(refused, Err(Error::InvalidInput(_))),
            "[{name}] a plaintext store imported an encrypted bundle: {refused:?}"
        );
        store.with_same_keys(Arc::new(crate::backend::memory::MemoryBackend::new()))
    } else {
        Store::memory()
    };
    let report = must(other.import(&bundle).await, "import");
    assert_eq!(report.executions, 3, "[{name}] {report:?}");
    assert_cps_eq(
        &must(other.list("xd").await, "list"),
        &d,
        format!("[{name}] truncated xd after import"),
    );
    assert_cps_eq(
        &must(other.list("xa").await, "list"),
        &expect_a,
        format!("[{name}] xa after import"),
    );
    assert_cps_eq(
        &must(other.list("xb").await, "list"),
        std::slice::from_ref(&fork),
        format!("[{name}] xb after import"),
    );
    // New saves continue above the imported versions.
    let next = must(
        other
            .save(must(Checkpoint::new("xa", "n", &json!({"after": 1})), "cp"))
            .await,
        "save after import",
    );
    assert!(
        next.version > expect_a.last().map_or(0, |c| c.version),
        "[{name}] version reused"
    );
    assert_eq!(
        next.parent.as_ref(),
        expect_a.last().map(|c| &c.id),
        "[{name}] parent"
    );

    let again = other.import(&bundle).await;
    assert!(
        matches!(again, Err(Error::InvalidInput(_))),
        "[{name}] second import: {again:?}"
    );

    // A copy into a store with a key of its own: sealed and addressed anew, nothing shared.
    let keyed = Store::with_backend_and_keys(
        Arc::new(crate::backend::memory::MemoryBackend::new()),
        vec![crate::crypto::Key::generate()],
    );
    must(store.copy_to(&keyed, &execs).await, "copy_to");
    for (exec, want) in [
        ("xa", &expect_a[..]),
        ("xb", std::slice::from_ref(&fork)),
        ("xd", &d[..]),
    ] {
        assert_cps_eq(
            &must(keyed.list(exec).await, "list"),
            want,
            format!("[{name}] {exec} copied into a keyed store"),
        );
    }
    let source_blobs: HashSet<_> = bundle.blobs.iter().map(|(h, _)| *h).collect();
    let copied = must(keyed.backend().list_blobs().await, "list_blobs");
    assert!(
        !copied.is_empty() && copied.iter().all(|h| !source_blobs.contains(h)),
        "[{name}] the copy kept the source's chunk addresses"
    );

    // And back, into a store on this backend under new names is not possible (names are kept),
    // so clear-free: export from memory a fresh execution and import it here.
    let third = Store::memory();
    let c = save_blobs(&third, "xc", 3).await;
    let bundle = must(third.export(&["xc".to_owned()]).await, "export");
    must(store.import(&bundle).await, "import here");
    assert_cps_eq(
        &must(store.list("xc").await, "list"),
        &c,
        format!("[{name}] xc imported"),
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("xc").await, "list"),
        &c,
        format!("[{name}] xc after reopen"),
    );
}

// ---------------------------------------------------------------------------------------------
// Under injected faults (see `testing::faulty`)
// ---------------------------------------------------------------------------------------------

/// A checkpoint of `exec` whose state holds a long, unique text (stored as a blob).
fn blob_checkpoint(exec: &str, i: u64) -> Checkpoint {
    let state = json!({ "i": i, "text": text(exec, i, 900) });
    must(Checkpoint::new(exec, "n", &state), "checkpoint").with_metadata("i", i)
}

/// `(version, state)` of each checkpoint, to compare what is stored with what was generated.
fn versioned_states(cps: &[Checkpoint]) -> Vec<(u64, serde_json::Value)> {
    cps.iter()
        .map(|c| (c.version, must(c.state_json(), "state_json")))
        .collect()
}

/// A batch whose append fails (the Nth append from now; before reaching the backend, torn with
/// its blobs stored and no frame, or after it landed) is all or nothing, exactly: when the
/// append did not land, no execution changed; when it landed (the caller got an error), every
/// checkpoint of the batch is stored with the state it was given. Stores opened later, this
/// one, and later batches (their parents and versions) all agree.
pub async fn save_batch_is_all_or_nothing_under_faults(h: &dyn Harness) {
    use super::{faulty_store, is_injected, Call, Fault, FaultControl};
    let name = h.name();
    let base = h.open().await;
    let control = FaultControl::new();
    let store = faulty_store(&base, control.clone());
    let execs: [&str; 3] = if store.backend().capabilities().atomic_across_logs {
        ["fault-a", "fault-b", "fault-a"]
    } else {
        ["fault-a", "fault-a", "fault-a"]
    };
    let mut expected: BTreeMap<&str, Vec<(u64, serde_json::Value)>> = BTreeMap::new();
    let pre = must(
        store.save(blob_checkpoint("fault-a", 0)).await,
        "first save",
    );
    expected.insert("fault-a", versioned_states(&[pre]));
    let mut n = 1u64;
    let rounds = [
        (1, Fault::FailBefore),
        (1, Fault::Tear),
        (2, Fault::FailAfter),
        (3, Fault::Tear),
        (1, Fault::FailAfter),
        (2, Fault::FailBefore),
    ];
    for (round, (nth, fault)) in rounds.into_iter().enumerate() {
        control.on_nth(Call::Commit, nth, fault);
        for attempt in 1..=nth {
            let what =
                format!("[{name}] round {round} ({fault:?} on append {nth}), batch {attempt}");
            let batch: Vec<Checkpoint> = execs
                .iter()
                .map(|e| {
                    n += 1;
                    blob_checkpoint(e, n)
                })
                .collect();
            let landed_before = control.landed_appends();
            let result = store.save_batch(batch.clone()).await;
            let landed = control.landed_appends() > landed_before;
            match (&result, attempt == nth) {
                (Ok(out), false) => {
                    assert!(
                        landed,
                        "{what}: acknowledged, yet no append reached the backend"
                    );
                    assert_eq!(out.len(), batch.len(), "{what}: checkpoints returned");
                }
                (Err(e), true) if is_injected(e) => {
                    let should_land = fault == Fault::FailAfter;
                    assert_eq!(landed, should_land, "{what}: did the append land");
                }
                (other, _) => panic!("{what}: unexpected outcome {other:?}"),
            }
            if landed {
                for (exec, cp) in execs.iter().zip(&batch) {
                    let list = expected.entry(exec).or_default();
                    let version = list.last().map_or(1, |(v, _)| v + 1);
                    list.push((version, must(cp.state_json(), "state_json")));
                }
            }
            let fresh = base.with_same_keys(base.backend().clone());
            for (view, s) in [("this store", &store), ("a fresh store", &fresh)] {
                for exec in ["fault-a", "fault-b"] {
                    let want = expected.get(exec).cloned().unwrap_or_default();
                    let got = versioned_states(&must(s.list(exec).await, &what));
                    assert_eq!(got, want, "{what}: {exec} as {view} sees it");
                }
            }
        }
    }
    assert!(
        control.take_injected().len() == rounds.len(),
        "[{name}] not every scripted fault was injected"
    );
    // The blobs torn batches left behind are unreferenced: gc takes them and nothing else.
    must(store.gc().await, "gc after the faults");
    let after = must(
        store.save(blob_checkpoint("fault-a", n + 1)).await,
        "save after the faults",
    );
    let before = expected
        .get("fault-a")
        .and_then(|l| l.last())
        .map(|(v, _)| *v);
    assert_eq!(
        after.parent.as_ref().map(CheckpointId::version),
        before,
        "[{name}] parent of the save after the faults"
    );
    expected
        .entry("fault-a")
        .or_default()
        .push((after.version, must(after.state_json(), "state_json")));
    drop(store);
    drop(base);
    let store = h.open().await;
    for exec in ["fault-a", "fault-b"] {
        let want = expected.get(exec).cloned().unwrap_or_default();
        let got = versioned_states(&must(store.list(exec).await, exec));
        assert_eq!(got, want, "[{name}] {exec} after gc and a reopen");
    }
}

/// The gc race of [`gc_elsewhere_never_takes_what_a_save_needs`] set up every time: a save in
/// another process (a store on `elsewhere`) checks that the blobs of its state are stored (they
/// are, referenced only by a cleared checkpoint) and is held before its append while a gc here
/// runs to completion and deletes exactly those blobs; then the save goes on. The fence (or,
/// without cross-log atomicity, the repair after the append) must leave the acknowledged
/// checkpoint whole.
async fn gc_during_a_held_save(
    name: &str,
    here: &Store,
    elsewhere: fn(std::sync::Arc<dyn crate::backend::Backend>) -> super::Elsewhere,
) {
    use super::{Call, FaultControl, Faulty};
    // More blobs than a save sends without asking which are stored (see `BLIND_PUT_BLOBS`).
    let pool: Vec<String> = (0..12).map(|i| text("held-pool", i, 700)).collect();
    let churn = must(
        Checkpoint::new("held-churn", "n", &json!({ "p": pool })),
        "cp",
    );
    must(here.save(churn).await, "churn save");
    must(here.clear("held-churn").await, "churn clear");
    let control = FaultControl::new();
    let there = here.with_same_keys(Arc::new(Faulty::with_control(
        Arc::new(elsewhere(here.backend().clone())),
        control.clone(),
    )));
    let mut hold = control.hold(Call::Commit, 1);
    let state = json!({ "p": pool, "held": true });
    let cp = must(Checkpoint::new("held-user", "n", &state), "cp");
    let saver = tokio::spawn(async move { there.save(cp).await });
    assert!(
        hold.reached().await,
        "[{name}] the save never reached its append"
    );
    let report = must(here.gc().await, "gc while a save is held");
    assert!(
        report.blobs_removed >= pool.len() as u64,
        "[{name}] gc removed {} blobs, not the {} the held save relies on: the race was not set up",
        report.blobs_removed,
        pool.len()
    );
    hold.release();
    let saved = must(
        saver.await.expect("saver task"),
        format_args!("[{name}] the held save"),
    );
    let fresh = here.with_same_keys(here.backend().clone());
    for when in ["after the held save", "after another gc"] {
        match fresh.load(&saved.id).await {
            Ok(loaded) => assert_cp_eq(&loaded, &saved, format!("[{name}] {} {when}", saved.id)),
            Err(e) => panic!(
                "[{name}] {} was acknowledged but does not load {when}: a gc took its blobs \
                 between its blob check and its append: {e}",
                saved.id
            ),
        }
        must(here.gc().await, "gc");
    }
    must(here.clear("held-user").await, "clear");
}

// ---------------------------------------------------------------------------------------------
// Damage
// ---------------------------------------------------------------------------------------------

/// A state of `step` for the damage scenario; with `bulk`, 200 short fields that all change, a
/// change too large for a delta, so the save after it is a snapshot.
fn damage_state(step: u64, bulk: bool) -> serde_json::Value {
    let mut state = json!({ "step": step, "note": text("damage", step, 40) });
    if bulk {
        let fields: serde_json::Map<String, serde_json::Value> = (0..200)
            .map(|i| {
                (
                    format!("k{i:03}"),
                    json!(format!("value {i} at step {step}, padded")),
                )
            })
            .collect();
        state["bulk"] = serde_json::Value::Object(fields);
    }
    state
}

/// Asserts `result` is [`Error::Corrupt`] and its message holds every one of `names`.
#[track_caller]
fn assert_corrupt<T: Debug>(result: crate::Result<T>, names: &[&str], what: impl fmt::Display) {
    match result {
        Ok(v) => panic!("{what}: expected Corrupt, got Ok({v:?})"),
        Err(e) => {
            assert!(e.is_corrupt(), "{what}: expected Corrupt, got {e} ({e:?})");
            let msg = e.to_string();
            for n in names {
                assert!(msg.contains(n), "{what}: {msg:?} does not name {n:?}");
            }
        }
    }
}

/// Replaces the frame at `seq` of `log` by bytes of the same length that fail verification.
async fn damage_frame(store: &Store, log: &str, seq: u64) {
    let what = format!("[{}] damaging {log} seq {seq}", store.backend().name());
    let frame = must(store.backend().scan(log, seq, 1).await, &what);
    let Some((found, bytes)) = frame.into_iter().next() else {
        panic!("{what}: no such frame");
    };
    assert_eq!(found, seq, "{what}: the frame is not there");
    let garbage: Vec<u8> = bytes.iter().map(|b| b ^ 0xA5).collect();
    let Some(rewrite) = store.backend().capabilities().rewrite else {
        panic!("{what}: the backend cannot rewrite frames");
    };
    must(
        rewrite.rewrite_frames(log, vec![(seq, garbage)]).await,
        &what,
    );
}

/// One damaged frame in the middle of a log makes unreadable exactly the versions whose state
/// needs it: versions before it load as before, the damaged version and the deltas after it
/// fail with `Corrupt` naming the execution, the version and the damaged frame, and a later
/// snapshot starts a readable stretch again. `history`, `executions` and `verify` keep working
/// and mark the damage; other executions are untouched; the next save gets a new version and
/// is readable. A damaged frame of unknown kind (no later delta shows it was a save) may have
/// been a newer save, a delete or a clear: no older version is served as the latest, nor as
/// live. Encrypted stores treat bytes that fail to open the same way.
pub async fn damage_is_contained(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut saved = Vec::new();
    for step in 1..=6 {
        // Versions 1-4: a snapshot and deltas; 5: a snapshot (everything changes); 6: a delta.
        let state = damage_state(step, step >= 5);
        let cp =
            must(Checkpoint::new("d", "work", &state), "checkpoint").with_metadata("step", step);
        saved.push(must(
            store.save(cp).await,
            format!("[{name}] save d {step}"),
        ));
    }
    let other = save_n(&store, "ok", 3).await;
    let tail = save_n(&store, "t", 3).await;
    // "m": two saves and a delete of the first (seq 3, a frame as short as any delete).
    let marked = save_n(&store, "m", 2).await;
    must(store.delete(&marked[0].id).await, "delete m@1");
    // The premise: version 5 is a snapshot, 4 a delta (checked on the frames themselves).
    must(store.crypto().await.map(drop), "crypto");
    let codec = must(store.codec(), "codec");
    let frames = must(store.backend().scan("d", 4, 2).await, "scan d");
    let bases: Vec<Option<u64>> = frames
        .iter()
        .map(
            |(seq, bytes)| match must(codec.frames.decode("d", *seq, bytes), "decode").event {
                crate::codec::frame::Event::Save(h) => h.delta_base,
                other => panic!("[{name}] d seq {seq} is {other:?}, not a save"),
            },
        )
        .collect();
    assert_eq!(
        bases,
        [Some(3), None],
        "[{name}] premise: 4 a delta, 5 a snapshot"
    );

    damage_frame(&store, "d", 3).await;
    damage_frame(&store, "t", 3).await;
    damage_frame(&store, "m", 3).await;
    drop(store);
    let store = h.open().await;

    for cp in &saved[..2] {
        let what = format!("[{name}] {} before the damage", cp.id);
        assert_cp_eq(&must(store.load(&cp.id).await, &what), cp, &what);
    }
    assert_corrupt(
        store.at_version("d", 3).await,
        &["d@3", "seq 3"],
        format!("[{name}] the damaged version"),
    );
    assert_corrupt(
        store.at_version("d", 4).await,
        &["d@4", "seq 3"],
        format!("[{name}] a delta on the damaged version"),
    );
    for cp in &saved[4..] {
        let what = format!("[{name}] {} after the snapshot", cp.id);
        assert_cp_eq(&must(store.load(&cp.id).await, &what), cp, &what);
    }
    let latest = must(store.latest("d").await, "latest d");
    assert_eq!(
        latest.as_ref().map(|c| c.version),
        Some(6),
        "[{name}] latest d"
    );
    assert_eq!(
        header_heads(&must(
            store.history("d", HistoryQuery::default()).await,
            "history d"
        )),
        heads([&saved[5], &saved[4], &saved[1], &saved[0]]),
        "[{name}] history lists the readable versions"
    );
    let damage = must(store.damage("d").await, "damage d");
    assert_eq!(
        damage.frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [3],
        "[{name}] damaged frames of d"
    );
    assert_eq!(
        damage.unreadable,
        [(4, 3)],
        "[{name}] unreadable versions of d"
    );
    assert_corrupt(
        store.list("d").await,
        &["seq 3"],
        format!("[{name}] list d"),
    );

    let summaries = must(store.executions().await, "executions");
    let d = summaries.iter().find(|s| s.execution_id == "d");
    let d = d.unwrap_or_else(|| panic!("[{name}] executions() left the damaged one out"));
    assert_eq!(
        (
            d.checkpoints,
            d.latest_version,
            d.damaged_frames.clone(),
            d.unreadable_versions.clone()
        ),
        (4, 6, vec![3], vec![4]),
        "[{name}] the damaged execution's summary"
    );
    let ok = summaries.iter().find(|s| s.execution_id == "ok");
    let ok = ok.unwrap_or_else(|| panic!("[{name}] executions() lost a healthy execution"));
    assert_eq!(
        summary_views(std::slice::from_ref(ok)),
        [expected_summary(&other)],
        "[{name}] a healthy execution's summary"
    );
    assert!(
        !ok.is_damaged(),
        "[{name}] a healthy execution marked damaged"
    );
    assert_cps_eq(
        &must(store.list("ok").await, "list ok"),
        &other,
        format!("[{name}] ok"),
    );

    // The newest frame damaged: it may have been a save, so no older one is the latest. It is
    // longer than any delete or clear can be, so it was a save: what came before it loads.
    assert_corrupt(
        store.latest("t").await,
        &["\"t\"", "seq 3"],
        format!("[{name}] latest t"),
    );
    for cp in &tail[..2] {
        let what = format!("[{name}] {} before a damaged save", cp.id);
        assert_cp_eq(&must(store.load(&cp.id).await, &what), cp, &what);
    }
    // A damaged frame as short as a delete may have been one (it was: of m@1), or a clear: no
    // version before it is served as live.
    assert_corrupt(
        store.latest("m").await,
        &["\"m\"", "seq 3"],
        format!("[{name}] latest m"),
    );
    for cp in &marked {
        assert_corrupt(
            store.load(&cp.id).await,
            &[&cp.id.to_string(), "seq 3"],
            format!("[{name}] {} before a damaged frame of unknown kind", cp.id),
        );
    }

    let report = must(store.verify().await, "verify");
    assert!(!report.is_ok(), "[{name}] verify passed a damaged store");
    let by_exec = |exec: &str| {
        let e = report.executions.iter().find(|e| e.execution_id == exec);
        e.unwrap_or_else(|| panic!("[{name}] verify left {exec} out"))
    };
    let d = by_exec("d");
    assert_eq!(
        (
            d.damaged_frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            d.readable.clone(),
            d.unreadable.iter().map(|u| u.version).collect::<Vec<_>>(),
        ),
        (vec![3], vec![1, 2, 5, 6], vec![4]),
        "[{name}] verify of d"
    );
    assert!(!by_exec("ok").is_damaged(), "[{name}] verify of ok");
    assert_eq!(by_exec("ok").readable, [1, 2, 3], "[{name}] verify of ok");
    assert_eq!(by_exec("t").readable, [1, 2], "[{name}] verify of t");
    assert!(by_exec("m").readable.is_empty(), "[{name}] verify of m");
    assert!(report.damaged_blobs.is_empty(), "[{name}] damaged blobs");

    // Writing on: the damaged version's number is not handed out again, and what is saved
    // is readable.
    let next =
        Checkpoint::new("d", "work", &damage_state(7, true)).map(|c| c.with_metadata("step", 7));
    let next = must(
        store.save(must(next, "checkpoint")).await,
        "save after damage",
    );
    assert_eq!(next.version, 7, "[{name}] the save after the damage");
    let t4 = must(
        store.save(nth_checkpoint("t", 4)).await,
        "save t after damage",
    );
    assert_eq!(
        t4.version, 4,
        "[{name}] t's next version after a damaged tail"
    );
    drop(store);
    let store = h.open().await;
    let what = format!("[{name}] d@7 after reopen");
    assert_cp_eq(&must(store.at_version("d", 7).await, &what), &next, &what);
    let what = format!("[{name}] t@4 after reopen");
    assert_cp_eq(&must(store.at_version("t", 4).await, &what), &t4, &what);
    assert_corrupt(
        store.at_version("d", 3).await,
        &["d@3", "seq 3"],
        format!("[{name}] the damaged version after more saves"),
    );
}
