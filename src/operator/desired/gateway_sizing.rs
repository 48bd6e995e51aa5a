//! The gateway pods' resources and bounds from `spec.gateway` (pure).

use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::operator::crd::GatewaySpec;

/// Share of the spool volume the gateway fills at most: the kubelet
/// evicts a pod whose emptyDir passes its size limit, so the gateway
/// answers SlowDown before.
const SPOOL_SHARE: f64 = 0.9;

/// What `spec.gateway` makes of the gateway pods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GatewaySizing {
    /// Arguments added to the gateway's command line.
    pub args: Vec<String>,
    /// The gateway container's resources.
    pub resources: Option<ResourceRequirements>,
    /// The spool volume.
    pub spool: EmptyDirVolumeSource,
}

/// The byte count of a size in `spec.gateway` (`2Gi`, `500M`, `1000`),
/// which must be more than 0.
fn size(field: &str, text: &str) -> Result<u64, String> {
    match crate::units::parse_bytes(text) {
        Ok(0) => Err(format!("gateway.{field} must be more than 0")),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(format!("gateway.{field}: {e}")),
    }
}

/// The gateway pods' sizing for `spec`, or what is wrong with it.
pub fn gateway_sizing(spec: Option<&GatewaySpec>) -> Result<GatewaySizing, String> {
    let Some(spec) = spec else {
        return Ok(GatewaySizing::default());
    };
    let mut sizing = GatewaySizing {
        resources: spec.resources.clone(),
        ..GatewaySizing::default()
    };
    if let Some(uploads) = spec.max_uploads {
        if uploads == 0 {
            return Err("gateway.maxUploads must be at least 1".into());
        }
        sizing
            .args
            .extend(["--max-uploads".into(), uploads.to_string()]);
    }
    if let Some(memory) = &spec.upload_memory {
        let bytes = size("uploadMemory", memory)?;
        sizing
            .args
            .extend(["--upload-memory".into(), bytes.to_string()]);
    }
    if let Some(memory) = &spec.read_memory {
        let bytes = size("readMemory", memory)?;
        sizing
            .args
            .extend(["--read-memory".into(), bytes.to_string()]);
    }
    if let Some(seconds) = spec.client_stall_seconds {
        if seconds == 0 {
            return Err("gateway.clientStallSeconds must be at least 1".into());
        }
        sizing
            .args
            .extend(["--client-stall-secs".into(), seconds.to_string()]);
    }
    if let Some(spool) = &spec.spool_size {
        let bytes = size("spoolSize", spool)?;
        let usable = (bytes as f64 * SPOOL_SHARE) as u64;
        sizing
            .args
            .extend(["--max-spool".into(), usable.to_string()]);
        sizing.spool.size_limit = Some(Quantity(bytes.to_string()));
    }
    Ok(sizing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gateway_section_changes_nothing() {
        assert_eq!(gateway_sizing(None).unwrap(), GatewaySizing::default());
        assert_eq!(
            gateway_sizing(Some(&GatewaySpec::default())).unwrap(),
            GatewaySizing::default()
        );
    }

    #[test]
    fn bounds_become_flags_and_the_spool_a_volume_the_gateway_fills_only_nine_tenths_of() {
        let spec = GatewaySpec {
            max_uploads: Some(16),
            upload_memory: Some("4Gi".into()),
            read_memory: Some("512Mi".into()),
            client_stall_seconds: Some(30),
            spool_size: Some("10Gi".into()),
            ..GatewaySpec::default()
        };
        let sizing = gateway_sizing(Some(&spec)).unwrap();
        assert_eq!(
            sizing.args,
            [
                "--max-uploads",
                "16",
                "--upload-memory",
                &(4u64 << 30).to_string(),
                "--read-memory",
                &(512u64 << 20).to_string(),
                "--client-stall-secs",
                "30",
                "--max-spool",
                &((10u64 << 30) as f64 * 0.9).floor().to_string(),
            ]
        );
        assert_eq!(
            sizing.spool.size_limit,
            Some(Quantity((10u64 << 30).to_string()))
        );
    }

    #[test]
    fn sizes_that_do_not_parse_or_are_zero_are_refused_by_name() {
        for (spec, field) in [
            (
                GatewaySpec {
                    upload_memory: Some("lots".into()),
                    ..GatewaySpec::default()
                },
                "gateway.uploadMemory",
            ),
            (
                GatewaySpec {
                    read_memory: Some("0Mi".into()),
                    ..GatewaySpec::default()
                },
                "gateway.readMemory",
            ),
            (
                GatewaySpec {
                    spool_size: Some("0".into()),
                    ..GatewaySpec::default()
                },
                "gateway.spoolSize",
            ),
            (
                GatewaySpec {
                    max_uploads: Some(0),
                    ..GatewaySpec::default()
                },
                "gateway.maxUploads",
            ),
            (
                GatewaySpec {
                    client_stall_seconds: Some(0),
                    ..GatewaySpec::default()
                },
                "gateway.clientStallSeconds",
            ),
        ] {
            let error = gateway_sizing(Some(&spec)).unwrap_err();
            assert!(error.starts_with(field), "{error}");
        }
    }
}
