//! The CustomResourceDefinitions: crds/ matches the Rust types, the schemas
//! are structural, and every example in examples/ is accepted or refused
//! exactly as the API server would (schema checks with a JSON-schema
//! validator, CEL rules with kube's client-side evaluator).

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use redstuff::operator::crd::{Blob, StorageCluster};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crds_on_disk_match_the_rust_types() {
    for (name, yaml) in redstuff::operator::crds_yaml() {
        let path = root().join("crds").join(name);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `redstuff crds --dir crds`", path.display()));
        assert!(
            on_disk == yaml,
            "{} drifted from the Rust types; run `cargo run -- crds --dir crds`",
            path.display()
        );
    }
    let files: Vec<_> = std::fs::read_dir(root().join("crds"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 2, "crds/ holds exactly the generated files");
}

fn openapi_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Every node typed; no references; no open maps or objects unless marked.
fn check_structural(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let object = schema.as_object().expect("schema nodes are objects");
    if object.contains_key("$ref") {
        problems.push(format!("{path}: $ref"));
    }
    let marked = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !object.contains_key("type") && !marked {
        problems.push(format!("{path}: no type"));
    }
    if object.get("additionalProperties") == Some(&Value::Bool(true)) {
        problems.push(format!("{path}: open map"));
    }
    if object.get("type") == Some(&Value::String("object".into()))
        && !object.contains_key("properties")
        && !object.contains_key("additionalProperties")
        && !marked
        && path != ".metadata"
    {
        problems.push(format!("{path}: object with no properties"));
    }
    // The API server refuses a rule whose fieldPath names no property of
    // the schema it sits on (metadata included, at the root).
    for rule in object
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(field_path) = rule.get("fieldPath").and_then(Value::as_str) {
            let mut at = schema;
            for step in field_path.trim_start_matches('.').split('.') {
                at = &at["properties"][step];
            }
            if at.is_null() {
                problems.push(format!(
                    "{path}: rule fieldPath {field_path} names no property"
                ));
            }
        }
    }
    if let Some(Value::Object(properties)) = object.get("properties") {
        for (name, inner) in properties {
            check_structural(inner, &format!("{path}.{name}"), problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner @ Value::Object(_)) = object.get(key) {
            check_structural(inner, &format!("{path}[{key}]"), problems);
        }
    }
}

#[test]
fn schemas_are_structural() {
    for crd in [StorageCluster::crd(), Blob::crd()] {
        let mut problems = Vec::new();
        check_structural(&openapi_schema(&crd), "", &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd.metadata.name.unwrap()
        );
    }
}

#[test]
fn fields_carry_their_doc_comments_as_descriptions() {
    let schema = openapi_schema(&StorageCluster::crd());
    let spec = &schema["properties"]["spec"]["properties"];
    for field in ["shards", "nodes", "storage", "placement", "repair"] {
        let description = spec[field]["description"].as_str().unwrap_or("");
        assert!(
            description.len() > 10,
            "spec.{field} has no description for kubectl explain"
        );
    }
    assert!(spec["shards"]["description"]
        .as_str()
        .unwrap()
        .contains("Fixed once"));
}

/// What the API server would say about a manifest: schema errors first,
/// then CEL rule failures; `old` for an update.
fn admission_errors(manifest: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = manifest["kind"].as_str().unwrap();
    let crd = match kind {
        "StorageCluster" => StorageCluster::crd(),
        "Blob" => Blob::crd(),
        other => panic!("unknown kind {other}"),
    };
    let validator = jsonschema::validator_for(&openapi_schema(&crd)).unwrap();
    let schema_errors: Vec<String> = validator
        .iter_errors(manifest)
        .map(|e| format!("schema: {} at {}", e, e.instance_path()))
        .collect();
    if !schema_errors.is_empty() {
        return schema_errors;
    }
    let cel = match kind {
        "StorageCluster" => {
            let new: StorageCluster = serde_json::from_value(manifest.clone()).unwrap();
            match old {
                Some(old) => new.validate_cel_update(&serde_json::from_value(old.clone()).unwrap()),
                None => new.validate_cel(),
            }
        }
        _ => {
            let new: Blob = serde_json::from_value(manifest.clone()).unwrap();
            match old {
                Some(old) => new.validate_cel_update(&serde_json::from_value(old.clone()).unwrap()),
                None => new.validate_cel(),
            }
        }
    };
    match cel {
        Ok(()) => Vec::new(),
        Err(errors) => vec![format!("cel: {errors:?}")],
    }
}

fn manifests(dir: &Path) -> Vec<(PathBuf, String, Value)> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let value: Value = serde_yaml::from_str(&text).unwrap();
            (p, text, value)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn every_example_is_admitted() {
    let examples = manifests(&root().join("examples"));
    assert!(examples.len() >= 3);
    for (path, _, manifest) in examples {
        let errors = admission_errors(&manifest, None);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
}

#[test]
fn every_invalid_example_is_refused_with_its_message() {
    let invalid = manifests(&root().join("examples").join("invalid"));
    assert!(invalid.len() >= 6);
    for (path, text, manifest) in invalid {
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()));
        let errors = admission_errors(&manifest, None);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{}: expected an error containing {expected:?}, got {errors:#?}",
            path.display()
        );
    }
}

#[test]
fn shards_cannot_change_but_nodes_can() {
    let old: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("examples/storagecluster.yaml")).unwrap(),
    )
    .unwrap();
    let mut more_nodes = old.clone();
    more_nodes["spec"]["nodes"] = 8.into();
    assert!(admission_errors(&more_nodes, Some(&old)).is_empty());
    let mut more_shards = old.clone();
    more_shards["spec"]["shards"] = 13.into();
    let errors = admission_errors(&more_shards, Some(&old));
    assert!(
        errors.iter().any(|e| e.contains("shards is fixed")),
        "{errors:#?}"
    );
}

#[test]
fn a_blob_keeps_its_cluster_and_source() {
    let old: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("examples/blob-from-url.yaml")).unwrap(),
    )
    .unwrap();
    assert!(admission_errors(&old, Some(&old)).is_empty());
    let mut moved = old.clone();
    moved["spec"]["cluster"] = "other".into();
    let errors = admission_errors(&moved, Some(&old));
    assert!(
        errors.iter().any(|e| e.contains("cluster is fixed")),
        "{errors:#?}"
    );
    let mut other_bytes = old.clone();
    other_bytes["spec"]["source"]["url"]["url"] = "https://models.example/other".into();
    let errors = admission_errors(&other_bytes, Some(&old));
    assert!(
        errors.iter().any(|e| e.contains("source is fixed")),
        "{errors:#?}"
    );
}

#[test]
fn a_clusters_storage_class_is_fixed_and_its_size_never_shrinks() {
    let old: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("examples/storagecluster.yaml")).unwrap(),
    )
    .unwrap();
    assert!(admission_errors(&old, Some(&old)).is_empty());
    let with = |path: &[&str], value: Value| {
        let mut changed = old.clone();
        let mut at = &mut changed;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        changed
    };
    let bigger = with(&["spec", "storage", "size"], "1Ti".into());
    assert!(
        admission_errors(&bigger, Some(&old)).is_empty(),
        "{:#?}",
        admission_errors(&bigger, Some(&old))
    );
    let smaller = with(&["spec", "storage", "size"], "1Gi".into());
    let errors = admission_errors(&smaller, Some(&old));
    assert!(
        errors.iter().any(|e| e.contains("never shrink")),
        "{errors:#?}"
    );
    let other_class = with(
        &["spec", "storage", "storageClassName"],
        "slow-disks".into(),
    );
    let errors = admission_errors(&other_class, Some(&old));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("storageClassName is fixed")),
        "{errors:#?}"
    );
}

#[test]
fn the_s3_index_claim_never_shrinks_nor_changes_class_and_ephemeral_storage_is_fixed() {
    let old: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("examples/storagecluster.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(old["spec"]["s3"]["indexSize"], "5Gi");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut changed = old.clone();
        change(&mut changed);
        changed
    };
    let refused_with = |new: &Value, old: &Value, message: &str| {
        let errors = admission_errors(new, Some(old));
        assert!(errors.iter().any(|e| e.contains(message)), "{errors:#?}");
    };
    let bigger = with(&|c| c["spec"]["s3"]["indexSize"] = "20Gi".into());
    assert!(admission_errors(&bigger, Some(&old)).is_empty());
    let smaller = with(&|c| c["spec"]["s3"]["indexSize"] = "1Gi".into());
    refused_with(&smaller, &old, "indexSize can grow");
    // Removing it would mean the 1Gi default.
    let removed = with(&|c| {
        c["spec"]["s3"].as_object_mut().unwrap().remove("indexSize");
    });
    refused_with(&removed, &old, "indexSize can grow");
    let class_added = with(&|c| c["spec"]["s3"]["indexStorageClassName"] = "fast".into());
    refused_with(&class_added, &old, "indexStorageClassName is fixed");

    let ephemeral = with(&|c| c["spec"]["storage"]["ephemeral"] = true.into());
    refused_with(&ephemeral, &old, "ephemeral is fixed");
    refused_with(&old, &ephemeral, "ephemeral is fixed");
}

#[test]
fn a_cluster_name_is_refused_unless_every_name_derived_from_it_is_a_dns_label() {
    let example: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("examples/storagecluster.yaml")).unwrap(),
    )
    .unwrap();
    let named = |name: &str| {
        let mut cluster = example.clone();
        cluster["metadata"]["name"] = name.into();
        admission_errors(&cluster, None)
    };
    // NAME-node-999 is a pod's name and host name: at most 63 characters.
    let longest = format!("c{}", "x".repeat(53));
    assert!(named(&longest).is_empty(), "{:#?}", named(&longest));
    assert_eq!(format!("{longest}-node-999").len(), 63);
    for refused in [
        format!("{longest}y"),
        "7shards".to_string(),
        "ends-with-".to_string(),
        "Upper".to_string(),
        "dotted.name".to_string(),
    ] {
        let errors = named(&refused);
        assert!(
            errors.iter().any(|e| e.contains("DNS-1035 label")),
            "{refused}: {errors:#?}"
        );
    }
}
