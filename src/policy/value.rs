//! Parsing of the policy's scalar values: sizes, percentages, durations and access triplets.
//!
//! These are the only places where policy text becomes numbers, so every message here is
//! written for the person editing the policy file. Nothing in this module knows about files
//! or locations; callers attach `FILE:LINE:COL`.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// A size limit: absolute bytes, or a share of the filesystem holding the cache.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeLimit {
    Bytes(u64),
    Percent(f64),
}

impl SizeLimit {
    /// The limit in bytes for a filesystem of `fs_size` bytes.
    pub fn resolve(self, fs_size: u64) -> u64 {
        match self {
            SizeLimit::Bytes(b) => b,
            SizeLimit::Percent(p) => (fs_size as f64 * p / 100.0) as u64,
        }
    }
}

impl fmt::Display for SizeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeLimit::Bytes(b) => write!(f, "{}", human_bytes(*b)),
            SizeLimit::Percent(p) => write!(f, "{p}% of the filesystem"),
        }
    }
}

/// Parses `"10GiB"`, `"10G"` (decimal), `"512 MiB"`, `"15%"` or a plain byte count.
pub fn parse_size_limit(s: &str) -> Result<SizeLimit, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let pct = parse_percent_number(p)?;
        if pct <= 0.0 || pct > 100.0 {
            return Err(format!(
                "percentage {t:?} must be above 0% and at most 100%"
            ));
        }
        return Ok(SizeLimit::Percent(pct));
    }
    parse_bytes(t).map(SizeLimit::Bytes)
}

/// Parses an absolute size (`"10GiB"`, `"10G"`, `"4096"`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    match t.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() > 0 => Ok(b.as_u64()),
        Ok(_) => Err(format!("size {t:?} must be greater than zero")),
        Err(_) => Err(format!(
            "invalid size {t:?}: expected e.g. \"10GiB\", \"10G\", \"512MiB\" or \"15%\""
        )),
    }
}

/// Parses `"90%"` (or a bare `90`) into a percentage in (0, 100].
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let pct = parse_percent_number(t.strip_suffix('%').unwrap_or(t))?;
    if pct <= 0.0 || pct > 100.0 {
        return Err(format!(
            "percentage {t:?} must be above 0% and at most 100%"
        ));
    }
    Ok(pct)
}

fn parse_percent_number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("invalid percentage {s:?}: expected e.g. \"90%\""))
}

/// Parses `"30d"`, `"24h"`, `"1h30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (expected e.g. \"30d\", \"24h\")"))
}

/// Read, write and execute bits for one ACL class, as in `"rwx"` or `"r-x"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Perm(pub u8);

impl Perm {
    pub const R: u8 = 4;
    pub const W: u8 = 2;
    pub const X: u8 = 1;

    pub fn bits(self) -> u8 {
        self.0 & 7
    }
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    pub fn without_x(self) -> Perm {
        Perm(self.0 & !Perm::X)
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |bit, ch| if self.has(bit) { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(Perm::R, 'r'),
            c(Perm::W, 'w'),
            c(Perm::X, 'x')
        )
    }
}

impl Serialize for Perm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// As written in a plan: `"rwx"`, `"r-x"`.
impl<'de> serde::Deserialize<'de> for Perm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_perm(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `"rwx"`, `"r-x"`, `"---"`; `X` is accepted for `x` (files get execute only where
/// their owner has it, as `setfacl`'s `X`).
pub fn parse_perm(s: &str) -> Result<Perm, String> {
    let b = s.as_bytes();
    let bad = || {
        format!("invalid access {s:?}: expected three characters like \"rwx\", \"r-x\" or \"---\"")
    };
    if b.len() != 3 {
        return Err(bad());
    }
    let mut v = 0;
    for (i, (&ch, want)) in b.iter().zip([b'r', b'w', b'x']).enumerate() {
        let bit = 4 >> i;
        if ch == want || (want == b'x' && ch == b'X') {
            v |= bit;
        } else if ch != b'-' {
            return Err(bad());
        }
    }
    Ok(Perm(v))
}

/// Formats bytes with binary units, one decimal (`"1.5 GiB"`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Formats a duration coarsely for reports (`"3d 4h"`, `"25m"`).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_limit("10GiB"), Ok(SizeLimit::Bytes(10 << 30)));
        assert_eq!(
            parse_size_limit("10G"),
            Ok(SizeLimit::Bytes(10_000_000_000))
        );
        assert_eq!(parse_size_limit("15%"), Ok(SizeLimit::Percent(15.0)));
        assert!(parse_size_limit("150%").is_err());
        assert!(parse_size_limit("0").is_err());
        assert!(parse_size_limit("ten").is_err());
        assert_eq!(SizeLimit::Percent(50.0).resolve(1000), 500);
    }

    #[test]
    fn perms() {
        assert_eq!(parse_perm("rwx"), Ok(Perm(7)));
        assert_eq!(parse_perm("r-x"), Ok(Perm(5)));
        assert_eq!(parse_perm("rwX"), Ok(Perm(7)));
        assert_eq!(parse_perm("---"), Ok(Perm(0)));
        assert!(parse_perm("rw").is_err());
        assert!(parse_perm("xwr").is_err());
        assert_eq!(Perm(5).to_string(), "r-x");
    }

    #[test]
    fn formatting() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_duration(Duration::from_secs(90_000)), "1d 1h");
        assert_eq!(parse_percent("90%"), Ok(90.0));
        assert!(parse_percent("120%").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
