//! The docs say only what is true of the code.

use std::collections::BTreeSet;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_readme_lists_exactly_the_metrics_the_code_registers() {
    let text = readme();
    let table = text
        .split("<!-- metrics:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- metrics:end -->").next())
        .expect("README has a metrics table");
    let documented: BTreeSet<String> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| redstuff_"))
        .map(|rest| format!("redstuff_{}", rest.split(' ').next().unwrap()))
        .collect();
    let registered = redstuff::metrics::all_metric_names();
    assert_eq!(documented, registered, "README metrics table vs the code");
    for name in &registered {
        assert!(name.starts_with("redstuff_"), "{name}: the prefix");
        let counter_like = name.ends_with("_total");
        let unit = name.ends_with("_bytes") || name.ends_with("_seconds") || counter_like;
        let plain = [
            "redstuff_blobs",
            "redstuff_node_slivers",
            "redstuff_shards_missing",
            "redstuff_nodes_ready",
            "redstuff_operator_leader",
            "redstuff_nodes_evicted",
            "redstuff_repairs_in_flight",
            "redstuff_nodes_not_answering",
            "redstuff_gateway_uploads_in_flight",
            "redstuff_gateway_uploads_waiting",
            "redstuff_node_staged_writes_waiting",
            "redstuff_gateway_uploads_resumable",
            // 0 or 1 per node.
            "redstuff_gateway_node_unanswering",
            // 0 or 1 per CRD.
            "redstuff_operator_crd_current",
            "redstuff_gateways_available",
            "redstuff_shards_unavailable",
            "redstuff_fault_tolerance",
            // 0 or 1 per cluster.
            "redstuff_cluster_synced",
            // 0, 1 or 2: a phase, not a quantity.
            "redstuff_tls_ca_rotation_phase",
        ];
        assert!(
            unit || plain.contains(&name.as_str()),
            "{name}: a base unit or _total"
        );
    }
}

#[test]
fn the_readme_commands_exist_in_the_binary() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for command in [
        "dev", "put", "get", "status", "node", "gateway", "crds", "bench",
    ] {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing from --help:\n{help}"
        );
        assert!(
            readme().contains(&format!("redstuff {command}")),
            "{command} missing from the README"
        );
    }
}
