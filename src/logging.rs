//! Logging for gocache-warden: one `init` call picks where log lines go (the systemd journal
//! with structured fields, or human lines on stderr) and installs the global `tracing`
//! subscriber. It is not a metrics or alerting channel (see the metrics and webhook modules),
//! and it does not decide what is worth logging: call sites do, following the contract below.
//!
//! # Where logs go ([`init`] with [`LogTarget::Auto`])
//!
//! 1. stderr is the journal (`JOURNAL_STREAM` names stderr's `dev:ino`, as systemd sets it for
//!    `StandardError=journal`): native journal entries only, nothing on stderr, so nothing is
//!    logged twice. If the journal socket cannot be reached, plain lines with `<N>` syslog
//!    prefixes go to stderr, which journald turns back into priorities.
//! 2. stderr is a terminal: human lines on stderr (colours unless `NO_COLOR` is set).
//! 3. the process is a service (`INVOCATION_ID` or `JOURNAL_STREAM` set, stderr elsewhere) and
//!    `/run/systemd/journal/socket` accepts datagrams: the journal.
//! 4. otherwise (cron, pipes, containers without journald): timestamped lines on stderr.
//!
//! [`LogTarget::Stderr`] and [`LogTarget::Journal`] force a choice; forcing the journal when
//! it is unreachable is an error rather than a silent fallback.
//!
//! # Filter
//!
//! [`Options::filter`] (a CLI flag, if the CLI has one) beats `GOCACHE_WARDEN_LOG`
//! (RUST_LOG syntax, e.g. `debug` or `info,zbus=warn`; ignored when empty), which beats
//! `--verbose`: 0 = `info`, 1 = our crate at `debug`, 2 = our crate at `trace`, 3+ =
//! everything at `trace`. The filter applies to both destinations.
//!
//! # Field contract
//!
//! Every event that reports something the agent did or found carries an action and the fields
//! that apply, with identifiers exactly as below (the journal layer upper-cases them and adds
//! no prefix):
//!
//! ```
//! use gocache_warden::logging::{action, verb};
//! # let (path, n, k, dry_run) = (std::path::Path::new("/srv/gocache"), 4096_u64, 3_u64, false);
//! tracing::info!(
//!     gocache_warden_action = action::EVICT,
//!     cache_path = %path.display(),
//!     bytes = n,
//!     entries = k,
//!     dry_run,
//!     "{} {k} entries ({n} bytes) from {}",
//!     verb(dry_run, "evicted", "would evict"),
//!     path.display()
//! );
//! ```
//!
//! | tracing field            | journal field            | meaning                              |
//! |--------------------------|--------------------------|--------------------------------------|
//! | `message` (format args)  | `MESSAGE`                | complete human sentence              |
//! | `gocache_warden_action`  | `GOCACHE_WARDEN_ACTION`  | one of the [`action`] constants     |
//! | `cache_path`             | `CACHE_PATH`             | cache root or entry path             |
//! | `bytes`, `entries`       | `BYTES`, `ENTRIES`       | amounts, plain integers              |
//! | `unit`                   | `UNIT`                   | systemd unit name                    |
//! | `target_uid`             | `TARGET_UID`             | uid whose cache or unit it concerns  |
//! | `reason`                 | `REASON`                 | short machine-friendly reason        |
//! | `error`                  | `ERROR`                  | error text (`error = %e` or `{e:#}`) |
//! | `dry_run`                | `DRY_RUN`                | `true` when nothing was changed      |
//! | `cache_via`              | `CACHE_VIA`              | how a per-user cache was found: `go env`, `manager`, `unit:NAME` |
//!
//! The level sets `PRIORITY`: `error!` = 3 (err) for failures (`evict-failed`,
//! `reload-failed`), `warn!` = 4 (warning) for violations (`violation`,
//! `unit-missing-gocache`), `info!` = 6 (info) for changes and routine events (`evict`,
//! `*-fix`, `unit-drop-in`, `reload`, `sweep`, `startup`), `debug!`/`trace!` = 7.
//! Every entry also has `SYSLOG_IDENTIFIER=gocache-warden` and `tracing-journald`'s
//! `TARGET`, `CODE_FILE`, `CODE_LINE`. Do not name fields `priority`, `message_id`,
//! `syslog_identifier` or `target`: without a prefix they would collide with journal fields.
//!
//! On stderr the `MESSAGE` stands alone (the contract fields are shown only at `-vv` or more),
//! so it must say everything a human needs; any other field is appended as `key=value`.
//! Span fields reach the journal (unprefixed, plus `SPAN_NAME`) but not stderr.
//!
//! [`init`]: crate::logging::init
//! [`LogTarget::Auto`]: crate::logging::LogTarget::Auto
//! [`LogTarget::Stderr`]: crate::logging::LogTarget::Stderr
//! [`LogTarget::Journal`]: crate::logging::LogTarget::Journal
//! [`Options::filter`]: crate::logging::Options::filter
//! [`action`]: crate::logging::action

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, bail};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Value of `SYSLOG_IDENTIFIER` on every journal entry, whatever the executable is called.
pub const SYSLOG_IDENTIFIER: &str = "gocache-warden";

/// Environment variable holding a RUST_LOG-style filter.
pub const FILTER_ENV: &str = "GOCACHE_WARDEN_LOG";

/// Values of the `gocache_warden_action` field (`GOCACHE_WARDEN_ACTION` in the journal).
pub mod action {
    pub const ACL_FIX: &str = "acl-fix";
    pub const MODE_FIX: &str = "mode-fix";
    pub const GROUP_FIX: &str = "group-fix";
    pub const EVICT: &str = "evict";
    pub const EVICT_FAILED: &str = "evict-failed";
    pub const VIOLATION: &str = "violation";
    pub const UNIT_MISSING_GOCACHE: &str = "unit-missing-gocache";
    pub const UNIT_DROP_IN: &str = "unit-drop-in";
    pub const RELOAD: &str = "reload";
    pub const RELOAD_FAILED: &str = "reload-failed";
    pub const SWEEP: &str = "sweep";
    pub const STARTUP: &str = "startup";
    /// `enforce --verify` evicted or quarantined a tampered or untrusted entry.
    pub const INTEGRITY: &str = "integrity";
    pub const INTEGRITY_FAILED: &str = "integrity-failed";
    /// Eviction went on in a directory someone other than root had locked (`crate::locks`).
    pub const LOCK_IGNORED: &str = "lock-ignored";
    /// A Go build failed because of a cache, as the journal said (the `buildfail` module).
    pub const BUILD_FAILURE: &str = "build-failure";
    /// Someone other than a cache's owner wrote an entry into it (the `writers` module).
    pub const FOREIGN_WRITE: &str = "foreign-write";

    /// Every action, for tests and documentation.
    pub const ALL: [&str; 17] = [
        ACL_FIX,
        MODE_FIX,
        GROUP_FIX,
        EVICT,
        EVICT_FAILED,
        VIOLATION,
        UNIT_MISSING_GOCACHE,
        UNIT_DROP_IN,
        RELOAD,
        RELOAD_FAILED,
        SWEEP,
        STARTUP,
        INTEGRITY,
        INTEGRITY_FAILED,
        LOCK_IGNORED,
        BUILD_FAILURE,
        FOREIGN_WRITE,
    ];
}

/// Journal names of the contract fields, for readers of `journalctl -o json` (tests, docs).
pub mod field {
    pub const ACTION: &str = "GOCACHE_WARDEN_ACTION";
    pub const CACHE_PATH: &str = "CACHE_PATH";
    pub const BYTES: &str = "BYTES";
    pub const ENTRIES: &str = "ENTRIES";
    pub const UNIT: &str = "UNIT";
    pub const TARGET_UID: &str = "TARGET_UID";
    pub const REASON: &str = "REASON";
    pub const ERROR: &str = "ERROR";
    pub const DRY_RUN: &str = "DRY_RUN";
    pub const CACHE_VIA: &str = "CACHE_VIA";
}

/// tracing names of the contract fields; stderr hides them below `-vv` because the message
/// already says the same in words.
const CONTRACT_FIELDS: [&str; 10] = [
    "gocache_warden_action",
    "cache_path",
    "bytes",
    "entries",
    "unit",
    "target_uid",
    "reason",
    "error",
    "dry_run",
    "cache_via",
];

/// Picks the dry-run wording: `verb(dry_run, "evicted", "would evict")`.
pub fn verb<'a>(dry_run: bool, done: &'a str, would: &'a str) -> &'a str {
    if dry_run { would } else { done }
}

/// Where the caller wants logs to go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogTarget {
    /// Decide from the environment (see the module documentation).
    #[default]
    Auto,
    Stderr,
    Journal,
}

/// Options for [`init`], usually filled from the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Number of `-v` flags.
    pub verbose: u8,
    /// Explicit filter; overrides `GOCACHE_WARDEN_LOG` and `verbose`.
    pub filter: Option<String>,
    pub target: LogTarget,
}

/// Where [`init`] sent the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Native journal entries with structured fields.
    Journal,
    Stderr(StderrStyle),
}

/// How lines on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrStyle {
    /// A person is watching: optional colour, no timestamps.
    Terminal { color: bool },
    /// A file or pipe: timestamps, no colour.
    Plain,
    /// stderr is a journal stream: `<N>` priority prefixes, no timestamps (journald adds them).
    JournalStream,
}

/// What [`choose`] needs to know about the process.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    stderr_is_journal_stream: bool,
    journal_stream_set: bool,
    invocation_id_set: bool,
    stderr_is_terminal: bool,
    no_color: bool,
}

/// Installs the global subscriber and reports where logs go.
pub fn init(opts: &Options) -> anyhow::Result<Destination> {
    let filter = build_filter(opts)?;
    let facts = observe();
    let journal = match opts.target {
        LogTarget::Stderr => None,
        _ => Some(tracing_journald::layer()),
    };
    let reachable = matches!(journal, Some(Ok(_)));
    let destination = match choose(opts.target, &facts, reachable) {
        Some(destination) => destination,
        None => {
            let err = match journal {
                Some(Err(e)) => e.to_string(),
                _ => "unknown error".to_string(),
            };
            bail!("cannot log to the journal at \"/run/systemd/journal/socket\": {err}");
        }
    };
    let (journal_layer, stderr_layer) = match destination {
        Destination::Journal => {
            let layer = journal
                .and_then(Result::ok)
                .context("journal layer vanished after it was chosen")?;
            (Some(configure_journal(layer)), None)
        }
        Destination::Stderr(style) => {
            let format = HumanFormat {
                style,
                show_contract_fields: opts.verbose >= 2,
            };
            let layer = tracing_subscriber::fmt::layer()
                .event_format(format)
                .with_writer(std::io::stderr);
            (None, Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(journal_layer)
        .with(stderr_layer)
        .try_init()
        .context("cannot install the logger (one is already installed)")?;
    Ok(destination)
}

/// The journal layer as the field contract needs it: unprefixed fields, our identifier,
/// and `info!` as priority 6 instead of tracing-journald's default 5 (notice).
fn configure_journal(layer: tracing_journald::Layer) -> tracing_journald::Layer {
    layer
        .with_field_prefix(None)
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string())
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        })
}

fn build_filter(opts: &Options) -> anyhow::Result<EnvFilter> {
    if let Some(spec) = &opts.filter {
        return EnvFilter::try_new(spec).with_context(|| format!("invalid log filter \"{spec}\""));
    }
    if let Some(spec) = std::env::var(FILTER_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return EnvFilter::try_new(&spec)
            .with_context(|| format!("invalid {FILTER_ENV} filter \"{spec}\""));
    }
    let spec = verbosity_filter(opts.verbose);
    EnvFilter::try_new(spec).with_context(|| format!("invalid built-in log filter \"{spec}\""))
}

fn verbosity_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "info",
        1 => "info,gocache_warden=debug",
        2 => "info,gocache_warden=trace",
        _ => "trace",
    }
}

fn observe() -> Facts {
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    Facts {
        stderr_is_journal_stream: journal_stream
            .as_deref()
            .is_some_and(stderr_matches_journal_stream),
        journal_stream_set: journal_stream.is_some_and(|s| !s.is_empty()),
        invocation_id_set: std::env::var_os("INVOCATION_ID").is_some_and(|s| !s.is_empty()),
        stderr_is_terminal: std::io::stderr().is_terminal(),
        no_color: std::env::var_os("NO_COLOR").is_some_and(|s| !s.is_empty()),
    }
}

/// systemd sets `JOURNAL_STREAM=<st_dev>:<st_ino>` (decimal) of the stream socket it gave us;
/// stdout or stderr may have been redirected since, so compare with stderr itself.
fn stderr_matches_journal_stream(value: &str) -> bool {
    let Some((dev, ino)) = parse_journal_stream(value) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The pure part of the decision; `None` means the journal was forced but is unreachable.
fn choose(target: LogTarget, facts: &Facts, journal_reachable: bool) -> Option<Destination> {
    let stderr_style = if facts.stderr_is_journal_stream {
        StderrStyle::JournalStream
    } else if facts.stderr_is_terminal {
        StderrStyle::Terminal {
            color: !facts.no_color,
        }
    } else {
        StderrStyle::Plain
    };
    match target {
        LogTarget::Stderr => Some(Destination::Stderr(stderr_style)),
        LogTarget::Journal => journal_reachable.then_some(Destination::Journal),
        LogTarget::Auto => {
            let service = facts.journal_stream_set || facts.invocation_id_set;
            let wants_journal =
                facts.stderr_is_journal_stream || (!facts.stderr_is_terminal && service);
            Some(if wants_journal && journal_reachable {
                Destination::Journal
            } else {
                Destination::Stderr(stderr_style)
            })
        }
    }
}

/// Human lines for stderr: `warning: <message> [other fields]`, styled per [`StderrStyle`].
struct HumanFormat {
    style: StderrStyle,
    show_contract_fields: bool,
}

impl<S, N> FormatEvent<S, N> for HumanFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        let (label, color) = match level {
            Level::ERROR => ("error: ", "\x1b[1;31m"),
            Level::WARN => ("warning: ", "\x1b[1;33m"),
            Level::INFO => ("", ""),
            Level::DEBUG => ("debug: ", "\x1b[34m"),
            Level::TRACE => ("trace: ", "\x1b[35m"),
        };
        match self.style {
            StderrStyle::JournalStream => write!(writer, "<{}>", syslog_priority(level))?,
            StderrStyle::Plain => {
                SystemTime.format_time(&mut writer)?;
                write!(writer, " {label}")?;
            }
            StderrStyle::Terminal { color: true } if !label.is_empty() => {
                write!(writer, "{color}{label}\x1b[0m")?;
            }
            StderrStyle::Terminal { .. } => writer.write_str(label)?,
        }
        let mut visitor = HumanFields {
            message: String::new(),
            rest: String::new(),
            show_contract_fields: self.show_contract_fields,
        };
        event.record(&mut visitor);
        // Keep one event on one line: journald and grep both work per line.
        let text = format!("{}{}", visitor.message, visitor.rest);
        writeln!(writer, "{}", text.replace('\n', " "))
    }
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

struct HumanFields {
    message: String,
    rest: String,
    show_contract_fields: bool,
}

impl Visit for HumanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name == "message" {
            let _ = write!(self.message, "{value:?}");
        } else if self.show_contract_fields || !CONTRACT_FIELDS.contains(&name) {
            let _ = write!(self.rest, " {name}={value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn verb_picks_dry_run_wording() {
        assert_eq!(verb(true, "evicted", "would evict"), "would evict");
        assert_eq!(verb(false, "evicted", "would evict"), "evicted");
    }

    #[test]
    fn journal_stream_parses_dev_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:x"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    #[test]
    fn auto_choice_follows_documented_order() {
        let stream = Facts {
            stderr_is_journal_stream: true,
            journal_stream_set: true,
            ..Facts::default()
        };
        assert_eq!(
            choose(LogTarget::Auto, &stream, true),
            Some(Destination::Journal)
        );
        assert_eq!(
            choose(LogTarget::Auto, &stream, false),
            Some(Destination::Stderr(StderrStyle::JournalStream))
        );
        let tty_in_service = Facts {
            stderr_is_terminal: true,
            invocation_id_set: true,
            ..Facts::default()
        };
        assert_eq!(
            choose(LogTarget::Auto, &tty_in_service, true),
            Some(Destination::Stderr(StderrStyle::Terminal { color: true }))
        );
        let service = Facts {
            invocation_id_set: true,
            ..Facts::default()
        };
        assert_eq!(
            choose(LogTarget::Auto, &service, true),
            Some(Destination::Journal)
        );
        assert_eq!(
            choose(LogTarget::Auto, &service, false),
            Some(Destination::Stderr(StderrStyle::Plain))
        );
        let cron = Facts::default();
        assert_eq!(
            choose(LogTarget::Auto, &cron, true),
            Some(Destination::Stderr(StderrStyle::Plain))
        );
    }

    #[test]
    fn forced_targets_are_obeyed() {
        let service = Facts {
            invocation_id_set: true,
            no_color: true,
            stderr_is_terminal: true,
            ..Facts::default()
        };
        assert_eq!(
            choose(LogTarget::Stderr, &service, true),
            Some(Destination::Stderr(StderrStyle::Terminal { color: false }))
        );
        assert_eq!(
            choose(LogTarget::Journal, &Facts::default(), true),
            Some(Destination::Journal)
        );
        assert_eq!(choose(LogTarget::Journal, &Facts::default(), false), None);
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn render(style: StderrStyle, show_contract_fields: bool) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(HumanFormat {
                style,
                show_contract_fields,
            })
            .with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                gocache_warden_action = action::VIOLATION,
                cache_path = "/srv/gocache",
                extra = 7,
                "group \"builders\" lacks write\naccess"
            );
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn stderr_lines_show_message_and_non_contract_fields() {
        assert_eq!(
            render(StderrStyle::Terminal { color: false }, false),
            "warning: group \"builders\" lacks write access extra=7\n"
        );
        assert_eq!(
            render(StderrStyle::JournalStream, false),
            "<4>group \"builders\" lacks write access extra=7\n"
        );
        assert_eq!(
            render(StderrStyle::Terminal { color: false }, true),
            "warning: group \"builders\" lacks write access \
             gocache_warden_action=\"violation\" cache_path=\"/srv/gocache\" extra=7\n"
        );
        let plain = render(StderrStyle::Plain, false);
        assert!(
            plain.ends_with(" warning: group \"builders\" lacks write access extra=7\n"),
            "{plain}"
        );
        assert!(plain.starts_with("20"), "timestamp first: {plain}");
    }

    #[test]
    fn verbosity_filters_parse() {
        for verbose in 0..5 {
            assert!(EnvFilter::try_new(verbosity_filter(verbose)).is_ok());
        }
    }
}
