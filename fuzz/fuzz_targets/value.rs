//! State values as read from storage: `value::decode`, then `value::to_json`. Must never panic;
//! a decoded value must encode to bytes that decode again.

#![no_main]

use ckpt::codec::value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = value::decode(data) else { return };
    let json = value::to_json(&v);
    let _ = serde_json::to_string(&json);
    let encoded = value::encode(&v);
    assert!(
        value::decode(&encoded).is_ok(),
        "a decoded value does not decode after encoding"
    );
});
