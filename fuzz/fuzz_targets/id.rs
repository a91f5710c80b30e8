//! Checkpoint ids typed by users: `str::parse::<CheckpointId>` on UTF-8 input. Must never panic;
//! an id that parses must print as text that parses back to the same id.

#![no_main]

use ckpt::CheckpointId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = text.parse::<CheckpointId>() else {
        return;
    };
    let printed = id.to_string();
    let again: Result<CheckpointId, _> = printed.parse();
    assert_eq!(again.ok(), Some(id), "{printed:?} does not parse back");
});
