//! A claim's requested size is never lowered (pure): a claim expanded by
//! hand (`kubectl patch pvc`, the disk-full runbook's quick way) keeps its
//! size instead of the operator applying the smaller spec size back,
//! which the API server refuses on every reconcile; nor is its storage
//! class changed (the API server refuses that too).

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

/// `desired` as an existing claim can take it: never smaller, and of the
/// class it has (one the API server's default filled in, say).
pub fn as_applicable(
    desired: &PersistentVolumeClaim,
    existing: Option<&PersistentVolumeClaim>,
) -> PersistentVolumeClaim {
    let mut claim = never_smaller(desired, existing);
    let class = existing
        .and_then(|e| e.spec.as_ref())
        .and_then(|s| s.storage_class_name.clone());
    if let (Some(class), Some(spec)) = (class, claim.spec.as_mut()) {
        spec.storage_class_name = Some(class);
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

    #[test]
    fn an_existing_claim_keeps_its_class_and_size_a_new_one_takes_the_spec() {
        let with_class = |size: &str, class: Option<&str>| {
            let mut c = claim(size);
            c.spec.as_mut().unwrap().storage_class_name = class.map(str::to_string);
            c
        };
        let existing = with_class("5Gi", Some("standard"));
        let applied = as_applicable(&with_class("1Gi", Some("fast")), Some(&existing));
        assert_eq!(requested(&applied).unwrap().0, "5Gi");
        assert_eq!(
            applied.spec.unwrap().storage_class_name.as_deref(),
            Some("standard")
        );
        let new = as_applicable(&with_class("1Gi", Some("fast")), None);
        assert_eq!(
            new.spec.unwrap().storage_class_name.as_deref(),
            Some("fast")
        );
    }
}
