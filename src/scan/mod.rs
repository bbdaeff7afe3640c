//! Inspection of caches: an fd-based walk ([`walk`]) feeding visitors, Go's cache layout
//! ([`layout`]), the last-use histogram ([`lru`]) and the inspector that measures a cache and
//! lists its deviations from policy ([`inspect`]). Nothing here changes the filesystem.

pub mod inspect;
pub mod layout;
pub mod lru;
pub mod oldest;
pub mod perms;
pub mod recognize;
pub mod seen;
pub mod units;
pub mod walk;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use inspect::{InspectOptions, Observed};

/// A per-entry deviation from policy or from what a Go cache may contain. Ordered worst
/// first: the report lists them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Violation {
    /// A mount point inside the cache: never entered.
    Mount,
    /// A symlink inside the cache: never followed.
    Symlink,
    /// A regular file with more than one name: may be a file outside the cache.
    Hardlink,
    /// A FIFO, socket or device node.
    Special,
    Group,
    Setgid,
    Acl,
    DefaultAcl,
    OtherAccess,
    ForeignOwner,
    TooDeep,
    Unreadable,
    /// An entry outside Go's layout (a stray file, someone's notes): reported, never
    /// changed, never removed.
    Foreign,
}

impl Violation {
    pub const ALL: [Violation; 13] = [
        Violation::Mount,
        Violation::Symlink,
        Violation::Hardlink,
        Violation::Special,
        Violation::Group,
        Violation::Setgid,
        Violation::Acl,
        Violation::DefaultAcl,
        Violation::OtherAccess,
        Violation::ForeignOwner,
        Violation::TooDeep,
        Violation::Unreadable,
        Violation::Foreign,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Mount => "mount",
            Violation::Symlink => "symlink",
            Violation::Hardlink => "hardlink",
            Violation::Special => "special",
            Violation::Group => "group",
            Violation::Setgid => "setgid",
            Violation::Acl => "acl",
            Violation::DefaultAcl => "default-acl",
            Violation::OtherAccess => "other-access",
            Violation::ForeignOwner => "foreign-owner",
            Violation::TooDeep => "too-deep",
            Violation::Unreadable => "unreadable",
            Violation::Foreign => "foreign",
        }
    }

    /// Can `enforce` bring the entry to policy by itself?
    pub fn fixable(self) -> bool {
        matches!(
            self,
            Violation::Group
                | Violation::Setgid
                | Violation::Acl
                | Violation::DefaultAcl
                | Violation::OtherAccess
        )
    }
}

/// How many entries and how many (allocated) bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

impl Usage {
    pub fn add(&mut self, entries: u64, bytes: u64) {
        self.entries += entries;
        self.bytes += bytes;
    }
}

/// A count with the first few examples (paths relative to the cache root).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub count: u64,
    /// Escaped for display (a name may hold newlines or bytes that are not UTF-8).
    #[serde(serialize_with = "ser_paths")]
    pub examples: Vec<PathBuf>,
}

pub const MAX_EXAMPLES: usize = 5;

impl Tally {
    pub fn note(&mut self, p: PathBuf) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(p);
        }
    }
    pub fn merge(&mut self, o: Tally) {
        self.count += o.count;
        for e in o.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e);
            }
        }
        self.examples.sort();
    }
}

/// Walks the cache at `root` and returns what it found. With `opts.histogram`, the eviction
/// units the walk saw are paired ([`units`]) into the last-use histogram after the walk.
pub fn inspect(
    root: &crate::safefs::Dir,
    policy: &crate::policy::CachePolicy,
    opts: InspectOptions,
) -> Observed {
    let histogram = opts
        .histogram
        .then(|| std::sync::Arc::new(lru::Histogram::default()));
    let pair_budget = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(inspect::MAX_PAIRED));
    // Under a group ACL policy: what an earlier walk of this process saw compliant need not
    // be read again (the `seen` module says why that is sound).
    let grant = perms::Grant::from_policy(policy);
    let acls = grant.gid.is_some() && grant.group_access.is_some();
    let key = (root.st.dev, root.st.ino);
    let seen = if acls {
        seen::lookup(key, &grant)
    } else {
        None
    };
    let started = seen::now();
    let opts_walk = walk::WalkOptions::default();
    let cancel = opts_walk.cancel.clone();
    let visitors = walk::walk(root, opts_walk, || {
        inspect::Inspector::new(
            policy,
            opts,
            histogram.clone(),
            pair_budget.clone(),
            seen.clone(),
        )
    });
    let mut shards = std::collections::HashSet::new();
    let mut units = units::UnitLog::default();
    let mut obs = Observed {
        last_use_signal: opts.last_use,
        ..Observed::default()
    };
    let mut oldest = oldest::Oldest::new(opts.keep_oldest);
    for v in visitors {
        units.absorb(v.units);
        oldest.absorb(v.oldest);
        shards.extend(v.shards);
        obs.merge(v.obs);
    }
    let complete = !cancel.is_cancelled()
        && ![
            Violation::Acl,
            Violation::DefaultAcl,
            Violation::Unreadable,
            Violation::Mount,
            Violation::TooDeep,
        ]
        .iter()
        .any(|v| obs.violations.contains_key(v));
    if acls && complete {
        seen::record(key, grant, started, shards);
    }
    if opts.keep_oldest > 0 {
        obs.oldest = Some(std::sync::Arc::new(oldest.into_sorted()));
    }
    if let Some(h) = &obs.histogram {
        let floor = policy.min_age.as_secs() as i64;
        units.fold(opts.now, floor, h);
        obs.past_max_age = past_max_age(h, policy);
    }
    obs
}

/// Allocated bytes under `root` (the root included), as `du -B1` counts them: a walk that
/// only counts, for re-measuring a cache after eviction.
pub fn allocated_bytes(root: &crate::safefs::Dir) -> u64 {
    #[derive(Default)]
    struct Count(u64);
    impl walk::Visit for Count {
        fn file(&mut self, e: &walk::Entry) {
            self.0 += e.st.alloc;
        }
        fn enter(&mut self, e: &walk::Entry, _dir: &crate::safefs::Dir) -> bool {
            self.0 += e.st.alloc;
            true
        }
    }
    walk::walk(root, walk::WalkOptions::default(), Count::default)
        .iter()
        .map(|c| c.0)
        .sum()
}

/// Evictable units at least `max_age` old and past the floor, from the histogram (the units
/// eviction for age would remove).
pub fn past_max_age(h: &lru::Histogram, policy: &crate::policy::CachePolicy) -> Usage {
    let Some(max) = policy.max_age else {
        return Usage::default();
    };
    let (entries, bytes) = h.at_least((max.as_secs() as i64).max(policy.min_age.as_secs() as i64));
    Usage { entries, bytes }
}

/// Renders a path for humans: control characters and invalid UTF-8 escaped, so a hostile
/// file name cannot forge report lines.
pub fn display_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.chars().any(|c| c.is_control()) || matches!(s, std::borrow::Cow::Owned(_)) {
        format!("{:?}", p.as_os_str())
    } else {
        s.into_owned()
    }
}

fn ser_paths<S: serde::Serializer>(v: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|p| display_path(p)))
}
