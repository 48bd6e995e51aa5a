//! A claim's requested size is never lowered (pure): a claim expanded by
//! hand (`kubectl patch pvc`, the disk-full runbook's quick way) keeps its
//! size instead of the operator applying the smaller spec size back,
//! which the API server refuses on every reconcile.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn requested(claim: &PersistentVolumeClaim) -> Option<&Quantity> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
}

/// `desired`, requesting the larger of its size and `existing`'s.
pub fn never_smaller(
    desired: &PersistentVolumeClaim,
    existing: Option<&PersistentVolumeClaim>,
) -> PersistentVolumeClaim {
    let mut claim = desired.clone();
    let bytes = |q: &Quantity| crate::units::parse_bytes(&q.0).ok();
    let (Some(want), Some(have)) = (requested(desired), existing.and_then(requested)) else {
        return claim;
    };
    if bytes(have).zip(bytes(want)).is_some_and(|(h, w)| h > w) {
        let have = have.clone();
        if let Some(requests) = claim
            .spec
            .as_mut()
            .and_then(|s| s.resources.as_mut())
            .and_then(|r| r.requests.as_mut())
        {
            requests.insert("storage".into(), have);
        }
    }
    claim
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use std::collections::BTreeMap;

    fn claim(size: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(size.into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_claim_expanded_by_hand_keeps_its_size_and_a_larger_spec_grows_it() {
        let size = |c: PersistentVolumeClaim| requested(&c).unwrap().0.clone();
        assert_eq!(
            size(never_smaller(&claim("10Gi"), Some(&claim("20Gi")))),
            "20Gi"
        );
        assert_eq!(
            size(never_smaller(&claim("30Gi"), Some(&claim("20Gi")))),
            "30Gi"
        );
        assert_eq!(size(never_smaller(&claim("10Gi"), None)), "10Gi");
        assert_eq!(
            size(never_smaller(&claim("10Gi"), Some(&claim("10240Mi")))),
            "10Gi"
        );
    }
}
