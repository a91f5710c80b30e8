//! Round trips: every kind of state (nested, deep, unicode, binary, empty, edited, reordered maps, large) and metadata comes back exactly as saved, before and after a reopen.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::testing::helpers::{assert_cp_eq, assert_cps_eq, header_heads, heads, must, text};
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointId, HistoryQuery, Store};

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
