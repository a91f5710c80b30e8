//! How the API shows checkpoints: headers with the marks a timeline needs, and states as JSON
//! trees in which binary is its size and hash (the page shows bytes as that, never as numbers).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use ckpt::{Checkpoint, CheckpointHeader, CheckpointId};

/// The channel a graph step's failure is written to (`ckpt::graph`'s `ERROR`).
const ERROR_CHANNEL: &str = "__error__";

/// Per version, the channels of its pending writes (from [`ckpt::Store::write_heads`]).
pub(crate) type WriteMarks = HashMap<u64, Vec<String>>;

/// Groups write heads by version.
pub(crate) fn write_marks(heads: Vec<(u64, String, String)>) -> WriteMarks {
    let mut out: WriteMarks = HashMap::new();
    for (version, _task, channel) in heads {
        out.entry(version).or_default().push(channel);
    }
    out
}

/// A time as RFC 3339 in UTC with microseconds: `2026-12-04T16:39:19.123456Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let utc = super::super::fmt::utc(t);
    // `fmt::utc` gives `YYYY-MM-DD HH:MM:SS.mmm`; keep its date and time, add micros.
    let date_time = utc.get(..19).unwrap_or("1970-01-01 00:00:00");
    format!(
        "{}T{}.{:06}Z",
        &date_time[..10],
        &date_time[11..],
        since.subsec_micros()
    )
}

/// Microseconds since the Unix epoch.
pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn id_json(id: &CheckpointId) -> Value {
    json!({
        "execution_id": id.execution_id(),
        "version": id.version(),
        "id": id.to_string(),
    })
}

/// The parts of a header the API shows, from a header or a loaded checkpoint.
pub(crate) struct Head<'a> {
    pub id: &'a CheckpointId,
    pub node: &'a str,
    pub timestamp: SystemTime,
    pub metadata: &'a ckpt::Metadata,
    pub parent: Option<&'a CheckpointId>,
    pub state_size: u64,
    pub stored_size: u64,
}

impl<'a> From<&'a CheckpointHeader> for Head<'a> {
    fn from(h: &'a CheckpointHeader) -> Self {
        Head {
            id: &h.id,
            node: &h.node_name,
            timestamp: h.timestamp,
            metadata: &h.metadata,
            parent: h.parent.as_ref(),
            state_size: h.state_size,
            stored_size: h.stored_size,
        }
    }
}

impl<'a> From<&'a Checkpoint> for Head<'a> {
    fn from(cp: &'a Checkpoint) -> Self {
        Head {
            id: &cp.id,
            node: &cp.node_name,
            timestamp: cp.timestamp,
            metadata: &cp.metadata,
            parent: cp.parent.as_ref(),
            state_size: cp.state_size(),
            stored_size: 0,
        }
    }
}

impl Head<'_> {
    /// The header as `API.md` describes it, marked from `marks`.
    pub(crate) fn to_json(&self, marks: &WriteMarks) -> Value {
        let channels = marks.get(&self.id.version());
        json!({
            "id": self.id.to_string(),
            "execution_id": self.id.execution_id(),
            "version": self.id.version(),
            "node": self.node,
            "time": rfc3339(self.timestamp),
            "time_us": micros(self.timestamp),
            "metadata": self.metadata,
            "parent": self.parent.map(id_json),
            "state_size": self.state_size,
            "stored_size": self.stored_size,
            "interrupted": self.metadata.get("interrupted") == Some(&Value::Bool(true)),
            "failed": channels.is_some_and(|c| c.iter().any(|c| c == ERROR_CHANNEL)),
            "writes": channels.map_or(0, Vec::len),
        })
    }
}

/// A state (or write value) as JSON for the page: binary as `{"$binary": {"bytes", "blake3"}}`,
/// non-string map keys as their JSON text, non-finite floats as null.
pub(crate) fn tree(v: &rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Binary(b) => {
            json!({"$binary": {"bytes": b.len(), "blake3": blake3::hash(b).to_hex().as_str()}})
        }
        M::Array(items) => Value::Array(items.iter().map(tree).collect()),
        M::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let key = match k {
                    M::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => ckpt::codec::value::to_json(other).to_string(),
                };
                out.insert(key, tree(v));
            }
            Value::Object(out)
        }
        scalar => ckpt::codec::value::to_json(scalar),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_with_micros() {
        let t = UNIX_EPOCH + Duration::from_micros(1_796_398_759_123_456);
        assert_eq!(rfc3339(t), "2026-12-04T15:39:19.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn binary_is_its_size_and_hash() {
        let v = rmpv::Value::Map(vec![
            (rmpv::Value::from("b"), rmpv::Value::Binary(vec![1, 2, 3])),
            (rmpv::Value::from(7), rmpv::Value::from("x")),
        ]);
        let t = tree(&v);
        assert_eq!(t["b"]["$binary"]["bytes"], 3);
        assert_eq!(
            t["b"]["$binary"]["blake3"],
            blake3::hash(&[1, 2, 3]).to_hex().as_str()
        );
        assert_eq!(t["7"], "x");
    }
}
