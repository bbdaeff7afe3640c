//! Go action records (`v1 <id> <out> <size> <time>\n`, read from caches users write): any
//! bytes, no panic; an output id found is 64 lowercase hex digits.
#![no_main]

use gocache_warden::scan::layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(out) = layout::action_output(data) {
        assert!(out.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
    }
});
