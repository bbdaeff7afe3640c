//! The plan is the whole truth: `apply` consumes only the `Plan`, so the JSON `enforce --json`
//! prints is exactly what runs. A plan read back from its JSON applies as the original does,
//! and a plan changed in its JSON is followed as changed.

mod support;

use gocache_warden::apply;
use gocache_warden::goenv::GoEnv;
use gocache_warden::plan::Plan;
use gocache_warden::policy::{self, Scope};
use std::path::Path;
use support::cachegen::build;
use support::{ensure_group, tempdir};

/// A plan for a shared cache over its limit whose entries lack the group's ACL: both eviction
/// and fixes are planned.
fn planned(d: &Path, group: &str) -> (support::cachegen::Cache, Plan) {
    support::require_root();
    ensure_group(group);
    let c = build(&d.join("cache"));
    let evictable: u64 = c.units.iter().map(|u| u.bytes).sum();
    // The limit is on the whole cache: Go's layout (root, shards, README) counts too.
    let fixed = support::du_bytes(&c.root) - evictable;
    let p = support::policy(
        d,
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = {}\nmin_age = \"1h\"\ngroup = \"{group}\"\ngroup_access = \"rwx\"\nother = \"---\"\n",
            c.root.display(),
            fixed + evictable / 2
        ),
    );
    let pol = policy::load_for(Scope::System, &[p]).expect("policy");
    let s = gocache_warden::sweep::run(&pol, Scope::System, &GoEnv::from_process(), true);
    let plan = s.plan;
    assert_eq!(plan.caches.len(), 1, "{plan:?}");
    assert!(plan.caches[0].eviction.is_some() && !plan.caches[0].fixes.is_empty());
    (c, plan)
}

fn getfacl(p: &Path) -> String {
    let o = std::process::Command::new("getfacl")
        .args(["-cp"])
        .arg(p)
        .output()
        .expect("getfacl (apt-get install acl)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_plan_read_back_from_its_json_applies_as_the_original() {
    let d = tempdir();
    let (c, plan) = planned(d.path(), "gwt-plan");
    let back: Plan =
        serde_json::from_str(&serde_json::to_string(&plan).expect("json")).expect("read back");
    // The same decisions, entry by entry, in a dry run of either.
    let (a, b) = (apply::apply(&plan, true), apply::apply(&back, true));
    assert_eq!(
        serde_json::to_value(&a).expect("json"),
        serde_json::to_value(&b).expect("json")
    );
    // And the one read back does them.
    let done = apply::apply(&back, false);
    let (want, got) = (&a.caches[0], &done.caches[0]);
    assert_eq!(got.failed.count, 0, "{got:?}");
    assert_eq!(got.evicted, want.evicted, "{want:?}\n{got:?}");
    assert_eq!(got.fixed, want.fixed);
    let kept = c
        .units
        .iter()
        .find(|u| u.paths[0].exists())
        .expect("a unit stays");
    assert!(getfacl(&kept.paths[0]).contains("group:gwt-plan:rw-"));
}

#[test]
fn apply_follows_a_changed_plan_not_the_policy() {
    let d = tempdir();
    let (c, plan) = planned(d.path(), "gwt-plan");
    let mut v = serde_json::to_value(&plan).expect("json");
    // The policy says rwx and an eviction; the plan now says r-x and no eviction.
    v["caches"][0]["permissions"]["group_access"] = "r-x".into();
    v["caches"][0]["eviction"] = serde_json::Value::Null;
    let changed: Plan = serde_json::from_value(v).expect("read back");
    let out = apply::apply(&changed, false);
    assert_eq!(out.caches[0].failed.count, 0, "{out:?}");
    assert!(out.caches[0].evicted.is_empty(), "{out:?}");
    for u in &c.units {
        assert!(u.paths.iter().all(|p| p.exists()), "{u:?} was evicted");
    }
    let file = &c.units[1].paths[0];
    assert!(
        getfacl(file).contains("group:gwt-plan:r--"),
        "{}",
        getfacl(file)
    );
    let shard = file.parent().expect("shard");
    assert!(
        getfacl(shard).contains("group:gwt-plan:r-x"),
        "{}",
        getfacl(shard)
    );
}

/// Inspection and apply classify with one function: a stray `notes-a` in a shard is foreign
/// to both (reported by `check`, refused by `enforce`), not an action record apply skips.
#[test]
fn apply_refuses_what_inspection_calls_foreign() {
    support::require_root();
    let d = tempdir();
    let c = build(&d.path().join("cache"));
    std::fs::write(c.root.join("ab/notes-a"), "mine").expect("write");
    let evictable: u64 = c.units.iter().map(|u| u.bytes).sum();
    // The limit is on the whole cache: Go's layout (root, shards, README) counts too.
    let fixed = support::du_bytes(&c.root) - evictable;
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = {}\n",
            c.root.display(),
            fixed + evictable / 2
        ),
    );
    let o = support::run(
        [
            "--policy".as_ref(),
            p.as_os_str(),
            "enforce".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
    let v = support::json(&o);
    let plan = &v["plan"]["caches"][0];
    assert_eq!(plan["refused"]["foreign"]["count"], 1, "{plan}");
    let out = &v["outcome"]["caches"][0];
    assert_eq!(out["refused"]["foreign"]["count"], 1, "{out}");
    assert!(c.root.join("ab/notes-a").exists());
}
