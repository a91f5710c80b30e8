//! The crate's layers, checked from its sources: each module may use only the modules below it
//! (no import loops, nothing reaching past its layer), and the `ckpt` command reaches storage only
//! through `Store`. See ARCHITECTURE.md.
//!
//! A module's uses are the `crate::NAME` paths in its code (comments and unit-test modules left
//! out): what the compiler resolves, whatever the `use` lines look like.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules and what each may use, lowest layer first.
const LAYERS: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("hash", &["error"]),
    ("diff", &[]),
    ("codec", &["error", "hash"]),
    ("crypto", &["error", "hash", "codec"]),
    ("checkpoint", &["error", "codec"]),
    ("bundle", &["error", "hash", "codec", "checkpoint"]),
    ("url", &["error"]),
    ("backend", &["error", "hash", "url"]),
    (
        "store",
        &[
            "error",
            "hash",
            "codec",
            "crypto",
            "checkpoint",
            "bundle",
            "url",
            "backend",
        ],
    ),
    ("fuzzing", &["error", "codec", "crypto", "store"]),
    ("graph", &["error", "hash", "diff", "checkpoint", "store"]),
    ("prebuilt", &["error", "graph", "store"]),
];

/// Inside the codec, what each part may use (ext and value at the bottom; frame at the top).
const CODEC: &[(&str, &[&str])] = &[
    ("ext", &[]),
    ("value", &["ext"]),
    ("seal", &[]),
    ("blob", &["seal"]),
    ("tree", &["blob", "ext", "value"]),
    ("frame", &["seal", "tree", "blob", "value"]),
];

/// Items the crate root re-exports (`pub use MODULE::{ITEM, ...};` in lib.rs), each with its
/// module: `crate::Store` is a use of `store`.
fn root_items() -> BTreeMap<String, String> {
    let lib = code_of(&src().join("lib.rs"));
    let mut items = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in names
            .trim_matches(|c| c == '{' || c == '}' || char::is_whitespace(c))
            .split(',')
        {
            let name = name.trim();
            if !name.is_empty() {
                items.insert(name.to_string(), module.to_string());
            }
        }
    }
    items
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its unit-test module.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names following `prefix` in `code` (`crate::` -> `store`, `codec`, ...).
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    code.match_indices(prefix)
        .map(|(at, _)| {
            code[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The top-level module each file of `src/` belongs to, and the modules it uses.
fn uses_by_module() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let root = root_items();
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src()).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main" | "cli" | "testing") {
            continue;
        }
        let used = uses.entry(module.clone()).or_default();
        for name in paths_after(&code_of(&file), "crate::") {
            let target = root.get(&name).cloned().unwrap_or(name);
            if target != module {
                used.insert(target);
            }
        }
    }
    uses
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, used) in uses_by_module() {
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!("{module}: not in LAYERS (add it to its layer)"));
            continue;
        };
        for target in used {
            if !may.contains(&target.as_str()) {
                wrong.push(format!("{module} uses {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken: {wrong:#?}");
}

#[test]
fn the_layers_have_no_loop() {
    // Each module may only use modules listed before it: a loop cannot be written down.
    for (i, (module, may)) in LAYERS.iter().enumerate() {
        let below: Vec<&str> = LAYERS[..i].iter().map(|(m, _)| *m).collect();
        for target in *may {
            assert!(
                below.contains(target),
                "{module} may use {target}, which is not below it"
            );
        }
    }
    for (i, (part, may)) in CODEC.iter().enumerate() {
        let below: Vec<&str> = CODEC[..i].iter().map(|(m, _)| *m).collect();
        for target in *may {
            assert!(
                below.contains(target),
                "codec::{part} may use {target}, not below it"
            );
        }
    }
}

#[test]
fn the_codec_parts_use_only_the_parts_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = CODEC.iter().copied().collect();
    let mut wrong = Vec::new();
    for (part, may) in &allowed {
        let code = code_of(&src().join("codec").join(format!("{part}.rs")));
        let mut used = paths_after(&code, "super::");
        used.extend(paths_after(&code, "crate::codec::"));
        for target in used {
            if target != *part
                && allowed.contains_key(target.as_str())
                && !may.contains(&target.as_str())
            {
                wrong.push(format!("codec::{part} uses codec::{target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "codec layering broken: {wrong:#?}");
}

#[test]
fn the_command_reaches_storage_only_through_the_store() {
    let mut files = Vec::new();
    rust_files(&src().join("cli"), &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let code = code_of(&file);
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        if code.contains(".backend()") {
            wrong.push(format!("cli/{name} calls store.backend()"));
        }
        for item in paths_after(&code, "ckpt::backend::") {
            // Settings a user passes in, report types the store returns, and the duration
            // parser the URL options use (`retry::parse_duration`): none of them reach storage.
            if !matches!(item.as_str(), "ConnectOptions" | "CompactReport" | "retry") {
                wrong.push(format!("cli/{name} uses ckpt::backend::{item}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the CLI reaches past the store: {wrong:#?}"
    );
}
