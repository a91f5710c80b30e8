//! Bundle files (`ckpt import` reads them from users): `Bundle::decode` must never panic, and a
//! decoded bundle must encode to bytes that decode to the same bundle.

#![no_main]

use ckpt::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = Bundle::decode(data) {
        let again = Bundle::decode(&bundle.encode()).expect("a decoded bundle re-encodes");
        assert_eq!(again, bundle);
    }
});
