//! monitoring/: the alert rules pass `promtool check rules` and their unit tests pass
//! `promtool test rules`; every metric the rules, their tests and the Grafana
//! dashboard query is one the exporter emits.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use gocache_warden::metrics::METRIC_NAMES;
use support::observe::*;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn rule_tests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(monitoring().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no promtool tests in monitoring/tests");
    files
}

/// Every `gocache_warden_*` identifier in `text`.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("gocache_warden_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

fn assert_known(what: &str, names: &BTreeSet<String>) {
    let known: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} uses metrics the exporter does not emit: {unknown:?}"
    );
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    let rules = monitoring().join("gocache-warden.rules.yml");
    let (ok, out, err) = run(Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules));
    assert!(
        ok && out.contains("SUCCESS: 11 rules found"),
        "promtool check rules:\n{out}{err}"
    );
    let (ok, out, err) = run(Command::new(promtool())
        .args(["test", "rules"])
        .args(rule_tests()));
    assert!(ok, "promtool test rules:\n{out}{err}");
    assert_eq!(out.matches("SUCCESS").count(), rule_tests().len(), "{out}");
}

#[test]
fn every_alert_rule_queries_exported_metrics_and_is_tested_both_ways() {
    let rules = std::fs::read_to_string(monitoring().join("gocache-warden.rules.yml")).unwrap();
    assert_known("the alert rules", &metric_tokens(&rules));
    let tests: String = rule_tests()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_known("the promtool tests", &metric_tokens(&tests));

    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert_eq!(blocks.len(), 11);
    for block in blocks {
        let name = block.lines().next().unwrap().trim();
        assert!(
            !metric_tokens(block).is_empty(),
            "alert {name} queries no gocache_warden metric"
        );
        // Each alert appears in a case where it fires and in one where it stays quiet.
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|c| c.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "no test where {name} fires"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "no test where {name} stays quiet"
        );
    }
}

#[test]
fn dashboard_parses_and_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is not valid JSON");
    let panels = dash["panels"].as_array().expect("dashboard has no panels");
    let mut queried = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title} has a target without expr"));
            let names = metric_tokens(expr);
            assert!(
                !names.is_empty(),
                "panel {title} queries no gocache_warden metric: {expr}"
            );
            queried.extend(names);
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            queried.extend(metric_tokens(q));
        }
    }
    assert_known("the dashboard", &queried);
    // The panels the dashboard promises.
    for needed in [
        "gocache_warden_cache_allocated_bytes",
        "gocache_warden_cache_limit_bytes",
        "gocache_warden_cache_user_bytes",
        "gocache_warden_evicted_bytes_total",
        "gocache_warden_cache_violations",
        "gocache_warden_units_missing_gocache",
    ] {
        assert!(queried.contains(needed), "dashboard does not show {needed}");
    }
    // Every metric has a non-empty token list: the scan itself works.
    assert_eq!(
        metric_tokens("rate(gocache_warden_x_total[5m]) / my_gocache_warden_y"),
        BTreeSet::from(["gocache_warden_x_total".to_string()])
    );
}
