//! The stored form of a state, and the structural deltas between states.
//!
//! **Stored form.** A state's value tree in which every long string or binary leaf (at least
//! [`EXTERNAL_MIN`] bytes encoded) is replaced by a reference: a MessagePack extension of type
//! [`REF_EXT_TYPE`] holding the 32-byte address of a blob with the leaf's encoding. Long content is
//! thereby stored once, however many versions and executions hold it. Only leaves are replaced, so
//! a path into the tree never passes through a reference.
//!
//! Leaves of [`CHUNKED_MIN`] bytes or more (a long document, a transcript that grows) are split
//! into content-defined chunks (FastCDC) and referenced through a manifest blob
//! ([`CHUNKED_EXT_TYPE`]) listing them: a leaf that changes a little, or grows at its end, costs
//! its changed chunks and a new manifest, not its whole length again.
//!
//! **Deltas.** A save normally records only what changed since its base state, as a list of
//! [`Op`]s found by [`diff`]: set a path, remove a map key, or splice an array (keep a prefix, append
//! elements). A conversation that gains one message per step costs one small op per save.

use std::collections::HashSet;

use rmpv::Value;

use super::blob::BlobCodec;
pub use super::ext::{is_reserved_ext, CHUNKED_EXT_TYPE, REF_EXT_TYPE};
use crate::hash::BlobHash;

/// Leaves whose encoding is at least this long are stored as blobs.
pub const EXTERNAL_MIN: usize = 256;
/// Leaves at least this long are stored as content-defined chunks.
pub const CHUNKED_MIN: usize = 64 * 1024;
/// FastCDC chunk sizes: minimum, average, maximum.
const CHUNK_SIZES: (usize, usize, usize) = (8 * 1024, 32 * 1024, 128 * 1024);

/// A reference found in a stored tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ref {
    /// A blob holding one leaf's MessagePack encoding.
    Leaf(BlobHash),
    /// A blob holding a [`Manifest`] of the leaf's chunks.
    Chunked(BlobHash),
}

impl Ref {
    /// The blob this reference names.
    pub fn hash(&self) -> BlobHash {
        match self {
            Ref::Leaf(h) | Ref::Chunked(h) => *h,
        }
    }
}

/// The list of chunks a long leaf was split into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Whether the leaf is binary (otherwise a string).
    pub binary: bool,
    /// The leaf's length in bytes.
    pub len: u64,
    /// Chunk blobs, in order; their contents concatenated are the leaf's bytes.
    pub chunks: Vec<BlobHash>,
}

impl Manifest {
    /// `[binary, len, [hash, ...]]` as MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        super::value::encode(&Value::Array(vec![
            Value::Boolean(self.binary),
            self.len.into(),
            Value::Array(
                self.chunks
                    .iter()
                    .map(|h| Value::Binary(h.to_vec()))
                    .collect(),
            ),
        ]))
    }

    /// Inverse of [`Manifest::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let value = super::value::decode(bytes)?;
        let Value::Array(parts) = value else {
            return Err("manifest is not an array".into());
        };
        match parts.as_slice() {
            [Value::Boolean(binary), len, Value::Array(chunks)] => Ok(Manifest {
                binary: *binary,
                len: len.as_u64().ok_or("manifest length is not an integer")?,
                chunks: chunks
                    .iter()
                    .map(|c| match c {
                        Value::Binary(b) => b
                            .as_slice()
                            .try_into()
                            .map_err(|_| "chunk hash is not 32 bytes".to_string()),
                        _ => Err("chunk hash is not binary".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
            }),
            _ => Err("malformed manifest".into()),
        }
    }

    /// Joins the chunks' contents into the leaf, checking the length and (for strings) UTF-8.
    pub fn assemble(&self, chunks: Vec<Vec<u8>>) -> Result<Value, String> {
        let bytes: Vec<u8> = chunks.concat();
        if bytes.len() as u64 != self.len {
            return Err(format!(
                "chunks add up to {} bytes, the manifest says {}",
                bytes.len(),
                self.len
            ));
        }
        if self.binary {
            Ok(Value::Binary(bytes))
        } else {
            String::from_utf8(bytes)
                .map(Value::from)
                .map_err(|_| "chunked string is not UTF-8".to_string())
        }
    }
}

/// Splits a long leaf into chunks, pushes them and their manifest to `lifted`, and returns the
/// chunked reference.
fn chunk_leaf(bytes: &[u8], binary: bool, lifted: &mut Lifting) -> Value {
    let (min, avg, max) = CHUNK_SIZES;
    let mut chunks = Vec::new();
    for c in fastcdc::v2020::FastCDC::new(bytes, min, avg, max) {
        let content = bytes[c.offset..c.offset + c.length].to_vec();
        chunks.push(lifted.lift(content));
    }
    let manifest = Manifest {
        binary,
        len: bytes.len() as u64,
        chunks,
    }
    .encode();
    let hash = lifted.lift(manifest);
    Value::Ext(CHUNKED_EXT_TYPE, hash.to_vec())
}

/// A leaf lifted out of a state: its address and content (the leaf's MessagePack encoding).
pub type Lifted = (BlobHash, Vec<u8>);

/// What [`externalize`] lifts out of states, and how it addresses it: as the store's
/// [`BlobCodec`] does (plain blake3, or keyed in an encrypted store). [`Lifting::default`]
/// addresses as a plaintext store.
#[derive(Debug, Default)]
pub struct Lifting {
    /// The lifted leaves, chunks and manifests, in the order met (duplicates possible).
    pub blobs: Vec<Lifted>,
    codec: BlobCodec,
}

impl Lifting {
    /// Lifting that addresses blobs as `codec` does.
    pub fn new(codec: &BlobCodec) -> Self {
        Lifting {
            blobs: Vec::new(),
            codec: codec.clone(),
        }
    }

    fn lift(&mut self, content: Vec<u8>) -> BlobHash {
        let hash = self.codec.address(&content);
        self.blobs.push((hash, content));
        hash
    }
}

/// Replaces long leaves of `value` by references, pushing their content to `lifted`.
pub fn externalize(value: &Value, lifted: &mut Lifting) -> Value {
    match value {
        Value::String(s) if s.as_bytes().len() >= CHUNKED_MIN => {
            chunk_leaf(s.as_bytes(), false, lifted)
        }
        Value::Binary(b) if b.len() >= CHUNKED_MIN => chunk_leaf(b, true, lifted),
        Value::String(_) | Value::Binary(_) if leaf_len(value) >= EXTERNAL_MIN => {
            let hash = lifted.lift(super::value::encode(value));
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

/// The reference `value` is, if it is one.
pub fn as_ref(value: &Value) -> Option<Ref> {
    match value {
        Value::Ext(REF_EXT_TYPE, data) => data.as_slice().try_into().ok().map(Ref::Leaf),
        Value::Ext(CHUNKED_EXT_TYPE, data) => data.as_slice().try_into().ok().map(Ref::Chunked),
        _ => None,
    }
}

/// The blob a reference points to, if `value` is one.
pub fn as_reference(value: &Value) -> Option<BlobHash> {
    as_ref(value).map(|r| r.hash())
}

/// Adds every reference in `value` to `out`.
pub fn collect_refs(value: &Value, out: &mut HashSet<Ref>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        Value::Map(entries) => entries.iter().for_each(|(k, v)| {
            collect_refs(k, out);
            collect_refs(v, out);
        }),
        other => {
            if let Some(r) = as_ref(other) {
                out.insert(r);
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

/// `value` with every reference pointed at the blob `map` gives for it (the same kind of
/// reference, another address); `None` when `map` has no address for one of them. Used when
/// addresses change: moving state into an encrypted store, or re-keying one.
pub fn remap_refs(value: &Value, map: &dyn Fn(Ref) -> Option<BlobHash>) -> Option<Value> {
    Some(match value {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| remap_refs(v, map))
                .collect::<Option<_>>()?,
        ),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| Some((remap_refs(k, map)?, remap_refs(v, map)?)))
                .collect::<Option<_>>()?,
        ),
        other => match as_ref(other) {
            Some(r @ Ref::Leaf(_)) => reference(&map(r)?),
            Some(r @ Ref::Chunked(_)) => Value::Ext(CHUNKED_EXT_TYPE, map(r)?.to_vec()),
            None => other.clone(),
        },
    })
}

/// [`remap_refs`] over the values `ops` carry.
pub fn remap_op_refs(ops: &[Op], map: &dyn Fn(Ref) -> Option<BlobHash>) -> Option<Vec<Op>> {
    ops.iter()
        .map(|op| {
            Some(match op {
                Op::Set(p, v) => Op::Set(p.clone(), remap_refs(v, map)?),
                Op::Remove(p) => Op::Remove(p.clone()),
                Op::Splice(p, keep, items) => Op::Splice(
                    p.clone(),
                    *keep,
                    items
                        .iter()
                        .map(|v| remap_refs(v, map))
                        .collect::<Option<_>>()?,
                ),
            })
        })
        .collect()
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
            let mut changed = 0;
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                if va != vb {
                    changed += 1;
                    path.push(Value::from(i as u64));
                    diff_into(va, vb, path, &mut element_ops);
                    path.pop();
                }
            }
            // Many changed elements cost less as one replacement. Counted in elements, not ops:
            // one element with many changes inside (a tagged `[type, payload]` pair) is still
            // one element's worth of paths.
            if changed > 1 + b.len() / 2 {
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
pub fn externalize_ops(ops: &[Op], lifted: &mut Lifting) -> Vec<Op> {
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

/// Adds every reference in the values `ops` carry to `out`.
pub fn collect_op_refs(ops: &[Op], out: &mut HashSet<Ref>) {
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
    fn many_changes_inside_one_element_stay_paths() {
        use serde_json::json;
        // A tagged pair `[type, payload]` whose payload changes in several places is one
        // changed element: its paths are recorded, not the whole pair again.
        let ops = check(
            json!({"cp": ["msgpack", {"id": "a", "ts": "1", "v": {"x": "1", "y": "1"}, "big": "k"}]}),
            json!({"cp": ["msgpack", {"id": "b", "ts": "2", "v": {"x": "2", "y": "2"}, "big": "k"}]}),
        );
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(ops
            .iter()
            .all(|op| matches!(op, Op::Set(p, _) if p.len() >= 3)));
        // Most elements changed: one replacement.
        let ops = check(json!([1, 2, 3, 4]), json!([5, 6, 7, 8]));
        assert_eq!(ops.len(), 1);
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
        let mut lifting = Lifting::default();
        let stored = externalize(&value, &mut lifting);
        let lifted = lifting.blobs;
        assert_eq!(lifted.len(), 1);
        let mut refs = HashSet::new();
        collect_refs(&stored, &mut refs);
        assert_eq!(refs.len(), 1);
        let content = lifted[0].1.clone();
        let back = substitute(&stored, &|_| super::super::value::decode(&content).ok()).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn long_leaves_are_chunked_and_growing_them_reuses_chunks() {
        let text: String = (0..300_000u32)
            .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
            .collect();
        let mut first = Lifting::default();
        let r1 = externalize(&Value::from(text.as_str()), &mut first);
        let first = first.blobs;
        assert!(matches!(as_ref(&r1), Some(Ref::Chunked(_))));
        assert!(first.len() > 3, "{} blobs", first.len());
        let grown = format!("{text}{}", "z".repeat(1000));
        let mut second = Lifting::default();
        externalize(&Value::from(grown.as_str()), &mut second);
        let second = second.blobs;
        let old: HashSet<BlobHash> = first.iter().map(|(h, _)| *h).collect();
        let new_bytes: usize = second
            .iter()
            .filter(|(h, _)| !old.contains(h))
            .map(|(_, c)| c.len())
            .sum();
        assert!(
            new_bytes < 140_000,
            "growing by 1 KB wrote {new_bytes} new bytes"
        );
        // Reassemble from the manifest.
        let (mh, mbytes) = second.last().unwrap().clone();
        let m = Manifest::decode(&mbytes).unwrap();
        assert_eq!(crate::codec::blob::address(&mbytes), mh);
        let contents: Vec<Vec<u8>> = m
            .chunks
            .iter()
            .map(|h| second.iter().find(|(x, _)| x == h).unwrap().1.clone())
            .collect();
        assert_eq!(m.assemble(contents).unwrap(), Value::from(grown.as_str()));
        assert!(Manifest::decode(&[0xc0]).is_err());
    }

    /// A sealing stage that only addresses (keyed, as an encrypted store does): lifting needs
    /// nothing else of it.
    #[derive(Debug)]
    struct KeyedAddresses([u8; 32]);

    impl crate::codec::seal::Seal for KeyedAddresses {
        fn address(&self, content: &[u8]) -> BlobHash {
            crate::hash::keyed_address(&self.0, content)
        }
        fn seal_frame(&self, _: &str, _: u64, _: &[u8]) -> crate::error::Result<Vec<u8>> {
            unreachable!("lifting seals nothing")
        }
        fn open_frame(&self, _: &str, _: u64, _: &[u8]) -> crate::error::Result<Vec<u8>> {
            unreachable!("lifting opens nothing")
        }
        fn seal_blob(&self, _: &BlobHash, _: &[u8]) -> crate::error::Result<Vec<u8>> {
            unreachable!("lifting seals nothing")
        }
        fn open_blob(&self, _: &BlobHash, _: &[u8]) -> crate::error::Result<Vec<u8>> {
            unreachable!("lifting opens nothing")
        }
        fn sealing_id(&self) -> String {
            "test".into()
        }
        fn sealed_with_newest(&self, _: &[u8]) -> bool {
            false
        }
    }

    #[test]
    fn keyed_lifting_hides_addresses_but_keeps_dedup() {
        let long = Value::from("y".repeat(1000));
        let keyed = BlobCodec::sealed(std::sync::Arc::new(KeyedAddresses([7u8; 32])));
        let mut a = Lifting::new(&keyed);
        let mut b = Lifting::new(&keyed);
        let mut plain = Lifting::default();
        externalize(&long, &mut a);
        externalize(&long, &mut b);
        externalize(&long, &mut plain);
        assert_eq!(
            a.blobs[0].0, b.blobs[0].0,
            "same key, same content: one address"
        );
        assert_ne!(
            a.blobs[0].0, plain.blobs[0].0,
            "keyed differs from plain blake3"
        );
        assert_ne!(a.blobs[0].0, crate::codec::blob::address(&a.blobs[0].1));
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
