//! How many gateway pods a cluster runs (pure). The gateway is stateless
//! but for an embedded S3 index, which has one writer: several pods need
//! S3 off or its index in PostgreSQL.

use crate::operator::crd::StorageClusterSpec;

/// The gateway pods of `spec`: `gateway.replicas`, else the older
/// `s3.replicas` (when S3 is served), else 1; or what is wrong.
pub fn gateway_replicas(spec: &StorageClusterSpec) -> Result<u16, String> {
    let s3 = spec.s3.as_ref().filter(|s3| s3.is_enabled());
    let own = spec.gateway.as_ref().and_then(|g| g.replicas);
    let of_s3 = s3.and_then(|s3| s3.replicas);
    if let (Some(own), Some(of_s3)) = (own, of_s3) {
        if own != of_s3 {
            return Err(format!(
                "gateway.replicas ({own}) and s3.replicas ({of_s3}) disagree: set gateway.replicas only"
            ));
        }
    }
    let replicas = own.or(of_s3).unwrap_or(1);
    if replicas == 0 {
        return Err("gateway.replicas must be at least 1".into());
    }
    if replicas > 1 && s3.is_some_and(|s3| s3.postgres_secret.is_none()) {
        return Err(format!(
            "{replicas} gateway replicas: several gateway replicas need the index in PostgreSQL (s3.postgresSecret): the embedded index has one writer"
        ));
    }
    Ok(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{GatewaySpec, S3Spec};

    fn spec(gateway: Option<u16>, s3: Option<S3Spec>) -> StorageClusterSpec {
        StorageClusterSpec {
            gateway: gateway.map(|replicas| GatewaySpec {
                replicas: Some(replicas),
                ..GatewaySpec::default()
            }),
            s3,
            ..crate::operator::fixtures::cluster(4, 4, Some("1Gi")).spec
        }
    }

    fn s3(replicas: Option<u16>, postgres: bool) -> Option<S3Spec> {
        Some(S3Spec {
            replicas,
            postgres_secret: postgres.then(|| "pg".to_string()),
            ..S3Spec::default()
        })
    }

    #[test]
    fn one_gateway_pod_unless_asked_for_more() {
        assert_eq!(gateway_replicas(&spec(None, None)), Ok(1));
        assert_eq!(gateway_replicas(&spec(Some(3), None)), Ok(3));
    }

    #[test]
    fn several_gateway_pods_with_s3_need_the_index_in_postgresql() {
        assert_eq!(gateway_replicas(&spec(Some(3), s3(None, true))), Ok(3));
        assert_eq!(gateway_replicas(&spec(None, s3(Some(2), true))), Ok(2));
        let refused = gateway_replicas(&spec(Some(2), s3(None, false))).unwrap_err();
        assert!(
            refused.contains("need the index in PostgreSQL"),
            "{refused}"
        );
        assert!(gateway_replicas(&spec(None, s3(Some(2), false))).is_err());
        // S3 switched off: the embedded index is not served.
        let off = S3Spec {
            enabled: Some(false),
            ..S3Spec::default()
        };
        assert_eq!(gateway_replicas(&spec(Some(2), Some(off))), Ok(2));
    }

    #[test]
    fn the_two_replica_fields_must_agree() {
        assert_eq!(gateway_replicas(&spec(Some(2), s3(Some(2), true))), Ok(2));
        let refused = gateway_replicas(&spec(Some(3), s3(Some(2), true))).unwrap_err();
        assert!(refused.contains("disagree"), "{refused}");
        assert!(gateway_replicas(&spec(Some(0), None)).is_err());
    }
}
