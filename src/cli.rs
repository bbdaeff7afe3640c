//! The command line: argument parsing, dispatch, and the mapping of outcomes to exit codes.
//!
//! Exit codes are an interface (configuration management and scripts branch on them):
//! 0 compliant / nothing to do / all applied, 1 violations found or some actions failed,
//! 2 usage or policy error, 3 a cache could not be inspected.

use crate::check;
use crate::goenv::GoEnv;
use crate::policy::{self, PolicyError, Scope};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub const EXIT_OK: i32 = 0;
pub const EXIT_VIOLATIONS: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INSPECT: i32 = 3;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  compliant (check), nothing to do or everything applied (enforce)
  1  violations found (check), some actions failed (enforce)
  2  usage or policy error
  3  a cache could not be inspected";

const ENFORCE_EXIT_HELP: &str = "\
Exit codes:
  0  nothing to do, or everything applied
  1  some actions failed (listed)
  2  usage or policy error
  3  a cache could not be inspected

With --detailed-exitcode: 0 no change, 2 changed (or would change), 1 failed
(including a usage or policy error).";

#[derive(Debug, Parser)]
#[command(name = "gocache-warden", version, about = "Keeps Go build and module caches healthy: size limits, LRU eviction, shared-cache permissions", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Policy file or directory of *.toml drop-ins, replacing the policy.d directories
    /// (the embedded default always comes first). Repeatable.
    #[arg(long, global = true, value_name = "FILE|DIR")]
    pub policy: Vec<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Instance: system (shared caches, root) or user (your own caches). Default: system
    /// when run as root, else user.
    #[arg(long, global = true, value_enum)]
    pub scope: Option<Scope>,
    /// Hand webhook deliveries to the relay listening on this socket instead of connecting
    /// out (the system unit has no network: `--alert-relay /run/gocache-warden-relay.sock`).
    #[arg(long, global = true, value_name = "SOCKET")]
    pub alert_relay: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the policy's caches and explain every deviation.
    #[command(after_help = EXIT_CODES_HELP)]
    Check {
        /// Machine-readable report (schema gocache-warden.check/v1).
        #[arg(long)]
        json: bool,
        /// Also hash every output of the build caches (a `-d` must have the SHA-256 its
        /// name states) and check owners against trusted_writers.
        #[arg(long)]
        verify: bool,
    },
    /// Bring the policy's caches to policy: evict by age and size (LRU), fix group, setgid,
    /// ACLs and other access, rewrite trim.txt. Prints the plan, then what was done.
    #[command(after_help = ENFORCE_EXIT_HELP)]
    Enforce {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable plan and outcome (schema gocache-warden.enforce/v1).
        #[arg(long)]
        json: bool,
        /// Exit 0 when nothing changed, 2 when something changed (or would, with
        /// --dry-run), 1 on failure: for Ansible/Salt/Puppet `changed` detection.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Also verify the build caches' outputs and owners, and evict or quarantine what
        /// fails as each cache's `untrusted` setting says.
        #[arg(long)]
        verify: bool,
    },
    /// Run as the agent (a Type=notify systemd service): sweep on a timer and on growth,
    /// reload on SIGHUP, stop on SIGTERM.
    Run,
    /// List service units that lack the policy's GOCACHE (or point elsewhere).
    #[command(
        after_help = "Exit codes:\n  0  no findings\n  1  findings (or a failed remediation)\n  2  usage or policy error"
    )]
    Units {
        /// Machine-readable findings.
        #[arg(long)]
        json: bool,
        /// Write the drop-ins of rules with remediation = "drop-in", reload, verify.
        #[arg(long)]
        fix: bool,
    },
    /// Validate and show policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A GOCACHEPROG for Go >= 1.24: serves builds from shared read-only caches (every
    /// output re-hashed, entries of untrusted writers refused) and the user's own cache,
    /// and writes only to the own cache. Use as GOCACHEPROG="gocache-warden cacheprog
    /// --shared /srv/gocache --trusted @cachewriters"; it speaks JSON on stdin/stdout.
    Cacheprog {
        /// A shared read-only cache (Go's layout), searched after the own cache. Repeatable.
        /// Default: the system policy's build caches that have trusted_writers.
        #[arg(long, value_name = "DIR")]
        shared: Vec<PathBuf>,
        /// Who may have written the --shared caches' entries: a user or @group
        /// (repeatable). Without it, entries are still re-hashed but any owner is accepted.
        #[arg(long, value_name = "USER|@GROUP", requires = "shared")]
        trusted: Vec<String>,
        /// The own cache (default: GOCACHE as `go env GOCACHE` resolves it).
        #[arg(long, value_name = "DIR")]
        own: Option<PathBuf>,
    },
    /// What a running process really uses: GOCACHE, GOMODCACHE, GOENV, GOFLAGS and
    /// GOCACHEPROG from its environment and go env file, its systemd unit and user, whether
    /// each cache is under policy and its state, and the cache files it holds open. Root, or
    /// the process's owner.
    #[command(
        after_help = "Exit codes:\n  0  explained\n  1  not allowed (another user's process), or /proc could not be read\n  2  usage or policy error, or no such process"
    )]
    Explain {
        /// The process id.
        pid: i32,
        /// Machine-readable (schema gocache-warden.explain/v1).
        #[arg(long)]
        json: bool,
    },
    /// Alert sinks.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Write the man page and shell completions (bash, zsh, fish) into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory (created).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Send a test alert (about the policy's first cache, with its real figures) through
    /// every [alert.*] sink, once, and say how each delivery went. Exit 0 if all succeeded.
    Test,
    /// Deliver one webhook request read from standard input and write the outcome to
    /// standard output: the relay gocache-warden-relay@.service runs, per connection to
    /// gocache-warden-relay.socket, for the system agent, which has no network.
    #[command(hide = true)]
    Relay,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy: the given files (merged after the embedded default), or the
    /// installed drop-ins. Suitable as a `validate:` hook for templated policy files.
    Validate {
        /// Files or directories to validate instead of the installed drop-ins.
        paths: Vec<PathBuf>,
    },
    /// Print the policy sources in merge order, each under a "# FILE" header.
    Cat {
        /// Print the merged, validated policy as JSON instead.
        #[arg(long)]
        effective: bool,
    },
}

fn print_policy_error(e: &PolicyError) {
    for line in e.to_string().lines() {
        eprintln!("error: {line}");
    }
}

/// Raises the soft open-file limit to the hard one: a walk keeps one directory open per
/// level, and a hostile tree can be deeper than systemd's default soft limit of 1024.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    raise_nofile();
    // Under --detailed-exitcode 2 means "changed": configuration management would read a
    // usage error as a successful change. Decided from the raw arguments, since parsing is
    // what failed.
    let usage = if std::env::args_os().any(|a| a == "--detailed-exitcode") {
        EXIT_VIOLATIONS
    } else {
        EXIT_USAGE
    };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { usage } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    let scope = cli.scope.unwrap_or_else(Scope::detect);
    let log = crate::logging::Options {
        verbose: cli.verbose,
        ..Default::default()
    };
    if let Err(e) = crate::logging::init(&log) {
        eprintln!("error: {e}");
        return usage;
    }
    match run(&cli, scope) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if usage == EXIT_VIOLATIONS {
                usage
            } else if e.downcast_ref::<PolicyError>().is_some() {
                EXIT_USAGE
            } else {
                EXIT_INSPECT
            }
        }
    }
}

fn run(cli: &Cli, scope: Scope) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Cacheprog {
            shared,
            trusted,
            own,
        } => {
            let shared = if shared.is_empty() {
                // The system policy says which caches are shared and who writes them. It is
                // read as the invoking user; a policy that does not load only costs hits.
                match policy::load_for(Scope::System, &cli.policy) {
                    Ok(p) => crate::cacheprog::shared_from_policy(&p),
                    Err(e) => {
                        if cli.verbose > 0 {
                            eprintln!("gocache-warden cacheprog: policy: {e}; no shared caches");
                        }
                        Vec::new()
                    }
                }
            } else {
                shared
                    .iter()
                    .map(|p| crate::cacheprog::SharedSpec {
                        path: p.clone(),
                        trusted: trusted.clone(),
                    })
                    .collect()
            };
            Ok(crate::cacheprog::run(&crate::cacheprog::Options {
                own: own.clone(),
                shared,
                verbose: cli.verbose > 0,
            }))
        }
        Command::Policy(PolicyCommand::Validate { paths }) => {
            let explicit = if paths.is_empty() { &cli.policy } else { paths };
            match policy::load_for(scope, explicit) {
                Ok(p) => {
                    println!(
                        "policy ok: {} cache(s), {} unit rule(s) from {}",
                        p.caches.len(),
                        p.units.len(),
                        p.sources.join(", ")
                    );
                    Ok(EXIT_OK)
                }
                Err(e) => {
                    print_policy_error(&e);
                    Ok(EXIT_USAGE)
                }
            }
        }
        Command::Policy(PolicyCommand::Cat { effective }) => {
            let sources = match policy::collect(scope, &cli.policy) {
                Ok(s) => s,
                Err(e) => {
                    print_policy_error(&e);
                    return Ok(EXIT_USAGE);
                }
            };
            if *effective {
                match policy::load(&sources) {
                    Ok(p) => println!("{}", p.to_json()?),
                    Err(e) => {
                        print_policy_error(&e);
                        return Ok(EXIT_USAGE);
                    }
                }
            } else {
                print!("{}", policy::cat(&sources));
            }
            Ok(EXIT_OK)
        }
        Command::Enforce {
            dry_run,
            json,
            detailed_exitcode,
            verify,
        } => {
            let p = match policy::load_for(scope, &cli.policy) {
                Ok(p) => p,
                Err(e) => {
                    print_policy_error(&e);
                    // 2 means "changed" under --detailed-exitcode: a policy error is a failure.
                    return Ok(if *detailed_exitcode {
                        EXIT_VIOLATIONS
                    } else {
                        EXIT_USAGE
                    });
                }
            };
            enforce(&p, scope, *dry_run, *json, *detailed_exitcode, *verify)
        }
        Command::GenerateAssets { dir } => {
            generate_assets(dir)?;
            Ok(EXIT_OK)
        }
        Command::Run => crate::daemon::run(crate::daemon::Options {
            scope,
            policy_paths: cli.policy.clone(),
            alert_relay: cli.alert_relay.clone(),
        }),
        Command::Alert(AlertCommand::Relay) => {
            crate::alert::relay::serve(std::io::stdin().lock(), std::io::stdout().lock())?;
            Ok(EXIT_OK)
        }
        Command::Units { json, fix } => {
            let p = match policy::load_for(scope, &cli.policy) {
                Ok(p) => p,
                Err(e) => {
                    print_policy_error(&e);
                    return Ok(EXIT_USAGE);
                }
            };
            units_cmd(&p, scope, *json, *fix)
        }
        Command::Explain { pid, json } => {
            let p = match policy::load_for(scope, &cli.policy) {
                Ok(p) => p,
                Err(e) => {
                    print_policy_error(&e);
                    return Ok(EXIT_USAGE);
                }
            };
            match crate::explain::explain(*pid, &p, scope) {
                Ok(x) if *json => {
                    println!("{}", serde_json::to_string_pretty(&x)?);
                    Ok(EXIT_OK)
                }
                Ok(x) => {
                    print!("{}", crate::explain::render(&x));
                    Ok(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("gocache-warden explain: {e}");
                    Ok(match e {
                        crate::explain::Error::NotFound(_) => EXIT_USAGE,
                        _ => EXIT_VIOLATIONS,
                    })
                }
            }
        }
        Command::Alert(AlertCommand::Test) => {
            let p = match policy::load_for(scope, &cli.policy) {
                Ok(p) => p,
                Err(e) => {
                    print_policy_error(&e);
                    return Ok(EXIT_USAGE);
                }
            };
            alert_test(&p, cli.alert_relay.as_deref())
        }
        Command::Check { json, verify } => {
            let p = match policy::load_for(scope, &cli.policy) {
                Ok(p) => p,
                Err(e) => {
                    print_policy_error(&e);
                    return Ok(EXIT_USAGE);
                }
            };
            let mut report = check::run(&p, scope, &GoEnv::from_process());
            if *verify {
                crate::integrity::verify_report(&mut report, &p, false);
            }
            attach_writers(&mut report, scope);
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check::render(&report));
            }
            Ok(report.exit_code)
        }
    }
}

/// The running agent's top writers (`crate::writers`), from its state directory; nothing
/// when no agent of this scope runs (or its file cannot be read, which is said).
fn attach_writers(report: &mut crate::report::Report, scope: Scope) {
    let Some(dir) = crate::daemon::state::dir(scope) else {
        return;
    };
    let file = crate::writers::tally::FILE;
    let tally =
        crate::daemon::state::read(&dir, file, crate::writers::tally::MAX_FILE).and_then(|b| {
            b.map_or(Ok(None), |b| {
                crate::writers::tally::Tally::running_from(&b, &dir.join(file))
            })
        });
    match tally {
        Ok(Some(t)) => crate::writers::attach(report, &t),
        Ok(None) => {}
        // Not readable by this user (the system agent's is root's): no figures, no error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
            }) => {}
        Err(e) => eprintln!("gocache-warden: top writers unknown: {e:#}"),
    }
}

fn enforce(
    p: &policy::Policy,
    scope: Scope,
    dry_run: bool,
    json: bool,
    detailed: bool,
    verify: bool,
) -> anyhow::Result<i32> {
    let mut sweep = crate::sweep::run(p, scope, &GoEnv::from_process(), dry_run);
    // After the sweep: verification acts on what eviction left. Under --dry-run it only
    // reports (the policy's action is what enforce would do).
    let verified = verify.then(|| {
        let mut report = check::run(p, scope, &GoEnv::from_process());
        crate::integrity::verify_report(&mut report, p, !dry_run)
    });
    let verify_json: Vec<serde_json::Value> = verified
        .iter()
        .flatten()
        .map(|(path, r)| match r {
            Ok(v) => serde_json::json!({"path": path, "verified": v}),
            Err(e) => serde_json::json!({"path": path, "error": format!("{e:#}")}),
        })
        .collect();
    let verify_failures: u64 = verified
        .iter()
        .flatten()
        .map(|(_, r)| r.as_ref().map_or(1, |v| v.failed))
        .sum();
    let verify_changed = verified
        .iter()
        .flatten()
        .any(|(_, r)| r.as_ref().is_ok_and(|v| v.evicted + v.quarantined > 0));
    if dry_run && json {
        // The JSON of a dry run also carries what apply would do, entry rule by entry rule.
        sweep.outcome = Some(crate::apply::apply(&sweep.plan, true));
    }
    let (plan, outcome, inspect_failed) = (&sweep.plan, &sweep.outcome, sweep.inspect_failed());
    let changed = verify_changed
        || if dry_run {
            !plan.is_empty()
        } else {
            outcome.as_ref().is_some_and(|o| o.changed())
        };
    let failures = outcome.as_ref().map_or(0, |o| o.failures()) + verify_failures;
    if json {
        let doc = serde_json::json!({
            "schema": "gocache-warden.enforce/v1",
            "dry_run": dry_run,
            "changed": changed,
            "plan": plan,
            "outcome": outcome,
            "duration_seconds": sweep.duration.as_secs_f64(),
        });
        let mut doc = doc;
        if verify {
            doc["verify"] = serde_json::Value::Array(verify_json);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{plan}");
        if let Some(o) = &outcome {
            println!("\n{}", o.summary());
            for c in &o.caches {
                for ex in &c.failed.examples {
                    println!("  failed: {}", crate::scan::display_path(ex));
                }
                for (v, t) in &c.refused {
                    println!("  left alone: {} {} entries", t.count, v.as_str());
                }
                if c.trim_skipped_locked {
                    println!(
                        "  trim.txt in {} not rewritten: locked by someone else",
                        c.path.display()
                    );
                }
                if c.locked_skipped > 0 {
                    println!(
                        "  skipped {} locked shard(s) or module(s) in {}",
                        c.locked_skipped,
                        c.path.display()
                    );
                }
                if c.locks_ignored.count > 0 {
                    println!(
                        "  evicted in {} place(s) someone other than root held locked (only root's locks stop eviction; a module version's after {}s): {}",
                        c.locks_ignored.count,
                        crate::locks::PATIENCE,
                        c.locks_ignored
                            .examples
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                }
            }
        }
        for (path, r) in verified.iter().flatten() {
            match r {
                Ok(v) => println!(
                    "verify {}: {} outputs hashed, {} tampered, {} untrusted, {} unverifiable, {} incomplete; {} evicted, {} quarantined, {} failed",
                    path.display(),
                    v.outputs,
                    v.tampered,
                    v.untrusted,
                    v.unverifiable,
                    v.incomplete,
                    v.evicted,
                    v.quarantined,
                    v.failed
                ),
                Err(e) => println!("verify {}: {e:#}", path.display()),
            }
        }
    }
    let mut refused = false;
    for why in sweep.refused() {
        eprintln!("error: {why}");
        refused = true;
    }
    Ok(if failures > 0 || refused {
        EXIT_VIOLATIONS
    } else if inspect_failed {
        EXIT_INSPECT
    } else if detailed && changed {
        2
    } else {
        EXIT_OK
    })
}

fn units_cmd(p: &policy::Policy, scope: Scope, json: bool, fix: bool) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(crate::units::inspect(p, scope, fix));
    let findings = r.inspection.findings();
    let failed = r
        .remediations
        .iter()
        .any(|m| !matches!(m.outcome, crate::systemd::Outcome::Fixed { .. }));
    let open = findings
        .iter()
        .filter(|f| {
            !r.remediations.iter().any(|m| {
                m.unit == f.unit && matches!(m.outcome, crate::systemd::Outcome::Fixed { .. })
            })
        })
        .count();
    if json {
        let doc = serde_json::json!({
            "schema": "gocache-warden.units/v1",
            "findings": findings,
            "units": r.inspection.units,
            "manager_errors": r.inspection.manager_errors,
            "unit_errors": r.inspection.unit_errors,
            "plan": r.plan,
            "remediations": r.remediations,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        if p.units.is_empty() {
            println!("no [units.*] rules in the policy: nothing to inspect");
        }
        println!(
            "{} unit(s) inspected, {} finding(s)",
            r.inspection.units.len(),
            findings.len()
        );
        for f in &findings {
            println!("  {f}");
        }
        for e in &r.inspection.manager_errors {
            println!("  cannot reach {}: {}", e.target, e.msg);
        }
        if !fix && !r.plan.dropins.is_empty() {
            print!("{}", r.plan);
        }
        for m in &r.remediations {
            println!("  {m}");
        }
    }
    Ok(if open > 0 || failed {
        EXIT_VIOLATIONS
    } else {
        EXIT_OK
    })
}

fn render_subcommands(page: &mut Vec<u8>, cmd: &clap::Command, prefix: &str) -> anyhow::Result<()> {
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let full = format!("{prefix} {}", sub.get_name());
        page.extend_from_slice(format!(".SH \"{}\"\n", full.to_uppercase()).as_bytes());
        let man = clap_mangen::Man::new(sub.clone().bin_name(&full));
        man.render_description_section(page)?;
        man.render_synopsis_section(page)?;
        man.render_options_section(page)?;
        if sub.get_after_help().is_some() {
            man.render_extra_section(page)?;
        }
        render_subcommands(page, sub, &full)?;
    }
    Ok(())
}

/// The man page (every subcommand in one page) and the completions, generated from the same
/// clap definitions the binary parses with, so they never drift from it.
fn generate_assets(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create \"{}\"", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_extra_section(&mut page)?;
    // One page documents every subcommand, nested ones included: a section each.
    render_subcommands(&mut page, &cmd, "gocache-warden")?;
    man.render_version_section(&mut page)?;
    let path = dir.join("gocache-warden.1");
    std::fs::write(&path, &page).with_context(|| format!("cannot write \"{}\"", path.display()))?;
    // The packaged copy, compressed as Debian policy asks (`gzip -9n`: no name, no timestamp,
    // so the .deb is reproducible).
    let gz = dir.join("gocache-warden.1.gz");
    let write_gz = || -> std::io::Result<()> {
        use std::io::Write;
        let f = std::fs::File::create(&gz)?;
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .write(f, flate2::Compression::best());
        enc.write_all(&page)?;
        enc.finish()?.sync_all()
    };
    write_gz().with_context(|| format!("cannot write \"{}\"", gz.display()))?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "gocache-warden.bash"),
        (clap_complete::Shell::Zsh, "_gocache-warden"),
        (clap_complete::Shell::Fish, "gocache-warden.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "gocache-warden", &mut buf);
        let path = dir.join(file);
        std::fs::write(&path, buf)
            .with_context(|| format!("cannot write \"{}\"", path.display()))?;
    }
    Ok(())
}

fn alert_test(p: &policy::Policy, relay: Option<&std::path::Path>) -> anyhow::Result<i32> {
    use crate::alert::{Alert, AlertKind, AlertStatus, Severity};
    let mut sinks = crate::daemon::observe::sinks(p, relay)?;
    if sinks.is_empty() {
        println!("no [alert.*] sinks in the policy: nothing to test");
        return Ok(EXIT_VIOLATIONS);
    }
    let (targets, _) = check::targets(p, Scope::detect(), &GoEnv::from_process());
    let report = targets
        .first()
        .map(|t| check::inspect_target(t, check::now()));
    let path = report.as_ref().and_then(|r| r.path.clone());
    let root = path
        .as_deref()
        .and_then(|p| crate::alert::describe_root(p).ok());
    let size = report
        .as_ref()
        .and_then(|r| r.observed.as_ref())
        .map(|o| o.allocated_bytes);
    let limit = report.as_ref().and_then(|r| r.limit_bytes);
    let host = crate::sweep::hostname();
    let alert = Alert {
        id: "test".into(),
        kind: AlertKind::Test,
        status: AlertStatus::Firing,
        severity: Severity::Warning,
        summary: format!(
            "Test alert from gocache-warden on {host}: delivery works; nothing is wrong."
        ),
        host,
        cache_kind: report.as_ref().map(|r| match r.kind {
            policy::CacheKind::Build => crate::metrics::CacheKind::Build,
            policy::CacheKind::Module => crate::metrics::CacheKind::Module,
        }),
        cache: path,
        uid: root.as_ref().map(|r| r.uid),
        user: root.as_ref().map(|r| r.user.clone()),
        size_bytes: size,
        limit_bytes: limit,
        percent_of_limit: size
            .zip(limit)
            .map(|(s, l)| s as f64 * 100.0 / l.max(1) as f64),
        inodes_used: None,
        inodes_total: None,
        top_users: Vec::new(),
        violations: Default::default(),
        errors: Default::default(),
        root,
        units: Vec::new(),
        actions: vec!["none: this is a test".into()],
        since: None,
        sent_at: Some(chrono::Utc::now().to_rfc3339()),
    };
    let mut failed = 0;
    for s in &mut sinks {
        match s.deliver(&alert) {
            Ok(()) => println!("{}: delivered", s.name()),
            Err(e) => {
                failed += 1;
                println!("{}: failed: {}", s.name(), e.reason);
            }
        }
    }
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_VIOLATIONS
    })
}
