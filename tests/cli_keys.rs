//! `ckpt keygen`, encrypted stores through `?key_env=`, and `ckpt rekey`, on the real binary and
//! a real sled store.
#![cfg(feature = "sled")]

use std::process::{Command, Output};

fn ckpt(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
    cmd.args(args).env_remove("CKPT_STORE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ckpt")
}

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
