//! Store URLs typed by users: `StoreUrl::parse` and `redact` on UTF-8 input. Must never panic.

#![no_main]

use ckpt::url::{redact, StoreUrl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = redact(text);
    match StoreUrl::parse(text) {
        Ok(url) => {
            let _ = format!("{url:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
