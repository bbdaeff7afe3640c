//! Per-user counters of the cache program, persisted in the user's own cache root
//! (`gocache-warden-cacheprog.json`, a file `check` and the scan treat as cache metadata),
//! so the shared cache's worth can be shown per user.
//!
//! Many `go` processes end at once: each adds its counts under an exclusive `flock` on the
//! file and rewrites it in place (a rename would drop the lock's inode from under the next
//! writer). The lock is taken with a bounded wait: a counter is never worth a stuck build.

use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

pub const FILE_NAME: &str = "gocache-warden-cacheprog.json";
pub const SCHEMA: &str = "gocache-warden.cacheprog-stats/v1";

// Fields added later are absent from older files: they count from zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// `get`s answered from a shared cache (output verified).
    pub shared_hits: u64,
    pub shared_hit_bytes: u64,
    /// Of `shared_hits`, those served without re-hashing: the same file, unchanged, was
    /// hashed by an earlier get (`cacheprog::memo`).
    pub shared_hits_memo: u64,
    /// `get`s answered from the user's own cache.
    pub own_hits: u64,
    pub own_hit_bytes: u64,
    /// `get`s that found nothing anywhere.
    pub misses: u64,
    /// Shared entries refused: an output whose SHA-256 is not its name's, or too long.
    pub shared_tampered: u64,
    /// Shared entries refused: written by someone outside the trusted writers.
    pub shared_untrusted: u64,
    /// Outputs written to the own cache by `put`.
    pub puts: u64,
    pub put_bytes: u64,
    /// Requests that failed (answered as a miss or an error) for any other reason.
    pub errors: u64,
    /// Runs whose `GOCACHE` was (or lay inside) a shared cache: that cache was read verified
    /// and never written, and their puts came here instead.
    pub redirected: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.shared_hits += o.shared_hits;
        self.shared_hit_bytes += o.shared_hit_bytes;
        self.shared_hits_memo += o.shared_hits_memo;
        self.own_hits += o.own_hits;
        self.own_hit_bytes += o.own_hit_bytes;
        self.misses += o.misses;
        self.shared_tampered += o.shared_tampered;
        self.shared_untrusted += o.shared_untrusted;
        self.puts += o.puts;
        self.put_bytes += o.put_bytes;
        self.errors += o.errors;
        self.redirected += o.redirected;
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Doc {
    schema: String,
    #[serde(flatten)]
    counters: Counters,
}

/// What the agent read of one cache's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The cache root's owner: the user whose builds these are.
    pub uid: u32,
    /// `None`: the program never ran with this cache as its own (or its file is unusable).
    pub counters: Option<Counters>,
}

/// Reads the counters of cache `root` as the root's owner, for the agent running as root:
/// the file is the user's to write, so it is opened beneath the root (pinned by
/// [`crate::safefs::chase`], no symlink followed on the way) with `RESOLVE_NO_SYMLINKS`, `O_NONBLOCK`
/// and the owner's file-system credentials ([`crate::untrusted::with_creds`]), must be a
/// regular file, and at most 64 KiB are read. A FIFO, a link to a file the user cannot
/// read or a huge file gives an error naming the file, never a blocked agent.
pub fn read_as_owner(root: &Path) -> anyhow::Result<Reading> {
    use anyhow::Context as _;
    let p = root.join(FILE_NAME);
    let dir =
        crate::safefs::Dir::open_root(root).with_context(|| format!("cannot open {root:?}"))?;
    let owner = crate::safefs::fstat(dir.as_fd())
        .with_context(|| format!("cannot stat {root:?}"))?
        .uid;
    let creds =
        crate::untrusted::Creds::of_uid(owner).with_context(|| format!("owner of {root:?}"))?;
    let bytes = crate::untrusted::with_creds(&creds, move || read_beneath(&dir))
        .with_context(|| format!("cannot read {p:?} as uid {owner}"))?;
    let counters = match bytes {
        Ok(Some(b)) => Some(parse(&b).with_context(|| format!("cannot parse {p:?}"))?),
        Ok(None) => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {p:?}"))),
    };
    Ok(Reading {
        uid: owner,
        counters,
    })
}

/// At most this much of a counters file is read (a real one is about 400 bytes).
const MAX_BYTES: u64 = 64 * 1024;

fn read_beneath(dir: &crate::safefs::Dir) -> std::io::Result<Option<Vec<u8>>> {
    let name = std::ffi::CString::new(FILE_NAME)?;
    // A FIFO would be opened (O_NONBLOCK keeps that from blocking) but is refused below
    // before any read; a device is refused the same way.
    let fd = match crate::safefs::open_beneath_as_owner(dir.as_fd(), name.as_c_str()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&fd))?;
    if st.kind() != crate::safefs::Kind::File {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file: not read",
        ));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_BYTES + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {MAX_BYTES} bytes"),
        ));
    }
    Ok(Some(buf))
}

fn parse(bytes: &[u8]) -> anyhow::Result<Counters> {
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return Ok(Counters::default());
    }
    Ok(serde_json::from_str::<Doc>(&text)?.counters)
}

/// Adds `delta` to the counters in `root` (through the own cache's directory handle, so
/// the file is created beneath it and never through a symlink).
pub fn add(root: &crate::safefs::Dir, delta: &Counters) -> anyhow::Result<()> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .mode(nix::sys::stat::Mode::from_bits_truncate(0o644))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let name = std::ffi::CString::new(FILE_NAME)?;
    let fd = nix::fcntl::openat2(root.as_fd(), name.as_c_str(), how)
        .map_err(|e| anyhow::anyhow!("cannot open {FILE_NAME}: {e}"))?;
    let mut f = std::fs::File::from(fd);
    let st = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&f))?;
    if st.kind() != crate::safefs::Kind::File || st.size > 1 << 20 {
        anyhow::bail!("{FILE_NAME} is not a small regular file");
    }
    lock_bounded(&f)?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let mut c = serde_json::from_str::<Doc>(&text)
        .map(|d| d.counters)
        .unwrap_or_default();
    c.add(delta);
    let out = serde_json::to_string_pretty(&Doc {
        schema: SCHEMA.into(),
        counters: c,
    })? + "\n";
    f.rewind()?;
    f.write_all(out.as_bytes())?;
    f.set_len(out.len() as u64)?;
    Ok(())
}

fn lock_bounded(f: &std::fs::File) -> anyhow::Result<()> {
    for _ in 0..200 {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e.into());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    anyhow::bail!("{FILE_NAME} stayed locked for 2 s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn own_cache(uid: u32) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(d.path(), Some(uid), Some(uid)).expect("chown");
        d
    }

    #[test]
    fn the_agent_reads_counters_as_their_owner_without_following_or_blocking() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test must run as root (it reads as another user)"
        );
        let nobody = 65534;
        let d = own_cache(nobody);
        let f = d.path().join(FILE_NAME);
        // None yet: zeros are the caller's to choose.
        let r = read_as_owner(d.path()).expect("read");
        assert_eq!((r.uid, r.counters), (nobody, None));
        std::fs::write(
            &f,
            r#"{"schema":"gocache-warden.cacheprog-stats/v1","shared_hits":3}"#,
        )
        .expect("write");
        let c = read_as_owner(d.path())
            .expect("read")
            .counters
            .expect("counters");
        assert_eq!(
            (c.shared_hits, c.own_hit_bytes),
            (3, 0),
            "older files lack fields"
        );
        // A file the owner cannot read is not read by root on their behalf.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = read_as_owner(d.path()).expect_err("root-only file");
        assert!(format!("{e:#}").contains("Permission denied"), "{e:#}");
        std::fs::remove_file(&f).expect("rm");
        // A symlink (to a file anyone can read) is not followed.
        std::os::unix::fs::symlink("/etc/passwd", &f).expect("symlink");
        assert!(read_as_owner(d.path()).is_err());
        std::fs::remove_file(&f).expect("rm");
        // A FIFO neither blocks nor is read.
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("fifo");
        let t0 = std::time::Instant::now();
        let e = read_as_owner(d.path()).expect_err("fifo");
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
        std::fs::remove_file(&f).expect("rm");
        // Bounded: a huge file is refused, not read whole.
        std::fs::write(&f, vec![b' '; 1 << 20]).expect("write");
        let e = read_as_owner(d.path()).expect_err("huge");
        assert!(format!("{e:#}").contains("larger than"), "{e:#}");
    }
}
