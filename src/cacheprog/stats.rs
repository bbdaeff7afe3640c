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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `get`s answered from a shared cache (output verified).
    pub shared_hits: u64,
    pub shared_hit_bytes: u64,
    /// `get`s answered from the user's own cache.
    pub own_hits: u64,
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
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.shared_hits += o.shared_hits;
        self.shared_hit_bytes += o.shared_hit_bytes;
        self.own_hits += o.own_hits;
        self.misses += o.misses;
        self.shared_tampered += o.shared_tampered;
        self.shared_untrusted += o.shared_untrusted;
        self.puts += o.puts;
        self.put_bytes += o.put_bytes;
        self.errors += o.errors;
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Doc {
    schema: String,
    #[serde(flatten)]
    counters: Counters,
}

/// Reads the counters of a cache root (`None` when there are none yet). Through a
/// directory handle and bounded, never following a symlink: `check` runs as root over
/// caches users own.
pub fn read(root: &Path) -> anyhow::Result<Option<Counters>> {
    let p = root.join(FILE_NAME);
    let dir = crate::safefs::Dir::open_root(root)
        .map_err(|e| anyhow::anyhow!("cannot open {root:?}: {e}"))?;
    let name = std::ffi::CString::new(FILE_NAME)?;
    let st = match dir.stat(&name) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("cannot stat {p:?}: {e}")),
    };
    if st.kind() != crate::safefs::Kind::File {
        anyhow::bail!("{p:?} is not a regular file");
    }
    let bytes = dir
        .read_small(&name, &st, 64 * 1024)
        .map_err(|e| anyhow::anyhow!("cannot read {p:?}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    if text.trim().is_empty() {
        return Ok(Some(Counters::default()));
    }
    let doc: Doc =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("cannot parse {p:?}: {e}"))?;
    Ok(Some(doc.counters))
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
