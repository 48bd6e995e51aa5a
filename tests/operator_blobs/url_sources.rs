//! Where a Blob's URL source may lead, and what of the URL is shown: the
//! operator fetches with its own network identity, so loopback and
//! link-local addresses (its own pod, cloud metadata) are refused unless
//! allowed, a URL's credentials and signed query stay out of Events and
//! the status, and a download takes no more of the spool than it has.

use redstuff::operator::source_addresses::{LocalAddresses, SourceReach};

use super::*;

/// Runs one reconcile of `blob` with URL sources reaching what `reach`
/// allows.
async fn run_reaching(api: MockApi, blob: &Blob, reach: SourceReach) -> Vec<Seen> {
    let (client, recorded) = api.serve();
    let ctx = Arc::new(test_context(client).with_source_reach(reach));
    reconcile_blob(Arc::new(blob.clone()), ctx).await.unwrap();
    recorded.take()
}

#[tokio::test]
async fn a_url_source_on_loopback_is_refused_by_default_and_its_server_never_asked() {
    let source =
        support::serve_range_source(vec![("\"v1\"".into(), vec![7; 1000])], vec![], true).await;
    let port = source.url.rsplit(':').next().unwrap().to_string();
    for url in [
        source.url.clone(),
        // A name resolving to loopback, and loopback written otherwise.
        format!("http://localhost:{port}"),
        format!("http://2130706433:{port}"),
    ] {
        let b = url_blob("dataset", url.clone(), None);
        let seen = run_reaching(
            api(Some(&cluster(4)), &[&b], &[]),
            &b,
            SourceReach::default(),
        )
        .await;
        let status = status_patches(&seen, "dataset").pop().unwrap();
        assert_eq!(
            condition(&status, "Ingested"),
            ("False", "SourceNotAllowed"),
            "{url}"
        );
        assert!(status.get("blobId").is_none());
        let notes = event_notes(&seen, "IngestFailed");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("loopback") && n.contains("--blob-sources-may-reach loopback")),
            "{url}: {notes:?}"
        );
    }
    assert!(
        source.asked.lock().unwrap().is_empty(),
        "no request reached the source"
    );
}

#[tokio::test]
async fn a_redirect_to_a_link_local_address_ends_the_download_before_any_connection() {
    // The first hop is allowed (loopback); the redirect leads where cloud
    // metadata is served. fe80::1 without a scope could not be reached
    // anyway: nothing leaves the machine even if the check failed.
    let (url, _stop) = support::serve_redirect("http://[fe80::1]:9/latest/meta-data").await;
    let b = url_blob("dataset", url, None);
    let reach = SourceReach::allowing([LocalAddresses::Loopback]);
    let seen = run_reaching(api(Some(&cluster(4)), &[&b], &[]), &b, reach).await;
    let status = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(
        condition(&status, "Ingested"),
        ("False", "SourceNotAllowed")
    );
    let notes = event_notes(&seen, "IngestFailed");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("[fe80::1] is a link-local address")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_url_sources_credentials_and_signed_query_stay_out_of_events_and_status() {
    // A source that answers 403 to everything: the download fails and says so.
    let (url, _stop) = support::serve_status(403).await;
    let host = url.trim_start_matches("http://").to_string();
    let secret_url = format!("http://reader:hunter2@{host}?X-Amz-Signature=deadbeef#part");
    let b = url_blob("dataset", secret_url, None);
    let seen = run_reaching(
        api(Some(&cluster(4)), &[&b], &[]),
        &b,
        SourceReach::allowing([LocalAddresses::Loopback]),
    )
    .await;
    let status = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(condition(&status, "Ingested"), ("False", "DownloadFailed"));
    let said =
        serde_json::to_string(&status).unwrap() + &event_notes(&seen, "IngestFailed").join("\n");
    assert!(said.contains("403"), "{said}");
    assert!(said.contains(&format!("http://{host}?…")), "{said}");
    for secret in ["hunter2", "reader", "deadbeef", "Signature"] {
        assert!(!said.contains(secret), "{secret} shown: {said}");
    }
}

#[tokio::test]
async fn a_download_that_would_not_fit_on_the_spool_beside_a_kept_one_waits_and_fetches_nothing_more(
) {
    let source =
        support::serve_range_source(vec![("\"v1\"".into(), vec![9; 250_000])], vec![], true).await;
    let b = url_blob("dataset", source.url.clone(), None);
    let (client, recorded) = api(Some(&cluster(4)), &[&b], &[]).serve();
    let mut ctx = test_context(client);
    // A download kept for a retry already takes 300 kB of a 500 kB spool.
    let spool = tempfile::tempdir().unwrap();
    ctx.spool_dir = spool.path().to_path_buf();
    std::fs::write(ctx.spool_dir.join("download-other"), vec![0; 300_000]).unwrap();
    ctx.spool_room = redstuff::operator::spool_room::SpoolRoom::new(Some(500_000));
    let ctx = Arc::new(ctx);
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let seen = recorded.take();
    let status = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(condition(&status, "Ingested"), ("False", "SpoolFull"));
    let notes = event_notes(&seen, "IngestFailed");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("no room for 250000 bytes") && n.contains("300000 of its 500000")),
        "{notes:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&ctx.spool_dir).unwrap().collect();
    assert_eq!(left.len(), 1, "only the kept download stays on the spool");
    assert_eq!(
        source.asked.lock().unwrap().len(),
        1,
        "asked once, body left"
    );
}
