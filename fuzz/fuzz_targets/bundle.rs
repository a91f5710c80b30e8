//! Bundle files (`ckpt import` streams them from users): `Bundle::read_from` must never panic
//! and must check any split of the input into reads alike, and a decoded bundle must encode to
//! bytes that decode to the same bundle.

#![no_main]

use std::io::Read;

use ckpt::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

/// `data` handed out at most `step` bytes per read, as a pipe or a socket would.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = Bundle::read_from(data);
    let step = 1 + data.first().map_or(0, |b| usize::from(*b % 7));
    let pieces = Bundle::read_from(Pieces { data, step });
    assert_eq!(
        whole.as_ref().ok(),
        pieces.as_ref().ok(),
        "the split of the input changed the outcome"
    );
    if let Ok(bundle) = whole {
        let again = Bundle::decode(&bundle.encode()).expect("a decoded bundle re-encodes");
        assert_eq!(again, bundle);
    }
});
