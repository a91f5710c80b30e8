//! The backend's search table ([`SearchTable`]): byte order, prefixes, `after`, limits, writes
//! all or nothing with deletes first, and entries kept out of the logs, blobs and records.

use std::collections::BTreeMap;

use crate::backend::{Backend, SearchTable};
use crate::testing::helpers::must;
use crate::testing::Harness;

/// Every key under `root` this scenario writes, as suffixes: bytes 0x00 and 0xff in every
/// position, keys that are prefixes of each other, and `root` itself (the empty suffix).
const SUFFIXES: [&[u8]; 14] = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\xff",
    b"\x01",
    b"a",
    b"a\x00",
    b"a\xff",
    b"ab",
    b"b",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
    b"\xff\xff\xff",
];

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

/// What the logs, blobs and records hold, sorted: writing the index must change none of it.
async fn listings(backend: &dyn Backend, name: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut logs = must(backend.list_logs().await, format!("[{name}] list_logs"));
    logs.sort();
    let mut blobs: Vec<String> = must(backend.list_blobs().await, format!("[{name}] list_blobs"))
        .iter()
        .map(|h| format!("{h:02x?}"))
        .collect();
    blobs.sort();
    let mut records = match backend.capabilities().side_table {
        Some(side) => must(
            side.scan_records("").await,
            format!("[{name}] scan_records"),
        )
        .into_iter()
        .map(|(k, _)| k)
        .collect(),
        None => Vec::new(),
    };
    records.sort();
    (logs, blobs, records)
}

async fn scan(
    table: &dyn SearchTable,
    name: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    must(
        table.scan_index(prefix, after, limit).await,
        format_args!("[{name}] scan_index({prefix:02x?}, {after:02x?}, {limit})"),
    )
}

/// The entries of `model` (the expected table, under `root`) that start with `prefix` and are
/// greater than `after`, in order, at most `limit`.
fn expected(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// [`SearchTable`] as its contract says: keys ordered by their bytes (0x00 and 0xff included,
/// a prefix before its extensions), `prefix` and `after` (exclusive, also below or above the
/// prefix) and `limit` honoured, paging by `after` covering every entry once, a put replacing
/// a value, deletes applied before the puts of the same call, gets in the order asked,
/// `index_size` counting entries and key plus value bytes, `clear_index` emptying the table,
/// and no entry showing in the logs, blobs or derived records.
pub async fn search_table_keeps_keys_in_order(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let backend = store.backend().as_ref();
    let table = backend.capabilities().search_table.unwrap_or_else(|| {
        panic!("[{name}] the backend offers no search table (Capabilities::search_table)")
    });
    let before = listings(backend, name).await;
    let (entries0, bytes0) = must(table.index_size().await, format!("[{name}] index_size"));

    // Under a root of its own (starting with 0xff 0xff, so that a prefix of 0xff bytes alone,
    // which has no end, scans it), in case the store keeps entries of its own.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let root = cat(b"\xff\xffsearch-table-", &nanos.to_be_bytes());
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // Written in an order that is not the keys' (reversed halves), over two calls.
    let mut puts: Vec<(Vec<u8>, Vec<u8>)> = SUFFIXES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Values are bytes too, an empty one among them.
            let value = if i == 3 {
                Vec::new()
            } else {
                cat(&[0, 0xff, i as u8], s)
            };
            (cat(&root, s), value)
        })
        .collect();
    puts.reverse();
    puts.rotate_left(5);
    let second = puts.split_off(7);
    for call in [puts, second] {
        model.extend(call.iter().cloned());
        must(
            table.write_index(call, Vec::new()).await,
            format!("[{name}] write_index"),
        );
    }
    let all = expected(&model, &root, None, usize::MAX);
    assert_eq!(all.len(), SUFFIXES.len(), "[{name}] model");
    let got = scan(table, name, &root, None, 1000).await;
    assert_eq!(got, all, "[{name}] every entry, in byte order");

    // A prefix of 0xff bytes only (it has no end): everything under the root, in order.
    let ff = scan(table, name, b"\xff\xff", None, 100_000).await;
    assert!(
        ff.windows(2).all(|w| w[0].0 < w[1].0)
            && ff.iter().all(|(k, _)| k.starts_with(b"\xff\xff")),
        "[{name}] a prefix of 0xff bytes: {ff:?}"
    );
    let under_root: Vec<_> = ff
        .into_iter()
        .filter(|(k, _)| k.starts_with(&root))
        .collect();
    assert_eq!(under_root, all, "[{name}] a prefix of 0xff bytes");

    // Prefixes: each suffix of one or two bytes as a prefix, and one that matches nothing.
    for p in [
        &b"\x00"[..],
        b"\x00\x00",
        b"\x01",
        b"a",
        b"a\x00",
        b"b",
        b"\xff",
        b"\xff\xff",
        b"c",
        b"\x02",
    ] {
        let prefix = cat(&root, p);
        let got = scan(table, name, &prefix, None, 1000).await;
        assert_eq!(
            got,
            expected(&model, &prefix, None, usize::MAX),
            "[{name}] prefix {p:02x?}"
        );
    }

    // `after`: exclusive, a key present or not, below the prefix (ignored), equal to it, and
    // past it (nothing).
    let a = cat(&root, b"a");
    for (after, what) in [
        (cat(&root, b"a"), "the prefix itself"),
        (cat(&root, b"a\x00"), "a key present"),
        (cat(&root, b"a\x00\x00"), "a key absent"),
        (cat(&root, b"\x00\xff"), "below the prefix"),
        (root.clone(), "a shorter key below the prefix"),
        (cat(&root, b"a\xff\xff"), "between the last key and the end"),
        (cat(&root, b"b"), "past the prefix"),
    ] {
        let got = scan(table, name, &a, Some(&after), 1000).await;
        assert_eq!(
            got,
            expected(&model, &a, Some(&after), usize::MAX),
            "[{name}] after {what}"
        );
    }
    let got = scan(table, name, &root, Some(&cat(&root, b"\x00")), 1000).await;
    assert_eq!(
        got,
        expected(&model, &root, Some(&cat(&root, b"\x00")), usize::MAX),
        "[{name}] after 0x00 under the root"
    );

    // `limit`: the first entries; paging by `after` reads every entry once, in order.
    assert!(
        scan(table, name, &root, None, 0).await.is_empty(),
        "[{name}] limit 0"
    );
    let got = scan(table, name, &root, None, 3).await;
    assert_eq!(got, expected(&model, &root, None, 3), "[{name}] limit 3");
    for page in [1, 2, 5] {
        let mut read = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let got = scan(table, name, &root, after.as_deref(), page).await;
            assert!(
                got.len() <= page,
                "[{name}] a page of {page}: {}",
                got.len()
            );
            let Some((last, _)) = got.last() else { break };
            after = Some(last.clone());
            read.extend(got);
        }
        assert_eq!(read, all, "[{name}] pages of {page}");
    }

    // A put replaces a value; deletes come before the puts of the same call; deleting a key
    // that is not there is no error; an empty call changes nothing.
    let (k_a, k_ab, k_b, k_ff) = (
        cat(&root, b"a"),
        cat(&root, b"ab"),
        cat(&root, b"b"),
        cat(&root, b"\xff\xff\xff"),
    );
    must(
        table
            .write_index(vec![(k_a.clone(), b"replaced".to_vec())], Vec::new())
            .await,
        format!("[{name}] replace"),
    );
    model.insert(k_a.clone(), b"replaced".to_vec());
    must(
        table
            .write_index(
                vec![(k_b.clone(), b"put after its delete".to_vec())],
                vec![k_b.clone(), k_ab.clone(), k_ff.clone(), cat(&root, b"zz")],
            )
            .await,
        format!("[{name}] deletes and puts"),
    );
    model.insert(k_b.clone(), b"put after its delete".to_vec());
    model.remove(&k_ab);
    model.remove(&k_ff);
    must(
        table.write_index(Vec::new(), Vec::new()).await,
        format!("[{name}] an empty write"),
    );
    let got = scan(table, name, &root, None, 1000).await;
    assert_eq!(
        got,
        expected(&model, &root, None, usize::MAX),
        "[{name}] after a replace and deletes"
    );

    // Gets, in the order asked, present and absent alike.
    let asked = vec![
        k_b.clone(),
        cat(&root, b"missing"),
        cat(&root, b"\x00"),
        k_ab.clone(),
        k_a.clone(),
        cat(&root, b"\x00\xff"),
    ];
    let got = must(table.get_index(&asked).await, format!("[{name}] get_index"));
    let want: Vec<Option<Vec<u8>>> = asked.iter().map(|k| model.get(k).cloned()).collect();
    assert_eq!(got, want, "[{name}] get_index");
    assert!(
        must(table.get_index(&[]).await, format!("[{name}] get nothing")).is_empty(),
        "[{name}] get of no key"
    );

    // Sizes: entries, and key plus value bytes.
    let (entries, bytes) = must(table.index_size().await, format!("[{name}] index_size"));
    let want_bytes: u64 = model.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    assert_eq!(
        (entries - entries0, bytes - bytes0),
        (model.len() as u64, want_bytes),
        "[{name}] index_size"
    );

    // Nothing of it in the logs, blobs or records.
    assert_eq!(
        listings(backend, name).await,
        before,
        "[{name}] index entries listed as logs, blobs or records"
    );

    // Cleared: nothing left, and the table still works.
    must(table.clear_index().await, format!("[{name}] clear_index"));
    assert_eq!(
        must(table.index_size().await, format!("[{name}] index_size")),
        (0, 0),
        "[{name}] size after clear_index"
    );
    assert!(
        scan(table, name, b"", None, 1000).await.is_empty(),
        "[{name}] entries after clear_index"
    );
    must(
        table
            .write_index(vec![(k_a.clone(), b"again".to_vec())], Vec::new())
            .await,
        format!("[{name}] write after clear"),
    );
    assert_eq!(
        must(
            table.get_index(std::slice::from_ref(&k_a)).await,
            format!("[{name}] get")
        ),
        vec![Some(b"again".to_vec())],
        "[{name}] a write after clear_index"
    );
    must(table.clear_index().await, format!("[{name}] clear_index"));
}
