//! `gocache-warden cacheprog`: a GOCACHEPROG (Go ≥ 1.24) that lets builds use shared,
//! read-only caches without trusting anyone but their writers.
//!
//! cmd/go starts it once per `go` command and sends `get`, `put` and `close` over a JSON
//! protocol ([`protocol`]). A `get` looks in the user's own cache (their resolved
//! `GOCACHE`, Go's on-disk layout), then in each shared cache; a shared output is hashed
//! and must have the SHA-256 its name states (once per user and file: an unchanged file
//! verified before is served on the [`memo`]'s word), and with trusted writers configured every
//! entry must be owned by one of them — anything else is a miss, never served. A shared hit
//! is served as `/proc/<our pid>/fd/<n>` of the file we verified and keep open: valid until
//! `close` even if the entry is evicted meanwhile, and it costs no copy and no disk (when
//! the open-file limit runs short the verified output is copied into the own cache
//! instead). A `put` is written only to the own cache, temp + rename, after its SHA-256 was
//! checked against its OutputID, so the agent manages that cache like any other. The
//! program never fails a build: any problem is answered as a miss (or, for a put, with the
//! body kept in a memfd) and counted ([`stats`]). It is not a cache manager: it never
//! evicts or trims; the agent does.

pub mod memo;
pub mod protocol;
pub mod stats;
pub mod store;

use protocol::{Next, Request, Response};
use stats::Counters;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use store::{Hash, Own, PutDest, Reject, Shared, Trust};

/// Commands we declare to cmd/go.
pub const KNOWN_COMMANDS: [&str; 3] = ["get", "put", "close"];

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The user's own cache; `None`: `go env GOCACHE` as resolved for this environment.
    pub own: Option<PathBuf>,
    /// Shared read-only caches, searched in order after the own cache.
    pub shared: Vec<SharedSpec>,
    /// Diagnostics on stderr (which cmd/go passes through to the user's terminal).
    pub verbose: bool,
}

/// One shared cache and who may have written it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedSpec {
    pub path: PathBuf,
    /// Trusted writers (`user`, `@group`, numeric ids); empty: any owner (outputs are
    /// still re-hashed).
    pub trusted: Vec<String>,
}

/// The shared caches a policy declares: every build cache at a fixed path with
/// `trusted_writers`, with those writers.
pub fn shared_from_policy(p: &crate::policy::Policy) -> Vec<SharedSpec> {
    p.caches
        .iter()
        .filter(|c| c.kind == crate::policy::CacheKind::Build && !c.trusted_writers.is_empty())
        .filter_map(|c| match &c.path {
            crate::policy::CachePath::Fixed(path) => Some(SharedSpec {
                path: path.clone(),
                trusted: c.trusted_writers.iter().map(|w| w.spelled()).collect(),
            }),
            crate::policy::CachePath::Auto => None,
        })
        .collect()
}

struct Server {
    own: Option<Own>,
    shared: Vec<Shared>,
    /// Shared outputs verified by earlier gets (kept in the own cache).
    memo: memo::Memo,
    counters: Counters,
    /// Shared outputs held open for the life of the process, by output id.
    pinned: std::collections::HashMap<Hash, (std::fs::File, String)>,
    /// Put bodies the own cache could not take, kept in memfds until close.
    spilled: Vec<std::fs::File>,
    fd_budget: usize,
    verbose: bool,
}

fn note(verbose: bool, msg: impl FnOnce() -> String) {
    if verbose {
        eprintln!("gocache-warden cacheprog: {}", msg());
    }
}

/// Runs the protocol on stdin/stdout until `close` or end of input. Returns the exit code
/// (0 unless stdout itself fails: then cmd/go is gone anyway).
pub fn run(opts: &Options) -> i32 {
    let verbose = opts.verbose;
    let own_path = opts.own.clone().or_else(|| {
        crate::goenv::resolve(&crate::goenv::GoEnv::from_process())
            .gocache
            .path()
            .map(PathBuf::from)
    });
    let mut redirected = false;
    let own = own_path
        .and_then(|p| own_cache(&p, &opts.shared, &mut redirected))
        .and_then(|p| match Own::open(&p) {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("gocache-warden cacheprog: {e:#}: this build's puts are kept in memory");
                None
            }
        });
    let shared: Vec<Shared> = opts
        .shared
        .iter()
        .filter_map(|spec| {
            let p = &spec.path;
            let trust = match Trust::parse(&spec.trusted) {
                Ok(t) => t,
                Err(e) => {
                    // A typo in the trusted list must not open the cache to everyone.
                    eprintln!("gocache-warden cacheprog: {e:#}; shared cache {p:?} not used");
                    return None;
                }
            };
            let (s, err) = Shared::open(p, trust);
            if let Some(e) = err {
                note(verbose, || format!("shared cache {p:?} unavailable: {e}"));
            }
            Some(s)
        })
        .collect();
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(s, _)| s);
    let memo = match &own {
        // Only worth reading when there is something to verify.
        Some(o) if !shared.is_empty() => memo::Memo::load(o.root_dir()),
        _ => memo::Memo::default(),
    };
    let mut srv = Server {
        own,
        shared,
        memo,
        counters: Counters {
            redirected: u64::from(redirected),
            ..Counters::default()
        },
        pinned: Default::default(),
        spilled: Vec::new(),
        fd_budget: usize::try_from(soft.saturating_sub(128)).unwrap_or(usize::MAX),
        verbose,
    };
    let stdin = io::stdin().lock();
    let mut r = BufReader::with_capacity(256 * 1024, stdin);
    let mut w = BufWriter::new(io::stdout().lock());
    let hello = Response {
        known_commands: KNOWN_COMMANDS.to_vec(),
        ..Default::default()
    };
    if protocol::write_response(&mut w, &hello).is_err() {
        return 1;
    }
    let code = loop {
        let req = match protocol::read_request(&mut r) {
            Ok(Next::Request(q)) => q,
            Ok(Next::Malformed(m)) => {
                srv.counters.errors += 1;
                note(verbose, || m);
                continue;
            }
            Ok(Next::Eof) => break 0,
            Err(e) => {
                note(verbose, || format!("reading requests: {e}"));
                break 0;
            }
        };
        let close = req.command == "close";
        let res = srv.handle(&req, &mut r);
        // cmd/go pipelines requests (each build worker sends its own): answer every request
        // already read in one write, and flush only when none is waiting. One write and one
        // wake-up of cmd/go's reader per batch instead of per response.
        let more = !close && protocol::request_buffered(r.buffer());
        let sent = if more {
            protocol::write_response_unflushed(&mut w, &res)
        } else {
            protocol::write_response(&mut w, &res)
        };
        if sent.is_err() {
            break 1;
        }
        if close {
            break 0;
        }
    };
    srv.finish();
    code
}

/// The user's own cache, from `GOCACHE` (or `--own`) `p`. This program runs as the user, so
/// it follows the user's own symlinks (a `~/.cache` linked to a bigger disk is theirs to
/// have); what it ends at must be a directory the user owns, created as `go` would if
/// missing. A `GOCACHE` that is, or lies inside, a shared cache is that shared cache: read
/// through verification like any shared cache, never written; puts go to the user's
/// default cache instead (`$XDG_CACHE_HOME/go-build`, else `~/.cache/go-build`). What it
/// did, or why there is no own cache (puts then stay in memory), is said on stderr, which
/// cmd/go shows once per build; a redirection also sets `redirected` (counted in the
/// counters of the cache the puts went to).
fn own_cache(p: &std::path::Path, shared: &[SharedSpec], redirected: &mut bool) -> Option<PathBuf> {
    let real = |p: &std::path::Path| -> io::Result<PathBuf> {
        std::fs::create_dir_all(p)?;
        std::fs::canonicalize(p)
    };
    let mut path = match real(p) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "gocache-warden cacheprog: own cache {}: {e}: this build's puts are kept in memory",
                p.display()
            );
            return None;
        }
    };
    let inside = |c: &PathBuf| {
        shared
            .iter()
            .find(|s| std::fs::canonicalize(&s.path).is_ok_and(|s| c.starts_with(&s)))
    };
    if let Some(s) = inside(&path) {
        let fallback = crate::goenv::default_gocache(&crate::goenv::GoEnv::from_process());
        let moved = fallback
            .as_deref()
            .and_then(|f| real(f).ok())
            .filter(|f| inside(f).is_none());
        match moved {
            Some(f) => {
                eprintln!(
                    "gocache-warden cacheprog: GOCACHE={} is the shared cache {}: read from it verified, never written; this build's puts go to {}",
                    p.display(),
                    s.path.display(),
                    f.display()
                );
                *redirected = true;
                path = f;
            }
            None => {
                eprintln!(
                    "gocache-warden cacheprog: GOCACHE={} is the shared cache {} and there is no default cache to write to: this build's puts are kept in memory",
                    p.display(),
                    s.path.display()
                );
                return None;
            }
        }
    }
    let me = nix::unistd::geteuid().as_raw();
    match std::fs::metadata(&path) {
        Ok(m) if std::os::unix::fs::MetadataExt::uid(&m) == me && m.is_dir() => Some(path),
        Ok(m) => {
            eprintln!(
                "gocache-warden cacheprog: own cache {} belongs to uid {}, not to you (uid {me}): this build's puts are kept in memory",
                path.display(),
                std::os::unix::fs::MetadataExt::uid(&m)
            );
            None
        }
        Err(e) => {
            eprintln!(
                "gocache-warden cacheprog: own cache {}: {e}: this build's puts are kept in memory",
                path.display()
            );
            None
        }
    }
}

// No busy-polling of stdin before `read`: a 100 µs poll measured no gain against blocking at
// once (30 interleaved rounds of a warm `go build std`: 1.25× and 1.27× plain), and on a
// build server every spinning program takes CPU from someone's build.

impl Server {
    fn handle(&mut self, req: &Request, r: &mut impl io::BufRead) -> Response {
        let mut res = match req.command.as_str() {
            "get" => self.get(req),
            "put" => self.put(req, r),
            "close" => Response::default(),
            other => Response {
                err: format!("unknown command {other:?}"),
                ..Default::default()
            },
        };
        res.id = req.id;
        res
    }

    fn miss(&mut self) -> Response {
        self.counters.misses += 1;
        Response {
            miss: true,
            ..Default::default()
        }
    }

    fn get(&mut self, req: &Request) -> Response {
        let Some(action) = req.action() else {
            self.counters.errors += 1;
            return self.miss();
        };
        let now = chrono::Utc::now().timestamp();
        if let Some(own) = &mut self.own {
            // Another go process may rename a fresh copy over an entry between our statx and
            // open (the identity check then refuses it): look again, as go would simply
            // have read the new file.
            let mut res = own.get(&action, now);
            for _ in 0..2 {
                if res.is_ok() {
                    break;
                }
                res = own.get(&action, now);
            }
            match res {
                Ok(Some((rec, path))) => {
                    self.counters.own_hits += 1;
                    self.counters.own_hit_bytes += rec.size as u64;
                    return hit(rec, path.to_string_lossy().into_owned());
                }
                Ok(None) => {}
                Err(e) => {
                    self.counters.errors += 1;
                    note(self.verbose, || format!("own cache {:?}: {e}", own.root));
                }
            }
        }
        for i in 0..self.shared.len() {
            let s = &mut self.shared[i];
            match s.get(&action, &mut self.memo, now) {
                Ok(Ok(h)) => {
                    self.counters.shared_hits += 1;
                    self.counters.shared_hits_memo += u64::from(h.from_memo);
                    self.counters.shared_hit_bytes += h.rec.size as u64;
                    let (rec, from_memo) = (h.rec, h.from_memo);
                    return match self.serve_shared(h) {
                        Some(path) => hit(rec, path),
                        None => {
                            self.counters.shared_hits -= 1;
                            self.counters.shared_hits_memo -= u64::from(from_memo);
                            self.counters.shared_hit_bytes -= rec.size as u64;
                            self.counters.errors += 1;
                            self.miss()
                        }
                    };
                }
                Ok(Err(Reject::Absent)) => {}
                Ok(Err(Reject::Tampered)) => {
                    self.counters.shared_tampered += 1;
                    let root = s.root.clone();
                    eprintln!(
                        "gocache-warden cacheprog: refused entry {} of shared cache {root:?}: its output does not match its hash",
                        store::hex(&action)
                    );
                }
                Ok(Err(Reject::Untrusted)) => {
                    self.counters.shared_untrusted += 1;
                    let root = s.root.clone();
                    note(self.verbose, || {
                        format!(
                            "refused entry {} of {root:?}: not written by a trusted writer",
                            store::hex(&action)
                        )
                    });
                }
                Err(e) => {
                    self.counters.errors += 1;
                    let root = s.root.clone();
                    note(self.verbose, || format!("shared cache {root:?}: {e}"));
                }
            }
        }
        self.miss()
    }

    /// Makes a verified shared output available by path until close: the open fd itself,
    /// or, past the fd budget, a copy in the own cache.
    fn serve_shared(&mut self, h: store::SharedHit) -> Option<String> {
        if let Some((_, p)) = self.pinned.get(&h.rec.output) {
            return Some(p.clone());
        }
        if self.pinned.len() < self.fd_budget {
            let p = store::fd_path(&h.file);
            self.pinned.insert(h.rec.output, (h.file, p.clone()));
            return Some(p);
        }
        let own = self.own.as_mut()?;
        let mut file = h.file;
        io::Seek::rewind(&mut file).ok()?;
        let size = h.rec.size as u64;
        let mut dest = own.begin_put(&h.rec.output, size).ok()?;
        let got = match &mut dest {
            PutDest::Temp { file: f, .. } => io::copy(&mut file, f),
            PutDest::Present(s, _) => io::copy(&mut file, s),
        };
        let Ok(got) = got else {
            own.abort_put(&h.rec.output, dest);
            return None;
        };
        // Only the output is copied (and re-verified on the way): the action record stays
        // the shared cache's, so a later get still counts as a shared hit.
        own.commit_output(&h.rec.output, size, got, dest)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn put(&mut self, req: &Request, r: &mut impl io::BufRead) -> Response {
        let err = |m: String| Response {
            err: m,
            ..Default::default()
        };
        let size = u64::try_from(req.body_size).unwrap_or(0);
        let (Some(action), Some(out)) = (req.action(), req.output()) else {
            if size > 0 {
                let _ = protocol::read_body(r, &mut io::sink());
            }
            self.counters.errors += 1;
            return err("put without a valid ActionID and OutputID".into());
        };
        let mut dest = match &mut self.own {
            Some(own) => match own
                .begin_put(&out, size)
                .or_else(|_| own.begin_put(&out, size))
            {
                Ok(d) => Some(d),
                Err(e) => {
                    note(self.verbose, || format!("own cache {:?}: {e}", own.root));
                    None
                }
            },
            None => None,
        };
        let Some(d) = &mut dest else {
            return self.spill(req, r, &out, size);
        };
        let got = if size == 0 {
            Ok(0)
        } else {
            match d {
                PutDest::Temp { file, .. } => protocol::read_body(r, file),
                PutDest::Present(s, _) => protocol::read_body(r, s),
            }
        };
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                self.counters.errors += 1;
                if let (Some(own), Some(d)) = (&mut self.own, dest) {
                    own.abort_put(&out, d);
                }
                return err(format!("reading put body: {e}"));
            }
        };
        let (Some(own), Some(dest)) = (&mut self.own, dest) else {
            return err("own cache vanished".into());
        };
        match own.finish_put(&action, &out, size, got, dest) {
            Ok(p) => {
                self.counters.puts += 1;
                self.counters.put_bytes += size;
                Response {
                    disk_path: p.to_string_lossy().into_owned(),
                    ..Default::default()
                }
            }
            Err(e) => {
                self.counters.errors += 1;
                err(format!("{e:#}"))
            }
        }
    }

    /// A put the own cache cannot take: keep the body in a memfd so the build still gets
    /// a path for it (the entry is simply not cached).
    fn spill(
        &mut self,
        req: &Request,
        r: &mut impl io::BufRead,
        out: &Hash,
        size: u64,
    ) -> Response {
        self.counters.errors += 1;
        let mfd = match nix::sys::memfd::memfd_create(
            c"gocache-warden-put",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        ) {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) => {
                if size > 0 {
                    let _ = protocol::read_body(r, &mut io::sink());
                }
                return Response {
                    err: format!("no own cache and no memfd: {e}"),
                    ..Default::default()
                };
            }
        };
        let mut h = store::Hashing::new(mfd);
        let got = if size == 0 {
            Ok(0)
        } else {
            protocol::read_body(r, &mut h)
        };
        let (f, hash) = h.finish();
        if got.ok() != Some(size) || hash != *out {
            return Response {
                err: format!("put {}: body does not match its output id", req.id),
                ..Default::default()
            };
        }
        let p = store::fd_path(&f);
        self.spilled.push(f);
        Response {
            disk_path: p,
            ..Default::default()
        }
    }

    fn finish(&mut self) {
        if let Some(own) = &self.own {
            if let Err(e) = self.memo.save(own.root_dir()) {
                note(self.verbose, || format!("memo of verified outputs: {e}"));
            }
            if let Err(e) = stats::add(own.root_dir(), &self.counters) {
                note(self.verbose, || format!("counters: {e:#}"));
            }
        }
        let _ = io::stderr().flush();
        // cmd/go waits for our stdout to close, i.e. for our exit: the open shards, pinned
        // outputs and memfds are released by the exit itself, without a close each (a warm
        // build leaves hundreds).
        std::mem::forget(self.own.take());
        std::mem::forget(std::mem::take(&mut self.shared));
        std::mem::forget(std::mem::take(&mut self.pinned));
        std::mem::forget(std::mem::take(&mut self.spilled));
    }
}

fn hit(rec: store::Record, path: String) -> Response {
    Response {
        output_id: Some(rec.output),
        size: rec.size,
        time: protocol::go_time(rec.time_nanos),
        disk_path: path,
        ..Default::default()
    }
}
