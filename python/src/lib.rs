//! `ckpt_langgraph._native`: ckpt's [`Store`] for Python, the few operations the LangGraph
//! saver (`ckpt_langgraph.CkptSaver`, in Python) is built on.
//!
//! Every call releases the GIL while it waits on the store (one tokio runtime per process
//! runs the store's futures), so other Python threads run. The `*_async` calls return at once:
//! their future runs on that runtime and hands its outcome to a callback (the saver's async
//! methods pass one that settles an asyncio future through `loop.call_soon_threadsafe`), so the
//! event loop never waits and no worker thread is borrowed. States and write values
//! cross as MessagePack bytes, kept by the store as the value trees they encode (diffed and
//! deduplicated); metadata and headers cross as JSON text.

use std::sync::OnceLock;

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::{json, Value};

use ckpt::{Checkpoint, CheckpointId, HistoryQuery, Metadata, Write};

pyo3::create_exception!(
    _native,
    CkptError,
    PyException,
    "An error of the ckpt store (its message says what failed and where)."
);
pyo3::create_exception!(
    _native,
    NotFoundError,
    CkptError,
    "The checkpoint or execution does not exist (or was deleted or cleared)."
);

/// The runtime every store's futures run on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ckpt")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the ckpt runtime: {e}"))
    })
}

/// A ckpt error as a Python exception, with its causes.
fn raised(e: ckpt::Error) -> PyErr {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    if e.is_not_found() {
        NotFoundError::new_err(message)
    } else {
        CkptError::new_err(message)
    }
}

/// Runs `fut` on the runtime with the GIL released.
fn wait<T: Send>(
    py: Python<'_>,
    fut: impl std::future::Future<Output = ckpt::Result<T>> + Send,
) -> PyResult<T> {
    py.detach(|| runtime().block_on(fut)).map_err(raised)
}

/// Runs `fut` on the runtime without waiting for it; when it ends, calls `done(error, value)`
/// (with the GIL): `error` None and `value` the outcome made Python by `convert`, or `error`
/// the exception. `done` must be safe to call from any thread (the saver passes
/// `functools.partial(loop.call_soon_threadsafe, settle, future)`).
fn spawn_settled<T: Send + 'static>(
    fut: impl std::future::Future<Output = ckpt::Result<T>> + Send + 'static,
    done: Py<PyAny>,
    convert: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) {
    runtime().spawn(async move {
        let outcome = fut.await;
        Python::attach(|py| {
            let called = match outcome.map_err(raised).and_then(|v| convert(py, v)) {
                Ok(value) => done.call1(py, (py.None(), value)),
                Err(e) => done.call1(py, (e.into_value(py), py.None())),
            };
            // The event loop was closed before the call ended: nobody is waiting.
            if let Err(e) = called {
                e.write_unraisable(py, None);
            }
        });
    });
}

fn metadata_of(json_text: &str) -> PyResult<Metadata> {
    serde_json::from_str(json_text)
        .map_err(|e| CkptError::new_err(format!("metadata must be a JSON object: {e}")))
}

fn id(exec: &str, version: u64) -> PyResult<CheckpointId> {
    CheckpointId::new(exec, version).map_err(raised)
}

/// A write as Python reads it: task, channel, metadata as JSON, value as MessagePack bytes,
/// sequence number.
type WriteRow<'py> = (String, String, String, Bound<'py, PyBytes>, u64);

/// A checkpoint with its writes: node, metadata as JSON, state as MessagePack bytes, parent
/// version, writes.
type CheckpointRow<'py> = (
    String,
    String,
    Bound<'py, PyBytes>,
    Option<u64>,
    Vec<WriteRow<'py>>,
);

/// A checkpoint and its writes as the store returned them, before they become Python objects.
struct Loaded {
    checkpoint: Checkpoint,
    writes: Vec<Write>,
}

/// A live checkpoint of `execution` and its writes (what a LangGraph `get_tuple` needs).
async fn load(store: ckpt::Store, execution: String, version: u64) -> ckpt::Result<Loaded> {
    let checkpoint = store.at_version(&execution, version).await?;
    let writes = store.writes(&checkpoint.id).await?;
    Ok(Loaded { checkpoint, writes })
}

fn loaded_row<'py>(py: Python<'py>, loaded: &Loaded) -> CheckpointRow<'py> {
    let cp = &loaded.checkpoint;
    let parent = cp
        .parent
        .as_ref()
        .filter(|p| p.execution_id() == cp.execution_id)
        .map(CheckpointId::version);
    (
        cp.node_name.clone(),
        json!(cp.metadata).to_string(),
        PyBytes::new(py, &cp.state_msgpack()),
        parent,
        loaded.writes.iter().map(|w| write_row(py, w)).collect(),
    )
}

fn loaded_object(py: Python<'_>, loaded: Loaded) -> PyResult<Py<PyAny>> {
    Ok(loaded_row(py, &loaded)
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

/// The store's query for `history`'s arguments.
fn history_query(
    metadata_json: Option<&str>,
    before: Option<u64>,
    limit: Option<usize>,
) -> PyResult<HistoryQuery> {
    let mut q = HistoryQuery::default();
    if let Some(m) = metadata_json {
        for (k, v) in metadata_of(m)? {
            q = q.metadata(k, v);
        }
    }
    if let Some(b) = before {
        q = q.before(b);
    }
    if let Some(n) = limit {
        q = q.limit(n);
    }
    Ok(q)
}

/// `execution`'s headers for `q`, as `history` returns them (JSON text).
async fn headers_json(
    store: ckpt::Store,
    execution: String,
    q: HistoryQuery,
) -> ckpt::Result<String> {
    let headers = store.history(&execution, q).await?;
    let list: Vec<Value> = headers
        .iter()
        .map(|h| {
            json!({
                "version": h.version,
                "node": h.node_name,
                "metadata": h.metadata,
                "parent": h.parent.as_ref().filter(|p| p.execution_id() == execution).map(CheckpointId::version),
                "ts": h.timestamp.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            })
        })
        .collect();
    Ok(Value::Array(list).to_string())
}

fn text_object(py: Python<'_>, text: String) -> PyResult<Py<PyAny>> {
    Ok(text.into_pyobject(py)?.into_any().unbind())
}

fn write_row<'py>(py: Python<'py>, w: &Write) -> WriteRow<'py> {
    (
        w.task.clone(),
        w.channel.clone(),
        json!(w.metadata).to_string(),
        PyBytes::new(py, &w.value_msgpack()),
        w.seq,
    )
}

/// A ckpt store, opened from any URL `ckpt` takes (`sled://PATH`, `sqlite://PATH`,
/// `postgres://...`, `redis://...`, `memory://`; `?key_env=VAR` for an encrypted store).
#[pyclass(frozen, module = "ckpt_langgraph._native")]
struct Store {
    /// None once closed.
    inner: std::sync::RwLock<Option<ckpt::Store>>,
}

impl Store {
    /// The open store (a cheap handle), or an error saying it was closed.
    fn store(&self) -> PyResult<ckpt::Store> {
        self.inner
            .read()
            .map_err(|_| CkptError::new_err("the store's lock was poisoned by a panic"))?
            .clone()
            .ok_or_else(|| CkptError::new_err("the store is closed: open it again"))
    }
}

#[pymethods]
impl Store {
    /// Opens (creating when missing) the store at `url`.
    #[staticmethod]
    fn open(py: Python<'_>, url: &str) -> PyResult<Store> {
        let inner = wait(py, ckpt::Store::open(url))?;
        Ok(Store {
            inner: std::sync::RwLock::new(Some(inner)),
        })
    }

    /// Saves a checkpoint of `execution` whose state is the MessagePack `state`; its parent is
    /// `parent_version` (a live version of the same execution) or, when None, the latest.
    /// Returns its version.
    #[pyo3(signature = (execution, node, metadata_json, state, parent_version=None))]
    fn save(
        &self,
        py: Python<'_>,
        execution: &str,
        node: &str,
        metadata_json: &str,
        state: &[u8],
        parent_version: Option<u64>,
    ) -> PyResult<u64> {
        let mut cp = Checkpoint::from_msgpack(execution, node, state).map_err(raised)?;
        cp.metadata = metadata_of(metadata_json)?;
        let store = &self.store()?;
        let saved = match parent_version {
            Some(v) => {
                let parent = id(execution, v)?;
                wait(py, async move { store.save_with_parent(cp, &parent).await })?
            }
            None => wait(py, store.save(cp))?,
        };
        Ok(saved.version)
    }

    /// A live checkpoint: (node, metadata as JSON, state as MessagePack bytes, parent version
    /// or None). Raises NotFoundError when it is not live.
    fn at_version<'py>(
        &self,
        py: Python<'py>,
        execution: &str,
        version: u64,
    ) -> PyResult<(String, String, Bound<'py, PyBytes>, Option<u64>)> {
        let cp = wait(py, self.store()?.at_version(execution, version))?;
        let parent = cp
            .parent
            .as_ref()
            .filter(|p| p.execution_id() == execution)
            .map(CheckpointId::version);
        Ok((
            cp.node_name.clone(),
            json!(cp.metadata).to_string(),
            PyBytes::new(py, &cp.state_msgpack()),
            parent,
        ))
    }

    /// A live checkpoint and its writes in one call (what a LangGraph `get_tuple` needs):
    /// (node, metadata as JSON, state as MessagePack bytes, parent version or None, writes as
    /// [`Store::writes`] gives them). Raises NotFoundError when it is not live.
    fn checkpoint<'py>(
        &self,
        py: Python<'py>,
        execution: &str,
        version: u64,
    ) -> PyResult<CheckpointRow<'py>> {
        let loaded = wait(py, load(self.store()?, execution.to_owned(), version))?;
        Ok(loaded_row(py, &loaded))
    }

    /// [`Store::checkpoint`] without waiting: returns at once, and calls `done(error, row)`
    /// from the store's thread when the read ends (see the module docs).
    fn checkpoint_async(&self, execution: String, version: u64, done: Py<PyAny>) -> PyResult<()> {
        spawn_settled(load(self.store()?, execution, version), done, loaded_object);
        Ok(())
    }

    /// Headers of live checkpoints, newest first, as JSON text: a list of `{"version", "node",
    /// "metadata", "parent" (a version of this execution or null), "ts" (seconds)}`, filtered
    /// by metadata equality (`metadata_json`, an object), below version `before`, at most
    /// `limit`. No state is read.
    #[pyo3(signature = (execution, metadata_json=None, before=None, limit=None))]
    fn history(
        &self,
        py: Python<'_>,
        execution: &str,
        metadata_json: Option<&str>,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> PyResult<String> {
        let q = history_query(metadata_json, before, limit)?;
        wait(py, headers_json(self.store()?, execution.to_owned(), q))
    }

    /// [`Store::history`] without waiting: calls `done(error, json_text)` when it ends.
    #[pyo3(signature = (execution, metadata_json, before, limit, done))]
    fn history_async(
        &self,
        execution: String,
        metadata_json: Option<&str>,
        before: Option<u64>,
        limit: Option<usize>,
        done: Py<PyAny>,
    ) -> PyResult<()> {
        let q = history_query(metadata_json, before, limit)?;
        spawn_settled(headers_json(self.store()?, execution, q), done, text_object);
        Ok(())
    }

    /// Appends writes to live checkpoint `version`, atomically: each (task, channel, metadata
    /// as JSON, value as MessagePack bytes). Raises NotFoundError when it is not live.
    fn put_writes(
        &self,
        py: Python<'_>,
        execution: &str,
        version: u64,
        writes: Vec<(String, String, String, Vec<u8>)>,
    ) -> PyResult<()> {
        let mut out = Vec::with_capacity(writes.len());
        for (task, channel, metadata, value) in writes {
            let mut w = Write::from_msgpack(&task, &channel, &value).map_err(raised)?;
            w.metadata = metadata_of(&metadata)?;
            out.push(w);
        }
        let cp = id(execution, version)?;
        let store = self.store()?;
        wait(py, async move { store.put_writes(&cp, out).await })?;
        Ok(())
    }

    /// The writes of live checkpoint `version`, oldest first: (task, channel, metadata as JSON,
    /// value as MessagePack bytes, sequence number).
    fn writes<'py>(
        &self,
        py: Python<'py>,
        execution: &str,
        version: u64,
    ) -> PyResult<Vec<WriteRow<'py>>> {
        let cp = id(execution, version)?;
        let store = self.store()?;
        let found = wait(py, async move { store.writes(&cp).await })?;
        Ok(found.iter().map(|w| write_row(py, w)).collect())
    }

    /// Deletes live checkpoint `version` (its writes with it).
    fn delete(&self, py: Python<'_>, execution: &str, version: u64) -> PyResult<()> {
        let cp = id(execution, version)?;
        let store = self.store()?;
        wait(py, async move { store.delete(&cp).await })
    }

    /// Deletes every checkpoint of `execution`.
    fn clear(&self, py: Python<'_>, execution: &str) -> PyResult<()> {
        wait(py, self.store()?.clear(execution))
    }

    /// The ids of the executions with live checkpoints, sorted; those starting with `prefix`
    /// when given.
    #[pyo3(signature = (prefix=None))]
    fn executions(&self, py: Python<'_>, prefix: Option<&str>) -> PyResult<Vec<String>> {
        let all = wait(py, self.store()?.executions())?;
        Ok(all
            .into_iter()
            .filter(|s| s.checkpoints > 0)
            .map(|s| s.execution_id)
            .filter(|e| prefix.is_none_or(|p| e.starts_with(p)))
            .collect())
    }

    /// Waits until everything saved is durable and background work (the search indexer) is
    /// done.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        wait(py, self.store()?.flush())
    }

    /// Flushes and closes the store: a sled store's files are released (another process, or
    /// this one, may open it again) once no call is running. Later calls raise CkptError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self
            .inner
            .write()
            .map_err(|_| CkptError::new_err("the store's lock was poisoned by a panic"))?
            .take();
        match taken {
            Some(store) => wait(py, async move { store.flush().await }),
            None => Ok(()),
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Store>()?;
    m.add("CkptError", m.py().get_type::<CkptError>())?;
    m.add("NotFoundError", m.py().get_type::<NotFoundError>())?;
    // Which profile built this module (the dev profile keeps debug assertions on): a benchmark
    // of a debug build says so.
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    Ok(())
}
