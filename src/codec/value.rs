//! User state as a MessagePack value tree (`rmpv::Value`), and the conversions around it.
//!
//! A state is serialized once with rmp-serde (structs as maps, so field names survive and
//! [`crate::Checkpoint::state_json`] is meaningful) and held as a value tree: the diff and the
//! content-addressed layout in [`super::tree`] work on that tree.

use std::io::Cursor;

use rmpv::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ext::{is_reserved_ext, CHUNKED_EXT_TYPE, REF_EXT_TYPE};
use crate::error::{Error, Result};

/// Deepest nesting of containers (arrays, maps) accepted in a state or in metadata. Deeper input is
/// refused with an error instead of exhausting a thread's stack.
pub const MAX_DEPTH: usize = 64;
/// Container levels ckpt itself wraps around a state when storing it (a delta op list and op).
const STORAGE_WRAPPING: usize = 4;

/// rmpv's depth limit for `levels` nested containers: it counts each container twice (once for
/// the value, once for its contents), plus the innermost scalar.
fn rmpv_limit(levels: usize) -> usize {
    2 * levels + 2
}

/// Serializes a user value into a value tree; returns it with the size of its MessagePack encoding.
pub fn from_serialize<S: Serialize + ?Sized>(state: &S) -> Result<(Value, u64)> {
    let bytes = rmp_serde::to_vec_named(state).map_err(|e| Error::codec("encoding state", e))?;
    let value = decode_with_levels(&bytes, MAX_DEPTH).map_err(|e| {
        Error::InvalidInput(format!(
            "the state cannot be stored: {e} (is it nested deeper than {MAX_DEPTH} levels?)"
        ))
    })?;
    if contains_reserved_ext(&value) {
        return Err(Error::InvalidInput(format!(
            "the state contains a MessagePack extension of type {REF_EXT_TYPE} or {CHUNKED_EXT_TYPE}, which ckpt reserves for its own references"
        )));
    }
    Ok((value, bytes.len() as u64))
}

/// Decodes a user value given as MessagePack bytes (from another language's serializer) into a
/// value tree, with the checks [`from_serialize`] makes: one value, no trailing bytes, at most
/// [`MAX_DEPTH`] levels, no extension type ckpt reserves. Returns it with its size.
pub fn from_msgpack(bytes: &[u8]) -> Result<(Value, u64)> {
    let value = decode_with_levels(bytes, MAX_DEPTH).map_err(|e| {
        Error::InvalidInput(format!(
            "the value cannot be stored: {e} (is it one MessagePack value, nested at most \
             {MAX_DEPTH} levels?)"
        ))
    })?;
    if contains_reserved_ext(&value) {
        return Err(Error::InvalidInput(format!(
            "the value contains a MessagePack extension of type {REF_EXT_TYPE} or {CHUNKED_EXT_TYPE}, which ckpt reserves for its own references"
        )));
    }
    Ok((value, bytes.len() as u64))
}

fn contains_reserved_ext(value: &Value) -> bool {
    match value {
        Value::Ext(t, _) => is_reserved_ext(*t),
        Value::Array(items) => items.iter().any(contains_reserved_ext),
        Value::Map(entries) => entries
            .iter()
            .any(|(k, v)| contains_reserved_ext(k) || contains_reserved_ext(v)),
        _ => false,
    }
}

/// Decodes a value tree into a user type.
pub fn to_deserialize<T: DeserializeOwned>(value: &Value) -> Result<T> {
    let bytes = encode(value);
    let mut de = rmp_serde::Deserializer::new(Cursor::new(&bytes[..]));
    de.set_max_depth(MAX_DEPTH + 8);
    T::deserialize(&mut de).map_err(|e| Error::codec("decoding state into the requested type", e))
}

/// The MessagePack encoding of a value tree.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out);
    out
}

/// Appends the MessagePack encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(out, value);
}

/// Decodes one stored value from `bytes`, refusing trailing bytes and nesting deeper than a state
/// may be ([`MAX_DEPTH`]) plus what storage wraps around it.
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    decode_with_levels(bytes, MAX_DEPTH + STORAGE_WRAPPING)
}

/// Reads one value from the front of `cursor`, with the stored-value depth limit.
pub fn read_prefix(cursor: &mut Cursor<&[u8]>) -> Result<Value, String> {
    rmpv::decode::read_value_with_max_depth(cursor, rmpv_limit(MAX_DEPTH + STORAGE_WRAPPING))
        .map_err(|e| format!("invalid MessagePack: {e}"))
}

/// The nesting depth of containers in a JSON value (a scalar is 0).
pub fn json_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn decode_with_levels(bytes: &[u8], levels: usize) -> Result<Value, String> {
    let mut cursor = Cursor::new(bytes);
    let value = rmpv::decode::read_value_with_max_depth(&mut cursor, rmpv_limit(levels))
        .map_err(|e| format!("invalid MessagePack: {e}"))?;
    if cursor.position() as usize != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            bytes.len() - cursor.position() as usize
        ));
    }
    Ok(value)
}

/// The value as JSON: binary becomes an array of numbers, non-string map keys their JSON text,
/// non-finite floats null, extensions `{"ext": type, "data": [...]}`, or `{"ext": type,
/// "value": ...}` when their bytes are one MessagePack array or map (as the extensions of
/// Python's LangGraph serializer are: a message is `[module, class, fields]`), so that what
/// they hold can be read, diffed and grepped.
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => {
            if let Some(u) = i.as_u64() {
                J::from(u)
            } else if let Some(s) = i.as_i64() {
                J::from(s)
            } else {
                J::Null
            }
        }
        Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Value::Binary(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (json_key(k), to_json(v)))
                .collect(),
        ),
        Value::Ext(t, data) => match decode(data) {
            Ok(inner @ (Value::Array(_) | Value::Map(_))) => {
                serde_json::json!({ "ext": t, "value": to_json(&inner) })
            }
            _ => serde_json::json!({ "ext": t, "data": data }),
        },
    }
}

fn json_key(key: &Value) -> String {
    match key {
        Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => {
            let mut out = String::new();
            key_text(other, &mut out);
            out
        }
    }
}

/// JSON-like text of a non-string map key. Keys nested in it are written unescaped, so the text
/// grows linearly with the key (escaping at every level would grow it exponentially).
fn key_text(key: &Value, out: &mut String) {
    match key {
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                key_text(v, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                key_text(k, out);
                out.push(':');
                key_text(v, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&to_json(scalar).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut bytes = vec![0x91u8; 100_000]; // fixarray of 1, nested
        bytes.push(0xc0);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn states_at_the_depth_limit_survive_storage_wrapping() {
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_DEPTH - 1 {
            deep = serde_json::json!([deep]);
        }
        let state = serde_json::json!({ "a": deep });
        let (v, _) = from_serialize(&state).unwrap();
        let wrapped = Value::Array(vec![Value::Array(vec![0.into(), Value::Array(vec![]), v])]);
        assert!(decode(&encode(&wrapped)).is_ok());
        let too_deep = serde_json::json!({ "a": [deep] });
        assert!(from_serialize(&too_deep).is_err());
    }

    #[test]
    fn nested_container_keys_render_in_linear_size() {
        let mut key = Value::from("k");
        for _ in 0..40 {
            key = Value::Map(vec![(key, Value::Nil)]);
        }
        let v = Value::Map(vec![(key, Value::from(1))]);
        assert!(to_json(&v).to_string().len() < 1000);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert!(decode(&[0xc0, 0xc0]).is_err());
        assert_eq!(decode(&[0xc0]).unwrap(), Value::Nil);
    }

    #[test]
    fn an_extension_holding_a_container_shows_it() {
        let inner = Value::Array(vec![
            Value::from("langchain_core.messages"),
            Value::from("AIMessage"),
        ]);
        let shown = to_json(&Value::Ext(5, encode(&inner)));
        assert_eq!(shown["ext"], 5);
        assert_eq!(shown["value"][1], "AIMessage");
        let opaque = to_json(&Value::Ext(1, vec![0x05]));
        assert_eq!(
            opaque,
            serde_json::json!({"ext": 1, "data": [5]}),
            "a scalar stays bytes"
        );
    }

    #[test]
    fn msgpack_from_elsewhere_is_checked() {
        let v = Value::Array(vec![Value::Ext(5, vec![1, 2]), Value::from("x")]);
        let bytes = encode(&v);
        assert_eq!(from_msgpack(&bytes).unwrap(), (v, bytes.len() as u64));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(from_msgpack(&trailing).is_err());
        assert!(from_msgpack(&[0x92, 0x01]).is_err(), "a truncated array");
        let reserved = encode(&Value::Ext(REF_EXT_TYPE, vec![0; 32]));
        assert!(from_msgpack(&reserved).is_err());
    }

    #[test]
    fn reserved_extension_is_detected() {
        let v = Value::Array(vec![Value::Ext(REF_EXT_TYPE, vec![0; 32])]);
        assert!(contains_reserved_ext(&v));
        assert!(!contains_reserved_ext(&Value::Ext(1, vec![])));
    }

    #[test]
    fn typed_decode_accepts_the_deepest_state() {
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_DEPTH - 1 {
            deep = serde_json::json!([deep]);
        }
        let state = serde_json::json!({ "a": deep });
        let (v, _) = from_serialize(&state).unwrap();
        let back: serde_json::Value = to_deserialize(&v).unwrap();
        assert_eq!(back, state);
    }
}
