//! Export and import: a bundle carries everything to another backend and back, and an encrypted one stays sealed.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use super::gc::save_blobs;
use crate::testing::helpers::{assert_cps_eq, must};
use crate::testing::Harness;
use crate::{Checkpoint, Error, Store};

/// Export to a bundle file's bytes and import into a store on another backend (and back) keeps
/// every checkpoint exactly: ids, versions, timestamps, parents, metadata and states, including
/// a log that gc truncated; importing an execution that exists is refused and changes nothing.
/// An encrypted store's bundle stays sealed: another store with its key imports it, a
/// plaintext store refuses it. Copying into a store with a key of its own re-seals and
/// re-addresses everything.
pub async fn export_import_keeps_everything(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let encrypted = must(store.is_encrypted().await, "is_encrypted");
    let a = save_blobs(&store, "xa", 5).await;
    must(store.delete(&a[0].id).await, "delete");
    must(store.delete(&a[1].id).await, "delete");
    must(store.gc().await, "gc");
    let fork = must(store.fork(&a[3].id, "xb").await, "fork");
    // A log gc truncated: its first frame is no longer sequence 1.
    save_blobs(&store, "xd", 2).await;
    must(store.clear("xd").await, "clear");
    let d = save_blobs(&store, "xd", 2).await;
    must(store.gc().await, "gc");
    assert!(
        store
            .backend()
            .scan("xd", 1, 1)
            .await
            .map(|f| f[0].0)
            .unwrap_or(0)
            > 1,
        "[{name}] gc did not truncate the cleared prefix"
    );
    let execs = ["xa".to_owned(), "xb".to_owned(), "xd".to_owned()];
    let expect_a = must(store.list("xa").await, "list");
    let bytes = must(store.export(&execs).await, "export").encode();
    let bundle = must(crate::bundle::Bundle::decode(&bytes), "decode");
    assert_eq!(
        bundle.sealed_for.is_some(),
        encrypted,
        "[{name}] a bundle is sealed exactly when its store is encrypted"
    );

    // Another store: with the same keys when this one is encrypted (it must open the bundle).
    let other = if encrypted {
        let refused = Store::memory().import(&bundle).await;
        assert!(
            matches!(refused, Err(Error::InvalidInput(_))),
            "[{name}] a plaintext store imported an encrypted bundle: {refused:?}"
        );
        store.with_same_keys(Arc::new(crate::backend::memory::MemoryBackend::new()))
    } else {
        Store::memory()
    };
    let report = must(other.import(&bundle).await, "import");
    assert_eq!(report.executions, 3, "[{name}] {report:?}");
    assert_cps_eq(
        &must(other.list("xd").await, "list"),
        &d,
        format!("[{name}] truncated xd after import"),
    );
    assert_cps_eq(
        &must(other.list("xa").await, "list"),
        &expect_a,
        format!("[{name}] xa after import"),
    );
    assert_cps_eq(
        &must(other.list("xb").await, "list"),
        std::slice::from_ref(&fork),
        format!("[{name}] xb after import"),
    );
    // New saves continue above the imported versions.
    let next = must(
        other
            .save(must(Checkpoint::new("xa", "n", &json!({"after": 1})), "cp"))
            .await,
        "save after import",
    );
    assert!(
        next.version > expect_a.last().map_or(0, |c| c.version),
        "[{name}] version reused"
    );
    assert_eq!(
        next.parent.as_ref(),
        expect_a.last().map(|c| &c.id),
        "[{name}] parent"
    );

    let again = other.import(&bundle).await;
    assert!(
        matches!(again, Err(Error::InvalidInput(_))),
        "[{name}] second import: {again:?}"
    );

    // A copy into a store with a key of its own: sealed and addressed anew, nothing shared.
    let keyed = Store::with_backend_and_keys(
        Arc::new(crate::backend::memory::MemoryBackend::new()),
        vec![crate::crypto::Key::generate()],
    );
    must(store.copy_to(&keyed, &execs).await, "copy_to");
    for (exec, want) in [
        ("xa", &expect_a[..]),
        ("xb", std::slice::from_ref(&fork)),
        ("xd", &d[..]),
    ] {
        assert_cps_eq(
            &must(keyed.list(exec).await, "list"),
            want,
            format!("[{name}] {exec} copied into a keyed store"),
        );
    }
    let source_blobs: HashSet<_> = bundle.blobs.iter().map(|(h, _)| *h).collect();
    let copied = must(keyed.backend().list_blobs().await, "list_blobs");
    assert!(
        !copied.is_empty() && copied.iter().all(|h| !source_blobs.contains(h)),
        "[{name}] the copy kept the source's chunk addresses"
    );

    // And back, into a store on this backend under new names is not possible (names are kept),
    // so clear-free: export from memory a fresh execution and import it here.
    let third = Store::memory();
    let c = save_blobs(&third, "xc", 3).await;
    let bundle = must(third.export(&["xc".to_owned()]).await, "export");
    must(store.import(&bundle).await, "import here");
    assert_cps_eq(
        &must(store.list("xc").await, "list"),
        &c,
        format!("[{name}] xc imported"),
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("xc").await, "list"),
        &c,
        format!("[{name}] xc after reopen"),
    );
}
