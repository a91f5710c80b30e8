//! The model a user sees: [`Checkpoint`], [`CheckpointId`] and metadata.
//!
//! A checkpoint is one saved step of an execution: the state after the step, the node that ran,
//! free-form metadata, and the position the log gave it. Its state is held as a MessagePack value
//! tree (shared, cheap to clone) and decoded into the caller's type on demand.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::value;
use crate::error::{Error, Result};

/// Metadata of a checkpoint: string keys, JSON-like values. Ordered, so output is stable.
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// Longest accepted execution id or node name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Most characters of a user-given name (execution id, node name) that a message shows.
pub const SHOWN_NAME_CHARS: usize = 64;

/// Checks an execution id: 1 to 256 bytes, no control characters.
pub fn validate_execution_id(id: &str) -> Result<()> {
    validate_name("execution id", id)
}

pub(crate) fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidInput(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidInput(format!(
            "{what} {} is too long; the limit is {MAX_NAME_LEN} bytes",
            quote_name(name)
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "{what} {} contains a control character",
            quote_name(name)
        )));
    }
    Ok(())
}

/// A user-given name (an execution id, a node name, a checkpoint id) as a message shows it:
/// whole when it has at most [`SHOWN_NAME_CHARS`] characters, else its first ones followed by
/// `... (N bytes)`, so that a name pasted by mistake (a whole file, say) does not flood a
/// terminal or a log. Every message that echoes such a name goes through this or
/// [`quote_name`].
///
/// ```
/// use ckpt::checkpoint::shorten;
/// assert_eq!(shorten("exec-1"), "exec-1");
/// let long = "x".repeat(10_000);
/// assert_eq!(shorten(&long), format!("{}... (10000 bytes)", "x".repeat(64)));
/// ```
pub fn shorten(name: &str) -> std::borrow::Cow<'_, str> {
    match name.char_indices().nth(SHOWN_NAME_CHARS) {
        None => std::borrow::Cow::Borrowed(name),
        Some((cut, _)) => format!("{}... ({} bytes)", &name[..cut], name.len()).into(),
    }
}

/// Like [`shorten`], with the shown part quoted and escaped as Rust's `{:?}` would:
/// `"exec-1"`, or `"xxx..."... (10000 bytes)` for a long one.
pub fn quote_name(name: &str) -> String {
    match name.char_indices().nth(SHOWN_NAME_CHARS) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &name[..cut], name.len()),
    }
}

/// The identity of a saved checkpoint: its execution and the version the log assigned.
///
/// Written `EXECUTION@VERSION` (`exec-1@17`): readable in a terminal, parsed back with
/// [`str::parse`]. The execution id may itself contain `@`; the version follows the last one.
/// Loading by id reads one event of one execution, so no global index is needed.
///
/// ```
/// use ckpt::CheckpointId;
/// let id: CheckpointId = "exec-1@17".parse()?;
/// assert_eq!(id.execution_id(), "exec-1");
/// assert_eq!(id.version(), 17);
/// assert_eq!(id.to_string(), "exec-1@17");
/// # Ok::<(), ckpt::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckpointId {
    execution_id: Arc<str>,
    version: u64,
}

impl CheckpointId {
    /// The id of `version` in `execution_id`. Fails on an invalid execution id.
    pub fn new(execution_id: &str, version: u64) -> Result<Self> {
        validate_execution_id(execution_id)?;
        Ok(Self::new_unchecked(execution_id.into(), version))
    }

    pub(crate) fn new_unchecked(execution_id: Arc<str>, version: u64) -> Self {
        CheckpointId {
            execution_id,
            version,
        }
    }

    /// The execution this checkpoint belongs to.
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// The version (log sequence number) within the execution; 0 for a checkpoint not yet saved.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.execution_id, self.version)
    }
}

impl fmt::Debug for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointId({self})")
    }
}

impl FromStr for CheckpointId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let refuse = |why: &str| {
            Error::InvalidInput(format!(
                "checkpoint id {} {why}; expected EXECUTION@VERSION, e.g. exec-1@17",
                quote_name(s)
            ))
        };
        let (exec, version) = s.rsplit_once('@').ok_or_else(|| refuse("has no '@'"))?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse("has a version that is not a number"));
        }
        let version: u64 = version
            .parse()
            .map_err(|_| refuse("has a version too large"))?;
        CheckpointId::new(exec, version)
    }
}

impl Serialize for CheckpointId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CheckpointId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One step of an execution: its state, the node that produced it, metadata, and (once saved)
/// the identity and position the log gave it.
///
/// ```
/// use ckpt::Checkpoint;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct State { messages: Vec<String>, step: u32 }
///
/// let state = State { messages: vec!["hi".into()], step: 1 };
/// let cp = Checkpoint::new("exec-1", "plan", &state)?.with_metadata("step", 1);
/// assert_eq!(cp.state::<State>()?, state);
/// assert_eq!(cp.state_json()?["messages"][0], "hi");
/// # Ok::<(), ckpt::Error>(())
/// ```
#[derive(Clone)]
pub struct Checkpoint {
    /// `EXECUTION@VERSION`; the version is 0 until the checkpoint is saved.
    pub id: CheckpointId,
    /// The execution (one run of a graph) this checkpoint belongs to.
    pub execution_id: String,
    /// The node (step) that produced this state.
    pub node_name: String,
    /// Free-form metadata: string keys, JSON-like values.
    pub metadata: Metadata,
    /// Assigned by the log on save: strictly increasing within an execution, never reused.
    pub version: u64,
    /// Set by save.
    pub timestamp: SystemTime,
    /// The previous checkpoint of the execution, or the source of a fork.
    pub parent: Option<CheckpointId>,
    pub(crate) state: Arc<rmpv::Value>,
    /// Size in bytes of the state's MessagePack encoding.
    pub(crate) state_size: u64,
}

impl Checkpoint {
    /// A new, unsaved checkpoint of `execution_id` holding `state` (any `Serialize`).
    ///
    /// Fails with [`Error::InvalidInput`] on an empty or over-long execution id or node name, and with
    /// [`Error::Codec`] when the state cannot be encoded.
    pub fn new<S: Serialize + ?Sized>(
        execution_id: &str,
        node_name: &str,
        state: &S,
    ) -> Result<Self> {
        validate_execution_id(execution_id)?;
        validate_name("node name", node_name)?;
        let (state, state_size) = value::from_serialize(state)?;
        Ok(Checkpoint {
            id: CheckpointId::new_unchecked(execution_id.into(), 0),
            execution_id: execution_id.to_owned(),
            node_name: node_name.to_owned(),
            metadata: Metadata::new(),
            version: 0,
            timestamp: SystemTime::UNIX_EPOCH,
            parent: None,
            state: Arc::new(state),
            state_size,
        })
    }

    /// A new, unsaved checkpoint whose state is one MessagePack value given as bytes (from
    /// another language's serializer: Python's, for the LangGraph saver), kept as the value tree
    /// it encodes, so that it is diffed and deduplicated like any state.
    ///
    /// Fails with [`Error::InvalidInput`] on a bad name, bytes that are not one MessagePack
    /// value, nesting deeper than a state may be, or an extension type ckpt reserves.
    pub fn from_msgpack(execution_id: &str, node_name: &str, state: &[u8]) -> Result<Self> {
        let mut cp = Checkpoint::new(execution_id, node_name, &())?;
        let (state, state_size) = value::from_msgpack(state)?;
        cp.state = Arc::new(state);
        cp.state_size = state_size;
        Ok(cp)
    }

    /// The state as MessagePack bytes (what [`Checkpoint::from_msgpack`] takes).
    pub fn state_msgpack(&self) -> Vec<u8> {
        value::encode(&self.state)
    }

    /// Adds (or replaces) a metadata entry.
    pub fn with_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Decodes the state into `T`.
    pub fn state<T: DeserializeOwned>(&self) -> Result<T> {
        decode_as(&self.state, || {
            format!("the state of checkpoint {}", self.id)
        })
    }

    /// The state as JSON (binary becomes an array of numbers, non-string map keys become strings).
    pub fn state_json(&self) -> Result<serde_json::Value> {
        Ok(value::to_json(&self.state))
    }

    /// The state as a MessagePack value tree.
    pub fn state_value(&self) -> &rmpv::Value {
        &self.state
    }

    /// Size in bytes of the state's MessagePack encoding.
    pub fn state_size(&self) -> u64 {
        self.state_size
    }

    /// Checks what a save stores besides the state (the fields are public, so they may have been
    /// changed since [`Checkpoint::new`]): ids and names, and metadata nesting.
    pub(crate) fn validate(&self) -> Result<()> {
        validate_execution_id(&self.execution_id)?;
        validate_name("node name", &self.node_name)?;
        validate_metadata(&self.metadata, || {
            format!("a checkpoint of {:?}", self.execution_id)
        })
    }

    /// Whether this checkpoint has been saved (has a version).
    pub fn is_saved(&self) -> bool {
        self.version > 0
    }
}

/// Decodes a stored value into `T`, naming `what` it is when it does not fit.
fn decode_as<T: DeserializeOwned>(v: &rmpv::Value, what: impl FnOnce() -> String) -> Result<T> {
    value::to_deserialize(v).map_err(|e| match e {
        Error::Codec { source, .. } => Error::Codec {
            context: format!("decoding {} into the requested type", what()),
            source,
        },
        other => other,
    })
}

/// Refuses metadata nested deeper than the codec takes; `owner` names what it belongs to.
fn validate_metadata(metadata: &Metadata, owner: impl Fn() -> String) -> Result<()> {
    for (key, v) in metadata {
        if value::json_depth(v) > value::MAX_DEPTH {
            return Err(Error::InvalidInput(format!(
                "metadata {key:?} of {} is nested deeper than {} levels",
                owner(),
                value::MAX_DEPTH
            )));
        }
    }
    Ok(())
}

/// A value attached to a checkpoint that is not a checkpoint itself: a task's pending write, a
/// journaled task result, an interrupt or its answer. Stored as its own event in the
/// execution's log (through the same codec as states: deduplicated, compressed, encrypted),
/// listed by [`crate::Store::writes`], never counted by `list`, `history` or `executions`, and
/// reclaimed with the checkpoint it belongs to.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ckpt::Error> {
/// use ckpt::{Checkpoint, Store, Write};
/// let store = Store::memory();
/// let cp = store.save(Checkpoint::new("run", "plan", &1)?).await?;
/// store.put_writes(&cp.id, vec![Write::new("tools", "result", &"42")?]).await?;
/// let writes = store.writes(&cp.id).await?;
/// assert_eq!(writes[0].value::<String>()?, "42");
/// assert_eq!(store.list("run").await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq)]
pub struct Write {
    /// The task that wrote it (a node, a branch, a task id).
    pub task: String,
    /// What it is: a channel name, or one of the graph runtime's own kinds.
    pub channel: String,
    /// Free-form metadata: string keys, JSON-like values.
    pub metadata: Metadata,
    /// Its sequence number in the execution's log (0 until stored); writes of one checkpoint
    /// are listed in this order.
    pub seq: u64,
    /// Set when stored.
    pub timestamp: SystemTime,
    pub(crate) value: Arc<rmpv::Value>,
    pub(crate) value_size: u64,
}

impl Write {
    /// A new, unstored write of `value` (any `Serialize`) by `task` to `channel`.
    ///
    /// Fails with [`Error::InvalidInput`] on an empty or over-long task or channel, and with
    /// [`Error::Codec`] when the value cannot be encoded.
    pub fn new<T: Serialize + ?Sized>(task: &str, channel: &str, value: &T) -> Result<Self> {
        validate_name("task", task)?;
        validate_name("channel", channel)?;
        let (value, value_size) = value::from_serialize(value)?;
        Ok(Write {
            task: task.to_owned(),
            channel: channel.to_owned(),
            metadata: Metadata::new(),
            seq: 0,
            timestamp: SystemTime::UNIX_EPOCH,
            value: Arc::new(value),
            value_size,
        })
    }

    /// Adds (or replaces) a metadata entry.
    pub fn with_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// A new, unstored write whose value is one MessagePack value given as bytes (see
    /// [`Checkpoint::from_msgpack`]).
    pub fn from_msgpack(task: &str, channel: &str, value: &[u8]) -> Result<Self> {
        let mut w = Write::new(task, channel, &())?;
        let (value, value_size) = value::from_msgpack(value)?;
        w.value = Arc::new(value);
        w.value_size = value_size;
        Ok(w)
    }

    /// The value as MessagePack bytes.
    pub fn value_msgpack(&self) -> Vec<u8> {
        value::encode(&self.value)
    }

    /// Decodes the value into `T`.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T> {
        decode_as(&self.value, || {
            format!(
                "the value of write {} (task {:?}, channel {:?})",
                self.seq, self.task, self.channel
            )
        })
    }

    /// The value as JSON.
    pub fn value_json(&self) -> serde_json::Value {
        value::to_json(&self.value)
    }

    /// The value as a MessagePack value tree.
    pub fn value_tree(&self) -> &rmpv::Value {
        &self.value
    }

    /// Size in bytes of the value's MessagePack encoding.
    pub fn value_size(&self) -> u64 {
        self.value_size
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_name("task", &self.task)?;
        validate_name("channel", &self.channel)?;
        validate_metadata(&self.metadata, || {
            format!("a write of task {:?}", self.task)
        })
    }
}

impl fmt::Debug for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Write")
            .field("task", &self.task)
            .field("channel", &self.channel)
            .field("seq", &self.seq)
            .field("metadata", &self.metadata)
            .field("value_size", &self.value_size)
            .finish()
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("id", &self.id)
            .field("node_name", &self.node_name)
            .field("metadata", &self.metadata)
            .field("timestamp", &self.timestamp)
            .field("parent", &self.parent)
            .field("state_size", &self.state_size)
            .finish()
    }
}

/// Equal when identity, headers and state are equal.
impl PartialEq for Checkpoint {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.execution_id == other.execution_id
            && self.node_name == other.node_name
            && self.metadata == other.metadata
            && self.version == other.version
            && self.timestamp == other.timestamp
            && self.parent == other.parent
            && self.state == other.state
    }
}

/// A checkpoint without its state, as [`crate::Store::history`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointHeader {
    /// `EXECUTION@VERSION`.
    pub id: CheckpointId,
    /// The execution.
    pub execution_id: String,
    /// The node that produced the state.
    pub node_name: String,
    /// The checkpoint's metadata.
    pub metadata: Metadata,
    /// The version.
    pub version: u64,
    /// When it was saved.
    pub timestamp: SystemTime,
    /// The previous checkpoint, or the fork source.
    pub parent: Option<CheckpointId>,
    /// Size of the state's MessagePack encoding.
    pub state_size: u64,
    /// Bytes of its log frame (long values live in shared blobs and are not counted).
    pub stored_size: u64,
}
