//! The stored form of a state, and the structural deltas between states.
//!
//! **Stored form.** A state's value tree in which every long string or binary leaf (at least
//! [`EXTERNAL_MIN`] bytes encoded) is replaced by a reference: a MessagePack extension of type
//! [`REF_EXT_TYPE`] holding the 32-byte address of a blob with the leaf's encoding. Long content is
//! thereby stored once, however many versions and executions hold it. Only leaves are replaced, so
//! a path into the tree never passes through a reference.
//!
//! **Deltas.** A save normally records only what changed since its base state, as a list of
//! [`Op`]s found by [`diff`]: set a path, remove a map key, or splice an array (keep a prefix, append
//! elements). A conversation that gains one message per step costs one small op per save.

use std::collections::HashSet;

use rmpv::Value;

use super::blob;
use crate::backend::BlobHash;

/// The MessagePack extension type of a blob reference.
pub const REF_EXT_TYPE: i8 = 0x43;
/// Leaves whose encoding is at least this long are stored as blobs.
pub const EXTERNAL_MIN: usize = 256;

/// A leaf lifted out of a state: its address and content (the leaf's MessagePack encoding).
pub type Lifted = (BlobHash, Vec<u8>);

/// Replaces long leaves of `value` by references, pushing their content to `lifted`.
pub fn externalize(value: &Value, lifted: &mut Vec<Lifted>) -> Value {
    match value {
        Value::String(_) | Value::Binary(_) if leaf_len(value) >= EXTERNAL_MIN => {
            let content = super::value::encode(value);
            let hash = blob::address(&content);
            lifted.push((hash, content));
            reference(&hash)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| externalize(v, lifted)).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                // Keys stay inline: delta paths name them by value.
                .map(|(k, v)| (k.clone(), externalize(v, lifted)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn leaf_len(value: &Value) -> usize {
    match value {
        Value::String(s) => s.as_bytes().len() + 5,
        Value::Binary(b) => b.len() + 5,
        _ => 0,
    }
}

/// A reference to the blob `hash`.
pub fn reference(hash: &BlobHash) -> Value {
    Value::Ext(REF_EXT_TYPE, hash.to_vec())
}

/// The blob a reference points to, if `value` is one.
pub fn as_reference(value: &Value) -> Option<BlobHash> {
    match value {
        Value::Ext(REF_EXT_TYPE, data) => data.as_slice().try_into().ok(),
        _ => None,
    }
}

/// Adds every blob referenced in `value` to `out`.
pub fn collect_refs(value: &Value, out: &mut HashSet<BlobHash>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        Value::Map(entries) => entries.iter().for_each(|(k, v)| {
            collect_refs(k, out);
            collect_refs(v, out);
        }),
        other => {
            if let Some(h) = as_reference(other) {
                out.insert(h);
            }
        }
    }
}

/// Replaces every reference in `value` by the leaf `resolve` returns for it.
pub fn substitute(value: &Value, resolve: &dyn Fn(&BlobHash) -> Option<Value>) -> Option<Value> {
    Some(match value {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, resolve))
                .collect::<Option<_>>()?,
        ),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| Some((substitute(k, resolve)?, substitute(v, resolve)?)))
                .collect::<Option<_>>()?,
        ),
        other => match as_reference(other) {
            Some(h) => resolve(&h)?,
            None => other.clone(),
        },
    })
}

/// One change from a base state to the next.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Replace the value at a path (or add the key, at the end of its map).
    Set(Vec<Value>, Value),
    /// Remove a key from the map at a path.
    Remove(Vec<Value>),
    /// Truncate the array at a path to `keep` elements, then append.
    Splice(Vec<Value>, u64, Vec<Value>),
}

const OP_SET: u64 = 0;
const OP_REMOVE: u64 = 1;
const OP_SPLICE: u64 = 2;

/// The ops that turn `old` into `new` (empty when they are equal).
pub fn diff(old: &Value, new: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    diff_into(old, new, &mut Vec::new(), &mut ops);
    ops
}

fn diff_into(old: &Value, new: &Value, path: &mut Vec<Value>, ops: &mut Vec<Op>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Map(a), Value::Map(b)) if map_diff_keeps_order(a, b) => {
            let mut removed = Vec::new();
            for (i, (k, va)) in a.iter().enumerate() {
                match find_key(b, k, i) {
                    Some(j) => {
                        path.push(k.clone());
                        diff_into(va, &b[j].1, path, ops);
                        path.pop();
                    }
                    None => removed.push(k),
                }
            }
            for k in removed {
                ops.push(Op::Remove(child_path(path, k)));
            }
            for (j, (k, vb)) in b.iter().enumerate() {
                if find_key(a, k, j).is_none() {
                    ops.push(Op::Set(child_path(path, k), vb.clone()));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            let mut element_ops = Vec::new();
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                path.push(Value::from(i as u64));
                diff_into(va, vb, path, &mut element_ops);
                path.pop();
            }
            // Many scattered changes cost less as one replacement.
            if element_ops.len() > 1 + b.len() / 2 {
                ops.push(Op::Set(path.clone(), new.clone()));
            } else {
                ops.extend(element_ops);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            let keep = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            ops.push(Op::Splice(path.clone(), keep as u64, b[keep..].to_vec()));
        }
        _ => ops.push(Op::Set(path.clone(), new.clone())),
    }
}

fn child_path(path: &[Value], key: &Value) -> Vec<Value> {
    let mut p = path.to_vec();
    p.push(key.clone());
    p
}

/// Index of `key` in `entries`, trying position `hint` first (maps of one struct keep their order).
fn find_key(entries: &[(Value, Value)], key: &Value, hint: usize) -> Option<usize> {
    if entries.get(hint).is_some_and(|(k, _)| k == key) {
        return Some(hint);
    }
    entries.iter().position(|(k, _)| k == key)
}

/// Whether applying per-key ops to `a` yields `b`'s key order (kept keys in `a`'s order, then the
/// new keys in `b`'s order) and neither map has duplicate keys; otherwise the whole map is
/// replaced.
fn map_diff_keeps_order(a: &[(Value, Value)], b: &[(Value, Value)]) -> bool {
    if !no_duplicate_keys(a) || !no_duplicate_keys(b) {
        return false;
    }
    let kept = a
        .iter()
        .enumerate()
        .filter(|(i, (k, _))| find_key(b, k, *i).is_some())
        .map(|(_, (k, _))| k);
    let added = b
        .iter()
        .enumerate()
        .filter(|(j, (k, _))| find_key(a, k, *j).is_none())
        .map(|(_, (k, _))| k);
    kept.chain(added).eq(b.iter().map(|(k, _)| k))
}

fn no_duplicate_keys(entries: &[(Value, Value)]) -> bool {
    entries
        .iter()
        .enumerate()
        .all(|(i, (k, _))| find_key(entries, k, i) == Some(i))
}

/// Applies `ops` to `value` in order. An op whose path does not fit the value is an error
/// (the log and its base disagree).
pub fn apply(value: &mut Value, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        apply_one(value, op)?;
    }
    Ok(())
}

fn apply_one(root: &mut Value, op: &Op) -> Result<(), String> {
    let (path, last) = match op {
        Op::Set(p, _) | Op::Remove(p) => match p.split_last() {
            Some((last, path)) => (path, Some(last)),
            None => (&p[..], None),
        },
        Op::Splice(p, _, _) => (&p[..], None),
    };
    let mut node = root;
    for seg in path {
        node = child_mut(node, seg)?;
    }
    match (op, last) {
        (Op::Set(_, v), None) => *node = v.clone(),
        (Op::Set(_, v), Some(key)) => match node {
            Value::Map(entries) => match entries.iter_mut().find(|(k, _)| k == key) {
                Some((_, slot)) => *slot = v.clone(),
                None => entries.push((key.clone(), v.clone())),
            },
            Value::Array(_) => *child_mut(node, key)? = v.clone(),
            _ => return Err("set below a value that is not a map or array".into()),
        },
        (Op::Remove(_), Some(key)) => match node {
            Value::Map(entries) => {
                let i = entries
                    .iter()
                    .position(|(k, _)| k == key)
                    .ok_or("remove of a missing key")?;
                entries.remove(i);
            }
            _ => return Err("remove below a value that is not a map".into()),
        },
        (Op::Splice(_, keep, items), _) => match node {
            Value::Array(a) if *keep as usize <= a.len() => {
                a.truncate(*keep as usize);
                a.extend(items.iter().cloned());
            }
            _ => return Err("splice of a value that is not a long enough array".into()),
        },
        (Op::Remove(_), None) => return Err("remove with an empty path".into()),
    }
    Ok(())
}

fn child_mut<'a>(node: &'a mut Value, seg: &Value) -> Result<&'a mut Value, String> {
    match node {
        Value::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k == seg)
            .map(|(_, v)| v)
            .ok_or_else(|| "path through a missing map key".to_string()),
        Value::Array(items) => {
            let i = seg.as_u64().ok_or("array index that is not an integer")?;
            items
                .get_mut(i as usize)
                .ok_or_else(|| "array index out of range".to_string())
        }
        _ => Err("path through a value that is not a map or array".into()),
    }
}

/// Replaces long leaves in the values carried by `ops` by references (see [`externalize`]).
pub fn externalize_ops(ops: &[Op], lifted: &mut Vec<Lifted>) -> Vec<Op> {
    ops.iter()
        .map(|op| match op {
            Op::Set(p, v) => Op::Set(p.clone(), externalize(v, lifted)),
            Op::Remove(p) => Op::Remove(p.clone()),
            Op::Splice(p, keep, items) => Op::Splice(
                p.clone(),
                *keep,
                items.iter().map(|v| externalize(v, lifted)).collect(),
            ),
        })
        .collect()
}

/// Adds every blob referenced by `ops` to `out`.
pub fn collect_op_refs(ops: &[Op], out: &mut HashSet<BlobHash>) {
    for op in ops {
        match op {
            Op::Set(_, v) => collect_refs(v, out),
            Op::Remove(_) => {}
            Op::Splice(_, _, items) => items.iter().for_each(|v| collect_refs(v, out)),
        }
    }
}

/// Ops as one value: `[[0, path, value] | [1, path] | [2, path, keep, items], ...]`.
pub fn ops_to_value(ops: &[Op]) -> Value {
    Value::Array(
        ops.iter()
            .map(|op| match op {
                Op::Set(p, v) => {
                    Value::Array(vec![OP_SET.into(), Value::Array(p.clone()), v.clone()])
                }
                Op::Remove(p) => Value::Array(vec![OP_REMOVE.into(), Value::Array(p.clone())]),
                Op::Splice(p, keep, items) => Value::Array(vec![
                    OP_SPLICE.into(),
                    Value::Array(p.clone()),
                    (*keep).into(),
                    Value::Array(items.clone()),
                ]),
            })
            .collect(),
    )
}

/// Inverse of [`ops_to_value`].
pub fn ops_from_value(value: Value) -> Result<Vec<Op>, String> {
    let Value::Array(items) = value else {
        return Err("delta is not an array".into());
    };
    items.into_iter().map(op_from_value).collect()
}

fn op_from_value(value: Value) -> Result<Op, String> {
    let Value::Array(parts) = value else {
        return Err("delta op is not an array".into());
    };
    let mut parts = parts.into_iter();
    let code = parts
        .next()
        .and_then(|c| c.as_u64())
        .ok_or("delta op without a code")?;
    let Some(Value::Array(path)) = parts.next() else {
        return Err("delta op without a path".into());
    };
    let op = match (code, parts.next(), parts.next()) {
        (OP_SET, Some(v), None) => Op::Set(path, v),
        (OP_REMOVE, None, None) => Op::Remove(path),
        (OP_SPLICE, Some(keep), Some(Value::Array(items))) => {
            Op::Splice(path, keep.as_u64().ok_or("splice without a length")?, items)
        }
        _ => return Err(format!("malformed delta op (code {code})")),
    };
    if parts.next().is_some() {
        return Err("delta op with extra fields".into());
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: serde_json::Value) -> Value {
        super::super::value::from_serialize(&json).unwrap().0
    }

    fn check(a: serde_json::Value, b: serde_json::Value) -> Vec<Op> {
        let (a, b) = (v(a), v(b));
        let ops = diff(&a, &b);
        let mut applied = a.clone();
        apply(&mut applied, &ops).unwrap();
        assert_eq!(applied, b);
        let round = ops_from_value(ops_to_value(&ops)).unwrap();
        assert_eq!(round, ops);
        ops
    }

    #[test]
    fn appending_a_message_is_one_splice() {
        let ops = check(
            serde_json::json!({"messages": ["a", "b"], "step": 1}),
            serde_json::json!({"messages": ["a", "b", "c"], "step": 2}),
        );
        assert_eq!(ops.len(), 2);
        assert!(matches!(&ops[0], Op::Splice(_, 2, items) if items.len() == 1));
    }

    #[test]
    fn diffs_apply_for_assorted_shapes() {
        use serde_json::json;
        check(json!(1), json!("x"));
        check(json!({"a": 1, "b": 2}), json!({"b": 2, "a": 1}));
        check(json!({"b": 1}), json!({"a": 1, "b": 1}));
        check(json!({"b": 1, "c": 2}), json!({"c": 2, "a": 0, "b": 1}));
        check(json!({"a": 1, "b": 2}), json!({"a": 1}));
        check(json!({"a": 1}), json!({"a": 1, "c": [1, 2]}));
        check(json!([1, 2, 3]), json!([1, 5, 3]));
        check(json!([1, 2, 3]), json!([1]));
        check(json!([1, 2, 3]), json!([]));
        check(
            json!({"a": {"b": [1, {"c": 2}]}}),
            json!({"a": {"b": [1, {"c": 3, "d": null}]}}),
        );
    }

    #[test]
    fn long_leaves_become_references_and_come_back() {
        let long = "x".repeat(1000);
        let value = v(serde_json::json!({"m": [long.clone(), "short"]}));
        let mut lifted = Vec::new();
        let stored = externalize(&value, &mut lifted);
        assert_eq!(lifted.len(), 1);
        let mut refs = HashSet::new();
        collect_refs(&stored, &mut refs);
        assert_eq!(refs.len(), 1);
        let content = lifted[0].1.clone();
        let back = substitute(&stored, &|_| super::super::value::decode(&content).ok()).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn malformed_ops_are_errors() {
        assert!(ops_from_value(Value::Nil).is_err());
        assert!(ops_from_value(Value::Array(vec![Value::Array(vec![9.into()])])).is_err());
        let mut x = v(serde_json::json!([1]));
        assert!(apply(&mut x, &[Op::Splice(vec![], 5, vec![])]).is_err());
        assert!(apply(&mut x, &[Op::Remove(vec![])]).is_err());
        assert!(apply(
            &mut x,
            &[Op::Set(
                vec![Value::from(7u64), Value::from(1u64)],
                Value::Nil
            )]
        )
        .is_err());
    }
}
