use super::*;
use crate::fleet::{assign, NodeSpec};
use crate::operator::fixtures::cluster;

/// An operator with `image` as its default, running in `operators`.
fn operator(image: &str) -> OperatorSettings {
    OperatorSettings::new(image, "operators")
}

fn credentials() -> Credentials {
    Credentials {
        cluster: "cluster-secret".into(),
        users: "user-secret".into(),
        s3: Some(crate::s3::credentials::S3Keys {
            access_key: "AK".into(),
            secret_key: "SK".into(),
        }),
        tls: None,
    }
}

fn nodes_of(c: &StorageCluster) -> usize {
    usize::from(c.spec.nodes)
}

/// The pod specs of every node pod and of the gateway's pods.
fn pod_specs(objects: &DesiredObjects) -> Vec<PodSpec> {
    let gateway = objects.gateway.spec.template.spec.clone();
    objects
        .node_pods
        .iter()
        .map(|p| p.spec.clone().unwrap())
        .chain(gateway)
        .collect()
}

/// The objects of `c` with its fresh assignment, by operator image `img`.
fn objects_of(c: &StorageCluster) -> DesiredObjects {
    desired_objects(
        c,
        &assignment(c),
        nodes_of(c),
        &operator("img"),
        &credentials(),
    )
}

fn assignment(c: &StorageCluster) -> Assignment {
    let specs: Vec<NodeSpec> = (0..usize::from(c.spec.nodes))
        .map(|i| NodeSpec {
            name: node_pod_name("media", i),
            domain: node_pod_name("media", i),
        })
        .collect();
    assign(c.spec.shards, &specs, &Assignment::new())
}

#[test]
fn a_cluster_is_one_pod_and_claim_per_node_plus_services_config_gateway_and_budget() {
    let c = cluster(10, 4, Some("200Gi"));
    let objects = desired_objects(
        &c,
        &assignment(&c),
        nodes_of(&c),
        &operator("redstuff:test"),
        &credentials(),
    );
    assert_eq!(objects.node_pods.len(), 4);
    assert_eq!(objects.node_claims.len(), 4);
    let pod = &objects.node_pods[2];
    assert_eq!(pod.metadata.name.as_deref(), Some("media-node-2"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("storage"));
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("StorageCluster", "media", Some(true))
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.subdomain.as_deref(), Some("media-nodes"));
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), Some("redstuff:test"));
    assert!(container
        .args
        .as_ref()
        .unwrap()
        .contains(&"/etc/redstuff/shards/media-node-2.json".to_string()));
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    let claim_volume = spec.volumes.as_ref().unwrap()[0]
        .persistent_volume_claim
        .as_ref()
        .unwrap();
    assert_eq!(claim_volume.claim_name, "media-data-2");
    let claim = &objects.node_claims[2].spec.as_ref().unwrap();
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "200Gi"
    );
    assert_eq!(
        objects
            .node_service
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("None")
    );
    assert_eq!(
        objects
            .disruption_budget
            .spec
            .as_ref()
            .unwrap()
            .min_available,
        Some(IntOrString::Int(3)),
        "one of the four node pods may be evicted at a time"
    );
}

#[test]
fn node_and_gateway_pods_get_no_service_account_token_as_they_never_call_the_kubernetes_api() {
    let objects = objects_of(&cluster(7, 3, Some("1Gi")));
    for spec in pod_specs(&objects) {
        assert_eq!(spec.automount_service_account_token, Some(false));
    }
}

#[test]
fn node_and_gateway_pods_pull_with_the_operators_secrets_and_policy_and_without_them_name_none() {
    let c = cluster(7, 3, Some("1Gi"));
    let plain = objects_of(&c);
    let pod = plain.node_pods[0].spec.as_ref().unwrap();
    assert_eq!(pod.image_pull_secrets, None);
    assert_eq!(pod.containers[0].image_pull_policy, None);

    let mut settings = operator("registry.example/redstuff:1");
    settings.image_pull_secrets = vec!["regcred".into(), "mirror".into()];
    settings.image_pull_policy = Some("Always".into());
    let objects = desired_objects(&c, &assignment(&c), 3, &settings, &credentials());
    for spec in pod_specs(&objects) {
        let names: Vec<&str> = spec
            .image_pull_secrets
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["regcred", "mirror"]);
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
    }
}

#[test]
fn node_pods_scrub_as_the_spec_says_and_by_the_nodes_default_otherwise() {
    let args_of = |c: &StorageCluster| {
        objects_of(c).node_pods[0].spec.clone().unwrap().containers[0]
            .args
            .clone()
            .unwrap()
    };
    let mut c = cluster(7, 3, Some("1Gi"));
    assert!(!args_of(&c).iter().any(|a| a.starts_with("--scrub")));
    c.spec.scrub = Some(
        serde_json::from_value(serde_json::json!({"interval": "12h", "maxBytesPerSecond": "32Mi"}))
            .unwrap(),
    );
    let args = args_of(&c);
    let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("--scrub-interval-secs"), "43200");
    assert_eq!(
        after("--scrub-max-bytes-per-sec"),
        (32u64 << 20).to_string()
    );
}

#[test]
fn the_gateway_section_sizes_the_gateway_pods_and_bounds_their_spool() {
    let mut c = cluster(7, 3, Some("1Gi"));
    c.spec.gateway = Some(
        serde_json::from_value(serde_json::json!({
            "resources": {"requests": {"memory": "3Gi"}, "limits": {"memory": "4Gi"}},
            "maxUploads": 4,
            "uploadMemory": "1Gi",
            "spoolSize": "20Gi"
        }))
        .unwrap(),
    );
    let objects = objects_of(&c);
    let pod = objects.gateway.spec.template.spec.unwrap();
    let gateway = &pod.containers[0];
    let args = gateway.args.clone().unwrap();
    let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("--max-uploads"), "4");
    assert_eq!(after("--upload-memory"), (1u64 << 30).to_string());
    assert!(after("--max-spool").parse::<u64>().unwrap() < 20 << 30);
    let limits = gateway.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "4Gi");
    let spool = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "spool")
        .unwrap();
    assert_eq!(
        spool.empty_dir.unwrap().size_limit.unwrap().0,
        (20u64 << 30).to_string()
    );
}

#[test]
fn the_shards_config_gives_every_node_its_shards_and_the_gateway_the_map() {
    let c = cluster(10, 4, Some("1Gi"));
    let a = assignment(&c);
    let objects = desired_objects(&c, &a, nodes_of(&c), &operator("img"), &credentials());
    let data = objects.shards_config.data.unwrap();
    let mut all = std::collections::BTreeSet::new();
    for i in 0..4 {
        let file: ShardsFile =
            serde_json::from_str(&data[&format!("media-node-{i}.json")]).unwrap();
        assert!((2..=3).contains(&file.shards.len()));
        all.extend(file.shards);
    }
    assert_eq!(all.len(), 10);
    let map: FleetMap = serde_json::from_str(&data["fleet.json"]).unwrap();
    assert_eq!(map.shards, 10);
    assert_eq!(
        map.nodes[1].url,
        "http://media-node-1.media-nodes.storage.svc:7800"
    );
    assert_eq!(
        map.holder(0).map(|n| n.name.as_str()),
        a.get(&0).map(String::as_str)
    );
}

#[test]
fn ephemeral_storage_uses_empty_dirs_and_no_claims() {
    let mut c = cluster(4, 4, None);
    c.spec.storage.ephemeral = Some(true);
    let objects = objects_of(&c);
    assert!(objects.node_claims.is_empty());
    let volume = &objects.node_pods[0]
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()[0];
    assert!(volume.empty_dir.is_some());
}

fn spread_keys(c: &StorageCluster) -> Vec<String> {
    objects_of(c).node_pods[0]
        .spec
        .as_ref()
        .unwrap()
        .topology_spread_constraints
        .as_ref()
        .unwrap()
        .iter()
        .map(|t| t.topology_key.clone())
        .collect()
}

#[test]
fn node_pods_spread_over_hosts_and_over_the_placement_domains() {
    let mut c = cluster(10, 10, Some("1Gi"));
    assert_eq!(
        spread_keys(&c),
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    c.spec.placement = Some(crate::operator::crd::PlacementSpec {
        topology_key: Some("kubernetes.io/hostname".into()),
        node_selector: None,
    });
    assert_eq!(spread_keys(&c), ["kubernetes.io/hostname"]);
}

#[test]
fn nodes_get_the_cluster_token_and_fleet_map_and_the_gateway_both_tokens() {
    let c = cluster(7, 3, Some("1Gi"));
    let objects = objects_of(&c);
    let secret =
        |s: &Secret| String::from_utf8(s.data.as_ref().unwrap()[TOKEN_KEY].0.clone()).unwrap();
    assert_eq!(
        objects.node_token.metadata.name.as_deref(),
        Some("media-node-token")
    );
    assert_eq!(secret(&objects.node_token), "cluster-secret");
    assert_eq!(
        objects.gateway_token.metadata.name.as_deref(),
        Some("media-gateway-token")
    );
    assert_eq!(secret(&objects.gateway_token), "user-secret");
    assert!(objects.node_token.string_data.is_none());

    let pod = objects.node_pods[0].spec.as_ref().unwrap();
    let args = pod.containers[0].args.clone().unwrap().join(" ");
    assert!(
        args.contains("--token-file /etc/redstuff/cluster-token/token"),
        "{args}"
    );
    assert!(
        args.contains("--fleet /etc/redstuff/shards/fleet.json"),
        "{args}"
    );
    assert!(args.contains("--metrics-listen [::]:7801"), "{args}");
    let volumes: Vec<_> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref())
        .collect();
    assert_eq!(volumes[0].secret_name.as_deref(), Some("media-node-token"));
    assert_eq!(volumes[0].default_mode, Some(0o440));
    let probe = pod.containers[0].readiness_probe.as_ref().unwrap();
    assert_eq!(
        probe.http_get.as_ref().unwrap().port,
        IntOrString::Int(NODE_METRICS_PORT)
    );

    let gateway = objects.gateway.spec.template.spec.as_ref().unwrap();
    let args = gateway.containers[0].args.clone().unwrap().join(" ");
    assert!(
        args.contains("--cluster-token-file /etc/redstuff/cluster-token/token"),
        "{args}"
    );
    assert!(
        args.contains("--user-tokens-file /etc/redstuff/user-tokens/token"),
        "{args}"
    );
    let secrets: Vec<_> = gateway
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert_eq!(secrets, ["media-node-token", "media-gateway-token"]);
}

#[test]
fn node_pods_take_api_calls_only_from_their_gateway_peers_and_the_operators_namespace() {
    let c = cluster(7, 3, Some("1Gi"));
    let policy = objects_of(&c).node_network_policy;
    let spec = policy.spec.unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let selects = |selector: &LabelSelector| selector.match_labels.clone().unwrap_or_default();
    assert_eq!(
        selects(spec.pod_selector.as_ref().unwrap())["app.kubernetes.io/component"],
        "node"
    );
    let rules = spec.ingress.unwrap();
    let api = &rules[0];
    assert_eq!(
        api.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(NODE_PORT))
    );
    let from: Vec<BTreeMap<String, String>> = api
        .from
        .as_ref()
        .unwrap()
        .iter()
        .map(|peer| selects(peer.pod_selector.as_ref().unwrap()))
        .collect();
    assert_eq!(from[0]["app.kubernetes.io/component"], "gateway");
    assert_eq!(from[0]["app.kubernetes.io/instance"], "media");
    assert_eq!(from[1]["app.kubernetes.io/component"], "node");
    assert_eq!(from[2]["app.kubernetes.io/component"], "operator");
    let operator_namespaces = api.from.as_ref().unwrap()[2]
        .namespace_selector
        .as_ref()
        .expect("the operator runs in a namespace of its own");
    assert_eq!(
        selects(operator_namespaces),
        BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            "operators".to_string()
        )]),
        "operator pods of its namespace only, not a pod labelled so anywhere"
    );
    let metrics = &rules[1];
    assert!(metrics.from.is_none(), "metrics are open to scrapers");
    assert_eq!(
        metrics.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(NODE_METRICS_PORT))
    );
}

#[test]
fn s3_adds_its_port_index_claim_and_keys_to_a_gateway_recreated_never_rolled() {
    let mut c = cluster(7, 7, Some("10Gi"));
    assert!(objects_of(&c).s3_index_claim.is_none());
    c.spec.s3 = Some(crate::operator::crd::S3Spec {
        index_size: Some("2Gi".into()),
        collect_after_seconds: Some(30),
        ..Default::default()
    });
    let objects = objects_of(&c);
    let claim = objects.s3_index_claim.expect("an index claim");
    assert_eq!(claim.metadata.name.as_deref(), Some("media-s3-index"));
    assert_eq!(
        claim.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
        "2Gi"
    );
    let secret = objects.s3_credentials.expect("the operator's key Secret");
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("media-s3-credentials")
    );
    assert_eq!(secret.data.unwrap()["accessKey"].0, b"AK");
    let spec = objects.gateway.spec;
    let strategy = spec.strategy.clone().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
    // Not named: applied over the RollingUpdate defaults the operator
    // named before, server-side apply drops them.
    assert!(strategy.rolling_update.is_none());
    let pod = spec.template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap().join(" ");
    assert!(args.contains("--s3-listen [::]:7780"), "{args}");
    assert!(
        args.contains("--s3-index /var/lib/redstuff-s3/index.redb"),
        "{args}"
    );
    assert!(args.contains("--s3-collect-after-secs 30"), "{args}");
    // The keys' Secret is a directory the gateway reads again while it
    // runs (kubelet updates it in place), not environment variables.
    assert!(
        args.contains("--s3-keys-dir /etc/redstuff/s3-keys"),
        "{args}"
    );
    assert!(container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.name == "s3-keys"
            && m.mount_path == "/etc/redstuff/s3-keys"
            && m.read_only == Some(true)));
    let keys_secret = |pod: &k8s_openapi::api::core::v1::PodSpec| {
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "s3-keys")
            .and_then(|v| v.secret.as_ref()?.secret_name.clone())
    };
    assert_eq!(keys_secret(&pod).as_deref(), Some("media-s3-credentials"));
    assert!(container
        .env
        .iter()
        .flatten()
        .all(|e| !e.name.contains("S3_ACCESS")));
    assert!(pod.volumes.unwrap().iter().any(|v| v
        .persistent_volume_claim
        .as_ref()
        .is_some_and(|p| p.claim_name == "media-s3-index")));
    let ports = objects.gateway_service.spec.unwrap().ports.unwrap();
    assert!(ports
        .iter()
        .any(|p| p.port == 7780 && p.name.as_deref() == Some("s3")));

    // A Secret named in the spec is used as it is: the operator keeps none.
    c.spec.s3.as_mut().unwrap().credentials_secret = Some("my-keys".into());
    let objects = objects_of(&c);
    assert!(objects.s3_credentials.is_none());
    assert_eq!(
        keys_secret(&objects.gateway.spec.template.spec.unwrap()).as_deref(),
        Some("my-keys")
    );

    // The index in PostgreSQL: no claim, rolled as usual, as many replicas
    // as asked, the URL from its Secret.
    c.spec.s3.as_mut().unwrap().postgres_secret = Some("index-db".into());
    c.spec.s3.as_mut().unwrap().replicas = Some(3);
    let objects = objects_of(&c);
    assert!(objects.s3_index_claim.is_none());
    assert_eq!(objects.gateway.spec.replicas, Some(3));
    let strategy = objects.gateway.spec.strategy.clone().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert!(
        strategy.rolling_update.is_some(),
        "the defaults named, so that the operator owns them"
    );
    let container = objects.gateway.spec.template.spec.unwrap().containers[0].clone();
    assert!(!container.args.unwrap().join(" ").contains("--s3-index "));
    let url = container
        .env
        .unwrap()
        .into_iter()
        .find(|e| e.name == "REDSTUFF_S3_INDEX_POSTGRES")
        .expect("the URL from the Secret");
    let key = url.value_from.unwrap().secret_key_ref.unwrap();
    assert_eq!((key.name.as_str(), key.key.as_str()), ("index-db", "url"));
    assert!(container
        .volume_mounts
        .unwrap()
        .iter()
        .all(|m| m.name != "s3-index"));

    // Disabled: nothing of S3.
    c.spec.s3.as_mut().unwrap().enabled = Some(false);
    let objects = objects_of(&c);
    assert!(objects.s3_index_claim.is_none());
}

fn with_tls(c: &mut StorageCluster) -> Credentials {
    c.spec.tls = Some(crate::operator::crd::TlsSpec {
        enabled: Some(true),
        gateway_names: None,
        gateway_secret: None,
        ca_rotation_overlap: None,
    });
    let pair = |what: &str, names: Vec<String>| tls::ServingPair {
        cert_pem: format!("{what} CERT"),
        key_pem: format!("{what} KEY"),
        not_after_unix: 1_900_000_000,
        names,
    };
    Credentials {
        tls: Some(tls::ClusterTls {
            cas: crate::operator::ca_rotation::CaSet::single(crate::operator::ca_rotation::CaPem {
                cert_pem: "CA CERT".into(),
                key_pem: "CA KEY".into(),
            }),
            nodes: pair("NODE", tls::node_serving_names("media", "storage")),
            gateway: Some(pair("GATEWAY", tls::gateway_serving_names(c, "storage"))),
        }),
        ..credentials()
    }
}

/// A Secret volume: the Secret's name and the keys it projects (all: None).
type SecretVolume = (String, Option<Vec<String>>);

/// A pod's mounts (`volume:path`) and its Secret volumes.
fn mounts_and_volumes(spec: &PodSpec) -> (Vec<String>, Vec<SecretVolume>) {
    let mounts = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| format!("{}:{}", m.name, m.mount_path))
        .collect();
    let volumes = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let secret = v.secret.as_ref()?;
            Some((
                secret.secret_name.clone().unwrap(),
                secret
                    .items
                    .as_ref()
                    .map(|items| items.iter().map(|i| i.key.clone()).collect()),
            ))
        })
        .collect();
    (mounts, volumes)
}

#[test]
fn with_tls_nodes_and_the_gateway_serve_certificates_of_their_own_and_everyone_calls_them_by_https_trusting_the_ca(
) {
    let mut c = cluster(7, 7, Some("1Gi"));
    let credentials = with_tls(&mut c);
    let objects = desired_objects(
        &c,
        &assignment(&c),
        nodes_of(&c),
        &operator("redstuff:test"),
        &credentials,
    );

    let map: FleetMap =
        serde_json::from_str(&objects.shards_config.data.as_ref().unwrap()["fleet.json"]).unwrap();
    assert!(map
        .nodes
        .iter()
        .all(|n| n.url.starts_with("https://media-node-")
            && n.url.ends_with(".media-nodes.storage.svc:7800")));

    let node = objects.node_pods[3].spec.as_ref().unwrap();
    let args = node.containers[0].args.as_ref().unwrap().join(" ");
    assert!(
        args.contains("--tls-cert /etc/redstuff/tls/tls.crt --tls-key /etc/redstuff/tls/tls.key --tls-ca /etc/redstuff/tls/ca.crt"),
        "{args}"
    );
    let (mounts, volumes) = mounts_and_volumes(node);
    assert!(mounts.contains(&"tls:/etc/redstuff/tls".to_string()));
    assert!(volumes.contains(&("media-node-tls".to_string(), None)));

    // The gateway serves a certificate of its own, never the nodes' key,
    // and trusts the same CA.
    let gateway = objects.gateway.spec.template.spec.as_ref().unwrap();
    let args = gateway.containers[0].args.as_ref().unwrap().join(" ");
    assert!(
        args.contains("--tls-cert /etc/redstuff/tls/tls.crt --tls-key /etc/redstuff/tls/tls.key --tls-ca /etc/redstuff/tls/ca.crt"),
        "{args}"
    );
    let (_, volumes) = mounts_and_volumes(gateway);
    assert!(volumes.contains(&("media-gateway-tls".to_string(), None)));
    assert!(volumes.iter().all(|(secret, _)| secret != "media-node-tls"));

    for (serving, cert, names) in [
        (
            objects.node_tls_secret.as_ref().unwrap(),
            "NODE CERT",
            "*.media-nodes.storage.svc",
        ),
        (
            objects.gateway_tls_secret.as_ref().unwrap(),
            "GATEWAY CERT",
            "media-gateway.storage.svc",
        ),
    ] {
        assert_eq!(serving.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = serving.data.as_ref().unwrap();
        let keys: Vec<&String> = data.keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(data["tls.crt"].0, cert.as_bytes());
        assert_eq!(data["ca.crt"].0, b"CA CERT\n");
        let annotations = serving.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[tls::NOT_AFTER_ANNOTATION], "1900000000");
        assert!(annotations[tls::NAMES_ANNOTATION].starts_with(names));
    }

    // The API port says https; probes and metrics stay on a plain port.
    let container = &gateway.containers[0];
    let ports: Vec<(String, i32)> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("https".to_string(), 7700), ("metrics".to_string(), 7701)]
    );
    let probe_port = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        (get.port.clone(), get.scheme.clone())
    };
    for probe in [
        &container.readiness_probe,
        &container.liveness_probe,
        &container.startup_probe,
    ] {
        assert_eq!(
            probe_port(probe),
            (
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7701),
                None
            )
        );
    }
    let service_port = &objects
        .gateway_service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(service_port.name.as_deref(), Some("https"));
    let ca = objects.ca_secret.as_ref().unwrap();
    let keys: Vec<&String> = ca.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["ca.crt", "ca.key"]);
    // No pod mounts the CA's key.
    for spec in objects
        .node_pods
        .iter()
        .map(|p| p.spec.as_ref().unwrap())
        .chain([gateway])
    {
        assert!(mounts_and_volumes(spec)
            .1
            .iter()
            .all(|(secret, _)| secret != "media-ca"));
    }
}

#[test]
fn without_tls_nodes_are_called_by_plain_http_and_no_tls_secret_exists() {
    let c = cluster(7, 7, Some("1Gi"));
    let objects = desired_objects(
        &c,
        &assignment(&c),
        nodes_of(&c),
        &operator("redstuff:test"),
        &credentials(),
    );
    let map: FleetMap =
        serde_json::from_str(&objects.shards_config.data.as_ref().unwrap()["fleet.json"]).unwrap();
    assert!(map.nodes.iter().all(|n| n.url.starts_with("http://")));
    assert!(
        objects.ca_secret.is_none()
            && objects.node_tls_secret.is_none()
            && objects.gateway_tls_secret.is_none()
    );
    let args = objects.node_pods[0].spec.as_ref().unwrap().containers[0]
        .args
        .as_ref()
        .unwrap()
        .join(" ");
    assert!(!args.contains("--tls"), "{args}");
}

#[test]
fn a_renewed_serving_certificate_changes_no_pod_so_nothing_is_rolled() {
    let mut c = cluster(7, 7, Some("1Gi"));
    let first = with_tls(&mut c);
    let mut renewed = first.clone();
    let material = renewed.tls.as_mut().unwrap();
    for pair in [&mut material.nodes, material.gateway.as_mut().unwrap()] {
        pair.cert_pem = "RENEWED CERT".into();
        pair.key_pem = "RENEWED KEY".into();
        pair.not_after_unix += 90 * 24 * 3600;
    }
    let before = desired_objects(
        &c,
        &assignment(&c),
        nodes_of(&c),
        &operator("redstuff:test"),
        &first,
    );
    let after = desired_objects(
        &c,
        &assignment(&c),
        nodes_of(&c),
        &operator("redstuff:test"),
        &renewed,
    );
    assert_eq!(before.node_pods, after.node_pods);
    assert_eq!(before.gateway, after.gateway);
    assert_ne!(before.node_tls_secret, after.node_tls_secret);
    assert_ne!(before.gateway_tls_secret, after.gateway_tls_secret);
}

#[test]
fn a_gateway_serving_a_secret_of_the_users_mounts_it_and_the_nodes_ca_and_no_gateway_secret_is_made(
) {
    let mut c = cluster(7, 7, Some("1Gi"));
    let mut credentials = with_tls(&mut c);
    c.spec.tls.as_mut().unwrap().gateway_secret = Some("media-public-cert".into());
    credentials.tls.as_mut().unwrap().gateway = None;
    let objects = desired_objects(
        &c,
        &assignment(&c),
        nodes_of(&c),
        &operator("redstuff:test"),
        &credentials,
    );
    assert!(objects.gateway_tls_secret.is_none());
    assert!(objects.node_tls_secret.is_some());
    let gateway = objects.gateway.spec.template.spec.as_ref().unwrap();
    let args = gateway.containers[0].args.as_ref().unwrap().join(" ");
    assert!(
        args.contains("--tls-cert /etc/redstuff/tls/tls.crt --tls-key /etc/redstuff/tls/tls.key --tls-ca /etc/redstuff/fleet-ca/ca.crt"),
        "{args}"
    );
    let (mounts, volumes) = mounts_and_volumes(gateway);
    assert!(
        mounts.contains(&"tls:/etc/redstuff/tls".to_string()),
        "{mounts:?}"
    );
    assert!(
        mounts.contains(&"fleet-ca:/etc/redstuff/fleet-ca".to_string()),
        "{mounts:?}"
    );
    assert!(
        volumes.contains(&("media-public-cert".to_string(), None)),
        "{volumes:?}"
    );
    // Only the CA's certificate of the nodes' Secret, never their key.
    assert!(volumes.contains(&(
        "media-node-tls".to_string(),
        Some(vec!["ca.crt".to_string()])
    )));
    assert!(volumes
        .iter()
        .all(|(secret, _)| secret != "media-gateway-tls"));
}

#[test]
fn several_gateway_pods_spread_over_kubernetes_nodes_and_one_at_a_time_may_be_evicted() {
    let mut c = cluster(4, 4, Some("10Gi"));
    // One gateway pod: a budget that never blocks a drain, and a pod
    // template as it always was.
    let objects = objects_of(&c);
    assert_eq!(objects.gateway.spec.replicas, Some(1));
    let budget = objects.gateway_disruption_budget.spec.clone().unwrap();
    assert_eq!(budget.max_unavailable, Some(IntOrString::Int(1)));
    // It selects the Deployment's pods, by the name label too.
    let selected = budget.selector.unwrap().match_labels.unwrap();
    let pod_labels = objects
        .gateway
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(selected.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    assert_eq!(selected["app.kubernetes.io/name"], "redstuff");
    let pod = objects.gateway.spec.template.spec.unwrap();
    assert!(pod.topology_spread_constraints.is_none());

    c.spec.gateway = Some(crate::operator::crd::GatewaySpec {
        replicas: Some(3),
        ..crate::operator::crd::GatewaySpec::default()
    });
    let objects = objects_of(&c);
    let gateway = objects.gateway.spec;
    assert_eq!(gateway.replicas, Some(3));
    let spread = gateway
        .template
        .spec
        .unwrap()
        .topology_spread_constraints
        .unwrap();
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    assert_eq!(
        spread[0].label_selector.as_ref().unwrap().match_labels,
        gateway.selector.match_labels
    );
}

#[test]
fn claims_outlive_their_cluster_unless_it_says_delete() {
    let mut c = cluster(4, 4, Some("10Gi"));
    c.spec.s3 = Some(crate::operator::crd::S3Spec::default());
    let owned = |objects: &DesiredObjects| -> Vec<bool> {
        objects
            .node_claims
            .iter()
            .chain(objects.s3_index_claim.iter())
            .map(|claim| claim.metadata.owner_references.is_some())
            .collect()
    };
    let objects = objects_of(&c);
    assert_eq!(owned(&objects), [false; 5], "Retain by default");
    assert!(objects.node_pods[0].metadata.owner_references.is_some());
    c.spec.storage.when_deleted = Some(ClaimRetention::Delete);
    assert_eq!(owned(&objects_of(&c)), [true; 5]);
    // Found by labels either way.
    let claim = &objects.node_claims[1];
    assert_eq!(
        claim.metadata.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
        "media"
    );
}
