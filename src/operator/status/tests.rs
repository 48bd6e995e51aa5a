use super::*;

/// A cluster of the fixtures' shape that was Ready before (not being
/// created).
fn cluster(shards: u16, nodes: u16, size: Option<&str>) -> StorageCluster {
    let mut c = crate::operator::fixtures::cluster(shards, nodes, size);
    c.status = Some(StorageClusterStatus {
        phase: Some("Ready".into()),
        ..StorageClusterStatus::default()
    });
    c
}

/// `count` node pods, pod i on host i % hosts, host h in zone h % zones.
fn on_hosts(count: usize, ready: &[usize], hosts: usize, zones: usize) -> Vec<ObservedNode> {
    (0..count)
        .map(|i| ObservedNode {
            name: format!("media-node-{i}"),
            host: format!("host-{}", i % hosts),
            domain: format!("zone-{}", (i % hosts) % zones),
            exists: true,
            ready: ready.contains(&i),
        })
        .collect()
}

fn observed(count: usize, ready: &[usize], zones: usize) -> Vec<ObservedNode> {
    on_hosts(count, ready, count, zones)
}

fn assignment(c: &StorageCluster, nodes: &[ObservedNode]) -> Assignment {
    let specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|n| NodeSpec {
            name: n.name.clone(),
            domain: n.domain.clone(),
        })
        .collect();
    fleet::assign(c.spec.shards, &specs, &Assignment::new())
}

fn now(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
}

fn cond<'a>(s: &'a StorageClusterStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn a_refused_spec_keeps_the_shard_assignment_and_the_nodes_unavailable_and_retiring() {
    let mut c = cluster(4, 4, Some("1Gi"));
    let kept = StorageClusterStatus {
        shard_assignment: vec![crate::operator::crd::ShardAssignment {
            shard: 0,
            node: "media-node-0".into(),
        }],
        unavailable_nodes: vec![crate::operator::crd::UnavailableNode {
            name: "media-node-1".into(),
            since: "2026-12-01T00:00:00Z".into(),
            reason: None,
        }],
        retiring_nodes: vec!["media-node-3".into()],
        ready_nodes: Some(3),
        ..StorageClusterStatus::default()
    };
    c.status = Some(kept.clone());
    let refused = refused_status(&c, "InvalidSpec", "no".into(), &now(1));
    assert_eq!(refused.phase.as_deref(), Some("Failed"));
    assert_eq!(refused.shard_assignment, kept.shard_assignment);
    assert_eq!(refused.unavailable_nodes, kept.unavailable_nodes);
    assert_eq!(refused.retiring_nodes, kept.retiring_nodes);
    assert_eq!(refused.ready_nodes, None, "what it no longer watches goes");
}

#[test]
fn a_refused_spec_keeps_what_was_last_known_of_the_blobs_and_the_lost_objects() {
    let mut c = cluster(4, 4, Some("1Gi"));
    let kept = StorageClusterStatus {
        blobs: Some(crate::operator::crd::BlobCounts {
            healthy: 5,
            degraded: 0,
            at_risk: 0,
            lost: 1,
        }),
        lost_blobs: vec!["gone".into()],
        lost_objects: vec!["media/model.bin".into()],
        ..StorageClusterStatus::default()
    };
    c.status = Some(kept.clone());
    let refused = refused_status(&c, "InvalidSpec", "no".into(), &now(1));
    assert_eq!(refused.blobs, kept.blobs);
    assert_eq!(refused.lost_blobs, kept.lost_blobs);
    assert_eq!(refused.lost_objects, kept.lost_objects);
}

#[test]
fn a_cluster_holding_blobs_that_was_refused_says_too_many_shards_down_not_creating() {
    let mut c = cluster(7, 7, Some("1Gi"));
    c.status = Some(StorageClusterStatus {
        phase: Some("Failed".into()),
        blobs: Some(crate::operator::crd::BlobCounts {
            healthy: 3,
            degraded: 0,
            at_risk: 0,
            lost: 0,
        }),
        ..StorageClusterStatus::default()
    });
    let nodes = observed(7, &[0, 1, 2], 7);
    let s = cluster_status(
        &c,
        &assignment(&c, &nodes),
        &nodes,
        &FleetSummary::default(),
        &now(100),
    );
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(cond(&s, "Ready").reason, "TooManyShardsDown");
}

#[test]
fn status_follows_the_nodes_table() {
    let c = cluster(10, 10, Some("1Gi"));
    let table: [(&[usize], &str, &str, &str); 3] = [
        (
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            "Ready",
            "True",
            "AllNodesReady",
        ),
        (
            &[0, 1, 2, 3, 4, 5, 6, 7],
            "Degraded",
            "False",
            "NodesNotReady",
        ),
        (
            &[0, 1, 2, 3, 4, 5],
            "Degraded",
            "False",
            "TooManyShardsDown",
        ),
    ];
    for (ready, phase, ready_status, reason) in table {
        let nodes = observed(10, ready, 5);
        let s = cluster_status(
            &c,
            &assignment(&c, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(100),
        );
        assert_eq!(s.phase.as_deref(), Some(phase), "{ready:?}");
        assert_eq!(cond(&s, "Ready").status, ready_status, "{ready:?}");
        assert_eq!(cond(&s, "Ready").reason, reason, "{ready:?}");
        assert_eq!(s.ready_nodes, Some(ready.len() as u16));
        assert_eq!(s.fault_tolerance, Some(3));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.shard_assignment.len(), 10);
    }
}

#[test]
fn a_cluster_being_created_is_pending_not_degraded_until_it_was_first_ready() {
    let new = crate::operator::fixtures::cluster(10, 10, Some("1Gi"));
    for ready in [&[][..], &[0, 1, 2]] {
        let mut nodes = observed(10, ready, 5);
        if ready.is_empty() {
            nodes.iter_mut().for_each(|n| n.exists = false);
        }
        let s = cluster_status(
            &new,
            &assignment(&new, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(1),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"), "{ready:?}");
        assert_eq!(
            (
                cond(&s, "Ready").status.as_str(),
                cond(&s, "Ready").reason.as_str()
            ),
            ("False", "Creating")
        );
        let degraded = cond(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "Creating")
        );
        assert!(cond(&s, "Ready")
            .message
            .contains(&format!("{} of 10 node pods ready", ready.len())));
    }
}

#[test]
fn an_established_cluster_whose_node_pods_are_all_gone_has_too_many_shards_down() {
    let c = cluster(10, 10, Some("1Gi"));
    let mut nodes = observed(10, &[], 5);
    nodes.iter_mut().for_each(|n| n.exists = false);
    let s = cluster_status(
        &c,
        &assignment(&c, &observed(10, &[], 5)),
        &nodes,
        &FleetSummary::default(),
        &now(1),
    );
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(cond(&s, "Ready").reason, "TooManyShardsDown");
    let degraded = cond(&s, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "TooManyShardsDown")
    );
}

#[test]
fn ready_node_pods_that_do_not_answer_count_as_down_shards() {
    // 7 shards, f = 2: three pods ready by Kubernetes whose API is silent.
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let silent = |names: &[&str]| FleetSummary {
        not_answering: names.iter().map(|n| n.to_string()).collect(),
        ..FleetSummary::default()
    };
    let three = silent(&["media-node-0", "media-node-1", "media-node-2"]);
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &three, &now(1));
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    let ready = cond(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TooManyShardsDown")
    );
    assert!(
        ready
            .message
            .contains("3 shards unavailable, more than the 2 tolerated"),
        "{}",
        ready.message
    );
    assert_eq!(cond(&s, "Degraded").reason, "TooManyShardsDown");
    assert!(cond(&s, "Degraded")
        .message
        .contains("their API does not answer"));
    // Within what is tolerated: Ready, and Degraded for the silence.
    let two = silent(&["media-node-0", "media-node-1"]);
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &two, &now(1));
    assert_eq!(cond(&s, "Ready").status, "True");
    assert_eq!(cond(&s, "Degraded").reason, "NodesNotAnswering");
}

#[test]
fn tolerated_hosts_and_zones_are_counted_from_the_assignment() {
    let all: Vec<usize> = (0..10).collect();
    // (hosts, zones, host losses, zone losses, text), 10 shards on 10 pods, f = 3.
    let table = [
        // One pod per host, 5 zones of 2 shards: 3 hosts, or 1 zone.
        (10, 5, 3, 1, "3 shards, 3 hosts, 1 zone"),
        // 5 hosts of 2 pods each in 5 zones: a host is a zone.
        (5, 5, 1, 1, "3 shards, 1 host, 1 zone"),
        // Two zones of 5 shards: no zone can go.
        (10, 2, 3, 0, "3 shards, 3 hosts, 0 zones"),
        // Every pod on one host.
        (1, 1, 0, 0, "3 shards, 0 hosts, 0 zones"),
    ];
    let c = cluster(10, 10, Some("1Gi"));
    for (hosts, zones, host_losses, zone_losses, text) in table {
        let nodes = on_hosts(10, &all, hosts, zones);
        let s = cluster_status(
            &c,
            &assignment(&c, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(1),
        );
        assert_eq!(s.tolerated_host_losses, Some(host_losses), "{text}");
        assert_eq!(s.tolerated_domain_losses, Some(zone_losses), "{text}");
        assert_eq!(s.tolerates.as_deref(), Some(text));
    }
}

#[test]
fn the_domains_are_named_after_the_topology_key() {
    let mut c = cluster(10, 10, Some("1Gi"));
    let nodes = observed(10, &(0..10).collect::<Vec<_>>(), 5);
    let text = |c: &StorageCluster| {
        cluster_status(
            c,
            &assignment(c, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(1),
        )
        .tolerates
        .unwrap()
    };
    let key = |k: &str| {
        Some(crate::operator::crd::PlacementSpec {
            topology_key: Some(k.into()),
            node_selector: None,
        })
    };
    c.spec.placement = key("topology.kubernetes.io/region");
    assert_eq!(text(&c), "3 shards, 3 hosts, 1 region");
    c.spec.placement = key("example.com/rack");
    assert_eq!(text(&c), "3 shards, 3 hosts, 1 domain");
    c.spec.placement = key("kubernetes.io/hostname");
    assert_eq!(text(&c), "3 shards, 3 hosts");
}

#[test]
fn an_invalid_spec_becomes_a_condition_not_a_crash() {
    let c = cluster(4, 5, Some("1Gi"));
    let s = cluster_status(
        &c,
        &Assignment::new(),
        &[],
        &FleetSummary::default(),
        &now(1),
    );
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    let ready = cond(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("nodes must be between 1 and shards"),
        "{}",
        ready.message
    );
    assert!(validate_spec(&cluster(3, 3, Some("1Gi")).spec)
        .unwrap_err()
        .contains("shard count 3"));
    let mut unicode = cluster(7, 7, Some("1Gi"));
    unicode.spec.tls = Some(crate::operator::crd::TlsSpec {
        gateway_names: Some(vec!["s3.bücher.example".into()]),
        ..Default::default()
    });
    let problem = validate_spec(&unicode.spec).unwrap_err();
    assert!(
        problem.contains("tls.gatewayNames") && problem.contains("xn--"),
        "{problem}"
    );
}

#[test]
fn blobs_that_are_not_healthy_make_a_ready_cluster_degraded_and_repairs_make_it_progress() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        blobs: Some(BlobCounts {
            healthy: 10,
            degraded: 1,
            at_risk: 2,
            lost: 0,
        }),
        repairs_in_flight: 3,
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(cond(&s, "Degraded").reason, "BlobsAtRisk");
    assert_eq!(cond(&s, "Progressing").reason, "Repairing");
    assert_eq!(cond(&s, "Ready").status, "True", "every node pod is ready");
    assert_eq!(s.repairs_in_flight, Some(3));
}

#[test]
fn a_ca_rotation_shows_in_the_status_and_makes_a_settled_cluster_progress() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let rotation = CaRotationStatus {
        step: "TrustingNewCa".into(),
        since: Some("2026-12-06T10:00:00Z".into()),
        next_step_after: Some("2026-12-06T10:10:00Z".into()),
        waiting_for: vec!["media-node-2: serves an older certificate".into()],
    };
    let fleet = FleetSummary {
        ca_rotation: Some(rotation.clone()),
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(
        s.phase.as_deref(),
        Some("Ready"),
        "a rotation degrades nothing"
    );
    assert_eq!(s.ca_rotation.as_ref(), Some(&rotation));
    let progressing = cond(&s, "Progressing");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "RotatingCa")
    );
    assert!(
        progressing.message.contains("step 1 of 3")
            && progressing
                .message
                .contains("no earlier than 2026-12-06T10:10:00Z")
            && progressing
                .message
                .contains("media-node-2: serves an older certificate"),
        "{}",
        progressing.message
    );

    // Repairs say what the cluster is busy with first; the rotation
    // stays in its field.
    let busy = FleetSummary {
        repairs_in_flight: 2,
        ..fleet
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &busy, &now(1));
    assert_eq!(cond(&s, "Progressing").reason, "Repairing");
    assert_eq!(s.ca_rotation, Some(rotation));

    // Done: the field goes, and the cluster is stable again.
    let s = cluster_status(
        &c,
        &assignment(&c, &nodes),
        &nodes,
        &FleetSummary::default(),
        &now(1),
    );
    assert_eq!(s.ca_rotation, None);
    assert_eq!(cond(&s, "Progressing").reason, "Stable");
}

#[test]
fn lost_blobs_whose_s3_objects_could_not_be_asked_about_say_so_rather_than_none() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        blobs: Some(BlobCounts {
            lost: 1,
            ..BlobCounts::default()
        }),
        lost_blobs: vec!["blob-00".into()],
        lost_objects_unknown: Some("cannot reach the gateway: connection refused".into()),
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert!(s.lost_objects.is_empty());
    let message = &cond(&s, "Degraded").message;
    assert!(
        message.contains("which S3 objects they hold is not known")
            && message.contains("connection refused"),
        "{message}"
    );
}

#[test]
fn lost_blobs_and_the_s3_objects_they_hold_are_named_in_the_status() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let lost: Vec<String> = (0..60).map(|i| format!("blob-{i:02}")).collect();
    let objects: Vec<crate::wire::ObjectOfBlob> = (0..7)
        .map(|i| crate::wire::ObjectOfBlob {
            bucket: "media".into(),
            key: format!("film {i}"),
            blob: "blob-00".into(),
        })
        .collect();
    let fleet = FleetSummary {
        blobs: Some(BlobCounts {
            healthy: 10,
            lost: 60,
            ..BlobCounts::default()
        }),
        lost_blobs: lost.clone(),
        lost_objects: Some(crate::wire::ObjectsOfBlobs {
            objects,
            truncated: false,
            resume_after: None,
        }),
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(s.lost_blobs, lost[..MOST_LOST_BLOBS_LISTED]);
    assert_eq!(s.lost_objects.len(), 7);
    assert_eq!(s.lost_objects[0], "media/film 0");
    let degraded = cond(&s, "Degraded");
    assert_eq!(degraded.reason, "BlobsLost");
    assert!(
        degraded.message.contains(
            "nor the S3 objects they hold: media/film 0, media/film 1, media/film 2, media/film 3, media/film 4, ... (status.lostObjects lists more)"
        ),
        "{}",
        degraded.message
    );
    // While the scan of a large index goes on: the keys found so far.
    let searching = FleetSummary {
        lost_objects: Some(crate::wire::ObjectsOfBlobs {
            resume_after: Some("media/film 6".into()),
            ..fleet.lost_objects.clone().unwrap()
        }),
        ..fleet.clone()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &searching, &now(1));
    assert_eq!(s.lost_objects.len(), 7);
    assert!(
        cond(&s, "Degraded").message.ends_with(
            "(status.lostObjects lists more) (the search of the S3 index for more goes on)"
        ),
        "{}",
        cond(&s, "Degraded").message
    );
    let nothing_yet = FleetSummary {
        lost_objects: Some(crate::wire::ObjectsOfBlobs {
            resume_after: Some("media/a".into()),
            ..crate::wire::ObjectsOfBlobs::default()
        }),
        ..fleet.clone()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &nothing_yet, &now(1));
    assert!(cond(&s, "Degraded")
        .message
        .ends_with("cannot be read; the S3 index is being searched for the objects they hold"));
    // Without S3 (or before the gateway said): the ids only.
    let native = FleetSummary {
        lost_objects: None,
        ..fleet.clone()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &native, &now(1));
    assert!(s.lost_objects.is_empty());
    assert!(cond(&s, "Degraded")
        .message
        .ends_with("Lost blobs (status.lostBlobs) cannot be read"));
    // While a node pod is not ready, or one does not answer, blobs
    // short of pairs may only be out of reach: not said lost.
    let six = observed(7, &[0, 1, 2, 3, 4, 5], 7);
    let s = cluster_status(&c, &assignment(&c, &six), &six, &fleet, &now(1));
    assert!(s.lost_blobs.is_empty() && s.lost_objects.is_empty());
    assert_eq!(cond(&s, "Degraded").reason, "NodesNotReady");
    let silent = FleetSummary {
        not_answering: vec!["media-node-3".into()],
        ..fleet.clone()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &silent, &now(1));
    assert!(s.lost_blobs.is_empty() && s.lost_objects.is_empty());
    let degraded = cond(&s, "Degraded");
    assert_eq!(degraded.reason, "NodesNotAnswering");
    assert!(
        degraded
            .message
            .contains("60 unreadable while nodes do not answer"),
        "{}",
        degraded.message
    );
}

#[test]
fn repairs_failing_on_a_node_are_listed_and_said_with_why() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let failing = FailingRepairs {
        node: "media-node-4".into(),
        failures: 3,
        blob: "b1".into(),
        reason: "the volume is full".into(),
        last_failure: "2027-01-01T00:00:00Z".into(),
    };
    let fleet = FleetSummary {
        blobs: Some(BlobCounts {
            healthy: 10,
            degraded: 1,
            ..BlobCounts::default()
        }),
        failing_repairs: vec![failing.clone()],
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(s.failing_repairs, vec![failing]);
    let degraded = cond(&s, "Degraded");
    assert_eq!(degraded.reason, "BlobsDegraded");
    assert!(
        degraded
            .message
            .ends_with("; repairs failing on media-node-4 (3 in a row): the volume is full"),
        "{}",
        degraded.message
    );
}

#[test]
fn every_reason_a_cluster_is_degraded_is_said_and_the_most_pressing_names_it() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        blobs: Some(BlobCounts {
            healthy: 10,
            at_risk: 1,
            ..BlobCounts::default()
        }),
        not_answering: vec!["media-node-2".into()],
        gateways: Some(GatewayPods {
            available: 0,
            wanted: 1,
            starting: false,
        }),
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    let degraded = cond(&s, "Degraded");
    assert_eq!(degraded.reason, "GatewayUnavailable");
    let said: Vec<usize> = [
        "no gateway pod is available",
        "their API does not answer",
        "1 at risk",
    ]
    .iter()
    .map(|part| degraded.message.find(part).expect(part))
    .collect();
    assert!(
        said.is_sorted(),
        "most pressing first: {}",
        degraded.message
    );
    // A lost blob (every node answering) is more pressing than them.
    let lost = FleetSummary {
        blobs: Some(BlobCounts {
            lost: 1,
            ..BlobCounts::default()
        }),
        lost_blobs: vec!["gone".into()],
        not_answering: Vec::new(),
        ..fleet
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &lost, &now(1));
    let degraded = cond(&s, "Degraded");
    assert_eq!(degraded.reason, "BlobsLost");
    assert!(degraded.message.contains("no gateway pod is available"));
    // Node pods not ready and evicted: both said, the move first.
    let six = observed(7, &[0, 1, 2, 3, 4, 5], 7);
    let evicted = FleetSummary {
        evicted: vec!["media-node-6".into()],
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &six), &six, &evicted, &now(1));
    let degraded = cond(&s, "Degraded");
    assert_eq!(degraded.reason, "ShardsMoved");
    assert!(
        degraded
            .message
            .contains("1 shards on node pods that are not ready"),
        "{}",
        degraded.message
    );
}

#[test]
fn shards_still_to_move_make_a_healthy_cluster_progress_without_degrading_it() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        blobs: Some(BlobCounts {
            healthy: 10,
            ..BlobCounts::default()
        }),
        shards_to_move: 2,
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(s.phase.as_deref(), Some("Ready"));
    let progressing = cond(&s, "Progressing");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "Rebalancing")
    );
    assert!(
        progressing.message.starts_with("2 shards"),
        "{}",
        progressing.message
    );
}

#[test]
fn nodes_retiring_name_the_progress_while_the_repairs_they_cause_run_and_both_are_said() {
    let c = cluster(7, 6, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        retiring: vec!["media-node-6".into()],
        shards_to_move: 3,
        repairs_in_flight: 2,
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    let progressing = cond(&s, "Progressing");
    assert_eq!(progressing.reason, "NodesRetiring");
    for said in ["media-node-6", "3 still to move", "2 repairs in flight"] {
        assert!(
            progressing.message.contains(said),
            "{}",
            progressing.message
        );
    }
    assert!(
        !progressing.message.contains("to balance"),
        "said once: {}",
        progressing.message
    );
    // A rolling update names it above both, and all three are said.
    let rolling = FleetSummary {
        outdated: vec!["media-node-1".into()],
        ..fleet
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &rolling, &now(1));
    let progressing = cond(&s, "Progressing");
    assert_eq!(progressing.reason, "RollingUpdate");
    assert!(
        progressing.message.contains("3 still to move"),
        "{}",
        progressing.message
    );
}

#[test]
fn nodes_retiring_whose_shards_all_moved_are_said_to_be_going_not_to_have_0_to_move() {
    let c = cluster(7, 6, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        retiring: vec!["media-node-6".into()],
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    let progressing = cond(&s, "Progressing");
    assert_eq!(progressing.reason, "NodesRetiring");
    assert!(
        progressing
            .message
            .contains("media-node-6 have no shards left to move")
            && !progressing.message.contains("still to move"),
        "{}",
        progressing.message
    );
}

#[test]
fn ready_node_pods_whose_api_does_not_answer_are_named_and_make_the_cluster_degraded() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        not_answering: vec!["media-node-2".into()],
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(s.not_answering_nodes, vec!["media-node-2".to_string()]);
    let degraded = cond(&s, "Degraded");
    assert_eq!(degraded.reason, "NodesNotAnswering");
    assert!(
        degraded.message.contains("media-node-2"),
        "{}",
        degraded.message
    );
}

#[test]
fn evicted_nodes_are_named_in_the_degraded_condition() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5], 7);
    let fleet = FleetSummary {
        unavailable: vec![UnavailableNode {
            name: "media-node-6".into(),
            since: "2027-01-01T00:00:00Z".into(),
            reason: Some("Unschedulable: 0/7 nodes are available".into()),
        }],
        evicted: vec!["media-node-6".into()],
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    let degraded = cond(&s, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ShardsMoved")
    );
    assert!(degraded.message.contains("media-node-6"));
    assert_eq!(s.unavailable_nodes.len(), 1);
    let ready = cond(&s, "Ready");
    assert!(
        ready
            .message
            .ends_with("; media-node-6: Unschedulable: 0/7 nodes are available"),
        "the Ready condition says why: {}",
        ready.message
    );
}

#[test]
fn an_unchanged_status_keeps_its_transition_times_so_it_is_not_rewritten() {
    let mut c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let a = assignment(&c, &nodes);
    let first = cluster_status(&c, &a, &nodes, &FleetSummary::default(), &now(100));
    c.status = Some(first.clone());
    let second = cluster_status(&c, &a, &nodes, &FleetSummary::default(), &now(200));
    assert_eq!(first, second, "same observation, same status: no write");
    let fewer = observed(7, &[0, 1, 2, 3, 4, 5], 7);
    let third = cluster_status(&c, &a, &fewer, &FleetSummary::default(), &now(300));
    assert_eq!(cond(&third, "Ready").last_transition_time, now(300));
}

#[test]
fn objects_that_cannot_be_applied_are_named_in_the_synced_condition_and_the_rest_stays_ready() {
    let c = cluster(7, 7, Some("1Gi"));
    let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
    let fleet = FleetSummary {
        sync_failures: vec!["apply PersistentVolumeClaim media-data-3: field is immutable".into()],
        ..FleetSummary::default()
    };
    let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
    assert_eq!(s.phase.as_deref(), Some("Ready"));
    let synced = cond(&s, "Synced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "ApplyFailed")
    );
    assert!(
        synced.message.contains("media-data-3: field is immutable"),
        "{}",
        synced.message
    );
    let s = cluster_status(
        &c,
        &assignment(&c, &nodes),
        &nodes,
        &FleetSummary::default(),
        &now(1),
    );
    assert_eq!(cond(&s, "Synced").status, "True");
}

#[test]
fn a_cluster_without_an_available_gateway_is_degraded_whatever_its_nodes() {
    let c = cluster(4, 4, Some("1Gi"));
    let nodes = observed(4, &[0, 1, 2, 3], 4);
    let status_with = |available: u16| {
        let fleet = FleetSummary {
            gateways: Some(GatewayPods {
                available,
                wanted: 2,
                starting: false,
            }),
            ..FleetSummary::default()
        };
        cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1))
    };
    let down = status_with(0);
    assert_eq!(down.phase.as_deref(), Some("Degraded"));
    assert_eq!(down.gateways_available, Some(0));
    let degraded = cond(&down, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "GatewayUnavailable")
    );
    assert!(degraded.message.contains("0 of 2"), "{}", degraded.message);
    let one = status_with(1);
    assert_eq!(one.phase.as_deref(), Some("Ready"), "one of two serves");
    assert_eq!(one.gateways_available, Some(1));
    let unread = cluster_status(
        &c,
        &assignment(&c, &nodes),
        &nodes,
        &FleetSummary::default(),
        &now(1),
    );
    assert_eq!(
        (unread.phase.as_deref(), unread.gateways_available),
        (Some("Ready"), None)
    );
    let starting = FleetSummary {
        gateways: Some(GatewayPods {
            available: 0,
            wanted: 1,
            starting: true,
        }),
        ..FleetSummary::default()
    };
    let new = cluster_status(&c, &assignment(&c, &nodes), &nodes, &starting, &now(1));
    assert_eq!(
        new.phase.as_deref(),
        Some("Ready"),
        "a gateway just made is starting, not down"
    );
}
