//! Running the servers: one storage node, one gateway (with its S3 door),
//! or a whole local fleet (`redstuff dev`).

mod args;

pub(crate) use args::{DevArgs, GatewayArgs, NodeArgs};

use std::io::Write as _;

use redstuff::auth::{TokenSet, TokenSource};
use redstuff::client::Deadlines;
use redstuff::dev::DevConfig;
use redstuff::gateway::{FleetSource, Gateway, GatewayConfig};
use redstuff::node::{Node, NodeConfig, ShardSource};
use redstuff::store::Housekeeping;

pub(crate) async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let shards = match args.shards_file {
        Some(path) => ShardSource::File(path),
        None => ShardSource::Fixed(args.shards.into_iter().collect()),
    };
    let tokens = std::sync::Arc::new(TokenSet::load(TokenSource::File(args.token_file))?);
    let config = NodeConfig {
        fleet: args.fleet,
        deadlines: Deadlines::from_secs(args.node_timeout_secs),
        capacity: args.capacity,
        max_metadata_bytes: args.max_metadata,
        metadata_cache_bytes: args.metadata_cache,
        lie: if args.test_corrupt_reads {
            Some(redstuff::node::Lie::FlipBits)
        } else if args.test_replay_reads {
            Some(redstuff::node::Lie::Replay)
        } else {
            None
        },
        scrub_interval: (args.scrub_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(args.scrub_interval_secs)),
        scrub_max_bytes_per_sec: (args.scrub_max_bytes_per_sec > 0)
            .then_some(args.scrub_max_bytes_per_sec),
        housekeeping: Housekeeping {
            staged_ttl: std::time::Duration::from_secs(args.staged_ttl_secs),
            quarantine_retention: std::time::Duration::from_secs(args.quarantine_retention_secs),
        },
        tls: redstuff::tls::ServingCert::load_optional(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )?,
        peers_ca: redstuff::tls::TrustedCa::from_optional_file(args.tls_ca.as_deref())?,
        ..NodeConfig::new(&args.name, args.data_dir, shards, tokens)
    };
    let mut node = Node::bind(config, args.listen).await?;
    if let Some(addr) = args.metrics_listen {
        node = node.with_metrics_listener(addr).await?;
    }
    let url = node.url();
    println!(
        "{}",
        serde_json::json!({"event": "listening", "node": args.name, "url": url})
    );
    tracing::info!(node = %args.name, %url, "listening");
    node.serve(crate::shutdown_signal()).await
}

pub(crate) async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let cluster_tokens =
        std::sync::Arc::new(TokenSet::load(TokenSource::File(args.cluster_token_file))?);
    let user_tokens =
        std::sync::Arc::new(TokenSet::load(TokenSource::File(args.user_tokens_file))?);
    let config = GatewayConfig {
        max_blob_bytes: args.max_blob,
        max_spool_bytes: args.max_spool,
        max_uploads: args.max_uploads,
        upload_wait: args.upload_wait_secs,
        cut_upload_kept: args.cut_upload_kept_secs,
        upload_memory_bytes: args.upload_memory,
        read_memory_bytes: args.read_memory,
        read_wait: args.read_wait_secs,
        client_stall: args.client_stall_secs,
        anonymous_reads: args.anonymous_reads,
        deadlines: Deadlines::from_secs(args.node_timeout_secs),
        segment_cache_bytes: usize::try_from(args.segment_cache).unwrap_or(usize::MAX),
        nodes_ca: redstuff::tls::TrustedCa::from_optional_file(args.tls_ca.as_deref())?,
        tls: redstuff::tls::ServingCert::load_optional(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )?,
        ..GatewayConfig::new(
            FleetSource::File(args.fleet),
            args.spool_dir,
            cluster_tokens,
            user_tokens,
        )
    };
    let mut gateway = Gateway::bind(config, args.listen, Default::default()).await?;
    if let Some(addr) = args.metrics_listen {
        gateway = gateway.with_metrics_listener(addr).await?;
    }
    let mut listening = serde_json::json!({"event": "listening", "url": gateway.url()});
    if let Some(addr) = gateway.metrics_addr() {
        listening["metrics"] = format!("http://{addr}").into();
    }
    println!("{listening}");
    let Some(s3_listen) = args.s3_listen else {
        return gateway.serve(crate::shutdown_signal()).await;
    };
    // The environment's key, every profile of the credentials file, and the
    // Secret's directory.
    use redstuff::s3::keyring::KeySource;
    let keys: Vec<KeySource> = s3_keys_from_env()
        .map(KeySource::Fixed)
        .into_iter()
        .chain(args.s3_credentials_file.map(KeySource::CredentialsFile))
        .chain(args.s3_keys_dir.map(KeySource::SecretDir))
        .collect();
    anyhow::ensure!(
        !keys.is_empty(),
        "S3 needs an access key: --s3-credentials-file, --s3-keys-dir, or REDSTUFF_S3_ACCESS_KEY and REDSTUFF_S3_SECRET_KEY"
    );
    let s3 = redstuff::s3::S3Server::bind(
        redstuff::s3::S3Config {
            listen: s3_listen,
            index: match (args.s3_index, args.s3_index_postgres) {
                (Some(path), _) => redstuff::s3::IndexLocation::File(path),
                (None, Some(url)) => redstuff::s3::IndexLocation::Postgres(url),
                (None, None) => anyhow::bail!(
                    "--s3-listen needs an index: --s3-index FILE or --s3-index-postgres URL"
                ),
            },
            keys,
            keys_reload_every: redstuff::s3::keyring::RELOAD_EVERY,
            domain: args.s3_domain,
            collect_after: std::time::Duration::from_secs(args.s3_collect_after_secs),
            upload_max_age: std::time::Duration::from_secs(args.s3_upload_max_age_secs),
            collect_every: std::time::Duration::from_secs(args.s3_collect_after_secs.clamp(1, 10)),
        },
        gateway.door(),
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "s3": s3.url()})
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let s3_task = tokio::spawn(s3.serve(wait(stopped.clone())));
    let gateway_task = tokio::spawn(gateway.serve(wait(stopped)));
    crate::shutdown_signal().await;
    let _ = stop.send(true);
    gateway_task.await??;
    s3_task.await??;
    Ok(())
}

pub(crate) async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let config = DevConfig {
        shards: args.shards,
        nodes: args.nodes,
        data_dir: args.data_dir.clone(),
        gateway_addr: args.gateway_addr,
        segment_size: args.segment_size,
        exe: std::env::current_exe()?,
        period: std::time::Duration::from_millis(args.period_ms.max(50)),
        max_concurrent_repairs: args.max_concurrent_repairs.max(1),
        corrupt_nodes: args.test_corrupt_node,
        replaying_nodes: args.test_replaying_node,
        scrub_interval_secs: args.scrub_interval_secs,
        node_timeout_secs: args.node_timeout_secs,
        staged_ttl_secs: args.staged_ttl_secs,
        anonymous_reads: args.anonymous_reads,
        max_uploads: args.max_uploads,
        upload_wait: args.upload_wait_secs,
        cut_upload_kept: args.cut_upload_kept_secs,
        upload_memory_bytes: args.upload_memory,
        read_memory_bytes: args.read_memory,
        read_wait: args.read_wait_secs,
        client_stall: args.client_stall_secs,
        s3: (!args.no_s3).then(|| redstuff::dev::DevS3 {
            addr: args.s3_addr,
            keys: s3_keys_from_env(),
            collect_after: std::time::Duration::from_secs(args.s3_collect_after_secs),
            upload_max_age: std::time::Duration::from_secs(args.s3_upload_max_age_secs),
            index_postgres: args.s3_index_postgres.clone(),
            domain: args.s3_domain.clone(),
        }),
        tls: args.tls,
    };
    let nodes = args.nodes;
    let shards = args.shards;
    redstuff::dev::run(config, crate::shutdown_signal(), move |endpoints| {
        // Whoever reads our stdout may have gone: that must not stop the fleet.
        let mut out = std::io::stdout().lock();
        let url = &endpoints.gateway;
        let token = endpoints.token.display();
        let ca = endpoints.ca.as_ref().map(|ca| ca.display().to_string());
        let (trust, curl_trust) = match &ca {
            Some(ca) => (format!(" --tls-ca {ca}"), format!(" --cacert {ca}")),
            None => Default::default(),
        };
        let _ = writeln!(
            out,
            "redstuff dev: {nodes} nodes holding {shards} shards are up\n  \
             gateway:  {url}    (redstuff put FILE --gateway {url}{trust})\n  \
             token:    {token}    (export REDSTUFF_TOKEN=$(cat {token}))\n  \
             curl:     curl{curl_trust} -H \"Authorization: Bearer $(cat {token})\" -T FILE {url}/v1/blobs"
        );
        if let Some(ca) = &ca {
            let _ = writeln!(
                out,
                "  ca:       {ca}    (the CA clients trust: export REDSTUFF_TLS_CA={ca})"
            );
        }
        if let Some((s3, keys, file)) = &endpoints.s3 {
            let bundle = ca
                .as_ref()
                .map(|ca| format!("AWS_CA_BUNDLE={ca} "))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  s3:       {s3}    (keys in {})\n  \
                 aws:      AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_DEFAULT_REGION=us-east-1 \
                 {bundle}aws --endpoint-url {s3} s3 ls",
                file.display(),
                keys.access_key,
                keys.secret_key
            );
        }
        let _ = writeln!(
            out,
            "  metrics:  {url}/metrics\n  \
             status:   redstuff status --gateway {url}{trust}\n  \
             data:     {}\n\
             Ctrl-C stops every node.",
            args.data_dir.display()
        );
        let _ = out.flush();
    })
    .await
}

/// S3 keys from REDSTUFF_S3_ACCESS_KEY and REDSTUFF_S3_SECRET_KEY, when
/// both are set.
fn s3_keys_from_env() -> Option<redstuff::s3::credentials::S3Keys> {
    let access_key = std::env::var("REDSTUFF_S3_ACCESS_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    let secret_key = std::env::var("REDSTUFF_S3_SECRET_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    Some(redstuff::s3::credentials::S3Keys {
        access_key,
        secret_key,
    })
}
