//! The two kinds of cache the program serves from: the user's own (read and written, in
//! Go's layout) and the shared ones (read only, every output re-hashed before it is served).
//!
//! Everything goes through `safefs` directory handles: no symlink is followed, no mount
//! crossed, nothing outside a cache root opened. The program runs as the user who runs
//! `go`, so the kernel applies the user's own permissions to every read.

use super::protocol::HASH_SIZE;
use crate::safefs::{Dir, Kind, Stat};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Size of an action record: `v1 <64 hex> <64 hex> <20> <20>\n`.
pub const RECORD_LEN: usize = 175;
/// Go refreshes a used entry's mtime at most this often (`mtimeInterval`).
pub const MTIME_INTERVAL_SECS: i64 = 3600;

pub type Hash = [u8; HASH_SIZE];

pub fn hex(h: &Hash) -> String {
    hex::encode(h)
}

/// `<hex>-<suffix>`, built without `format!`: a warm build names about three entries per
/// get, and per-byte formatting was a tenth of the program's CPU time.
fn entry_name(h: &Hash, suffix: u8) -> CString {
    let mut buf = vec![0u8; 2 * HASH_SIZE + 2];
    // The buffer is sized for the hex digits: encode_to_slice cannot fail here.
    let _ = hex::encode_to_slice(h, &mut buf[..2 * HASH_SIZE]);
    buf[2 * HASH_SIZE] = b'-';
    buf[2 * HASH_SIZE + 1] = suffix;
    // Hex digits and a suffix: never contains a NUL.
    CString::new(buf).unwrap_or_default()
}

fn shard_name(h: &Hash) -> CString {
    CString::new(hex::encode([h[0]])).unwrap_or_default()
}

/// An action record as cmd/go's `DiskCache.get` accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub output: Hash,
    pub size: i64,
    pub time_nanos: i64,
}

/// Parses an action record for `action` with cmd/go's rules (exact length, separators,
/// matching id, non-negative size and time); `None` is a miss.
pub fn parse_record(buf: &[u8], action: &Hash) -> Option<Record> {
    if buf.len() != RECORD_LEN
        || &buf[..3] != b"v1 "
        || buf[67] != b' '
        || buf[132] != b' '
        || buf[153] != b' '
        || buf[174] != b'\n'
    {
        return None;
    }
    let id = decode_hex(&buf[3..67])?;
    if &id != action {
        return None;
    }
    let output = decode_hex(&buf[68..132])?;
    let num = |b: &[u8]| -> Option<i64> {
        let s = std::str::from_utf8(b).ok()?.trim_start_matches(' ');
        s.parse::<i64>().ok().filter(|n| *n >= 0)
    };
    Some(Record {
        output,
        size: num(&buf[133..153])?,
        time_nanos: num(&buf[154..174])?,
    })
}

/// The record cmd/go writes (`putIndexEntry`).
pub fn format_record(action: &Hash, rec: &Record) -> String {
    format!(
        "v1 {} {} {:20} {:20}\n",
        hex(action),
        hex(&rec.output),
        rec.size,
        rec.time_nanos
    )
}

fn decode_hex(s: &[u8]) -> Option<Hash> {
    if s.len() != 2 * HASH_SIZE {
        return None;
    }
    let mut out = [0u8; HASH_SIZE];
    for (i, pair) in s.chunks(2).enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = d(pair[0])? << 4 | d(pair[1])?;
    }
    Some(out)
}

/// A writer that hashes what passes through it (SHA-256, as cmd/go's OutputID).
pub struct Hashing<W> {
    pub inner: W,
    ctx: ring::digest::Context,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }
    pub fn finish(self) -> (W, Hash) {
        let d = self.ctx.finish();
        let mut h = [0u8; HASH_SIZE];
        h.copy_from_slice(d.as_ref());
        (self.inner, h)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 and length of everything `r` yields.
pub fn hash_reader(r: &mut impl Read) -> io::Result<(Hash, u64)> {
    let mut h = Hashing::new(io::sink());
    let n = io::copy(r, &mut h)?;
    Ok((h.finish().1, n))
}

/// Where an output lives in a cache, once found: a file directly in a shard, or the one
/// file inside an executable's `-d` directory (Go ≥ 1.24).
pub struct Located {
    pub file: std::fs::File,
    pub st: Stat,
    /// Path relative to the cache root (`xx/<hex>-d` or `xx/<hex>-d/<name>`).
    pub rel: PathBuf,
    /// Owners met on the way (the `-d` directory of an executable, then its file).
    pub owners: Vec<u32>,
    /// Someone besides its owner can write the file (or an executable's directory):
    /// [`crate::acl::others_can_write`].
    pub writable_by_others: bool,
}

/// Opens a shard of a cache root, without following or crossing anything.
pub fn open_shard(root: &Dir, h: &Hash) -> io::Result<Dir> {
    let name = shard_name(h);
    let st = root.stat(&name)?;
    if st.kind() != Kind::Dir {
        return Err(io::Error::other("shard is not a directory"));
    }
    root.open_dir(&name, &st)
}

/// Reads and parses the action record for `action` in `shard`; returns it with its owner.
pub fn read_record(shard: &Dir, action: &Hash) -> io::Result<Option<(Record, Stat)>> {
    let name = entry_name(action, b'a');
    let st = match shard.stat(&name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if st.kind() != Kind::File || st.size != RECORD_LEN as u64 {
        return Ok(None);
    }
    let buf = shard.read_small(&name, &st, RECORD_LEN + 1)?;
    Ok(parse_record(&buf, action).map(|r| (r, st)))
}

/// Reads the action record for `action` (entry `name`) in a shard: one `openat2`
/// (beneath the shard, no symlink, no magic link, no mount crossed, non-blocking), an
/// `fstat` on the open file, one read; anything but a regular file of a record's length is
/// a miss. A warm build makes a thousand of these lookups, and the three syscalls this saves
/// over [`read_record`] (statx, `O_PATH`, the `/proc` reopen of a pinned file) are a
/// measurable share of each round trip. The general path pins before it opens so that root
/// never opens a device node a user swapped in; the cache program runs as the user who
/// runs `go` and opens with their rights, in their own cache or in shared caches whose
/// files belong to trusted writers, and only root can make a device node (a FIFO opened
/// non-blocking reads nothing and is refused by the `fstat`).
pub fn read_record_direct(
    shard: &Dir,
    action: &Hash,
    name: &std::ffi::CStr,
) -> io::Result<Option<(Record, Stat)>> {
    let fd = match crate::safefs::open_beneath_as_owner(shard.as_fd(), name) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        // No usable openat2 (old kernel, seccomp): the general path.
        Err(e) if crate::safefs::openat2_unavailable(e) => return read_record(shard, action),
        Err(e) => return Err(e.into()),
    };
    let st = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&fd))?;
    if st.kind() != Kind::File || st.size != RECORD_LEN as u64 {
        return Ok(None);
    }
    let buf = crate::safefs::read_up_to(std::fs::File::from(fd), RECORD_LEN + 1, st.size)?;
    Ok(parse_record(&buf, action).map(|r| (r, st)))
}

/// Finds and opens output `out` in `shard` (a file, or an executable directory holding
/// exactly one file, as cmd/go's `OutputFile` accepts).
pub fn open_output(shard: &Dir, out: &Hash) -> io::Result<Option<Located>> {
    let name = entry_name(out, b'd');
    let shard_rel = PathBuf::from(hex::encode([out[0]]));
    let st = match shard.stat(&name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // `st` of each Located is an fstat of the file as opened (what the memo compares).
    match st.kind() {
        Kind::File => {
            let file = shard.open_read(&name, &st)?;
            let st = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&file))?;
            Ok(Some(Located {
                file,
                st,
                rel: shard_rel.join(crate::safefs::name_os(&name)),
                owners: vec![st.uid],
                writable_by_others: crate::acl::others_can_write(st.mode),
            }))
        }
        Kind::Dir => {
            let dir = shard.open_dir(&name, &st)?;
            let names = dir.list()?;
            let [inner] = names.as_slice() else {
                return Ok(None);
            };
            let ist = dir.stat(inner)?;
            if ist.kind() != Kind::File {
                return Ok(None);
            }
            let file = dir.open_read(inner, &ist)?;
            let ist = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&file))?;
            Ok(Some(Located {
                file,
                st: ist,
                rel: shard_rel
                    .join(crate::safefs::name_os(&name))
                    .join(crate::safefs::name_os(inner)),
                owners: vec![st.uid, ist.uid],
                writable_by_others: crate::acl::others_can_write(st.mode)
                    || crate::acl::others_can_write(ist.mode),
            }))
        }
        _ => Ok(None),
    }
}

/// [`open_output`] with one `openat2` and an `fstat` for the common case, a plain output
/// file (see [`read_record_direct`] for why that is safe for the cache program); an
/// executable's directory, or a kernel without a usable `openat2`, takes the general path.
pub fn open_output_direct(shard: &Dir, out: &Hash) -> io::Result<Option<Located>> {
    let name = entry_name(out, b'd');
    let fd = match crate::safefs::open_beneath_as_owner(shard.as_fd(), name.as_c_str()) {
        Ok(fd) => fd,
        // Missing, a symlink, a socket: not an output.
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ELOOP | nix::errno::Errno::ENXIO) => {
            return Ok(None);
        }
        Err(e) if crate::safefs::openat2_unavailable(e) => return open_output(shard, out),
        Err(e) => return Err(e.into()),
    };
    let st = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&fd))?;
    match st.kind() {
        Kind::File => Ok(Some(Located {
            file: std::fs::File::from(fd),
            st,
            rel: PathBuf::from(hex::encode([out[0]])).join(crate::safefs::name_os(&name)),
            owners: vec![st.uid],
            writable_by_others: crate::acl::others_can_write(st.mode),
        })),
        Kind::Dir => open_output(shard, out),
        _ => Ok(None),
    }
}

/// Sets an entry's times to now if they are older than Go's `mtimeInterval`, as cmd/go's
/// `markUsed` does (best effort: a failure only costs freshness).
pub fn mark_used(dir: &Dir, name: &std::ffi::CStr, st: &Stat, now: i64) {
    if now - st.mtime >= MTIME_INTERVAL_SECS {
        let _ = nix::sys::stat::utimensat(
            dir.as_fd(),
            name,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
}

/// The user's own cache: where puts go and the first place a get looks.
pub struct Own {
    pub root: PathBuf,
    dir: Dir,
    shards: HashMap<u8, Dir>,
    seq: u64,
}

/// Where a put body goes while it streams in.
pub enum PutDest {
    /// A temp file in the shard, renamed to `<out>-d` once its hash is verified.
    Temp {
        name: CString,
        file: Hashing<std::fs::File>,
    },
    /// The output is already there, verified (at this path relative to the root: a file,
    /// or the file in an executable's directory that plain `go run` left): the body is only
    /// hashed, to check the id.
    Present(Hashing<io::Sink>, PathBuf),
}

impl Own {
    pub fn open(root: &Path) -> anyhow::Result<Own> {
        let dir =
            Dir::open_root(root).with_context(|| format!("cannot open own cache {root:?}"))?;
        Ok(Own {
            root: root.to_path_buf(),
            dir,
            shards: HashMap::new(),
            seq: 0,
        })
    }

    pub fn root_dir(&self) -> &Dir {
        &self.dir
    }

    fn shard(&mut self, h: &Hash) -> io::Result<&Dir> {
        if !self.shards.contains_key(&h[0]) {
            let d = match open_shard(&self.dir, h) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // cmd/go creates all 256 shards before starting us; this is for a cache
                    // someone cleaned meanwhile.
                    match self.dir.mkdir(&shard_name(h), 0o777) {
                        Ok(d) => d,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            open_shard(&self.dir, h)?
                        }
                        Err(e) => return Err(e),
                    }
                }
                r => r?,
            };
            self.shards.insert(h[0], d);
        }
        self.shards
            .get(&h[0])
            .ok_or_else(|| io::Error::other("shard vanished"))
    }

    /// A hit in the own cache: the record and the output's absolute path, after refreshing
    /// both entries' mtime the way cmd/go does. `None` is a miss (also for an output whose
    /// size is not the record's: cmd/go's `GetFile` treats that as a miss too).
    pub fn get(&mut self, action: &Hash, now: i64) -> io::Result<Option<(Record, PathBuf)>> {
        let aname = entry_name(action, b'a');
        let Some((rec, ast)) = read_record_direct(self.shard(action)?, action, &aname)? else {
            return Ok(None);
        };
        mark_used(self.shard(action)?, &aname, &ast, now);
        // The own cache is the user's: like go, look at the output's size only (one statx;
        // an executable's directory is listed), without opening it.
        let out_shard = self.shard(&rec.output)?;
        let dname = entry_name(&rec.output, b'd');
        let dst = match out_shard.stat(&dname) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let rel = PathBuf::from(hex::encode([rec.output[0]])).join(crate::safefs::name_os(&dname));
        let (size, rel) = match dst.kind() {
            Kind::File => (dst.size, rel),
            Kind::Dir => {
                let x = out_shard.open_dir(&dname, &dst)?;
                let names = x.list()?;
                let [inner] = names.as_slice() else {
                    return Ok(None);
                };
                let ist = x.stat(inner)?;
                if ist.kind() != Kind::File {
                    return Ok(None);
                }
                (ist.size, rel.join(crate::safefs::name_os(inner)))
            }
            _ => return Ok(None),
        };
        if size != rec.size as u64 {
            return Ok(None);
        }
        mark_used(out_shard, &dname, &dst, now);
        Ok(Some((rec, self.root.join(rel))))
    }

    /// Chooses where a put's body goes: nowhere new if a verified copy of `out` of this
    /// size is already there, else a fresh temp file in the output's shard.
    pub fn begin_put(&mut self, out: &Hash, size: u64) -> io::Result<PutDest> {
        if let Some(mut found) = open_output(self.shard(out)?, out)? {
            if found.st.size == size && hash_reader(&mut found.file)?.0 == *out {
                return Ok(PutDest::Present(Hashing::new(io::sink()), found.rel));
            }
            if found.rel.components().count() != 2 {
                // A broken executable directory: a file cannot be renamed over it, and it is
                // the agent's to evict, not ours. The caller keeps the body elsewhere.
                return Err(io::Error::other(
                    "a bad executable entry holds this output id",
                ));
            }
        }
        self.seq += 1;
        let name = CString::new(format!(
            "{}-d.tmp.{}.{}",
            hex(out),
            std::process::id(),
            self.seq
        ))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let file = self.shard(out)?.create_file(&name, 0o666)?;
        Ok(PutDest::Temp {
            name,
            file: Hashing::new(file),
        })
    }

    /// Completes a put: checks the body's length and SHA-256 against the request, renames
    /// the temp file into place, then writes the action record (temp + rename, so a reader
    /// never sees half a record). Returns the output's absolute path.
    pub fn finish_put(
        &mut self,
        action: &Hash,
        out: &Hash,
        size: u64,
        got: u64,
        dest: PutDest,
    ) -> anyhow::Result<PathBuf> {
        let path = self.commit_output(out, size, got, dest)?;
        let rec = Record {
            output: *out,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            time_nanos: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        };
        self.write_record(action, &rec)?;
        Ok(path)
    }

    /// Moves a verified output into place as `<out>-d` (no action record); returns its path.
    pub fn commit_output(
        &mut self,
        out: &Hash,
        size: u64,
        got: u64,
        dest: PutDest,
    ) -> anyhow::Result<PathBuf> {
        match dest {
            PutDest::Present(h, rel) => {
                let hash = h.finish().1;
                if got != size || hash != *out {
                    bail!("body does not match its output id (got {got} of {size} bytes)");
                }
                return Ok(self.root.join(rel));
            }
            PutDest::Temp { name, file } => {
                let (_, hash) = file.finish();
                let shard = self.shard(out)?;
                let res = if got != size || hash != *out {
                    Err(anyhow::anyhow!(
                        "body does not match its output id (got {got} of {size} bytes)"
                    ))
                } else {
                    nix::fcntl::renameat(
                        shard.as_fd(),
                        name.as_c_str(),
                        shard.as_fd(),
                        entry_name(out, b'd').as_c_str(),
                    )
                    .map_err(|e| anyhow::anyhow!("cannot rename output into place: {e}"))
                };
                if res.is_err() {
                    unlink_quietly(shard, &name);
                }
                res?;
            }
        }
        Ok(self
            .root
            .join(format!("{:02x}", out[0]))
            .join(format!("{}-d", hex(out))))
    }

    /// Drops a put that failed while its body streamed in (removes the temp file).
    pub fn abort_put(&mut self, out: &Hash, dest: PutDest) {
        if let PutDest::Temp { name, .. } = dest
            && let Ok(shard) = self.shard(out)
        {
            unlink_quietly(shard, &name);
        }
    }

    fn write_record(&mut self, action: &Hash, rec: &Record) -> anyhow::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let shard = self.shard(action)?;
        let tmp = CString::new(format!(
            "{}-a.tmp.{}.{}",
            hex(action),
            std::process::id(),
            seq
        ))?;
        let mut f = shard
            .create_file(&tmp, 0o666)
            .context("cannot create action record")?;
        let res = f
            .write_all(format_record(action, rec).as_bytes())
            .map_err(anyhow::Error::from)
            .and_then(|_| {
                nix::fcntl::renameat(
                    shard.as_fd(),
                    tmp.as_c_str(),
                    shard.as_fd(),
                    entry_name(action, b'a').as_c_str(),
                )
                .map_err(anyhow::Error::from)
            });
        if res.is_err() {
            unlink_quietly(shard, &tmp);
        }
        res.context("cannot write action record")
    }
}

/// Removes a temp file of ours; a failure leaves a `*.tmp.*` name the agent evicts by age.
fn unlink_quietly(dir: &Dir, name: &std::ffi::CStr) {
    let _ = nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
}

/// Who may have written a shared cache's entries. Empty: anyone (no owner check).
#[derive(Debug, Default, Clone)]
pub struct Trust {
    uids: Vec<u32>,
    gids: Vec<u32>,
    memo: std::cell::RefCell<HashMap<u32, bool>>,
}

impl Trust {
    /// Parses `user` and `@group` names (or numeric ids).
    pub fn parse(names: &[String]) -> anyhow::Result<Trust> {
        let mut t = Trust::default();
        for n in names {
            if let Some(g) = n.strip_prefix('@') {
                let gid = match g.parse::<u32>() {
                    Ok(id) => id,
                    Err(_) => nix::unistd::Group::from_name(g)
                        .with_context(|| format!("cannot look up group {g:?}"))?
                        .with_context(|| format!("no such group {g:?}"))?
                        .gid
                        .as_raw(),
                };
                t.gids.push(gid);
            } else {
                let uid = match n.parse::<u32>() {
                    Ok(id) => id,
                    Err(_) => nix::unistd::User::from_name(n)
                        .with_context(|| format!("cannot look up user {n:?}"))?
                        .with_context(|| format!("no such user {n:?}"))?
                        .uid
                        .as_raw(),
                };
                t.uids.push(uid);
            }
        }
        Ok(t)
    }

    pub fn is_open(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    /// Whether `uid` is a trusted writer: listed, or a member (primary or supplementary)
    /// of a listed group.
    pub fn allows(&self, uid: u32) -> bool {
        if self.is_open() || self.uids.contains(&uid) {
            return true;
        }
        if self.gids.is_empty() {
            return false;
        }
        if let Some(&v) = self.memo.borrow().get(&uid) {
            return v;
        }
        let v = member_of_any(uid, &self.gids);
        self.memo.borrow_mut().insert(uid, v);
        v
    }
}

fn member_of_any(uid: u32, gids: &[u32]) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    if gids.contains(&user.gid.as_raw()) {
        return true;
    }
    gids.iter().any(|&g| {
        matches!(nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(g)),
            Ok(Some(grp)) if grp.mem.contains(&user.name))
    })
}

/// Why a shared entry was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not there (or incomplete): an ordinary miss.
    Absent,
    /// Its output's SHA-256 is not the one its name states, or its size not the record's.
    Tampered,
    /// Written by someone outside the trusted writers.
    Untrusted,
}

/// A shared, read-only cache.
pub struct Shared {
    pub root: PathBuf,
    dir: Option<Dir>,
    shards: HashMap<u8, Dir>,
    trust: Trust,
}

/// A verified shared output, kept open so its `/proc/PID/fd/N` path stays valid.
pub struct SharedHit {
    pub rec: Record,
    pub file: std::fs::File,
    /// Served on the memo's word: this very file was hashed by an earlier get.
    pub from_memo: bool,
}

impl Shared {
    /// Opens a shared cache; one that is missing or unreadable just never hits.
    pub fn open(root: &Path, trust: Trust) -> (Shared, Option<io::Error>) {
        let (dir, err) = match Dir::open_root(root) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        };
        let s = Shared {
            root: root.to_path_buf(),
            dir,
            shards: HashMap::new(),
            trust,
        };
        (s, err)
    }

    /// Opens `h`'s shard unless it is open; `false` if the cache or the shard is missing.
    /// Shards stay open for the life of the process (one go command), as the own cache's
    /// do: two opens fewer per get.
    fn load_shard(&mut self, h: &Hash) -> io::Result<bool> {
        if self.shards.contains_key(&h[0]) {
            return Ok(true);
        }
        let Some(root) = &self.dir else {
            return Ok(false);
        };
        match open_shard(root, h) {
            Ok(d) => {
                self.shards.insert(h[0], d);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Looks `action` up; on success the output has been hashed and matched its name (now,
    /// or unchanged since an earlier get did: `memo`), and every entry on the way is owned
    /// by a trusted writer.
    pub fn get(
        &mut self,
        action: &Hash,
        memo: &mut super::memo::Memo,
        now: i64,
    ) -> io::Result<Result<SharedHit, Reject>> {
        if !self.load_shard(action)? {
            return Ok(Err(Reject::Absent));
        }
        let Some(shard) = self.shards.get(&action[0]) else {
            return Ok(Err(Reject::Absent));
        };
        let aname = entry_name(action, b'a');
        let Some((rec, ast)) = read_record_direct(shard, action, &aname)? else {
            return Ok(Err(Reject::Absent));
        };
        // Trust is who can write, not only who owns: a record someone else can rewrite
        // in place may point the build at another output.
        if !self.trust.allows(ast.uid)
            || (!self.trust.is_open() && crate::acl::others_can_write(ast.mode))
        {
            return Ok(Err(Reject::Untrusted));
        }
        if !self.load_shard(&rec.output)? {
            return Ok(Err(Reject::Absent));
        }
        let trust = &self.trust;
        let Some(oshard) = self.shards.get(&rec.output[0]) else {
            return Ok(Err(Reject::Absent));
        };
        let Some(mut found) = open_output_direct(oshard, &rec.output)? else {
            return Ok(Err(Reject::Absent));
        };
        if !found.owners.iter().all(|&u| trust.allows(u))
            || (!trust.is_open() && found.writable_by_others)
        {
            return Ok(Err(Reject::Untrusted));
        }
        // An fstat of the open file itself (not a statx before the open): the memo trusts
        // only what describes the very file it would serve.
        let st = found.st;
        if st.size != rec.size as u64 {
            // Go writes outputs in place (size-1 bytes, then the last one): a short file may
            // be one being written. A longer one is not Go's doing.
            return Ok(Err(if st.size > rec.size as u64 {
                Reject::Tampered
            } else {
                Reject::Absent
            }));
        }
        if memo.verified(&rec.output, &st) {
            return Ok(Ok(SharedHit {
                rec,
                file: found.file,
                from_memo: true,
            }));
        }
        let (h, n) = hash_reader(&mut found.file)?;
        if h != rec.output || n != rec.size as u64 {
            return Ok(Err(Reject::Tampered));
        }
        memo.note(&rec.output, &st, now);
        Ok(Ok(SharedHit {
            rec,
            file: found.file,
            from_memo: false,
        }))
    }
}

/// The path under which another process (cmd/go, the compiler, the linker) opens exactly
/// the inode we hold open: valid until we close it, whatever happens to its name.
pub fn fd_path(f: &std::fs::File) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_rejections() {
        let a = [0x3c; 32];
        let rec = Record {
            output: [0x7f; 32],
            size: 1234,
            time_nanos: 1_700_000_000_000_000_000,
        };
        let s = format_record(&a, &rec);
        assert_eq!(s.len(), RECORD_LEN);
        assert_eq!(parse_record(s.as_bytes(), &a), Some(rec));
        assert_eq!(parse_record(s.as_bytes(), &[0x3d; 32]), None, "other id");
        let mut bad = s.clone().into_bytes();
        bad[140] = b'x';
        assert_eq!(parse_record(&bad, &a), None);
        assert_eq!(parse_record(&s.as_bytes()[..174], &a), None);
        let neg = s.replace("                1234", "               -1234");
        assert_eq!(parse_record(neg.as_bytes(), &a), None);
    }

    #[test]
    fn trust_by_user_and_group() {
        let open = Trust::default();
        assert!(open.allows(12345));
        let t = Trust::parse(&["root".into()]).unwrap();
        assert!(t.allows(0));
        assert!(!t.allows(65534));
        let g = Trust::parse(&["@root".into()]).unwrap();
        assert!(g.allows(0), "root's primary group is root");
        assert!(Trust::parse(&["no-such-user-xyz".into()]).is_err());
    }
}
