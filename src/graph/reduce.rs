//! Partial updates and reducers: a node may return an *update* instead of a whole state, and the
//! state says how updates merge into it ([`Reducible`]); dynamic fan-out ([`SendTo`]) runs one
//! task per item, each returning an update, merged in task order.
//!
//! This module owns the runtime's view of a node's input and output: a node is given the state
//! or a [`SendTo`]'s input, and returns a whole state or an update, which the step merges.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::GraphState;
use crate::checkpoint::Write;
use crate::error::BoxError;

/// A state whose nodes may return partial updates, and how those updates merge into it: the
/// state's *reducers*, one per field (replace it, append to a list, add to a number, or any
/// function of the old value and the update).
///
/// Updates returned in the same step by parallel tasks ([`SendTo`]) are applied one by one in the
/// order the tasks were sent, whatever order they finished in, so a list they all append to
/// comes out the same in every run and after every resume.
///
/// ```
/// use ckpt::graph::{reduce, Reducible};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Chat {
///     messages: Vec<String>, // appended to
///     turns: u64,            // added to
///     topic: String,         // replaced
/// }
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct ChatUpdate {
///     messages: Vec<String>,
///     turns: u64,
///     topic: Option<String>,
/// }
///
/// impl Reducible for Chat {
///     type Update = ChatUpdate;
///     fn apply(&mut self, u: ChatUpdate) {
///         reduce::append(&mut self.messages, u.messages);
///         reduce::add(&mut self.turns, u.turns);
///         reduce::replace(&mut self.topic, u.topic);
///     }
///     // A new turn of a finished chat appends the user's message to the conversation.
///     fn merge_input(&mut self, input: Chat) {
///         self.apply(ChatUpdate { messages: input.messages, ..ChatUpdate::default() });
///     }
/// }
///
/// let mut chat = Chat::default();
/// chat.apply(ChatUpdate { messages: vec!["hi".into()], turns: 1, topic: Some("greeting".into()) });
/// chat.apply(ChatUpdate { messages: vec!["hello".into()], turns: 1, topic: None });
/// assert_eq!((chat.messages.len(), chat.turns, chat.topic.as_str()), (2, 2, "greeting"));
/// ```
pub trait Reducible: GraphState {
    /// What a node returns instead of a whole state (usually a struct of the fields it may
    /// change). It is recorded in the log as a pending write, so it must serialize.
    type Update: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// Merges one update into the state.
    fn apply(&mut self, update: Self::Update);

    /// Merges the input of a new run of a finished execution (a new turn of a chat:
    /// [`super::CompiledGraph::invoke`] on an execution that ended) into its last state. By
    /// default the input replaces the state; a chat appends the new messages instead.
    fn merge_input(&mut self, input: Self) {
        *self = input;
    }
}

/// Replaces `field` with `update` when there is one (a field most nodes leave alone; for an
/// `Option` field, [`set`]).
pub fn replace<T>(field: &mut T, update: Option<T>) {
    if let Some(v) = update {
        *field = v;
    }
}

/// Sets an optional `field` to `update` when there is one, and keeps it otherwise.
pub fn set<T>(field: &mut Option<T>, update: Option<T>) {
    if update.is_some() {
        *field = update;
    }
}

/// Appends `update` to `field` (messages, results of parallel tasks).
pub fn append<T>(field: &mut Vec<T>, update: Vec<T>) {
    field.extend(update);
}

/// Adds `update` to `field` (counters, totals).
pub fn add<T: std::ops::AddAssign>(field: &mut T, update: T) {
    *field += update;
}

/// One task of a dynamic fan-out (LangGraph's `Send`): run `node` with `input`. A conditional edge added with
/// [`super::StateGraph::add_send_edges`] returns a list of them, known only at run time (one per
/// item to map over); they all run in the next step, concurrently, each recorded as a pending
/// write when it finishes, and their updates merge in list order.
///
/// The target is a node added with [`super::StateGraph::add_send_node`] (given the input, of
/// the type it declares) or a state node (the input is then a whole state).
#[derive(Clone)]
pub struct SendTo {
    pub(crate) node: String,
    /// The input, MessagePack-encoded; or why it could not be.
    pub(crate) input: Result<Arc<[u8]>, String>,
}

impl std::fmt::Debug for SendTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendTo")
            .field("node", &self.node)
            .field("input_bytes", &self.input.as_ref().map(|b| b.len()))
            .finish()
    }
}

impl SendTo {
    /// Runs `node` with `input` in the next step.
    pub fn new(node: impl Into<String>, input: &(impl Serialize + ?Sized)) -> Self {
        SendTo {
            node: node.into(),
            input: rmp_serde::to_vec_named(input)
                .map(Arc::from)
                .map_err(|e| e.to_string()),
        }
    }

    /// The node it runs.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// What a node is given.
pub(crate) enum NodeInput<S> {
    /// The state (a node reached by an edge).
    State(S),
    /// A [`SendTo`]'s input, encoded.
    Sent(Arc<[u8]>),
}

impl<S: GraphState> NodeInput<S> {
    /// The input as `T`, for node `node`.
    pub(crate) fn decode<T: DeserializeOwned>(
        self,
        node: &str,
        as_state: impl FnOnce(S) -> Result<T, BoxError>,
    ) -> Result<T, BoxError> {
        match self {
            NodeInput::State(s) => as_state(s),
            NodeInput::Sent(bytes) => rmp_serde::from_slice(&bytes).map_err(|e| {
                format!(
                    "the input sent to node {node:?} does not fit the type it takes ({}): {e}",
                    std::any::type_name::<T>()
                )
                .into()
            }),
        }
    }
}

/// What a node returned: a whole state, or an update for the state's reducers.
pub(crate) enum Output<S> {
    State(S),
    Update(Arc<dyn Patch<S>>),
}

impl<S> Clone for Output<S>
where
    S: Clone,
{
    fn clone(&self) -> Self {
        match self {
            Output::State(s) => Output::State(s.clone()),
            Output::Update(u) => Output::Update(u.clone()),
        }
    }
}

impl<S: GraphState> Output<S> {
    /// The state `base` becomes with this output alone.
    pub(crate) fn onto(&self, base: &S) -> S {
        match self {
            Output::State(s) => s.clone(),
            Output::Update(u) => {
                let mut s = base.clone();
                u.apply(&mut s);
                s
            }
        }
    }

    /// `into` after this output alone, consuming it.
    pub(crate) fn apply_to(self, state: &mut S) {
        match self {
            Output::State(s) => *state = s,
            Output::Update(u) => u.apply(state),
        }
    }

    /// The output recorded as a write by `task` on `channel` (metadata `kind`: `state` or
    /// `update`).
    pub(crate) fn write(&self, task: &str, channel: &str) -> Result<Write, crate::Error> {
        Ok(match self {
            Output::State(s) => Write::new(task, channel, s)?.with_metadata("kind", "state"),
            Output::Update(u) => u.write(task, channel)?.with_metadata("kind", "update"),
        })
    }

    /// The output as JSON (an update's own fields, or the whole state).
    pub(crate) fn json(&self) -> serde_json::Value {
        match self {
            Output::State(s) => serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
            Output::Update(u) => u.json(),
        }
    }
}

/// An update whose type the runtime does not name ([`Reducible::Update`] of the state).
pub(crate) trait Patch<S>: Send + Sync {
    fn apply(&self, state: &mut S);
    fn write(&self, task: &str, channel: &str) -> Result<Write, crate::Error>;
    fn json(&self) -> serde_json::Value;
}

/// A [`Reducible::Update`] as a [`Patch`].
pub(crate) struct UpdateOf<S: Reducible>(pub(crate) S::Update);

impl<S: Reducible> Patch<S> for UpdateOf<S> {
    fn apply(&self, state: &mut S) {
        state.apply(self.0.clone());
    }

    fn write(&self, task: &str, channel: &str) -> Result<Write, crate::Error> {
        Write::new(task, channel, &self.0)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

/// Reads a recorded output back: a whole state or an update, as its `kind` says.
pub(crate) type DecodeFn<S> = Arc<dyn Fn(&Write) -> Result<Output<S>, crate::Error> + Send + Sync>;

/// The decoder of a node that returns whole states.
pub(crate) fn state_decoder<S: GraphState>() -> DecodeFn<S> {
    Arc::new(|w: &Write| w.value::<S>().map(Output::State))
}

/// The decoder of a node that returns updates.
pub(crate) fn update_decoder<S: Reducible>() -> DecodeFn<S> {
    Arc::new(|w: &Write| {
        if w.metadata.get("kind").and_then(|k| k.as_str()) == Some("state") {
            return w.value::<S>().map(Output::State);
        }
        w.value::<S::Update>()
            .map(|u| Output::Update(Arc::new(UpdateOf::<S>(u))))
    })
}
