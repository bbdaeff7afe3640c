//! POSIX ACL xattr decoding (`system.posix_acl_access`/`_default`, set by file owners):
//! any bytes, no panic; a decoded ACL answers effective-permission questions.
#![no_main]

use gocache_warden::acl::Acl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(acl) = Acl::decode(data) {
        let _ = acl.group_effective(0);
        let _ = acl.group_effective(u32::MAX);
    }
});
