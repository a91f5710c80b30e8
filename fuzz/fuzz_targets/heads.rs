//! The sled backend's heads file as read back at open: `heads::parse` of any bytes. Must never
//! panic; parsing a prefix of a file never yields more heads than the whole file.

#![no_main]

use ckpt::backend::heads;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = heads::parse(data);
    let half = heads::parse(&data[..data.len() / 2]);
    assert!(half.heads.len() <= parsed.heads.len());
});
