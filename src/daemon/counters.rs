//! The cache program's counters, read by the agent after each sweep from every build cache it
//! measured (`gocache-warden-cacheprog.json`, which the program keeps in its user's own
//! cache), as that cache's owner.

use crate::check::CacheReport;
use crate::metrics::{self, CacheKind as MKind};
use crate::policy::CacheKind;

/// The cache program's counters in each build cache of the sweep, read as the cache root's
/// owner (`cacheprog::stats::read_as_owner`: bounded, non-blocking, no symlinks). A cache
/// without a counters file gets zeros, so its series exist before the first build; one whose
/// file cannot be read or parsed is logged and left out (its series keep their last values).
pub fn read_cacheprog(reports: &[CacheReport]) -> Vec<metrics::CacheprogSnapshot> {
    let mut out = Vec::new();
    for r in reports {
        let (Some(path), true, None, CacheKind::Build) = (&r.path, r.exists, &r.refused, r.kind)
        else {
            continue;
        };
        if crate::cancel::Cancel::process().is_cancelled() {
            break;
        }
        // A user agent cannot take another user's identity: caches it does not own (a
        // shared one) have no counters of its user anyway.
        let euid = nix::unistd::geteuid();
        if !euid.is_root()
            && std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .ok()
                != Some(euid.as_raw())
        {
            continue;
        }
        let reading = match crate::cacheprog::stats::read_as_owner(path) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(cache_path = %path.display(), error = %format!("{e:#}"), "cache program counters not read: {e:#}");
                continue;
            }
        };
        let c = reading.counters.unwrap_or_default();
        let user = r.owner_names.get(&reading.uid).cloned().unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(reading.uid))
                .ok()
                .flatten()
                .map_or_else(|| reading.uid.to_string(), |u| u.name)
        });
        out.push(metrics::CacheprogSnapshot {
            path: path.clone(),
            kind: MKind::Build,
            user,
            shared_hits: c.shared_hits,
            shared_hit_bytes: c.shared_hit_bytes,
            own_hits: c.own_hits,
            own_hit_bytes: c.own_hit_bytes,
            misses: c.misses,
            refused_tampered: c.shared_tampered,
            refused_untrusted: c.shared_untrusted,
            puts: c.puts,
            put_bytes: c.put_bytes,
            redirected: c.redirected,
        });
    }
    out
}
