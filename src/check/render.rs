//! The text form of a `check` report, for a person at a terminal. Pure: no I/O.

use crate::policy::value::{human_bytes, human_duration};
use crate::policy::{CacheKind, Scope};
use crate::report::{Finding, Report, Severity};
use crate::scan;
use std::fmt::Write as _;
use std::time::Duration;

fn sev_mark(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error  ",
        Severity::Warning => "warning",
        Severity::Info => "info   ",
    }
}

fn render_findings(out: &mut String, fs: &[Finding]) {
    for f in fs {
        let count = if f.count > 1 {
            format!(" ({} entries)", f.count)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "    {} {}{}: {}",
            sev_mark(f.severity),
            f.kind,
            count,
            f.message
        );
        let who = if f.auto_fix {
            "enforce would"
        } else {
            "to fix"
        };
        let _ = writeln!(out, "            {who}: {}", f.fix);
        for e in &f.examples {
            let _ = writeln!(out, "            e.g. {e}");
        }
    }
}

/// The human report: sizes formatted, worst problems first, each with its fix.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gocache-warden check ({} scope) on {}",
        match r.scope {
            Scope::System => "system",
            Scope::User => "user",
        },
        r.host
    );
    let _ = writeln!(out, "policy: {}", r.policy_sources.join(", "));
    if let Some(w) = &r.writes {
        let _ = writeln!(out, "writes: {w}");
    }
    for c in &r.caches {
        let _ = writeln!(out);
        let path = c
            .path
            .as_ref()
            .map_or("(none)".to_string(), |p| scan::display_path(p));
        let _ = writeln!(
            out,
            "{} cache \"{}\": {}  [{}]",
            c.kind, c.name, path, c.source
        );
        if let Some(e) = &c.inspect_error {
            let _ = writeln!(out, "    error: could not inspect: {e}");
        }
        if let Some(o) = &c.observed {
            let limit = c.limit_bytes.map_or("no limit".to_string(), |l| {
                format!(
                    "of {} limit ({:.0}%)",
                    human_bytes(l),
                    o.allocated_bytes as f64 * 100.0 / l.max(1) as f64
                )
            });
            let _ = writeln!(
                out,
                "  size       {} allocated, {} apparent, {limit}",
                human_bytes(o.allocated_bytes),
                human_bytes(o.apparent_bytes)
            );
            let cls = |k| o.classes.get(&k).map_or(0, |u: &scan::Usage| u.entries);
            use scan::layout::Class;
            let _ = write!(out, "  entries    {} files, {} dirs", o.files, o.dirs);
            if c.kind == CacheKind::Build {
                let _ = write!(
                    out,
                    "; {} actions, {} outputs, {} executables, {} foreign",
                    cls(Class::Action),
                    cls(Class::Output),
                    cls(Class::Exec),
                    cls(Class::Foreign)
                );
            }
            let _ = writeln!(out);
            if let Some(fs) = &c.filesystem {
                let iu = ((fs.inodes_total - fs.inodes_free) * 100)
                    .checked_div(fs.inodes_total)
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "  filesystem {} free of {}, inodes {}% used{}",
                    human_bytes(fs.avail_bytes),
                    human_bytes(fs.size_bytes),
                    iu,
                    crate::headroom::describe_limits(c)
                );
            }
            if let (Some(old), Some(new)) = (o.oldest_use, o.newest_use) {
                let ago = |t: i64| {
                    human_duration(Duration::from_secs((r.generated_at - t).max(0) as u64))
                };
                let _ = writeln!(
                    out,
                    "  last use   oldest {} ago, newest {} ago",
                    ago(old),
                    ago(new)
                );
            } else {
                let _ = writeln!(out, "  last use   no entries");
            }
            let _ = writeln!(out, "             {}", signal(c.kind, o.last_use_signal));
            let mut owners: Vec<_> = o.owners.iter().collect();
            owners.sort_by_key(|o| std::cmp::Reverse(o.1.bytes));
            let list: Vec<String> = owners
                .iter()
                .take(5)
                .map(|(uid, u)| {
                    format!(
                        "{} {}",
                        c.owner_names
                            .get(uid)
                            .cloned()
                            .unwrap_or_else(|| uid.to_string()),
                        human_bytes(u.bytes)
                    )
                })
                .collect();
            let more = if owners.len() > 5 {
                format!(" (+{} more)", owners.len() - 5)
            } else {
                String::new()
            };
            let _ = writeln!(out, "  owners     {}{more}", list.join(", "));
        }
        if let Some(w) = &c.top_writers {
            let list: Vec<String> = w
                .iter()
                .map(|w| {
                    let unit = if w.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", w.unit)
                    };
                    format!(
                        "{}{unit} {} in {} entries",
                        w.user,
                        human_bytes(w.bytes),
                        w.entries
                    )
                })
                .collect();
            let list = if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            };
            let _ = writeln!(out, "  writers    last 24 h: {list}");
        }
        if c.findings.is_empty() && c.inspect_error.is_none() {
            let _ = writeln!(out, "  ok: compliant with the policy");
        } else {
            render_findings(&mut out, &c.findings);
        }
    }
    out.push_str(&crate::users::render_summary(r));
    if !r.environment.is_empty() {
        let _ = writeln!(out, "\ngo environment:");
        render_findings(&mut out, &r.environment);
    }
    let _ = writeln!(out);
    let verdict = match r.exit_code {
        0 => "compliant",
        1 => "violations found",
        _ => "could not inspect every cache",
    };
    let _ = writeln!(out, "result: {verdict} (exit {})", r.exit_code);
    out
}

/// Which time the cache's last use is read from, and what that means for reads by programs
/// other than builds (issue #25: a nightly backup must not keep a cache forever).
fn signal(kind: CacheKind, by: crate::safefs::LastUse) -> &'static str {
    use crate::safefs::LastUse;
    match (by, kind) {
        (LastUse::Mtime, CacheKind::Build) => {
            "by mtime, which go sets on each hit: reads by backups or scanners do not count"
        }
        (LastUse::Mtime, CacheKind::Module) => {
            "by mtime: when go downloaded or extracted each version; reads do not count"
        }
        (LastUse::Atime, CacheKind::Build) => {
            "by atime or mtime (others' hits cannot set mtime here): reads count as use, a backup's or scanner's too"
        }
        (LastUse::Atime, CacheKind::Module) => {
            "by atime or mtime (go never marks module files used): reads count as use, a backup's or scanner's too"
        }
    }
}
