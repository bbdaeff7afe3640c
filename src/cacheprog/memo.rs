//! Shared outputs this user's builds have already verified, so that a warm build from a
//! shared cache hashes each output once instead of on every use.
//!
//! A shared hit is served only after its output was hashed and matched its name. Hashing a
//! build's worth of outputs on every `go` command nearly doubled a warm `go build std`
//! (issue #14). The memo remembers, per output id, the identity and change time of the file
//! that was verified: `(dev, ino, size, ctime, mtime)`. A later get that opens a file with
//! the same identity and change time is served without re-hashing. That is sound because
//! the kernel sets `ctime` on every change of a file's content or inode, nobody can set it
//! back, and a file replaced by another one gets a new ctime as well (a recycled inode
//! number included). One gap remains: `ctime` comes from a coarse clock, so a change
//! within the same clock tick as the previous one could keep it. That is why an output is
//! remembered only once its ctime is [`SETTLE_SECS`] old (Go never changes an output after
//! it wrote it; a later change then gets a later ctime). Only those who can write the
//! shared cache can change its files at all: its trusted writers and root.
//!
//! The memo lives in the user's own cache root (`gocache-warden-verified`, cache metadata
//! to `check` and the scan), read with the user's own rights like everything else the
//! program touches. A user can only fool their own builds with it, which they can do
//! anyway by writing their own cache. It is bounded ([`MAX_ENTRIES`]), read whole at start
//! (a few kB for `std`), rewritten (temp + rename) at close only when it grew. Lost updates
//! between concurrent `go` commands only cost a re-hash. Any unreadable or malformed memo
//! counts as empty.

use super::store::Hash;
use crate::safefs::{Dir, Kind, Stat};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;

pub const FILE_NAME: &str = "gocache-warden-verified";
/// Format tag and version at the start of the file.
const MAGIC: &[u8; 8] = b"GCWVER01";
/// An output is remembered only when its ctime is this old, counted in whole seconds (so at
/// least one second: many ticks of the coarsest clock the kernel stamps ctime with).
pub const SETTLE_SECS: i64 = 2;
/// Most entries kept (80 bytes each: 20 MiB). Past it, a rewrite keeps only what this
/// process used.
pub const MAX_ENTRIES: usize = 256 * 1024;
const REC: usize = 32 + 8 * 5 + 4 * 2;

/// The verified file's identity and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sig {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_nsec: u32,
    mtime: i64,
    mtime_nsec: u32,
}

impl Sig {
    fn of(st: &Stat) -> Sig {
        Sig {
            dev: st.dev,
            ino: st.ino,
            size: st.size,
            ctime: st.ctime,
            ctime_nsec: st.ctime_nsec,
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
        }
    }
}

#[derive(Debug, Default)]
pub struct Memo {
    known: HashMap<Hash, Sig>,
    /// Outputs looked up or added by this process (kept when the memo is over its bound).
    used: std::collections::HashSet<Hash>,
    grew: bool,
}

impl Memo {
    /// Reads the memo of the own cache `root`; anything wrong with it gives an empty memo.
    pub fn load(root: &Dir) -> Memo {
        let mut m = Memo::default();
        let Some(bytes) = read(root) else {
            return m;
        };
        if let Some(entries) = decode(&bytes) {
            m.known = entries;
        }
        m
    }

    /// Whether `out`, open as the file described by `st` (an `fstat` of the open fd), is
    /// the file that was verified.
    pub fn verified(&mut self, out: &Hash, st: &Stat) -> bool {
        let hit = self.known.get(out) == Some(&Sig::of(st));
        if hit {
            self.used.insert(*out);
        }
        hit
    }

    /// Remembers that the file `st` describes (an `fstat` of the fd that was hashed) has
    /// output id `out`, if it has settled (see the module docs).
    pub fn note(&mut self, out: &Hash, st: &Stat, now: i64) {
        if st.kind() != Kind::File || now - st.ctime < SETTLE_SECS {
            return;
        }
        self.used.insert(*out);
        if self.known.insert(*out, Sig::of(st)) != Some(Sig::of(st)) {
            self.grew = true;
        }
    }

    /// Writes the memo back if this process added to it (best effort).
    pub fn save(&mut self, root: &Dir) -> std::io::Result<()> {
        if !self.grew {
            return Ok(());
        }
        if self.known.len() > MAX_ENTRIES {
            let used = &self.used;
            self.known.retain(|k, _| used.contains(k));
        }
        let mut buf = Vec::with_capacity(MAGIC.len() + self.known.len() * REC);
        buf.extend_from_slice(MAGIC);
        for (out, s) in self.known.iter().take(MAX_ENTRIES) {
            buf.extend_from_slice(out);
            for n in [s.dev, s.ino, s.size] {
                buf.extend_from_slice(&n.to_le_bytes());
            }
            buf.extend_from_slice(&s.ctime.to_le_bytes());
            buf.extend_from_slice(&s.ctime_nsec.to_le_bytes());
            buf.extend_from_slice(&s.mtime.to_le_bytes());
            buf.extend_from_slice(&s.mtime_nsec.to_le_bytes());
        }
        let mut tmp = crate::scan::layout::MEMO_TEMP.to_vec();
        tmp.extend_from_slice(std::process::id().to_string().as_bytes());
        let tmp = CString::new(tmp)?;
        let name = CString::new(FILE_NAME)?;
        let mut f = root.create_file(&tmp, 0o644)?;
        let res = f.write_all(&buf).and_then(|()| {
            nix::fcntl::renameat(root.as_fd(), tmp.as_c_str(), root.as_fd(), name.as_c_str())
                .map_err(std::io::Error::from)
        });
        if res.is_err() {
            let _ = nix::unistd::unlinkat(
                root.as_fd(),
                tmp.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        res
    }
}

/// The memo file's bytes, if it is a regular file of a plausible size. Opened beneath the
/// root without following anything and non-blocking (a FIFO reads nothing), by the user
/// who owns the cache: the program runs as them.
fn read(root: &Dir) -> Option<Vec<u8>> {
    let name = CString::new(FILE_NAME).ok()?;
    let fd = crate::safefs::open_beneath_as_owner(root.as_fd(), name.as_c_str()).ok()?;
    let st = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&fd)).ok()?;
    let max = MAGIC.len() + MAX_ENTRIES * REC;
    if st.kind() != Kind::File || st.size > max as u64 {
        return None;
    }
    crate::safefs::read_up_to(std::fs::File::from(fd), max, st.size).ok()
}

fn decode(bytes: &[u8]) -> Option<HashMap<Hash, Sig>> {
    let body = bytes.strip_prefix(MAGIC)?;
    if body.len() % REC != 0 {
        return None;
    }
    let u64_at = |r: &[u8], i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |r: &[u8], i: usize| u32::from_le_bytes(r[i..i + 4].try_into().unwrap_or([0; 4]));
    let mut out = HashMap::with_capacity(body.len() / REC);
    for r in body.chunks_exact(REC) {
        let id: Hash = r[..32].try_into().ok()?;
        out.insert(
            id,
            Sig {
                dev: u64_at(r, 32),
                ino: u64_at(r, 40),
                size: u64_at(r, 48),
                ctime: u64_at(r, 56) as i64,
                ctime_nsec: u32_at(r, 64),
                mtime: u64_at(r, 68) as i64,
                mtime_nsec: u32_at(r, 76),
            },
        );
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64, ctime: i64) -> Stat {
        Stat {
            dev: 7,
            ino,
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 99,
            alloc: 4096,
            atime: 0,
            mtime: ctime,
            mtime_nsec: 5,
            ctime,
            ctime_nsec: 6,
            mount_root: false,
        }
    }

    #[test]
    fn remembers_settled_files_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Dir::open_root(dir.path()).expect("root");
        let mut m = Memo::load(&root);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        m.note(&a, &stat(10, 1000), 1000 + SETTLE_SECS);
        m.note(&b, &stat(11, 1000), 1000 + SETTLE_SECS - 1);
        assert!(m.verified(&a, &stat(10, 1000)));
        assert!(
            !m.verified(&b, &stat(11, 1000)),
            "not settled: never remembered"
        );
        m.save(&root).expect("save");

        let mut m = Memo::load(&root);
        assert!(m.verified(&a, &stat(10, 1000)), "read back");
        assert!(!m.verified(&a, &stat(12, 1000)), "another inode");
        assert!(!m.verified(&a, &stat(10, 1001)), "changed since");
        let mut other_size = stat(10, 1000);
        other_size.size += 1;
        assert!(!m.verified(&a, &other_size));
        assert!(!m.verified(&[3u8; 32], &stat(10, 1000)), "another id");
    }

    #[test]
    fn a_damaged_memo_is_an_empty_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Dir::open_root(dir.path()).expect("root");
        let mut m = Memo::load(&root);
        m.note(&[1u8; 32], &stat(10, 1000), 2000);
        m.save(&root).expect("save");
        let p = dir.path().join(FILE_NAME);
        let good = std::fs::read(&p).expect("read");
        for bad in [&good[..good.len() - 1], b"GCWVER02", b"", &good[1..]] {
            std::fs::write(&p, bad).expect("write");
            assert!(!Memo::load(&root).verified(&[1u8; 32], &stat(10, 1000)));
        }
        std::fs::remove_file(&p).expect("rm");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        assert!(Memo::load(&root).known.is_empty(), "a FIFO is not read");
    }
}
