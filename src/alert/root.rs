//! Describes a cache root for alert messages the way an operator would look at it:
//! an `ls -ldL --time-style=long-iso` line (mode string with setuid/setgid/sticky
//! letters and the `+` ACL marker, owner, group, mtime) and the `getfacl -p` text.
//!
//! Read-only and for humans: nothing here decides compliance (the policy checker
//! does), and the text is not meant to be parsed back.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use chrono::{Local, TimeZone};
use nix::unistd::{Gid, Group, Uid, User};
use posix_acl::PosixACL;
use serde::Serialize;

/// The root directory of a cache as `ls` and `getfacl` would show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootDescription {
    /// `ls -ldL --time-style=long-iso PATH` output without the newline.
    pub ls_line: String,
    /// `getfacl -p PATH` output (header comments, access and default ACL).
    pub acl_text: String,
    pub uid: u32,
    /// Owner name, or the uid as text when it has no passwd entry.
    pub user: String,
    pub gid: u32,
    pub group: String,
    /// `st_mode & 0o7777`.
    pub mode: u32,
}

// libacl's text renderer, the one getfacl itself uses; posix-acl does not expose it.
// Without TEXT_SMART_INDENT, as getfacl prints when its output is not a terminal.
#[link(name = "acl")]
unsafe extern "C" {
    fn acl_to_any_text(
        acl: *mut c_void,
        prefix: *const c_char,
        separator: c_char,
        options: c_int,
    ) -> *mut c_char;
    fn acl_free(obj: *mut c_void) -> c_int;
}
const TEXT_SOME_EFFECTIVE: c_int = 0x01;

fn acl_text(acl: PosixACL, prefix: Option<&CStr>) -> Result<String> {
    let raw = acl.into_raw();
    let prefix_ptr = prefix.map_or(std::ptr::null(), |p| p.as_ptr());
    // SAFETY: `raw` is a valid acl_t we own (into_raw); the returned string is
    // NUL-terminated and owned by us until acl_free.
    let text = unsafe {
        let txt = acl_to_any_text(raw.cast(), prefix_ptr, b'\n' as c_char, TEXT_SOME_EFFECTIVE);
        let result = if txt.is_null() {
            Err(anyhow!(
                "acl_to_any_text failed: {}",
                std::io::Error::last_os_error()
            ))
        } else {
            let s = CStr::from_ptr(txt).to_string_lossy().into_owned();
            acl_free(txt.cast());
            Ok(s)
        };
        acl_free(raw.cast());
        result
    };
    text.map(|mut t| {
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        t
    })
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// `ls`'s ten-character mode string, e.g. `drwxrws---`.
pub fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let special = |x: u32, s: u32, lower: char, upper: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// Builds the `ls -ldL --time-style=long-iso` line from its parts (mtime in local time).
#[allow(clippy::too_many_arguments)]
pub fn format_ls_line(
    mode: u32,
    has_acl: bool,
    nlink: u64,
    user: &str,
    group: &str,
    size: u64,
    mtime: i64,
    path: &Path,
) -> String {
    let when = Local
        .timestamp_opt(mtime, 0)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| mtime.to_string());
    format!(
        "{}{} {nlink} {user} {group} {size} {when} {}",
        mode_string(mode),
        if has_acl { "+" } else { "" },
        path.display()
    )
}

/// Stats `path` (following symlinks, like `ls -L`) and reads its ACLs.
pub fn describe_root(path: &Path) -> Result<RootDescription> {
    let md =
        std::fs::metadata(path).with_context(|| format!("cannot stat \"{}\"", path.display()))?;
    let access = PosixACL::read_acl(path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot read the ACL of \"{}\"", path.display()))?;
    let default = if md.is_dir() {
        Some(
            PosixACL::read_default_acl(path)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| {
                    format!("cannot read the default ACL of \"{}\"", path.display())
                })?,
        )
    } else {
        None
    };
    // Same rule as coreutils' file_has_acl: extended access entries or any default ACL.
    let has_acl =
        access.entries().len() > 3 || default.as_ref().is_some_and(|d| !d.entries().is_empty());
    let user = user_name(md.uid());
    let group = group_name(md.gid());
    let mode = md.mode();

    let mut text = String::new();
    let shown = String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned();
    text.push_str(&format!(
        "# file: {shown}\n# owner: {user}\n# group: {group}\n"
    ));
    if mode & 0o7000 != 0 {
        let f = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
        text.push_str(&format!(
            "# flags: {}{}{}\n",
            f(0o4000, 's'),
            f(0o2000, 's'),
            f(0o1000, 't')
        ));
    }
    text.push_str(
        &acl_text(access, None)
            .with_context(|| format!("cannot render the ACL of \"{}\"", path.display()))?,
    );
    if let Some(d) = default.filter(|d| !d.entries().is_empty()) {
        text.push_str(
            &acl_text(d, Some(c"default:")).with_context(|| {
                format!("cannot render the default ACL of \"{}\"", path.display())
            })?,
        );
    }
    text.push('\n');

    Ok(RootDescription {
        ls_line: format_ls_line(
            mode,
            has_acl,
            md.nlink(),
            &user,
            &group,
            md.size(),
            md.mtime(),
            path,
        ),
        acl_text: text,
        uid: md.uid(),
        user,
        gid: md.gid(),
        group,
        mode: mode & 0o7777,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(libc::S_IFDIR | 0o2770), "drwxrws---");
        assert_eq!(mode_string(libc::S_IFDIR | 0o2760), "drwxrwS---");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(libc::S_IFREG | 0o4644), "-rwSr--r--");
    }
}
