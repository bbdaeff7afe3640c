//! D-Bus access to systemd managers: zbus proxies, connections, and typed unit properties.
//!
//! The only place in gocache-warden that speaks D-Bus. A user instance is reached over the
//! session bus; the system instance over the system bus, plus every running user manager
//! peer-to-peer through `/run/user/UID/systemd/private` (no bus daemon, no `Hello`; root may
//! connect, the user's session bus would refuse it). Every reply is checked: a property of the
//! wrong type or a nonsensical value becomes a [`UnitError`] naming the unit and the property,
//! never a panic, and one bad unit or manager never aborts a listing. This module knows nothing
//! about GOCACHE policy; see `units.rs` for that.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, proxy};

/// One row of `ListUnits`/`ListUnitsByPatterns`: `(ssssssouso)`.
pub type UnitListEntry = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// One `ExecStart` entry: path, argv, ignore-failure, four timestamps, pid, code, status.
pub type ExecCommand = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait Manager {
    fn list_units(&self) -> zbus::Result<Vec<UnitListEntry>>;
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitListEntry>>;
    /// `(path, state)` of unit files on disk, loaded or not.
    fn list_unit_files_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<(String, String)>>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Returns once the reload has finished.
    fn reload(&self) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;

    #[zbus(property)]
    fn environment(&self) -> zbus::Result<Vec<String>>;

    /// Bus connections only: on a peer-to-peer connection zbus's signal streams ask the absent
    /// bus for the sender's owner. Use [`watch`], which works on both.
    #[zbus(signal)]
    fn unit_new(&self, id: String, unit: OwnedObjectPath) -> zbus::Result<()>;
    /// Bus connections only, see `unit_new`.
    #[zbus(signal)]
    fn reloading(&self, active: bool) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub trait Unit {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn fragment_path(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn drop_in_paths(&self) -> zbus::Result<Vec<String>>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
pub trait Service {
    #[zbus(property)]
    fn environment(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn environment_files(&self) -> zbus::Result<Vec<(String, bool)>>;
    #[zbus(property)]
    fn unset_environment(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn exec_start(&self) -> zbus::Result<Vec<ExecCommand>>;
    #[zbus(property)]
    fn user(&self) -> zbus::Result<String>;
}

/// Which manager a connection talks to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum ManagerId {
    System,
    User { uid: u32, name: String },
}

impl fmt::Display for ManagerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerId::System => f.write_str("system"),
            ManagerId::User { uid, name } => write!(f, "user {uid} ({name})"),
        }
    }
}

/// A live connection to one manager.
#[derive(Debug, Clone)]
pub struct ManagerConn {
    pub id: ManagerId,
    pub conn: Connection,
}

impl ManagerConn {
    /// The Manager proxy, uncached so that every read reflects the manager's current state.
    pub async fn manager(&self) -> Result<ManagerProxy<'static>> {
        ManagerProxy::builder(&self.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .with_context(|| format!("{}: cannot create manager proxy", self.id))
    }

    /// The manager's environment block (`Environment` property), as a map. Malformed entries
    /// are an error: they would mean the reply is not what systemd sends.
    pub async fn environment(&self) -> Result<BTreeMap<String, String>> {
        let raw =
            self.manager().await?.environment().await.with_context(|| {
                format!("{}: cannot read property Manager.Environment", self.id)
            })?;
        env_list_to_map(&raw).with_context(|| format!("{}: property Manager.Environment", self.id))
    }
}

/// Turns `KEY=VALUE` strings into a map (later entries win, as in systemd's merges).
pub fn env_list_to_map(list: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for entry in list {
        let Some((k, v)) = entry.split_once('=') else {
            bail!("entry {entry:?} is not KEY=VALUE");
        };
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

/// A manager we could not reach; the others are still used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerError {
    /// What we tried to reach, e.g. "system bus" or "/run/user/1000/systemd/private".
    pub target: String,
    pub msg: String,
}

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.target, self.msg)
    }
}

/// Which managers an inspection covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The calling user's own manager, over the session bus.
    User,
    /// The system manager over the system bus and every user manager over its private socket.
    System,
}

/// How long a manager may take to accept a connection and finish the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any method call may take; `Reload` on a large system is the slowest one.
pub const METHOD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a user manager may take for any one call, and for all the calls of one inspection
/// together. Its user controls it (they can serve the private socket themselves), so it gets a
/// bound that a real one never comes near (an inspection of a few hundred units takes under a
/// second), and the sweep goes on without it.
pub const USER_MANAGER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one call to a user manager may take outside an inspection (`Subscribe`, `Reload`
/// and the checks after it); longer than [`USER_MANAGER_TIMEOUT`] so that an inspection ends on
/// its own, clearer, error.
pub const USER_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Messages a connection to a user manager queues for a reader (zbus's default is 64): with
/// messages of at most 1 MiB (`p2p::MAX_MESSAGE`), a user manager flooding the agent with signals
/// holds at most a few MiB per queue; the socket is not read while a queue is full.
const USER_QUEUE: std::num::NonZeroUsize = std::num::NonZeroUsize::new(4).unwrap();

/// Runs a connection step with [`CONNECT_TIMEOUT`], so a wedged peer cannot stall a sweep.
async fn timed<T, E>(step: impl Future<Output = std::result::Result<T, E>>) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, step).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("no answer within {CONNECT_TIMEOUT:?}"),
    }
}

async fn build_bus(builder: zbus::connection::Builder<'static>, what: &str) -> Result<Connection> {
    let build = builder.method_timeout(METHOD_TIMEOUT).build();
    timed(build)
        .await
        .with_context(|| format!("cannot connect to the {what}"))
}

/// The caller's user manager via the session bus.
pub async fn connect_session() -> Result<ManagerConn> {
    let conn = build_bus(zbus::connection::Builder::session(), "session bus").await?;
    let uid = nix::unistd::getuid().as_raw();
    Ok(ManagerConn {
        id: ManagerId::User {
            uid,
            name: user_name(uid),
        },
        conn,
    })
}

/// The system manager via the system bus.
pub async fn connect_system_bus() -> Result<ManagerConn> {
    let conn = build_bus(zbus::connection::Builder::system(), "system bus").await?;
    Ok(ManagerConn {
        id: ManagerId::System,
        conn,
    })
}

/// A user manager peer-to-peer through its private socket. The socket's owner and the peer's
/// credentials must both be `uid`, so that a stray socket cannot pose as someone's manager.
pub async fn connect_private(socket: &Path, uid: u32) -> Result<ManagerConn> {
    let path = socket.to_path_buf();
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let creds = crate::untrusted::Creds::of_uid(uid)?;
        crate::untrusted::with_creds(&creds, move || connect_socket(&path, uid))?
    })
    .await
    .with_context(|| format!("cannot connect to \"{}\"", socket.display()))?;
    let stream = found
        .and_then(tokio::net::UnixStream::from_std)
        .with_context(|| format!("cannot connect to \"{}\"", socket.display()))?;
    let peer = stream
        .peer_cred()
        .with_context(|| format!("cannot read peer credentials of \"{}\"", socket.display()))?;
    if peer.uid() != uid {
        bail!(
            "\"{}\" is served by uid {}, expected {uid}",
            socket.display(),
            peer.uid()
        );
    }
    let (read, write) = stream.into_split();
    let split: zbus::connection::socket::BoxedSplit = zbus::connection::socket::Split::new(
        Box::new(super::p2p::SenderFix::new(read)),
        Box::new(super::p2p::Writer(write)),
    );
    let build = zbus::connection::Builder::socket(split)
        .p2p()
        .method_timeout(USER_CALL_TIMEOUT)
        .max_queued(USER_QUEUE)
        .build();
    let conn = timed(build)
        .await
        .with_context(|| format!("D-Bus handshake on \"{}\" failed", socket.display()))?;
    Ok(ManagerConn {
        id: ManagerId::User {
            uid,
            name: user_name(uid),
        },
        conn,
    })
}

/// Connects to the socket at `path`, owned by `uid`, with a socket that never blocks. Run as
/// `uid` (fsuid) on a thread the caller waits a bounded time for (`untrusted::with_creds`): the
/// path lies in the user's runtime directory, where a symlink or a mount of theirs (a FUSE file
/// system that never answers) could make the lookup wait for good. A full listen backlog is an
/// error, not a wait.
fn connect_socket(path: &Path, uid: u32) -> std::io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() || meta.uid() != uid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a socket owned by uid {uid}"),
        ));
    }
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?) {
        Ok(()) => Ok(std::os::unix::net::UnixStream::from(fd)),
        Err(nix::errno::Errno::EAGAIN) => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the socket accepts no connection (its listen backlog is full)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Whether connecting failed because there is no socket (no manager runs for that user).
fn no_socket(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// The directory holding every user's runtime dir (`/run/user/UID/systemd/private`). Only
/// test builds (the `test-hooks` feature) let `GOCACHE_WARDEN_RUN_USER` point it elsewhere:
/// in a release build no environment variable decides which sockets root talks to.
pub fn run_user_dir() -> PathBuf {
    #[cfg(feature = "test-hooks")]
    if let Some(dir) = std::env::var_os("GOCACHE_WARDEN_RUN_USER") {
        return PathBuf::from(dir);
    }
    PathBuf::from("/run/user")
}

/// `(uid, socket)` for every `RUN_USER/<uid>`, sorted by uid; the socket may not exist.
pub fn private_sockets(run_user: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let entries = std::fs::read_dir(run_user)
        .with_context(|| format!("cannot list \"{}\"", run_user.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list \"{}\"", run_user.display()))?;
        let Some(uid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Not looked at here: the user's directory may hold anything (see `connect_socket`).
        found.push((uid, entry.path().join("systemd/private")));
    }
    found.sort();
    Ok(found)
}

/// Connections for a scope, with the managers that could not be reached. For
/// [`Scope::User`], the session bus, else the manager's private socket. For
/// [`Scope::System`] a missing system bus is an error entry, not a failure: user managers can
/// still run (as they do in containers without systemd as PID 1).
pub async fn connect_scope(scope: Scope, run_user: &Path) -> (Vec<ManagerConn>, Vec<ManagerError>) {
    let mut conns = Vec::new();
    let mut errors = Vec::new();
    match scope {
        Scope::User => match connect_session().await {
            Ok(c) => conns.push(c),
            Err(bus) => {
                // Without a session bus (no dbus-user-session), reach our own manager as
                // `systemctl --user` does: its private socket in our runtime directory.
                let uid = nix::unistd::getuid().as_raw();
                let socket = std::env::var_os("XDG_RUNTIME_DIR")
                    .map_or_else(|| run_user.join(uid.to_string()), PathBuf::from)
                    .join("systemd/private");
                match connect_private(&socket, uid).await {
                    Ok(c) => conns.push(c),
                    Err(e) => errors.push(ManagerError {
                        target: format!("session bus and {}", socket.display()),
                        msg: format!("{bus:#}; {e:#}"),
                    }),
                }
            }
        },
        Scope::System => {
            match connect_system_bus().await {
                Ok(c) => conns.push(c),
                Err(e) => errors.push(ManagerError {
                    target: "system bus".to_owned(),
                    msg: format!("{e:#}"),
                }),
            }
            match private_sockets(run_user) {
                Ok(sockets) => {
                    // Side by side: a user whose socket takes its whole CONNECT_TIMEOUT to
                    // answer must not hold up everyone after them.
                    let each = sockets.iter().map(|(uid, socket)| async move {
                        (socket, connect_private(socket, *uid).await)
                    });
                    for (socket, result) in futures_util::future::join_all(each).await {
                        match result {
                            Ok(c) => conns.push(c),
                            // A user without a running manager.
                            Err(e) if no_socket(&e) => {}
                            Err(e) => errors.push(ManagerError {
                                target: socket.display().to_string(),
                                msg: format!("{e:#}"),
                            }),
                        }
                    }
                }
                Err(e) => errors.push(ManagerError {
                    target: run_user.display().to_string(),
                    msg: format!("{e:#}"),
                }),
            }
        }
    }
    (conns, errors)
}

/// The passwd name of `uid`, or the number when there is none.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// A unit-level failure to read what we need: which unit, which property, what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitError {
    pub manager: ManagerId,
    pub unit: String,
    /// `Interface.Property` or method that failed, when one did.
    pub property: Option<String>,
    pub msg: String,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.property {
            Some(p) => write!(f, "{} {}: {}: {}", self.manager, self.unit, p, self.msg),
            None => write!(f, "{} {}: {}", self.manager, self.unit, self.msg),
        }
    }
}

/// What we read about one service unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceInfo {
    pub id: String,
    pub path: String,
    pub load_state: String,
    pub active_state: String,
    pub fragment_path: Option<PathBuf>,
    pub drop_in_paths: Vec<PathBuf>,
    pub environment: Vec<(String, String)>,
    /// `(path, optional)`: `optional` is the `-` prefix, missing/broken files are then skipped.
    pub environment_files: Vec<(PathBuf, bool)>,
    pub unset_environment: Vec<String>,
    /// Program of the first `ExecStart=`.
    pub exec_start: Option<String>,
    /// `User=`, empty when unset.
    pub user: String,
}

/// Names of loaded units and unit files matching `patterns`, services only, sorted, without
/// templates (`foo@.service` cannot be loaded without an instance).
pub async fn list_services(mgr: &ManagerConn, patterns: &[String]) -> Result<Vec<String>> {
    let proxy = mgr.manager().await?;
    let pats: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let loaded = proxy
        .list_units_by_patterns(&[], &pats)
        .await
        .with_context(|| format!("{}: ListUnitsByPatterns failed", mgr.id))?;
    let files = proxy
        .list_unit_files_by_patterns(&[], &pats)
        .await
        .with_context(|| format!("{}: ListUnitFilesByPatterns failed", mgr.id))?;
    let mut names: Vec<String> = loaded
        .into_iter()
        .map(|e| e.0)
        .chain(files.into_iter().filter_map(|(path, _state)| {
            Path::new(&path)
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
        }))
        .filter(|n| n.ends_with(".service") && !n.contains("@.") && n.len() > ".service".len())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Loads `name` (a no-op if loaded) and reads its unit and service properties.
pub async fn service_info(mgr: &ManagerConn, name: &str) -> Result<ServiceInfo, UnitError> {
    let err = |property: Option<&str>, msg: String| UnitError {
        manager: mgr.id.clone(),
        unit: name.to_owned(),
        property: property.map(str::to_owned),
        msg,
    };
    let manager = mgr
        .manager()
        .await
        .map_err(|e| err(None, format!("{e:#}")))?;
    let path = manager
        .load_unit(name)
        .await
        .map_err(|e| err(Some("Manager.LoadUnit"), e.to_string()))?;
    let unit = UnitProxy::builder(&mgr.conn)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| err(None, e.to_string()))?;
    let service = ServiceProxy::builder(&mgr.conn)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| err(None, e.to_string()))?;

    macro_rules! get {
        ($proxy:expr, $prop:literal, $call:ident) => {
            $proxy
                .$call()
                .await
                .map_err(|e| err(Some($prop), e.to_string()))?
        };
    }
    let id = get!(unit, "Unit.Id", id);
    let load_state = get!(unit, "Unit.LoadState", load_state);
    if id.is_empty() {
        return Err(err(Some("Unit.Id"), "empty unit id".to_owned()));
    }
    let active_state = get!(unit, "Unit.ActiveState", active_state);
    let fragment = get!(unit, "Unit.FragmentPath", fragment_path);
    let drop_ins = get!(unit, "Unit.DropInPaths", drop_in_paths);
    if load_state != "loaded" {
        // Masked, not-found or bad-setting units have no service properties worth reading.
        return Ok(ServiceInfo {
            id,
            path: path.to_string(),
            load_state,
            active_state,
            fragment_path: non_empty_path(fragment),
            drop_in_paths: drop_ins.into_iter().map(PathBuf::from).collect(),
            environment: Vec::new(),
            environment_files: Vec::new(),
            unset_environment: Vec::new(),
            exec_start: None,
            user: String::new(),
        });
    }
    let env_raw = get!(service, "Service.Environment", environment);
    let environment = env_raw
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    err(
                        Some("Service.Environment"),
                        format!("entry {e:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let files = get!(service, "Service.EnvironmentFiles", environment_files);
    let mut environment_files = Vec::with_capacity(files.len());
    for (file, optional) in files {
        // systemd stores the path without the "-"; a relative one would never load.
        if !file.starts_with('/') && !optional {
            return Err(err(
                Some("Service.EnvironmentFiles"),
                format!("path {file:?} is not absolute"),
            ));
        }
        environment_files.push((PathBuf::from(file), optional));
    }
    let unset_environment = get!(service, "Service.UnsetEnvironment", unset_environment);
    let exec = get!(service, "Service.ExecStart", exec_start);
    let user = get!(service, "Service.User", user);
    Ok(ServiceInfo {
        id,
        path: path.to_string(),
        load_state,
        active_state,
        fragment_path: non_empty_path(fragment),
        drop_in_paths: drop_ins.into_iter().map(PathBuf::from).collect(),
        environment,
        environment_files,
        unset_environment,
        exec_start: exec.into_iter().next().map(|c| c.0),
        user,
    })
}

fn non_empty_path(s: String) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Something a manager announced that may change which units need attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ManagerEvent {
    UnitNew {
        manager: ManagerId,
        unit: String,
    },
    /// `active` is true when a reload starts and false when it has finished.
    Reloading {
        manager: ManagerId,
        active: bool,
    },
}

/// Subscribes to `mgr` and yields its `UnitNew` and `Reloading` signals. The stream ends when
/// the connection closes; a signal with an unexpected body is skipped, not fatal.
///
/// zbus's generated `receive_*` streams cannot be used here: on a peer-to-peer connection they
/// ask the (absent) bus for the owner of `org.freedesktop.systemd1`. A plain match rule works on
/// both kinds of connection; on a bus the daemon enforces its sender.
pub async fn watch(mgr: &ManagerConn) -> Result<impl Stream<Item = ManagerEvent> + use<>> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")
        .path("/org/freedesktop/systemd1")
        .interface("org.freedesktop.systemd1.Manager")
        .build()?;
    // The system manager's bursts (a daemon-reload announces every unit) keep zbus's default.
    let queue = matches!(mgr.id, ManagerId::User { .. }).then_some(USER_QUEUE);
    let stream = zbus::MessageStream::for_match_rule(rule, &mgr.conn, queue)
        .await
        .with_context(|| format!("{}: cannot watch manager signals", mgr.id))?;
    // Subscribe after installing the match rule so that no early signal is lost.
    mgr.manager()
        .await?
        .subscribe()
        .await
        .with_context(|| format!("{}: Subscribe failed", mgr.id))?;
    let id = mgr.id.clone();
    Ok(stream.filter_map(move |msg| {
        let manager = id.clone();
        async move { signal_event(manager, &msg.ok()?) }
    }))
}

fn signal_event(manager: ManagerId, msg: &zbus::Message) -> Option<ManagerEvent> {
    let header = msg.header();
    match header.member()?.as_str() {
        "UnitNew" => {
            let (unit, _path): (String, OwnedObjectPath) = msg.body().deserialize().ok()?;
            Some(ManagerEvent::UnitNew { manager, unit })
        }
        "Reloading" => {
            let active: bool = msg.body().deserialize().ok()?;
            Some(ManagerEvent::Reloading { manager, active })
        }
        _ => None,
    }
}
