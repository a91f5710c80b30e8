//! `ckpt keygen`, encrypted stores through `?key_env=`, and `ckpt rekey`, on the real binary and
//! a real sled store.
#![cfg(feature = "sled")]

use std::process::Output;

mod common;

use common::cli::ckpt;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn keygen() -> String {
    let out = ckpt(&["keygen", "--quiet"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    key
}

#[test]
fn an_encrypted_store_needs_its_key_and_rekey_retires_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let base = format!("sled://{}", path.display());
    let (k1, k2) = (keygen(), keygen());
    assert_ne!(k1, k2);
    let env = [("CKPT_K1", k1.as_str()), ("CKPT_K2", k2.as_str())];
    let with = |vars: &str| format!("{base}?key_env={vars}");

    let out = ckpt(&["--store", &with("CKPT_K1"), "demo"], &env);
    assert!(out.status.success(), "{}", text(&out));

    // Without the key: refused, and no key in any message.
    let out = ckpt(&["--store", &base, "executions"], &env);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("encrypted"), "{msg}");
    assert!(!msg.contains(&k1) && !msg.contains(&k2), "{msg}");

    // Rekey with the new key first, then the old one can go.
    let out = ckpt(
        &["--store", &with("CKPT_K2,CKPT_K1"), "rekey", "--json"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["frames"].as_u64().unwrap() > 0, "{report}");
    assert!(report["blobs"].is_u64(), "{report}");

    let out = ckpt(&["--store", &with("CKPT_K2"), "verify"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = ckpt(&["--store", &with("CKPT_K1"), "executions"], &env);
    assert!(
        !out.status.success(),
        "the old key alone still opens the store"
    );
    let msg = text(&out);
    assert!(!msg.contains(&k1) && !msg.contains(&k2), "{msg}");
}

/// An encrypted store's export stays sealed; a store with one of its keys imports it (and then
/// needs only its own key); `ckpt copy` re-seals for a target with a key of its own; nothing
/// moves into a plaintext store. On SQLite files, through the real binary.
#[test]
fn encrypted_executions_move_between_stores_sealed() {
    const SECRET: &str = "SECRET-transfer-4471-never-in-clear";
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, k3) = (keygen(), keygen(), keygen());
    let env = [
        ("CKPT_K1", k1.as_str()),
        ("CKPT_K2", k2.as_str()),
        ("CKPT_K3", k3.as_str()),
    ];
    let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let keyed = |name: &str, vars: &str| format!("{}?key_env={vars}", db(name));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = |url: String, keys: &[&str]| {
        let keys: Vec<ckpt::crypto::Key> = keys
            .iter()
            .map(|k| ckpt::crypto::Key::from_hex(k).unwrap())
            .collect();
        rt.block_on(async move {
            let mut b = ckpt::Store::builder(&url);
            if let Some((first, rest)) = keys.split_first() {
                b = b.encryption(first.clone());
                for k in rest {
                    b = b.decryption_key(k.clone());
                }
            }
            b.open().await.unwrap()
        })
    };
    let state = serde_json::json!({ "note": format!("{SECRET} {}", "z".repeat(600)), "n": 1 });
    {
        let source = open(db("a.db"), &[&k1]);
        rt.block_on(source.save(ckpt::Checkpoint::new("run", "n", &state).unwrap()))
            .unwrap();
    }
    let latest = |store: &ckpt::Store| {
        rt.block_on(store.latest("run"))
            .unwrap()
            .expect("run")
            .state_json()
            .unwrap()
    };

    let bundle = dir.path().join("run.ckpt");
    let out = ckpt(
        &[
            "--store",
            &keyed("a.db", "CKPT_K1"),
            "export",
            "--all",
            "-o",
            bundle.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("sealed"), "{}", text(&out));
    let bytes = std::fs::read(&bundle).unwrap();
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the bundle holds the secret in clear"
    );

    // A plaintext store refuses it, and is left empty.
    let out = ckpt(
        &[
            "--store",
            &db("plain.db"),
            "import",
            bundle.to_str().unwrap(),
        ],
        &env,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("encrypted"), "{}", text(&out));

    // A store whose own key is K2, given K1 to open the bundle; afterwards K2 alone opens it.
    let out = ckpt(
        &[
            "--store",
            &keyed("b.db", "CKPT_K2,CKPT_K1"),
            "import",
            bundle.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(latest(&open(db("b.db"), &[&k2])), state);

    // copy into a store with a key of its own: the target never needs K1.
    let out = ckpt(
        &[
            "copy",
            "--from",
            &keyed("a.db", "CKPT_K1"),
            "--to",
            &keyed("c.db", "CKPT_K3"),
            "--all",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(latest(&open(db("c.db"), &[&k3])), state);
    let c_bytes = std::fs::read(dir.path().join("c.db")).unwrap();
    assert!(!c_bytes
        .windows(SECRET.len())
        .any(|w| w == SECRET.as_bytes()));

    // Never from encryption into plaintext.
    let out = ckpt(
        &[
            "copy",
            "--from",
            &keyed("a.db", "CKPT_K1"),
            "--to",
            &db("plain2.db"),
            "--all",
        ],
        &env,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("encrypted"), "{}", text(&out));
}

/// `?key_env=` naming no variable (empty, or an empty name in the list) is refused before
/// anything is opened: it used to open the store without a key, so a new store became a
/// plaintext one the user meant to encrypt.
#[test]
fn an_empty_key_env_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let key = keygen();
    for query in ["?key_env=", "?key_env=CKPT_KEY,", "?key_env=,CKPT_KEY"] {
        let url = format!("{}{query}", store.display());
        let out = ckpt(
            &["--store", &url, "demo", "--steps", "1"],
            &[("CKPT_KEY", &key)],
        );
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{query}: {all}");
        assert!(
            all.contains("key_env names no environment variable"),
            "{query}: {all}"
        );
        assert!(!store.exists(), "{query}: a store was created");
    }
}
