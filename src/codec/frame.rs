//! Event frames: the bytes of one log entry, and the events they carry.
//!
//! ```text
//! frame   = [format: 1 or 2][flags][payload][checksum: 8 bytes]
//! payload = header, then (saves and writes) body value
//!           zstd-compressed, prefixed by its length as u32 LE, when flags = 1 (read, no
//!           longer written)
//!           zstd-compressed with the built-in dictionary ([`super::dict`]), prefixed by its
//!           length as a varint, when flags = 4
//! header  = format 1: a MessagePack value (below)
//!           format 2 (saves): the compact save header (below)
//! checksum = first 8 bytes of blake3(len(log) as u32 LE, log, seq as u64 LE, format, flags, payload)
//! ```
//! The checksum binds a frame to its log and sequence number, so a frame that is damaged, or
//! that turns up in the wrong place, is reported as [`Error::Corrupt`] naming both.
//!
//! Header values: `[1, node, metadata, timestamp_us, parent, state_size, body_kind, base]` for a
//! save (parent: nil, `[version]` in the same execution, or `[execution, version]`; body_kind 0 is
//! a snapshot of the stored-form state, 1 a delta from version `base`), `[2, version]` for a
//! delete, `[3]` for a clear, `[4, begin, time_us, lease_us]` for a gc mark (only in the
//! store's reserved gc log, see `store::reclaim`), `[5, store_id, key_check]` for an encrypted
//! store's descriptor, and `[6, checkpoint, task, channel, metadata, timestamp_us, value_size]`
//! for a write attached to checkpoint `checkpoint` of the same log (its body: the value, in
//! stored form).
//!
//! Saves are written in format 2 (format 1 saves, written before it, are still read): a save's
//! header is most of a small checkpoint's frame, so it is packed with varints (LEB128) and its
//! versions stored as distances back from the frame's own sequence number (usually 1 byte):
//! ```text
//! compact save header = [fields: varint] [node: varint length, UTF-8] [timestamp_us: varint]
//!                       [state_size: varint] [parent: varint]                   (fields & 1)
//!                       [parent execution: varint length, UTF-8]               (fields & 2)
//!                       [delta base: varint]                                    (fields & 4)
//!                       [metadata: a MessagePack map]                           (fields & 8)
//! ```
//! A version of the same execution is written as its distance `seq - version`, unless
//! fields & 16, where it is written as it is (a version after the frame's own, which a save
//! never names today). A parent in another execution (fields & 2, which needs fields & 1) is
//! named by its version.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use rmpv::Value;

use super::seal::Seal;
use super::tree::{self, Op};
use super::{blob, dict, value};
use crate::error::{Error, Result};

/// A checkpoint's metadata: the same type as [`crate::checkpoint::Metadata`] (an alias), named
/// here so that the codec does not depend on the model it encodes (which depends on the codec).
type Metadata = BTreeMap<String, serde_json::Value>;

/// Frames with MessagePack headers: every frame but saves, and saves written before
/// [`FORMAT_COMPACT`].
const FORMAT: u8 = 1;
/// Save frames with the compact header (see the module docs).
const FORMAT_COMPACT: u8 = 2;
/// Bits of the compact save header's `fields`.
const HAS_PARENT: u64 = 1;
const PARENT_ELSEWHERE: u64 = 2;
const IS_DELTA: u64 = 4;
const HAS_METADATA: u64 = 8;
const VERSIONS_AS_THEY_ARE: u64 = 16;
const KNOWN_FIELDS: u64 =
    HAS_PARENT | PARENT_ELSEWHERE | IS_DELTA | HAS_METADATA | VERSIONS_AS_THEY_ARE;
/// zstd without a dictionary, a u32 LE length before it: frames written before the dictionary.
const FLAG_ZSTD: u8 = 1;
/// The rest of the frame is sealed ([`Seal`]): it opens to `[flags][payload]`.
const FLAG_SEALED: u8 = 2;
const CHECKSUM_LEN: usize = 8;
/// zstd with the built-in frame dictionary ([`super::dict`]), a varint length before it.
const FLAG_ZSTD_DICT: u8 = 4;
/// Payloads at least this long are compressed when that pays (with the dictionary, a
/// 60-byte write value already shrinks).
const COMPRESS_MIN: usize = 48;

const KIND_SAVE: u64 = 1;
const KIND_DELETE: u64 = 2;
const KIND_CLEAR: u64 = 3;
const KIND_GC: u64 = 4;
const KIND_STORE: u64 = 5;
const KIND_WRITE: u64 = 6;

/// A reference to the parent checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// `None` when the parent is in the same execution.
    pub execution: Option<String>,
    /// The parent's version.
    pub version: u64,
}

/// How a save stores its state.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// The whole state, in stored form (long leaves are blob references).
    Snapshot(Value),
    /// Ops that turn the state of version `base` (same execution) into this one.
    Delta {
        /// The version whose state the ops apply to.
        base: u64,
        /// The changes, values in stored form.
        ops: Vec<Op>,
    },
}

/// What a save records besides its state.
#[derive(Debug, Clone, PartialEq)]
pub struct SaveHeader {
    /// The node that produced the state.
    pub node: String,
    /// The checkpoint's metadata.
    pub metadata: Metadata,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// The previous checkpoint, or the fork source.
    pub parent: Option<ParentRef>,
    /// Size of the state's MessagePack encoding.
    pub state_size: u64,
    /// `None` for a snapshot, `Some(base)` for a delta.
    pub delta_base: Option<u64>,
}

/// One log entry, decoded except for a save's body.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A checkpoint was saved; its version is the frame's sequence number.
    Save(SaveHeader),
    /// The checkpoint `version` was deleted.
    Delete(u64),
    /// Every checkpoint before this frame was cleared.
    Clear,
    /// A gc began (`begin`) or ended; only found in the store's reserved gc log.
    Gc(GcMark),
    /// What an encrypted store is; only found in the store's reserved descriptor log.
    Store(StoreDescriptor),
    /// A write attached to a checkpoint (a task's pending write, a journaled result, an
    /// interrupt or its answer): not a checkpoint itself; its body is the value.
    Write(WriteHeader),
}

/// What a write records besides its value (see [`Event::Write`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteHeader {
    /// The version of the checkpoint (same execution) the write belongs to.
    pub checkpoint: u64,
    /// The task that wrote it.
    pub task: String,
    /// What it is (a channel name, or one of the runtime's own kinds).
    pub channel: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Size of the value's MessagePack encoding.
    pub value_size: u64,
}

/// An encrypted store's descriptor: its id (bound into every sealed frame and blob) and a check
/// value sealed with the key that writes, so a wrong key is reported when the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDescriptor {
    /// The store's random id.
    pub store_id: [u8; 16],
    /// A known value sealed with the writing key (see `store::encryption`).
    pub key_check: Vec<u8>,
}

/// A mark in the reserved gc log: gc runs between a begin mark and the end mark after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcMark {
    /// Whether this mark begins a gc (else it ends one, finished or abandoned).
    pub begin: bool,
    /// When the mark was written, in microseconds since the Unix epoch.
    pub time_us: u64,
    /// For a begin mark: how long the gc may run; past that, writers may end it.
    pub lease_us: u64,
    /// The process that wrote the mark (a random id per process), when recorded; on a backend
    /// that one process holds at a time, a begin mark of another process is a dead gc's.
    pub owner: Option<u64>,
}

impl Body {
    /// Adds every blob this body references to `refs`.
    pub fn collect_refs(&self, refs: &mut std::collections::HashSet<tree::Ref>) {
        match self {
            Body::Snapshot(v) => tree::collect_refs(v, refs),
            Body::Delta { ops, .. } => tree::collect_op_refs(ops, refs),
        }
    }

    /// The MessagePack bytes of this body, as [`encode_save`] takes them.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Body::Snapshot(v) => value::encode(v),
            Body::Delta { ops, .. } => value::encode(&tree::ops_to_value(ops)),
        }
    }
}

/// Encodes a save frame; `body` is [`Body::encode`]'s output (a snapshot when
/// `header.delta_base` is `None`, a delta otherwise).
pub fn encode_save(log: &str, seq: u64, header: &SaveHeader, body: &[u8]) -> Result<Vec<u8>> {
    FrameCodec::plain().encode_save(log, seq, header, body)
}

/// The payload of a format 2 save frame at `seq`: its compact header, then its body.
fn save_payload(seq: u64, header: &SaveHeader, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + header.node.len() + body.len());
    let mut fields = 0;
    if let Some(parent) = &header.parent {
        fields |= HAS_PARENT;
        if parent.execution.is_some() {
            fields |= PARENT_ELSEWHERE;
        }
    }
    if header.delta_base.is_some() {
        fields |= IS_DELTA;
    }
    if !header.metadata.is_empty() {
        fields |= HAS_METADATA;
    }
    let same_execution = header
        .parent
        .as_ref()
        .filter(|p| p.execution.is_none())
        .map(|p| p.version);
    let as_they_are = same_execution
        .into_iter()
        .chain(header.delta_base)
        .any(|v| v > seq);
    if as_they_are {
        fields |= VERSIONS_AS_THEY_ARE;
    }
    let version = |v: u64| if as_they_are { v } else { seq - v };
    put_varint(&mut out, fields);
    put_text(&mut out, &header.node);
    put_varint(&mut out, header.timestamp_us);
    put_varint(&mut out, header.state_size);
    if let Some(parent) = &header.parent {
        match &parent.execution {
            None => put_varint(&mut out, version(parent.version)),
            Some(execution) => {
                put_varint(&mut out, parent.version);
                put_text(&mut out, execution);
            }
        }
    }
    if let Some(base) = header.delta_base {
        put_varint(&mut out, version(base));
    }
    if !header.metadata.is_empty() {
        value::encode_into(&metadata_to_value(&header.metadata), &mut out);
    }
    out.extend_from_slice(body);
    out
}

/// Reads a compact save header (see the module docs) from the front of `payload`, a frame at
/// `seq`; returns it and the rest (the body).
fn compact_save_header(seq: u64, payload: &[u8]) -> Result<(SaveHeader, &[u8]), String> {
    let mut rest = payload;
    let fields = take_varint(&mut rest, "field bits")?;
    if fields & !KNOWN_FIELDS != 0 || fields & (HAS_PARENT | PARENT_ELSEWHERE) == PARENT_ELSEWHERE {
        return Err(format!("unknown field bits {fields:#x}"));
    }
    let as_they_are = fields & VERSIONS_AS_THEY_ARE != 0;
    let version = |written: u64, what: &str| {
        if as_they_are {
            Ok(written)
        } else {
            seq.checked_sub(written)
                .ok_or_else(|| format!("{what} {written} versions before version {seq}"))
        }
    };
    let node = take_text(&mut rest, "node name")?;
    let timestamp_us = take_varint(&mut rest, "timestamp")?;
    let state_size = take_varint(&mut rest, "state size")?;
    let parent = if fields & HAS_PARENT == 0 {
        None
    } else if fields & PARENT_ELSEWHERE == 0 {
        let written = take_varint(&mut rest, "parent")?;
        Some(ParentRef {
            execution: None,
            version: version(written, "parent")?,
        })
    } else {
        let version = take_varint(&mut rest, "parent version")?;
        Some(ParentRef {
            execution: Some(take_text(&mut rest, "parent execution")?),
            version,
        })
    };
    let delta_base = if fields & IS_DELTA == 0 {
        None
    } else {
        let written = take_varint(&mut rest, "delta base")?;
        Some(version(written, "delta base")?)
    };
    let metadata = if fields & HAS_METADATA == 0 {
        Metadata::new()
    } else {
        let mut cursor = Cursor::new(rest);
        let map = value::read_prefix(&mut cursor)?;
        rest = &rest[cursor.position() as usize..];
        metadata_from_value(map)?
    };
    let header = SaveHeader {
        node,
        metadata,
        timestamp_us,
        parent,
        state_size,
        delta_base,
    };
    Ok((header, rest))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn take_varint(bytes: &mut &[u8], what: &str) -> Result<u64, String> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            break;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Ok(v);
        }
    }
    Err(format!("{what}: invalid or truncated varint"))
}

fn take_text(bytes: &mut &[u8], what: &str) -> Result<String, String> {
    let len = take_varint(bytes, what)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= bytes.len())
        .ok_or_else(|| format!("{what}: {len} bytes, past the end of the header"))?;
    let (text, rest) = bytes.split_at(len);
    *bytes = rest;
    String::from_utf8(text.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

/// A save's header as the MessagePack value its frame stores (also how a persisted projection
/// stores it; read back with [`header_from_value`]).
pub(crate) fn save_header_value(header: &SaveHeader) -> Value {
    let parent = match &header.parent {
        None => Value::Nil,
        Some(ParentRef {
            execution: None,
            version,
        }) => Value::Array(vec![(*version).into()]),
        Some(ParentRef {
            execution: Some(e),
            version,
        }) => Value::Array(vec![e.as_str().into(), (*version).into()]),
    };
    Value::Array(vec![
        KIND_SAVE.into(),
        header.node.as_str().into(),
        metadata_to_value(&header.metadata),
        header.timestamp_us.into(),
        parent,
        header.state_size.into(),
        u64::from(header.delta_base.is_some()).into(),
        header.delta_base.unwrap_or(0).into(),
    ])
}

/// The payload of a write frame: its header value, then its body.
fn write_payload(header: &WriteHeader, body: &[u8]) -> Vec<u8> {
    let mut payload = value::encode(&write_header_value(header));
    payload.extend_from_slice(body);
    payload
}

/// A write's header as the MessagePack value its frame stores.
pub(crate) fn write_header_value(header: &WriteHeader) -> Value {
    Value::Array(vec![
        KIND_WRITE.into(),
        header.checkpoint.into(),
        header.task.as_str().into(),
        header.channel.as_str().into(),
        metadata_to_value(&header.metadata),
        header.timestamp_us.into(),
        header.value_size.into(),
    ])
}

/// The event whose header value is `head` ([`save_header_value`], [`write_header_value`]).
pub(crate) fn header_from_value(head: Value) -> Result<Event, String> {
    event_from_value(head)
}

/// Encodes a write frame (see [`FrameCodec::encode_write`]).
pub fn encode_write(log: &str, seq: u64, header: &WriteHeader, body: &[u8]) -> Result<Vec<u8>> {
    FrameCodec::plain().encode_write(log, seq, header, body)
}

/// Encodes a delete frame.
pub fn encode_delete(log: &str, seq: u64, version: u64) -> Result<Vec<u8>> {
    FrameCodec::plain().encode_delete(log, seq, version)
}

/// How one store writes and reads the frames of its executions: plainly, or through a sealing
/// stage ([`Seal`]) in an encrypted store. Cheap to clone.
///
/// The store-internal frames ([`encode_gc`], [`encode_store`]) are never sealed: they are
/// free functions.
#[derive(Debug, Clone, Default)]
pub struct FrameCodec {
    seal: Option<Arc<dyn Seal>>,
}

impl FrameCodec {
    /// The codec of a plaintext store.
    pub const fn plain() -> Self {
        FrameCodec { seal: None }
    }

    /// The codec of an encrypted store sealing with `seal`.
    pub fn sealed(seal: Arc<dyn Seal>) -> Self {
        FrameCodec { seal: Some(seal) }
    }

    /// Encodes a save frame ([`encode_save`]), sealed when the store is encrypted.
    pub fn encode_save(
        &self,
        log: &str,
        seq: u64,
        header: &SaveHeader,
        body: &[u8],
    ) -> Result<Vec<u8>> {
        let payload = save_payload(seq, header, body);
        seal(log, seq, FORMAT_COMPACT, payload, self.seal.as_deref())
    }

    /// Encodes a write frame; `body` is the value's stored form, MessagePack-encoded.
    pub fn encode_write(
        &self,
        log: &str,
        seq: u64,
        header: &WriteHeader,
        body: &[u8],
    ) -> Result<Vec<u8>> {
        seal(
            log,
            seq,
            FORMAT,
            write_payload(header, body),
            self.seal.as_deref(),
        )
    }

    /// Encodes a delete frame ([`encode_delete`]), sealed when the store is encrypted.
    pub fn encode_delete(&self, log: &str, seq: u64, version: u64) -> Result<Vec<u8>> {
        let payload = value::encode(&Value::Array(vec![KIND_DELETE.into(), version.into()]));
        seal(log, seq, FORMAT, payload, self.seal.as_deref())
    }

    /// Encodes a clear frame ([`encode_clear`]), sealed when the store is encrypted.
    pub fn encode_clear(&self, log: &str, seq: u64) -> Result<Vec<u8>> {
        let payload = value::encode(&Value::Array(vec![KIND_CLEAR.into()]));
        seal(log, seq, FORMAT, payload, self.seal.as_deref())
    }

    /// [`decode`] in this store: when it is encrypted, the frame must be sealed for this very
    /// place (else [`Error::Decrypt`]); in a plaintext store a sealed frame is
    /// [`Error::Decrypt`].
    pub fn decode(&self, log: &str, seq: u64, frame: &[u8]) -> Result<Decoded> {
        decode_with(log, seq, frame, self.seal.as_deref())
    }

    /// Encodes a record derived from a log (an execution's projection), as frames are:
    /// compressed, sealed when the store is encrypted, and checksummed with `place` and
    /// `position` bound in, so a record read back from the wrong place does not open.
    pub fn encode_record(&self, place: &str, position: u64, payload: Vec<u8>) -> Result<Vec<u8>> {
        seal(place, position, FORMAT, payload, self.seal.as_deref())
    }

    /// The payload of a record written by [`FrameCodec::encode_record`] with the same `place`
    /// and `position`: [`Error::Corrupt`] when its checksum fails, [`Error::Decrypt`] when it
    /// does not open with this store's keys.
    pub fn decode_record(&self, place: &str, position: u64, record: &[u8]) -> Result<Vec<u8>> {
        match open_payload(place, position, record, self.seal.as_deref())? {
            (FORMAT, payload) => Ok(payload),
            (format, _) => Err(Error::corrupt(
                format!("record {place:?}"),
                format!("a record is never written in format {format}"),
            )),
        }
    }

    /// Whether `frame` (as stored) is sealed with this store's newest key (never, in a
    /// plaintext store). Says nothing about whether it opens: verify it with
    /// [`FrameCodec::decode`].
    pub fn sealed_with_newest(&self, frame: &[u8]) -> bool {
        match &self.seal {
            Some(s) => {
                frame.len() > 2 + CHECKSUM_LEN
                    && frame[1] == FLAG_SEALED
                    && s.sealed_with_newest(&frame[2..frame.len() - CHECKSUM_LEN])
            }
            None => false,
        }
    }
}

/// Encodes a gc mark frame.
pub fn encode_gc(log: &str, seq: u64, mark: GcMark) -> Result<Vec<u8>> {
    seal(
        log,
        seq,
        FORMAT,
        value::encode(&Value::Array(
            [
                KIND_GC.into(),
                u64::from(mark.begin).into(),
                mark.time_us.into(),
                mark.lease_us.into(),
            ]
            .into_iter()
            .chain(mark.owner.map(Value::from))
            .collect(),
        )),
        None,
    )
}

/// Encodes a store descriptor frame.
pub fn encode_store(log: &str, seq: u64, d: &StoreDescriptor) -> Result<Vec<u8>> {
    seal(
        log,
        seq,
        FORMAT,
        value::encode(&Value::Array(vec![
            KIND_STORE.into(),
            Value::Binary(d.store_id.to_vec()),
            Value::Binary(d.key_check.clone()),
        ])),
        None,
    )
}

/// The most bytes a delete or clear frame can take, sealed or not: a longer frame was
/// something else (a save), which is what a damaged frame's length still tells.
pub fn max_marker_len() -> usize {
    // Sealing adds a flag, the key id, a nonce and a tag (45 bytes); 64 leaves room.
    const SEALING: usize = 64;
    let delete = encode_delete("", 0, u64::MAX).map_or(0, |f| f.len());
    let clear = encode_clear("", 0).map_or(0, |f| f.len());
    delete.max(clear) + SEALING
}

/// Encodes a clear frame.
pub fn encode_clear(log: &str, seq: u64) -> Result<Vec<u8>> {
    FrameCodec::plain().encode_clear(log, seq)
}

fn seal(
    log: &str,
    seq: u64,
    format: u8,
    payload: Vec<u8>,
    sealer: Option<&dyn Seal>,
) -> Result<Vec<u8>> {
    let inner = inner_bytes(payload);
    let mut frame = Vec::with_capacity(inner.len() + 64 + CHECKSUM_LEN);
    frame.push(format);
    match sealer {
        Some(s) => {
            frame.push(FLAG_SEALED);
            frame.extend_from_slice(&s.seal_frame(log, seq, &inner)?);
        }
        None => frame.extend_from_slice(&inner),
    }
    let sum = checksum(log, seq, &frame);
    frame.extend_from_slice(&sum);
    Ok(frame)
}

/// `[flags][payload]`, the payload compressed with the frame dictionary when that pays.
fn inner_bytes(payload: Vec<u8>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    let mut length = Vec::with_capacity(5);
    put_varint(&mut length, payload.len() as u64);
    let compressed = if payload.len() >= COMPRESS_MIN {
        dict::compress(&payload)
            .ok()
            .filter(|c| c.len() + length.len() < payload.len())
    } else {
        None
    };
    match compressed {
        Some(c) => {
            frame.push(FLAG_ZSTD_DICT);
            frame.extend_from_slice(&length);
            frame.extend_from_slice(&c);
        }
        None => {
            frame.push(0);
            frame.extend_from_slice(&payload);
        }
    }
    frame
}

fn checksum(log: &str, seq: u64, body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(&(log.len() as u32).to_le_bytes());
    h.update(log.as_bytes());
    h.update(&seq.to_le_bytes());
    h.update(body);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECKSUM_LEN]);
    out
}

/// A verified, decompressed frame: its event, and a save's still-encoded body.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The event.
    pub event: Event,
    /// For a save: the MessagePack bytes of its body (decode with [`decode_body`]).
    pub body: Vec<u8>,
}

/// Verifies and decodes the frame stored at `seq` of `log`. Never panics; any damage is
/// [`Error::Corrupt`] naming the log and sequence.
pub fn decode(log: &str, seq: u64, frame: &[u8]) -> Result<Decoded> {
    decode_with(log, seq, frame, None)
}

/// The format and payload of a frame (or record) stored at `seq` of `log`: checksum verified,
/// opened with `sealer` when sealed, decompressed.
fn open_payload(
    log: &str,
    seq: u64,
    frame: &[u8],
    sealer: Option<&dyn Seal>,
) -> Result<(u8, Vec<u8>)> {
    let corrupt = |reason: String| Error::corrupt(format!("execution {log:?} seq {seq}"), reason);
    if frame.len() < 2 + CHECKSUM_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than a frame",
            frame.len()
        )));
    }
    let (body, sum) = frame.split_at(frame.len() - CHECKSUM_LEN);
    if checksum(log, seq, body) != sum {
        return Err(corrupt("checksum mismatch".into()));
    }
    if body[0] != FORMAT && body[0] != FORMAT_COMPACT {
        return Err(corrupt(format!(
            "frame format {} is newer than this ckpt understands (1 and 2); upgrade ckpt",
            body[0]
        )));
    }
    let opened;
    let inner: &[u8] = match (body[1], sealer) {
        (FLAG_SEALED, Some(s)) => {
            opened = s.open_frame(log, seq, &body[2..])?;
            &opened
        }
        (FLAG_SEALED, None) => {
            return Err(Error::Decrypt {
                location: format!("execution {log:?} seq {seq}"),
                key_id: "?".into(),
                reason: "the store is encrypted: open it with its key (Store::builder(..)\
                         .encryption(key), or ?key_env=VAR in the URL)"
                    .into(),
            })
        }
        (_, Some(s)) => {
            return Err(Error::Decrypt {
                location: format!("execution {log:?} seq {seq}"),
                key_id: s.sealing_id(),
                reason: "a plaintext frame in an encrypted store: refused (it was not written \
                         by this store's keys)"
                    .into(),
            })
        }
        (_, None) => &body[1..],
    };
    if inner.is_empty() {
        return Err(corrupt("no flags byte".into()));
    }
    let (flags, rest) = (inner[0], &inner[1..]);
    let payload = match flags {
        0 => rest.to_vec(),
        FLAG_ZSTD if rest.len() >= 4 => {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let out = blob::decompress_bounded(&rest[4..], len).map_err(&corrupt)?;
            if out.len() != len {
                return Err(corrupt(
                    "decompressed length differs from the header".into(),
                ));
            }
            out
        }
        FLAG_ZSTD_DICT => {
            let mut rest = rest;
            let len = take_varint(&mut rest, "compressed length").map_err(&corrupt)?;
            let len =
                usize::try_from(len).map_err(|_| corrupt("compressed length overflows".into()))?;
            let out = dict::decompress_bounded(rest, len).map_err(&corrupt)?;
            if out.len() != len {
                return Err(corrupt(
                    "decompressed length differs from the header".into(),
                ));
            }
            out
        }
        flags => {
            return Err(corrupt(format!(
                "unknown frame flags {flags:#x} (a newer ckpt may have written it: upgrade ckpt)"
            )))
        }
    };
    Ok((body[0], payload))
}

/// The verified, decompressed payload (header and body, still encoded) of the plaintext frame
/// stored at `seq` of `log`: for tools that study frames, such as the trainer of the frame
/// dictionary (`examples/train_frame_dict.rs`).
pub fn payload(log: &str, seq: u64, frame: &[u8]) -> Result<Vec<u8>> {
    open_payload(log, seq, frame, None).map(|(_, payload)| payload)
}

/// [`decode`], opening a sealed frame with `sealer` (see [`FrameCodec::decode`]).
fn decode_with(log: &str, seq: u64, frame: &[u8], sealer: Option<&dyn Seal>) -> Result<Decoded> {
    let corrupt = |reason: String| Error::corrupt(format!("execution {log:?} seq {seq}"), reason);
    let (format, payload) = open_payload(log, seq, frame, sealer)?;
    if format == FORMAT_COMPACT {
        let (header, body) = compact_save_header(seq, &payload)
            .map_err(|e| corrupt(format!("invalid save header: {e}")))?;
        return Ok(Decoded {
            event: Event::Save(header),
            body: body.to_vec(),
        });
    }
    let mut cursor = Cursor::new(&payload[..]);
    let head =
        value::read_prefix(&mut cursor).map_err(|e| corrupt(format!("invalid header: {e}")))?;
    let rest = payload[cursor.position() as usize..].to_vec();
    let event = event_from_value(head).map_err(|e| corrupt(format!("invalid header: {e}")))?;
    if !matches!(event, Event::Save(_) | Event::Write(_)) && !rest.is_empty() {
        return Err(corrupt("trailing bytes after the event".into()));
    }
    Ok(Decoded { event, body: rest })
}

impl Decoded {
    /// The body of a frame that has one: a save's state (snapshot or delta), or a write's value
    /// (as a [`Body::Snapshot`]); `None` for the events that carry no value.
    pub fn body(&self, log: &str, seq: u64) -> Result<Option<Body>> {
        match &self.event {
            Event::Save(h) => decode_body(log, seq, h, &self.body).map(Some),
            Event::Write(_) => {
                decode_write_body(log, seq, &self.body).map(|v| Some(Body::Snapshot(v)))
            }
            _ => Ok(None),
        }
    }
}

/// Decodes a write's value (its stored form) from its body bytes (from [`decode`]).
pub fn decode_write_body(log: &str, seq: u64, body: &[u8]) -> Result<Value> {
    value::decode(body).map_err(|e| {
        Error::corrupt(
            format!("execution {log:?} seq {seq}"),
            format!("invalid write value: {e}"),
        )
    })
}

/// Decodes a save's body bytes (from [`decode`]).
pub fn decode_body(log: &str, seq: u64, header: &SaveHeader, body: &[u8]) -> Result<Body> {
    let corrupt = |reason: String| Error::corrupt(format!("execution {log:?} seq {seq}"), reason);
    let v = value::decode(body).map_err(|e| corrupt(format!("invalid body: {e}")))?;
    Ok(match header.delta_base {
        None => Body::Snapshot(v),
        Some(base) => Body::Delta {
            base,
            ops: tree::ops_from_value(v).map_err(|e| corrupt(format!("invalid delta: {e}")))?,
        },
    })
}

fn event_from_value(head: Value) -> Result<Event, String> {
    let Value::Array(fields) = head else {
        return Err("not an array".into());
    };
    let kind = fields
        .first()
        .and_then(Value::as_u64)
        .ok_or("no event kind")?;
    match (kind, fields.len()) {
        (KIND_SAVE, 8) => save_from_fields(fields),
        (KIND_DELETE, 2) => Ok(Event::Delete(
            fields[1].as_u64().ok_or("delete without a version")?,
        )),
        (KIND_CLEAR, 1) => Ok(Event::Clear),
        (KIND_GC, len @ (4 | 5)) => {
            let field = |i: usize, what: &str| {
                fields[i]
                    .as_u64()
                    .ok_or_else(|| format!("gc mark {what} is not an integer"))
            };
            let begin = match field(1, "kind")? {
                0 => false,
                1 => true,
                k => return Err(format!("unknown gc mark kind {k}")),
            };
            Ok(Event::Gc(GcMark {
                begin,
                time_us: field(2, "time")?,
                lease_us: field(3, "lease")?,
                owner: if len == 5 {
                    Some(field(4, "owner")?)
                } else {
                    None
                },
            }))
        }
        (KIND_STORE, 3) => {
            let store_id = match &fields[1] {
                Value::Binary(b) => <[u8; 16]>::try_from(b.as_slice())
                    .map_err(|_| "store id is not 16 bytes".to_string())?,
                _ => return Err("store id is not binary".into()),
            };
            let key_check = match &fields[2] {
                Value::Binary(b) => b.clone(),
                _ => return Err("key check is not binary".into()),
            };
            Ok(Event::Store(StoreDescriptor {
                store_id,
                key_check,
            }))
        }
        (KIND_WRITE, 7) => write_from_fields(fields),
        (k, n) => Err(format!("unknown event kind {k} with {n} fields")),
    }
}

fn write_from_fields(fields: Vec<Value>) -> Result<Event, String> {
    let mut f = fields.into_iter().skip(1);
    let mut next = || f.next().ok_or("missing field");
    let checkpoint = next()?
        .as_u64()
        .ok_or("write checkpoint is not an integer")?;
    let mut text = |what: &str| match next() {
        Ok(Value::String(s)) => s.into_str().ok_or(format!("write {what} is not UTF-8")),
        _ => Err(format!("write {what} is not a string")),
    };
    let task = text("task")?;
    let channel = text("channel")?;
    let metadata = metadata_from_value(next()?)?;
    let timestamp_us = next()?
        .as_u64()
        .ok_or("write timestamp is not an integer")?;
    let value_size = next()?
        .as_u64()
        .ok_or("write value size is not an integer")?;
    Ok(Event::Write(WriteHeader {
        checkpoint,
        task,
        channel,
        metadata,
        timestamp_us,
        value_size,
    }))
}

fn save_from_fields(fields: Vec<Value>) -> Result<Event, String> {
    let mut f = fields.into_iter().skip(1);
    let mut next = || f.next().ok_or("missing field");
    let node = match next()? {
        Value::String(s) => s.into_str().ok_or("node name is not UTF-8")?,
        _ => return Err("node name is not a string".into()),
    };
    let metadata = metadata_from_value(next()?)?;
    let timestamp_us = next()?.as_u64().ok_or("timestamp is not an integer")?;
    let parent = match next()? {
        Value::Nil => None,
        Value::Array(p) => match p.as_slice() {
            [v] => Some(ParentRef {
                execution: None,
                version: v.as_u64().ok_or("parent version")?,
            }),
            [Value::String(e), v] => Some(ParentRef {
                execution: Some(
                    e.as_str()
                        .ok_or("parent execution is not UTF-8")?
                        .to_owned(),
                ),
                version: v.as_u64().ok_or("parent version")?,
            }),
            _ => return Err("malformed parent".into()),
        },
        _ => return Err("malformed parent".into()),
    };
    let state_size = next()?.as_u64().ok_or("state size is not an integer")?;
    let is_delta = next()?.as_u64().ok_or("body kind")?;
    let base = next()?.as_u64().ok_or("delta base")?;
    let delta_base = match is_delta {
        0 => None,
        1 => Some(base),
        _ => return Err("unknown body kind".into()),
    };
    Ok(Event::Save(SaveHeader {
        node,
        metadata,
        timestamp_us,
        parent,
        state_size,
        delta_base,
    }))
}

/// Metadata as a MessagePack map.
pub fn metadata_to_value(metadata: &Metadata) -> Value {
    Value::Map(
        metadata
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v)))
            .collect(),
    )
}

fn metadata_from_value(v: Value) -> Result<Metadata, String> {
    let Value::Map(entries) = v else {
        return Err("metadata is not a map".into());
    };
    entries
        .into_iter()
        .map(|(k, v)| match k {
            Value::String(s) => Ok((
                s.into_str().ok_or("metadata key is not UTF-8")?,
                value::to_json(&v),
            )),
            _ => Err("metadata key is not a string".to_string()),
        })
        .collect()
}

/// A JSON value as MessagePack (numbers keep their integer or float kind).
pub fn json_to_value(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::Array(a.iter().map(json_to_value).collect()),
        J::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SaveHeader {
        let mut metadata = Metadata::new();
        metadata.insert("source".into(), "loop".into());
        metadata.insert("step".into(), 3.into());
        metadata.insert("nested".into(), serde_json::json!({"a": [1.5, -2, null]}));
        SaveHeader {
            node: "plan".into(),
            metadata,
            timestamp_us: 1_700_000_000_000_000,
            parent: Some(ParentRef {
                execution: Some("other".into()),
                version: 4,
            }),
            state_size: 77,
            delta_base: Some(4),
        }
    }

    #[test]
    fn save_round_trips() {
        let body = Body::Delta {
            base: 4,
            ops: vec![Op::Set(vec!["step".into()], 5.into())],
        };
        let frame = encode_save("exec", 9, &header(), &body.encode()).unwrap();
        let d = decode("exec", 9, &frame).unwrap();
        let Event::Save(h) = d.event else {
            panic!("not a save")
        };
        assert_eq!(h, header());
        assert_eq!(decode_body("exec", 9, &h, &d.body).unwrap(), body);
    }

    /// Every shape of save header round-trips through the compact header, whatever the
    /// distance from the frame's own sequence number.
    #[test]
    fn compact_save_headers_round_trip() {
        let same = |version| {
            Some(ParentRef {
                execution: None,
                version,
            })
        };
        let elsewhere = Some(ParentRef {
            execution: Some("other-exec".into()),
            version: u64::MAX,
        });
        let seqs = [1, 2, 9, 130, 1 << 40, u64::MAX];
        for seq in seqs {
            for parent in [None, same(0), same(seq - 1), same(seq), same(seq / 2)]
                .into_iter()
                .chain([
                    same(u64::MAX),
                    same(seq.saturating_add(1)),
                    elsewhere.clone(),
                ])
            {
                for delta_base in [None, Some(seq - 1), Some(0), Some(u64::MAX)] {
                    for metadata in [Metadata::new(), header().metadata] {
                        let h = SaveHeader {
                            node: "node-ü".into(),
                            metadata,
                            timestamp_us: seq.wrapping_mul(7919),
                            parent: parent.clone(),
                            state_size: seq / 3,
                            delta_base,
                        };
                        let body = value::encode(&Value::from("body"));
                        let frame = encode_save("exec", seq, &h, &body).unwrap();
                        assert_eq!(frame[0], FORMAT_COMPACT);
                        let d = decode("exec", seq, &frame).unwrap();
                        assert_eq!(d.event, Event::Save(h), "seq {seq}");
                        assert_eq!(d.body, body);
                    }
                }
            }
        }
    }

    /// Saves written before the compact header (format 1) are still read.
    #[test]
    fn format_1_saves_are_still_read() {
        let h = header();
        let mut payload = value::encode(&save_header_value(&h));
        payload.extend_from_slice(&value::encode(&Value::from(5)));
        let frame = seal("exec", 9, FORMAT, payload, None).unwrap();
        let d = decode("exec", 9, &frame).unwrap();
        assert_eq!(d.event, Event::Save(h));
        assert_eq!(d.body, value::encode(&Value::from(5)));
    }

    /// A compact header that is cut short, names a version before the first, or sets unknown
    /// field bits is refused as corrupt, never read as something else.
    #[test]
    fn damaged_compact_headers_are_corrupt() {
        let frame = |payload: Vec<u8>| seal("exec", 7, FORMAT_COMPACT, payload, None).unwrap();
        let good = {
            let mut out = Vec::new();
            put_varint(&mut out, HAS_PARENT | IS_DELTA);
            put_text(&mut out, "plan");
            put_varint(&mut out, 1_700_000_000_000_000);
            put_varint(&mut out, 12);
            put_varint(&mut out, 1);
            put_varint(&mut out, 2);
            out
        };
        let d = decode("exec", 7, &frame(good.clone())).unwrap();
        let Event::Save(h) = d.event else {
            panic!("not a save")
        };
        assert_eq!((h.parent.unwrap().version, h.delta_base), (6, Some(5)));
        for cut in 0..good.len() {
            let err = decode("exec", 7, &frame(good[..cut].to_vec())).unwrap_err();
            assert!(err.is_corrupt(), "cut at {cut}: {err}");
        }
        let mut before_first = good.clone();
        *before_first.last_mut().unwrap() = 8;
        let err = decode("exec", 7, &frame(before_first)).unwrap_err();
        assert!(err
            .to_string()
            .contains("delta base 8 versions before version 7"));
        let mut unknown = good.clone();
        unknown[0] = 0x20;
        assert!(decode("exec", 7, &frame(unknown)).unwrap_err().is_corrupt());
        let mut elsewhere_alone = good;
        elsewhere_alone[0] = PARENT_ELSEWHERE as u8;
        assert!(decode("exec", 7, &frame(elsewhere_alone))
            .unwrap_err()
            .is_corrupt());
        let err = decode("exec", 7, &frame(vec![0xff; 11])).unwrap_err();
        assert!(err.to_string().contains("varint"), "{err}");
    }

    #[test]
    fn write_round_trips() {
        let mut metadata = Metadata::new();
        metadata.insert("path".into(), serde_json::json!(["a", 1]));
        let header = WriteHeader {
            checkpoint: 4,
            task: "tools".into(),
            channel: "__journal__".into(),
            metadata,
            timestamp_us: 1_700_000_000_000_000,
            value_size: 3,
        };
        let body = value::encode(&Value::from("abc"));
        let frame = encode_write("exec", 9, &header, &body).unwrap();
        let d = decode("exec", 9, &frame).unwrap();
        assert_eq!(d.event, Event::Write(header));
        assert_eq!(
            decode_write_body("exec", 9, &d.body).unwrap(),
            Value::from("abc")
        );
        assert!(decode("exec", 8, &frame).unwrap_err().is_corrupt());
    }

    #[test]
    fn large_snapshot_is_compressed_and_round_trips() {
        let mut h = header();
        h.delta_base = None;
        let body = Body::Snapshot(Value::from("abc".repeat(1000)));
        let frame = encode_save("exec", 1, &h, &body.encode()).unwrap();
        assert!(frame.len() < 500);
        let d = decode("exec", 1, &frame).unwrap();
        let Event::Save(h2) = d.event else {
            panic!("not a save")
        };
        assert_eq!(decode_body("exec", 1, &h2, &d.body).unwrap(), body);
    }

    /// `[format][inner][checksum]` for `inner` = `[flags][payload]` exactly as given.
    fn raw_frame(log: &str, seq: u64, inner: &[u8]) -> Vec<u8> {
        let mut frame = vec![FORMAT_COMPACT];
        frame.extend_from_slice(inner);
        let sum = checksum(log, seq, &frame);
        frame.extend_from_slice(&sum);
        frame
    }

    /// A delta as `ckpt_langgraph` saves one: a few paths of a checkpoint, metadata and an id.
    fn langgraph_like_payload() -> Vec<u8> {
        let mut h = header();
        h.delta_base = Some(3);
        h.metadata.insert(
            "lg:id".into(),
            "1f1f0201-5565-6c07-81f4-b69e447405e3".into(),
        );
        let ops = vec![
            Op::Set(
                vec!["checkpoint".into(), 1.into(), "ts".into()],
                "2026-12-04T20:20:01.279686+00:00".into(),
            ),
            Op::Set(
                vec![
                    "checkpoint".into(),
                    1.into(),
                    "channel_versions".into(),
                    "__start__".into(),
                ],
                "00000000000000000000000000000502.0.44541672319477843".into(),
            ),
            Op::Set(
                vec!["metadata".into(), 1.into(), "step".into()],
                Value::from(500),
            ),
        ];
        save_payload(5, &h, &Body::Delta { base: 3, ops }.encode())
    }

    #[test]
    fn small_frames_are_compressed_with_the_dictionary() {
        let payload = langgraph_like_payload();
        let frame = seal("exec", 5, FORMAT_COMPACT, payload.clone(), None).unwrap();
        assert_eq!(frame[1], FLAG_ZSTD_DICT);
        // Plain zstd saves little on a payload this small; the dictionary more.
        let plain = blob::compress(&payload).unwrap().len() + 4;
        let primed = frame.len() - 2 - CHECKSUM_LEN;
        assert!(
            primed < plain && primed < payload.len(),
            "{} bytes: plain zstd {plain}, with the dictionary {primed}",
            payload.len(),
        );
        assert_eq!(open_payload("exec", 5, &frame, None).unwrap().1, payload);
        // Too short to gain: stored as it is.
        let tiny = seal("exec", 5, FORMAT_COMPACT, vec![1, 2, 3], None).unwrap();
        assert_eq!(tiny[1], 0);
    }

    /// Frames compressed without the dictionary (every store before it) are still read.
    #[test]
    fn frames_compressed_without_the_dictionary_are_still_read() {
        let payload = langgraph_like_payload();
        let mut inner = vec![FLAG_ZSTD];
        inner.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        inner.extend_from_slice(&blob::compress(&payload).unwrap());
        let frame = raw_frame("exec", 5, &inner);
        assert_eq!(open_payload("exec", 5, &frame, None).unwrap().1, payload);
        let d = decode("exec", 5, &frame).unwrap();
        assert!(matches!(d.event, Event::Save(ref h) if h.delta_base == Some(3)));
    }

    /// A dictionary frame whose length or data is damaged (with a valid checksum, as a bug
    /// or a hostile writer would make it) is corrupt; unknown flags say to upgrade.
    #[test]
    fn damaged_dictionary_frames_are_corrupt() {
        let payload = langgraph_like_payload();
        let good = seal("exec", 5, FORMAT_COMPACT, payload.clone(), None).unwrap();
        let inner = &good[1..good.len() - CHECKSUM_LEN];
        let mut longer = vec![FLAG_ZSTD_DICT];
        put_varint(&mut longer, payload.len() as u64 + 1);
        longer.extend_from_slice(&inner[1 + varint_len(payload.len() as u64)..]);
        let cut = &inner[..inner.len() - 3];
        for bad in [
            longer,
            cut.to_vec(),
            vec![FLAG_ZSTD_DICT, 0xff, 0xff],
            vec![FLAG_ZSTD_DICT],
            vec![
                FLAG_ZSTD_DICT,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x01,
            ],
        ] {
            let err = decode("exec", 5, &raw_frame("exec", 5, &bad)).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
        }
        let err = decode("exec", 5, &raw_frame("exec", 5, &[8, 1, 2])).unwrap_err();
        assert!(err.to_string().contains("upgrade ckpt"), "{err}");
    }

    fn varint_len(v: u64) -> usize {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out.len()
    }

    #[test]
    fn frames_are_bound_to_their_place_and_flips_are_caught() {
        let frame = encode_delete("exec", 3, 2).unwrap();
        assert_eq!(decode("exec", 3, &frame).unwrap().event, Event::Delete(2));
        assert!(decode("exec", 4, &frame).unwrap_err().is_corrupt());
        assert!(decode("exex", 3, &frame).unwrap_err().is_corrupt());
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 1;
            assert!(decode("exec", 3, &bad).unwrap_err().is_corrupt());
        }
        assert_eq!(
            decode("e", 1, &encode_clear("e", 1).unwrap())
                .unwrap()
                .event,
            Event::Clear
        );
        for owner in [None, Some(u64::MAX)] {
            let mark = GcMark {
                begin: true,
                time_us: 7,
                lease_us: 9,
                owner,
            };
            let frame = encode_gc("g", 2, mark).unwrap();
            assert_eq!(decode("g", 2, &frame).unwrap().event, Event::Gc(mark));
        }
        let mark = GcMark {
            begin: true,
            time_us: 7,
            lease_us: 9,
            owner: None,
        };
        let frame = encode_gc("g", 2, mark).unwrap();
        assert!(decode("g", 3, &frame).unwrap_err().is_corrupt());
    }
}
