//! The structural difference between two states, shared by `ckpt diff`, `ckpt log -p` and
//! the graph runtime's replay reports.
//!
//! States are compared as JSON values: maps key by key, arrays index by index (the extra elements
//! of the longer array are added or removed paths), anything else by equality. A path is the
//! dot-separated keys and indexes from the root (`messages.3`, `plan.steps.0.done`); a change to
//! the root itself has the empty path, shown as `(root)`.
//!
//! ```
//! use serde_json::json;
//! let d = ckpt::diff::diff_values(&json!({"n": 1, "log": ["a"]}), &json!({"n": 2, "log": ["a", "b"]}));
//! assert_eq!(d.summary(), "1 added, 0 removed, 1 changed");
//! assert_eq!(d.changed[0].0, "n");
//! ```

use serde_json::{json, Value};

/// The differences between two JSON values, in document order (map keys sorted).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// Paths only the new value has, with their values.
    pub added: Vec<(String, Value)>,
    /// Paths only the old value has, with their values.
    pub removed: Vec<(String, Value)>,
    /// Paths both have with different values: (path, old, new).
    pub changed: Vec<(String, Value, Value)>,
}

impl Diff {
    /// Whether the two values were equal.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// `{"added": [{"path", "value"}], "removed": [{"path", "value"}], "changed": [{"path",
    /// "old", "new"}]}`.
    pub fn to_json(&self) -> Value {
        let side = |v: &[(String, Value)]| -> Vec<Value> {
            v.iter()
                .map(|(p, v)| json!({"path": p, "value": v}))
                .collect()
        };
        json!({
            "added": side(&self.added),
            "removed": side(&self.removed),
            "changed": self
                .changed
                .iter()
                .map(|(p, old, new)| json!({"path": p, "old": old, "new": new}))
                .collect::<Vec<_>>(),
        })
    }

    /// One line per difference, for people: `+ path: value`, `- path: value`,
    /// `~ path: old -> new`; long values shortened; coloured when `color`.
    pub fn lines(&self, indent: &str, color: bool) -> Vec<String> {
        let paint = |code: &str, s: String| {
            if color {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s
            }
        };
        let mut out = Vec::new();
        for (p, v) in &self.added {
            let line = format!("+ {}: {}", show_path(p), shorten(v));
            out.push(format!("{indent}{}", paint("32", line)));
        }
        for (p, v) in &self.removed {
            let line = format!("- {}: {}", show_path(p), shorten(v));
            out.push(format!("{indent}{}", paint("31", line)));
        }
        for (p, old, new) in &self.changed {
            let line = format!("~ {}: {} -> {}", show_path(p), shorten(old), shorten(new));
            out.push(format!("{indent}{}", paint("33", line)));
        }
        out
    }

    /// `2 added, 1 removed, 3 changed`.
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} removed, {} changed",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )
    }
}

/// The structural difference from `old` to `new`.
pub fn diff_values(old: &Value, new: &Value) -> Diff {
    let mut diff = Diff::default();
    walk(&mut String::new(), old, new, &mut diff);
    diff
}

fn walk(path: &mut String, old: &Value, new: &Value, diff: &mut Diff) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            // Both maps are sorted by key, so merge them in order.
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let len = path.len();
                push_segment(path, key);
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(path, x, y, diff),
                    (Some(x), None) => diff.removed.push((path.clone(), x.clone())),
                    (None, Some(y)) => diff.added.push((path.clone(), y.clone())),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                push_segment(path, &i.to_string());
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(path, x, y, diff),
                    (Some(x), None) => diff.removed.push((path.clone(), x.clone())),
                    (None, Some(y)) => diff.added.push((path.clone(), y.clone())),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (a, b) if a != b => diff.changed.push((path.clone(), a.clone(), b.clone())),
        _ => {}
    }
}

fn push_segment(path: &mut String, segment: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(segment);
}

/// A path for people: the empty (root) path as `(root)`.
pub fn show_path(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// Longest value shown in full, in characters.
const SHOWN_CHARS: usize = 60;

/// A value as compact JSON, shortened to its first 60 characters and `…(+N chars)` when longer
/// (a string's characters are counted without its quotes).
pub fn shorten(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let total = s.chars().count();
            if total <= SHOWN_CHARS {
                Value::String(s.clone()).to_string()
            } else {
                let head: String = s.chars().take(SHOWN_CHARS).collect();
                format!("{}…(+{} chars)", Value::String(head), total - SHOWN_CHARS)
            }
        }
        other => {
            let s = other.to_string();
            let total = s.chars().count();
            if total <= SHOWN_CHARS {
                s
            } else {
                let head: String = s.chars().take(SHOWN_CHARS).collect();
                format!("{head}…(+{} chars)", total - SHOWN_CHARS)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_maps_arrays_and_scalars() {
        let old =
            json!({"a": 1, "gone": true, "list": [1, 2, 3], "plan": {"steps": [{"done": false}]}});
        let new = json!({"a": 2, "new": "x", "list": [1, 5], "plan": {"steps": [{"done": true}, {"done": false}]}});
        let d = diff_values(&old, &new);
        assert_eq!(
            d.added,
            [
                ("new".to_owned(), json!("x")),
                ("plan.steps.1".to_owned(), json!({"done": false}))
            ]
        );
        assert_eq!(
            d.removed,
            [
                ("gone".to_owned(), json!(true)),
                ("list.2".to_owned(), json!(3))
            ]
        );
        assert_eq!(
            d.changed,
            [
                ("a".to_owned(), json!(1), json!(2)),
                ("list.1".to_owned(), json!(2), json!(5)),
                ("plan.steps.0.done".to_owned(), json!(false), json!(true)),
            ]
        );
        assert!(diff_values(&old, &old).is_empty());
        assert_eq!(diff_values(&json!(1), &json!("1")).changed[0].0, "");
    }

    #[test]
    fn shortens_long_values() {
        let long = "x".repeat(70);
        assert_eq!(
            shorten(&json!(long)),
            format!("\"{}\"…(+10 chars)", "x".repeat(60))
        );
        assert_eq!(shorten(&json!("short")), "\"short\"");
        assert_eq!(shorten(&json!(3)), "3");
    }
}
