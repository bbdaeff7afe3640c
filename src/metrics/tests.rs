//! The exporter's own tests: label bookkeeping, top-N users, series that come and go.

use super::*;

fn owner(uid: u32, name: &str, bytes: u64) -> OwnerUsage {
    OwnerUsage {
        uid,
        name: name.to_string(),
        bytes,
    }
}

#[test]
fn every_cacheprog_and_integrity_family_is_a_known_name() {
    for n in cacheprog::NAMES.iter().chain(integrity::NAMES) {
        assert!(METRIC_NAMES.contains(n), "{n}");
    }
}

#[test]
fn cacheprog_series_follow_the_file_and_go_with_the_cache() {
    let reg = Registry::new();
    let m = Metrics::new(&reg, MetricsConfig::default()).expect("metrics");
    let path = PathBuf::from("/home/alice/.cache/go-build");
    let mut s = CacheprogSnapshot {
        path: path.clone(),
        kind: CacheKind::Build,
        user: "alice".into(),
        shared_hits: 7,
        shared_hit_bytes: 700,
        ..Default::default()
    };
    m.observe_cacheprog(&s);
    let line = |src: &str, v: u64| {
        format!(
            "gocache_warden_cacheprog_hits_total{{cache=\"/home/alice/.cache/go-build\",kind=\"build\",source=\"{src}\",user=\"alice\"}} {v}"
        )
    };
    let text = encode_text(&reg).expect("text");
    assert!(text.contains(&line("shared", 7)), "{text}");
    assert!(text.contains(&line("own", 0)), "zeros, not absent: {text}");
    s.shared_hits = 9;
    m.observe_cacheprog(&s);
    assert!(
        encode_text(&reg)
            .expect("text")
            .contains(&line("shared", 9))
    );
    // The user deleted the file: the series goes back with it (a counter reset).
    s.shared_hits = 2;
    m.observe_cacheprog(&s);
    assert!(
        encode_text(&reg)
            .expect("text")
            .contains(&line("shared", 2))
    );
    m.set_caches(&[]);
    assert!(
        !encode_text(&reg)
            .expect("text")
            .contains("cacheprog_hits_total{")
    );
}

#[test]
fn top_users_keeps_n_and_sums_the_rest() {
    let owners = vec![
        owner(1, "a", 10),
        owner(2, "b", 30),
        owner(3, "", 20),
        owner(4, "d", 5),
    ];
    let top = top_users(&owners, 2);
    assert_eq!(top.get("b"), Some(&30));
    assert_eq!(top.get("3"), Some(&20));
    assert_eq!(top.get(OTHER_USER), Some(&15));
    assert_eq!(top.len(), 3);
    assert_eq!(top_users(&[], 10).get(OTHER_USER), Some(&0));
}

#[test]
fn a_per_user_cache_names_its_user_until_it_goes() {
    let reg = Registry::new();
    let m = Metrics::new(&reg, MetricsConfig::default()).expect("metrics");
    let path = PathBuf::from("/home/alice/.cache/go-build");
    let snap = CacheSnapshot {
        path: path.clone(),
        user: Some("alice".into()),
        via: Some("unit:ci.service".into()),
        kind: CacheKind::Build,
        allocated_bytes: 1,
        apparent_bytes: 1,
        files: 1,
        dirs: 1,
        inspected_entries: 2,
        fs_inodes_used: 1,
        fs_inodes_total: 2,
        fs_free_bytes: 1,
        fs_size_bytes: 2,
        limit_bytes: None,
        oldest_age_seconds: None,
        bytes_by_owner: vec![owner(1000, "alice", 1)],
        violations: Default::default(),
        over_limit: false,
        held_over: None,
        held_bytes: Default::default(),
    };
    m.observe_snapshot(&snap);
    let line = "gocache_warden_cache_owner_info{cache=\"/home/alice/.cache/go-build\",kind=\"build\",user=\"alice\",via=\"unit:ci.service\"} 1";
    assert!(encode_text(&reg).expect("text").contains(line));
    m.remove_cache(&path);
    assert!(!encode_text(&reg).expect("text").contains("owner_info{"));
}
