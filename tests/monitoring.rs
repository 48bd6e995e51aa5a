//! The dashboards and alert rules shipped in the chart: every PromQL
//! expression parses, names only metrics the code registers, and the
//! dashboards show what operators look for; every alert has a runbook.
//! And the chart's CRDs are the generated ones.

use std::collections::BTreeSet;
use std::path::Path;

use promql_parser::parser::{self, Expr};
use serde_json::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/redstuff");

/// Metric names an expression reads.
fn metric_names(expr: &Expr, out: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(a) => {
            metric_names(&a.expr, out);
            if let Some(p) = &a.param {
                metric_names(p, out);
            }
        }
        Expr::Unary(u) => metric_names(&u.expr, out),
        Expr::Binary(b) => {
            metric_names(&b.lhs, out);
            metric_names(&b.rhs, out);
        }
        Expr::Paren(p) => metric_names(&p.expr, out),
        Expr::Subquery(s) => metric_names(&s.expr, out),
        Expr::VectorSelector(vs) => selector_name(vs, out),
        Expr::MatrixSelector(ms) => selector_name(&ms.vs, out),
        Expr::Call(call) => call.args.args.iter().for_each(|a| metric_names(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector_name(vs: &promql_parser::parser::VectorSelector, out: &mut BTreeSet<String>) {
    let name = vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__")
            .map(|m| m.value.clone())
    });
    out.insert(name.expect("every selector names its metric"));
}

/// Grafana's variables replaced by what Prometheus would see.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1d")
}

/// Parses `expr` and returns the metric families it reads (histogram
/// series mapped to their family).
fn families(expr: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parsed = parser::parse(&as_promql(expr)).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut names = BTreeSet::new();
    metric_names(&parsed, &mut names);
    names
        .into_iter()
        .map(|name| {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(family) = name.strip_suffix(suffix) {
                    if known.contains(family) && !known.contains(&name) {
                        return family.to_string();
                    }
                }
            }
            name
        })
        .collect()
}

fn dashboard(name: &str) -> Value {
    let path = Path::new(CHART)
        .join("dashboards")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of a dashboard: panel targets, and the
/// selectors of its `label_values(...)` variables.
fn dashboard_expressions(d: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target has an expr")
                .to_string()
        })
        .collect();
    for variable in d["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _)| selector.to_string())
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            exprs.push(inner);
        }
    }
    exprs
}

#[test]
fn every_dashboard_expression_parses_and_names_only_exported_metrics() {
    let known = redstuff::metrics::all_metric_names();
    let files: Vec<_> = std::fs::read_dir(Path::new(CHART).join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 3, "overview, repair, data path");
    for file in files {
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        let d = dashboard(&name);
        assert!(d["uid"]
            .as_str()
            .is_some_and(|u| u.starts_with("redstuff-")));
        let mut ids = BTreeSet::new();
        for panel in d["panels"].as_array().unwrap() {
            assert!(
                ids.insert(panel["id"].as_i64().unwrap()),
                "{name}: panel ids unique"
            );
            assert!(
                !panel["targets"].as_array().unwrap().is_empty(),
                "{name}: {}",
                panel["title"]
            );
        }
        for expr in dashboard_expressions(&d) {
            for family in families(&expr, &known) {
                assert!(
                    known.contains(&family),
                    "{name}: {family} is not exported ({expr})"
                );
            }
        }
    }
}

#[test]
fn the_dashboards_show_what_operators_look_for() {
    let known = redstuff::metrics::all_metric_names();
    let uses = |name: &str| -> BTreeSet<String> {
        dashboard_expressions(&dashboard(name))
            .iter()
            .flat_map(|e| families(e, &known))
            .collect()
    };
    let expect = |name: &str, metrics: &[&str]| {
        let used = uses(name);
        for m in metrics {
            assert!(used.contains(*m), "{name} dashboard lacks {m}");
        }
    };
    expect(
        "overview",
        &[
            "redstuff_nodes_ready",
            "redstuff_blobs",
            "redstuff_shards_missing",
            "redstuff_node_filesystem_available_bytes",
            "redstuff_node_filesystem_size_bytes",
        ],
    );
    expect(
        "repair",
        &[
            "redstuff_repairs_in_flight",
            "redstuff_repair_start_delay_seconds",
            "redstuff_repair_bytes_total",
            "redstuff_repair_whole_segment_bytes_total",
        ],
    );
    expect(
        "data-path",
        &[
            "redstuff_gateway_put_bytes_total",
            "redstuff_gateway_get_bytes_total",
            "redstuff_gateway_request_duration_seconds",
            "redstuff_encode_duration_seconds",
            "redstuff_decode_duration_seconds",
            "redstuff_gateway_requests_total",
            "redstuff_gateway_read_rows_total",
            "redstuff_gateway_node_calls_unanswered_total",
            "redstuff_gateway_node_unanswering",
        ],
    );
}

#[test]
fn every_dashboard_panel_shows_only_the_chosen_namespace_and_storagecluster() {
    for name in ["overview", "repair", "data-path"] {
        let d = dashboard(name);
        for panel in d["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                let expr = target["expr"].as_str().unwrap();
                assert!(
                    expr.contains("\"$namespace\"") && expr.contains("\"$storagecluster\""),
                    "{name} panel {}: {expr}",
                    panel["id"]
                );
            }
        }
    }
    // Node and gateway metrics carry the StorageCluster from the pod's
    // instance label, as the PodMonitor relabels it.
    let monitor =
        std::fs::read_to_string(Path::new(CHART).join("templates/podmonitor.yaml")).unwrap();
    assert!(monitor.contains("__meta_kubernetes_pod_label_app_kubernetes_io_instance"));
    assert!(monitor.contains("targetLabel: storagecluster"));
}

#[test]
fn every_alert_parses_names_exported_metrics_and_has_a_runbook() {
    let known = redstuff::metrics::all_metric_names();
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("files/alerts.rules.yaml")).unwrap(),
    )
    .unwrap();
    let runbooks =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks.md"))
            .unwrap();
    let headings: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap().to_string();
            let expr = rule["expr"].as_str().unwrap();
            for family in families(expr, &known) {
                assert!(known.contains(&family), "{alert}: {family} is not exported");
            }
            let severity = rule["labels"]["severity"].as_str().unwrap();
            assert!(["warning", "critical"].contains(&severity), "{alert}");
            let runbook = rule["annotations"]["runbook_url"].as_str().unwrap();
            let anchor = runbook.rsplit('#').next().unwrap();
            assert_eq!(anchor, alert.to_lowercase(), "{alert}: runbook anchor");
            assert!(
                headings.contains(anchor),
                "docs/runbooks.md has no section ## {alert}"
            );
            alerts.insert(alert);
        }
    }
    for required in [
        "RedstuffBlobLost",
        "RedstuffBlobAtRisk",
        "RedstuffNodeDownPastGracePeriod",
        "RedstuffRepairStalled",
        "RedstuffRepairFailuresRising",
        "RedstuffNodeDiskNearlyFull",
        "RedstuffOperatorNotReconciling",
    ] {
        assert!(alerts.contains(required), "missing alert {required}");
    }
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    for (name, yaml) in redstuff::operator::crds_yaml() {
        let path = Path::new(CHART).join("crds").join(&name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, yaml,
            "{name}: run `redstuff crds --dir crds && redstuff crds --dir charts/redstuff/crds`"
        );
    }
    let count = std::fs::read_dir(Path::new(CHART).join("crds"))
        .unwrap()
        .count();
    assert_eq!(
        count,
        redstuff::operator::crds_yaml().len(),
        "no stray CRDs"
    );
}

#[test]
fn the_parser_catches_a_broken_expression_and_an_unknown_metric() {
    let known = redstuff::metrics::all_metric_names();
    assert!(parser::parse("sum(rate(redstuff_blobs[5m]").is_err());
    let names = families("sum(rate(redstuff_made_up_total[5m]))", &known);
    assert!(!names.iter().all(|n| known.contains(n)));
    let names = families(
        "histogram_quantile(0.5, sum by (le) (rate(redstuff_repair_start_delay_seconds_bucket[$__rate_interval])))",
        &known,
    );
    assert_eq!(
        names,
        ["redstuff_repair_start_delay_seconds".to_string()].into()
    );
}
