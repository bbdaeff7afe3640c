//! gocache-warden: keeps Go build and module caches healthy on Linux.
//!
//! The binary is a thin shell over this library so integration tests and benchmarks can
//! drive the same code. See README.md ("Architecture") for the map and its invariants.

/// POSIX ACLs: decoding, expectations from policy, writing through pinned fds.
pub mod acl;
/// Alerts: evaluation, re-notify tracking, webhook and exec sinks.
pub mod alert;
/// `apply`: the only code that changes caches.
pub mod apply;
/// Go builds that failed because of a cache, recognised in the journal.
pub mod buildfail;
/// `cacheprog`: a GOCACHEPROG serving shared read-only caches with verified outputs.
pub mod cacheprog;
/// Cancellation tokens: how walks, pauses and sweeps learn they should stop.
pub mod cancel;
/// `check`: resolve the policy's caches, inspect them, explain deviations.
pub mod check;
/// Command-line interface and exit codes.
pub mod cli;
/// The agent: one event loop, sd_notify, inotify growth, reload, stop.
pub mod daemon;
/// `explain PID`: the caches, go env and unit a running process really uses.
pub mod explain;
/// Deterministic pauses for race tests (inactive unless an env var is set).
pub mod failpoint;
/// Where `go` puts its caches for an environment, and what is wrong with that setup.
pub mod goenv;
/// Filesystem headroom: `min_free`, `min_free_inodes`, eviction across caches, the poll.
pub mod headroom;
/// Integrity of build caches: outputs re-hashed, owners against trusted writers.
pub mod integrity;
/// Tracing to the journal or stderr, and the structured field contract.
pub mod locks;

pub mod logging;
/// Prometheus metrics: the model, textfile and HTTP outputs.
pub mod metrics;
/// Go's module cache: module versions as eviction units.
pub mod modcache;
/// The plan: what `enforce` will change, as a value.
pub mod plan;
/// Policy files: fragments, merging, validation.
pub mod policy;
/// A count of work done by sweeps, for a watchdog that means progress.
pub mod progress;
/// What inspection found, as plain data shared by check, plan, metrics and alerts.
pub mod report;
/// Directory handles and syscalls that never follow symlinks or cross mounts.
pub mod safefs;
/// Walking and measuring caches (read-only).
pub mod scan;
/// One sweep (inspect, plan, apply), shared by `enforce` and the daemon.
pub mod sweep;
/// Everything that speaks D-Bus to systemd: unit inspection, drop-ins.
pub mod systemd;
/// Policy unit rules ↔ the systemd subsystem.
pub mod units;
/// Bounded, non-blocking reads of user-controlled files, with the user's own credentials.
pub mod untrusted;
/// Every user's caches: `users` expanded to one cache per user, resolved as their go would.
pub mod users;
/// Who writes into each build cache (fanotify), and entries written by someone but its owner.
pub mod writers;
