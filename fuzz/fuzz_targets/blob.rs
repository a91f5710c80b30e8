//! Blobs and deltas as read from storage. Must never panic.
//!
//! - `blob::decode` of the input with a fixed hash, and of the input after its first 32 bytes
//!   with those bytes as the hash (so a seed can carry a matching hash); a decoded blob's content
//!   is then decoded as the value leaf it holds, as the store does.
//! - `tree::Manifest::decode` of the input (a chunked leaf's manifest), and `assemble` of a
//!   decoded manifest from chunks cut out of the input;
//! - `tree::ops_from_value` on `value::decode` of the input; decoded ops are applied to a fixed
//!   state, and where they apply, `tree::diff` of the two states must turn one into the other.

#![no_main]

use ckpt::codec::{blob, tree, value};
use libfuzzer_sys::fuzz_target;
use rmpv::Value;

const FIXED_HASH: [u8; 32] = [0x42; 32];

fn decode_blob(hash: &[u8; 32], stored: &[u8]) {
    if let Ok(content) = blob::decode(hash, stored) {
        let _ = value::decode(&content);
    }
}

fn base_state() -> Value {
    let map = |entries: Vec<(&str, Value)>| {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        )
    };
    map(vec![
        ("messages", Value::Array(vec!["hi".into(), "there".into()])),
        ("step", 3u64.into()),
        (
            "nested",
            map(vec![(
                "k",
                Value::Array(vec![1u64.into(), map(vec![("x", Value::Nil)])]),
            )]),
        ),
    ])
}

/// NaN is not equal to itself, so states holding floats cannot be compared.
fn has_float(v: &Value) -> bool {
    match v {
        Value::F32(_) | Value::F64(_) => true,
        Value::Array(a) => a.iter().any(has_float),
        Value::Map(m) => m.iter().any(|(k, v)| has_float(k) || has_float(v)),
        _ => false,
    }
}

fn decode_manifest(data: &[u8]) {
    if let Ok(m) = tree::Manifest::decode(data) {
        let chunks = data.chunks(7).take(m.chunks.len()).map(<[u8]>::to_vec).collect();
        let _ = m.assemble(chunks);
    }
}

fuzz_target!(|data: &[u8]| {
    decode_blob(&FIXED_HASH, data);
    decode_manifest(data);
    if let Some((hash, stored)) = data.split_first_chunk::<32>() {
        decode_blob(hash, stored);
    }
    let Ok(v) = value::decode(data) else { return };
    let Ok(ops) = tree::ops_from_value(v) else {
        return;
    };
    let _ = tree::ops_to_value(&ops);
    let base = base_state();
    let mut changed = base.clone();
    if tree::apply(&mut changed, &ops).is_err() || has_float(&changed) {
        return;
    }
    let diff = tree::diff(&base, &changed);
    let mut again = base.clone();
    assert!(
        tree::apply(&mut again, &diff).is_ok(),
        "a diff does not apply to its own base"
    );
    assert_eq!(
        again, changed,
        "a diff applied to its base does not give the new state"
    );
    assert_eq!(
        tree::ops_from_value(tree::ops_to_value(&diff)).ok(),
        Some(diff)
    );
});
