//! The sled backend's write-ahead log as read back after a crash: `wal::parse` of a whole file,
//! then `wal::parse_record` of every record it yields, and of the input itself. Must never
//! panic; parsing a prefix of a file never yields more records than the whole file.

#![no_main]

use ckpt::backend::wal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = wal::parse(data);
    for record in &parsed.records {
        let _ = wal::parse_record(record);
    }
    let _ = wal::parse_record(data);
    let half = wal::parse(&data[..data.len() / 2]);
    assert!(half.records.len() <= parsed.records.len());
});
