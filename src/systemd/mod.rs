//! Everything gocache-warden knows about systemd: which services run `go` with which GOCACHE,
//! and drop-ins that fix them.
//!
//! Architecture Invariant: this folder is the only code that speaks D-Bus (`dbus.rs`) and the
//! only code that writes unit configuration (`dropin.rs`). It parses `EnvironmentFile=`s as
//! systemd 252 does (`envfile.rs`), rebuilds each service's environment and judges it against
//! [`units::UnitRule`]s (`units.rs`), and plans, applies and verifies drop-in remediations
//! (`remediate.rs`). It does not know how `go` picks a default cache: callers pass a
//! [`units::Resolver`]. It does not evict or repair caches either.

/// Inspecting a unit with its user's file permissions (fsuid/fsgid on a reader thread).
pub mod asuser;
/// systemd's D-Bus API: proxies, connections, typed unit properties, signal watching.
pub mod dbus;
/// Safe, atomic writing of the `50-gocache-warden.conf` drop-in.
pub mod dropin;
/// `EnvironmentFile=` parser, faithful to systemd 252.
pub mod envfile;
/// The environment a service gets: manager, `User=`, `Environment=`, files, unsets.
pub mod environ;
/// The socket halves for user managers: bounded messages, systemd's sender made valid.
pub mod p2p;
/// Plan/apply/verify of drop-in remediations.
pub mod remediate;
/// The unit specifiers a policy value may use, and their expansion.
pub mod specifiers;
/// Inspection: effective environments and GOCACHE findings per unit.
pub mod units;
/// GOCACHE/GOMODCACHE a user's own manager and services set (extra per-user caches).
pub mod usercaches;

pub use dbus::{ManagerConn, ManagerEvent, ManagerId, Scope, connect_scope, watch};
pub use remediate::{Outcome, Plan, Remediation, apply, plan};
pub use units::{Finding, FindingKind, Inspection, RemediationMode, Resolver, UnitRule, inspect};
