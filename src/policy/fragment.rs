//! One policy file as written: every field optional, every value with its byte span.
//!
//! A fragment says nothing about what is valid; it only records what a file set and where.
//! Fragments are merged field by field (later files win) and then validated in `policy`.
//! Unknown keys are rejected here (`deny_unknown_fields`) so a typo is an error with its
//! location instead of a silently ignored setting.

use serde::{Deserialize, Deserializer};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// A value as written, with the file it came from (an index into the loader's source list)
/// and its byte span there, so validation can point at `FILE:LINE:COL` after merging.
#[derive(Debug, Clone)]
pub struct L<T> {
    pub value: T,
    pub file: usize,
    pub span: Range<usize>,
}

pub type S<T> = Option<L<T>>;

thread_local! {
    // The file being parsed. Set by `parse` for the duration of one `toml::from_str`, so
    // every `L<T>` learns its file without threading it through serde.
    static CURRENT_FILE: Cell<usize> = const { Cell::new(0) };
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for L<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<T>::deserialize(d)?;
        Ok(L {
            span: s.span(),
            value: s.into_inner(),
            file: CURRENT_FILE.with(Cell::get),
        })
    }
}

/// Parses one policy file's text; `file` is its index in the loader's source list.
pub fn parse(text: &str, file: usize) -> Result<Fragment, toml::de::Error> {
    CURRENT_FILE.with(|c| c.set(file));
    toml::from_str(text)
}

/// A size given either as a TOML integer (bytes) or as a string (`"10GiB"`, `"15%"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Int(i64),
    Str(String),
}

/// `users`: a string (`"all"`, `"@group"`) or a list of user names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UsersValue {
    One(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    pub agent: Option<AgentFragment>,
    #[serde(default)]
    pub cache: BTreeMap<String, CacheFragment>,
    #[serde(default)]
    pub units: BTreeMap<String, UnitsFragment>,
    pub metrics: Option<MetricsFragment>,
    #[serde(default)]
    pub alert: BTreeMap<String, AlertFragment>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFragment {
    /// Period of the full sweep in the daemon.
    pub interval: S<String>,
    /// React to cache growth through inotify between sweeps.
    pub watch: S<bool>,
    /// Bytes per second hashed in the background to verify caches with trusted writers.
    pub verify_rate: S<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFragment {
    pub enabled: S<bool>,
    pub path: S<String>,
    pub kind: S<String>,
    pub max_size: S<SizeValue>,
    pub low_water: S<String>,
    pub max_age: S<String>,
    pub min_age: S<String>,
    pub owner: S<String>,
    pub group: S<String>,
    pub setgid: S<bool>,
    pub group_access: S<String>,
    pub other: S<String>,
    pub create: S<bool>,
    pub rewrite_trim: S<bool>,
    /// Whose `auto` caches (system scope): "all", "@group" or a list of names.
    pub users: S<UsersValue>,
    /// Users (`name`) and groups (`@group`) left out of `users`, e.g. `["root"]`.
    pub exclude_users: S<Vec<String>>,
    /// Headroom of the filesystem holding the cache: bytes or a share of it.
    pub min_free: S<SizeValue>,
    /// Headroom of the filesystem's inodes, a share.
    pub min_free_inodes: S<String>,
    /// Who may write the cache (`user` or `@group`); everyone else only reads, through
    /// `gocache-warden cacheprog`.
    pub trusted_writers: S<Vec<String>>,
    /// What `enforce --verify` does with tampered outputs and entries of untrusted owners.
    pub untrusted: S<String>,
    /// How long a quarantined entry is kept before it is removed (a duration).
    pub quarantine_retention: S<String>,
    /// At most this many bytes stay in the quarantine (a size: `"1GiB"`).
    pub quarantine_max_size: S<String>,
    /// Which time is an entry's last use: "auto", "mtime" or "atime".
    pub last_use: S<String>,
    pub alerts: Option<CacheAlertsFragment>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheAlertsFragment {
    pub size_percent: S<String>,
    pub inode_percent: S<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsFragment {
    pub enabled: S<bool>,
    #[serde(rename = "match")]
    pub patterns: S<Vec<String>>,
    pub managers: S<String>,
    pub require_gocache: S<bool>,
    pub gocache: S<String>,
    /// GOCACHEPROG a drop-in sets along with GOCACHE.
    pub gocacheprog: S<String>,
    pub remediation: S<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFragment {
    pub textfile: S<String>,
    pub listen: S<String>,
    pub top_users: S<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertFragment {
    pub enabled: S<bool>,
    pub kind: S<String>,
    pub url_file: S<String>,
    pub credential: S<String>,
    pub command: S<Vec<String>>,
    pub renotify: S<String>,
}

/// Overlays `$over` onto `$base` field by field: a field set in the later file wins.
macro_rules! overlay {
    ($base:expr, $over:expr, $($f:ident),+ $(,)?) => {
        $( if $over.$f.is_some() { $base.$f = $over.$f.clone(); } )+
    };
}

impl Fragment {
    /// Merges a later fragment into this one (the later one wins per field).
    pub fn merge(&mut self, later: Fragment) {
        if let Some(a) = later.agent {
            let base = self.agent.get_or_insert_with(Default::default);
            overlay!(base, a, interval, watch, verify_rate);
        }
        for (name, c) in later.cache {
            let base = self.cache.entry(name).or_default();
            overlay!(
                base,
                c,
                enabled,
                path,
                kind,
                max_size,
                low_water,
                max_age,
                min_age,
                owner,
                group,
                setgid,
                group_access,
                other,
                create,
                rewrite_trim,
                min_free,
                min_free_inodes,
                users,
                exclude_users,
                trusted_writers,
                untrusted,
                quarantine_retention,
                quarantine_max_size,
                last_use
            );
            if let Some(a) = c.alerts {
                let b = base.alerts.get_or_insert_with(Default::default);
                overlay!(b, a, size_percent, inode_percent);
            }
        }
        for (name, u) in later.units {
            let base = self.units.entry(name).or_default();
            overlay!(
                base,
                u,
                enabled,
                patterns,
                managers,
                require_gocache,
                gocache,
                gocacheprog,
                remediation
            );
        }
        if let Some(m) = later.metrics {
            let base = self.metrics.get_or_insert_with(Default::default);
            overlay!(base, m, textfile, listen, top_users);
        }
        for (name, a) in later.alert {
            let base = self.alert.entry(name).or_default();
            overlay!(
                base, a, enabled, kind, url_file, credential, command, renotify
            );
        }
    }
}
