//! The Grafana dashboard in `docs/` against what the server exports: valid JSON that
//! Grafana can import (a Prometheus data-source input that every panel uses), the panels
//! docs/operations.md promises, and every metric an expression names is one `/metrics`
//! has (for the uring or the epoll backend). `tests/prometheus.rs` also runs each
//! expression on a real Prometheus scraping ringcast.

use ringcast_core::metrics::{self, Format};
use ringcast_core::{Directory, ServerInfo, Stats};
use ringcast_server::{counters, Backend};
use std::collections::BTreeSet;

pub fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-ringcast.json");
    let text = std::fs::read_to_string(path).expect("docs/grafana-ringcast.json");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every PromQL expression of the dashboard's panels, with the panel's title and type.
pub fn expressions(dashboard: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            out.push((
                panel["title"].as_str().expect("title").to_owned(),
                panel["type"].as_str().expect("type").to_owned(),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

/// The `ringcast_*` names in a piece of PromQL.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ringcast_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Sample names the server exports, for any backend.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for backend in [Backend::Uring, Backend::Epoll, Backend::UringDirect] {
        let info = ServerInfo {
            backend: backend.name().into(),
            ..ServerInfo::default()
        };
        // The server registers its backend's families, as `serve` does.
        let stats = counters::register(backend, Stats::with_info(1, info, true));
        let text = metrics::render(&stats, &Directory::new(1, 0), Format::Classic);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().expect("a name");
            names.insert(name.to_owned());
        }
    }
    names
}

#[test]
fn every_expression_names_metrics_the_server_exports() {
    let dashboard = dashboard();
    let exported = exported();
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 10, "{} expressions", exprs.len());
    for (title, _, expr) in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{title}: {expr} names no ringcast metric"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{title}: {name} is not exported; the server has {exported:?}"
            );
        }
    }
    let variable = &dashboard["templating"]["list"][0];
    for name in metric_names(variable["definition"].as_str().expect("definition")) {
        assert!(exported.contains(&name), "variable: {name}");
    }
}

#[test]
fn it_imports_into_grafana_with_the_promised_panels() {
    let dashboard = dashboard();
    let input = &dashboard["__inputs"][0];
    assert_eq!(input["name"], "DS_PROMETHEUS");
    assert_eq!(input["pluginId"], "prometheus");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "duplicate id"
        );
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}");
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "gridPos.{key}");
        }
        for target in panel["targets"].as_array().expect("targets") {
            assert!(target["refId"].is_string());
        }
    }
    let exprs = expressions(&dashboard);
    let has = |kind: Option<&str>, needles: &[&str]| {
        exprs.iter().any(|(_, panel_type, expr)| {
            kind.is_none_or(|k| k == panel_type) && needles.iter().all(|n| expr.contains(n))
        })
    };
    assert!(has(None, &["ringcast_clients"]), "clients");
    assert!(
        has(None, &["rate(ringcast_deliveries_total"]),
        "deliveries/s"
    );
    assert!(
        has(
            Some("heatmap"),
            &["ringcast_fanout_seconds_bucket", "by (le)"]
        ),
        "fan-out latency heatmap"
    );
    assert!(
        has(None, &["by (reason)", "ringcast_disconnects_total"]),
        "disconnect reasons"
    );
    assert!(
        has(
            None,
            &[
                "ringcast_uring_ops_submitted_total",
                ") / sum(rate(ringcast_uring_submissions_total"
            ]
        ),
        "io_uring submissions per enter"
    );
}
