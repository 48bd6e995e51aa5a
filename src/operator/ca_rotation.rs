//! Replacing a cluster's CA without a failed call (pure decisions). Pods
//! read their Secrets' files again while they run, so trust and serving
//! certificates change in place; the order is what keeps every call
//! checked: first every pod trusts the old and the new CA while serving a
//! certificate from the old, then every pod serves one from the new while
//! still trusting both, and only then is the old CA dropped.
//!
//! A step is taken only once every running pod is seen serving the
//! certificate its Secret holds now (so it has read the Secret's current
//! files, trust included, which the kubelet writes all at once), and the
//! new CA is trusted for at least the cluster's overlap before anything
//! is signed with it, time for clients outside the cluster to take the
//! new `ca.crt`.

use std::time::Duration;

use super::crd::CaRotationStatus;

/// A rotation starts by itself when the CA expires within this long.
pub const ROTATE_BEFORE_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long the new CA is trusted before it signs, unless the spec says
/// otherwise (`spec.tls.caRotationOverlap`).
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(10 * 60);

/// The shortest a rotation's phase lasts: the kubelet writes a changed
/// Secret into every pod using it within about a minute, also into pods
/// the operator does not ask (not ready, still starting, a gateway
/// serving the user's certificate), so that none is two phases behind.
pub const MIN_PHASE: Duration = Duration::from_secs(120);

/// The StorageCluster annotation that asks for a rotation: each new value
/// rotates the CA once.
pub const ROTATE_ANNOTATION: &str = "redstuff.dev/rotate-ca";

/// A CA's certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPem {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// The CAs of a cluster as its CA Secret keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSet {
    /// The CA that signs serving certificates.
    pub current: CaPem,
    /// During a rotation's first phase: the CA that will sign, already
    /// trusted.
    pub next: Option<CaPem>,
    /// During a rotation's second phase: the CA that signed before, still
    /// trusted (its certificate only: it signs nothing again).
    pub previous_cert_pem: Option<String>,
    /// The value of the rotate annotation last acted on.
    pub request: Option<String>,
    /// When the phase the set is in began (Unix seconds).
    pub phase_since_unix: Option<u64>,
}

/// Where a cluster is in rotating its CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaPhase {
    /// One CA, trusted and signing.
    Steady,
    /// The new CA is trusted beside the current, which still signs.
    TrustingNext,
    /// The new CA signs; the previous is still trusted.
    DroppingPrevious,
}

impl CaPhase {
    /// The phase as a number, for the rotation gauge (0, 1, 2).
    pub fn number(self) -> i64 {
        match self {
            Self::Steady => 0,
            Self::TrustingNext => 1,
            Self::DroppingPrevious => 2,
        }
    }
}

/// What a reconcile does to a cluster's CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaStep {
    /// Nothing now.
    Stay,
    /// Makes a new CA and trusts it beside the current one; `why` says
    /// what asked for it.
    Begin {
        /// Asked by the annotation (its value) or by the CA's expiry.
        why: RotationCause,
    },
    /// Records when the current phase began, which the CA Secret lacks
    /// (edited by hand): the phase's waits count from now.
    Stamp,
    /// The new CA signs from now on.
    Switch,
    /// The previous CA is trusted no more.
    Finish,
}

/// What started a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationCause {
    /// The annotation got this new value.
    Asked(String),
    /// The CA expires within `ROTATE_BEFORE_EXPIRY`.
    Expiring,
}

impl CaSet {
    /// A set of one CA, as it is made.
    pub fn single(current: CaPem) -> Self {
        Self {
            current,
            next: None,
            previous_cert_pem: None,
            request: None,
            phase_since_unix: None,
        }
    }

    /// The phase the set is in.
    pub fn phase(&self) -> CaPhase {
        match (&self.next, &self.previous_cert_pem) {
            (Some(_), _) => CaPhase::TrustingNext,
            (None, Some(_)) => CaPhase::DroppingPrevious,
            (None, None) => CaPhase::Steady,
        }
    }

    /// Every CA certificate to trust now, one PEM bundle: the current
    /// first.
    pub fn trusted_pem(&self) -> String {
        let mut bundle = vec![self.current.cert_pem.trim_end()];
        bundle.extend(self.next.iter().map(|ca| ca.cert_pem.trim_end()));
        bundle.extend(self.previous_cert_pem.iter().map(|pem| pem.trim_end()));
        bundle.join("\n") + "\n"
    }

    /// The set after `step`, with `made` the new CA a `Begin` trusts
    /// (ignored otherwise), at `now_unix`.
    pub fn after(&self, step: &CaStep, made: Option<CaPem>, now_unix: u64) -> Self {
        let mut set = self.clone();
        match step {
            CaStep::Stay => return set,
            CaStep::Stamp => {}
            CaStep::Begin { why } => {
                set.next = made;
                if let RotationCause::Asked(value) = why {
                    set.request = Some(value.clone());
                }
            }
            CaStep::Switch => {
                if let Some(next) = set.next.take() {
                    set.previous_cert_pem =
                        Some(std::mem::replace(&mut set.current, next).cert_pem);
                }
            }
            CaStep::Finish => set.previous_cert_pem = None,
        }
        set.phase_since_unix = Some(now_unix);
        set
    }
}

/// What a reconcile knows when it decides a cluster's next CA step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationFacts<'a> {
    /// The rotate annotation's value on the StorageCluster.
    pub requested: Option<&'a str>,
    /// When the current CA expires (Unix seconds), if its certificate
    /// parses.
    pub current_not_after_unix: Option<u64>,
    /// Now (Unix seconds).
    pub now_unix: u64,
    /// How long the new CA is trusted before it signs.
    pub overlap: Duration,
    /// The shortest a phase lasts (`MIN_PHASE`).
    pub min_phase: Duration,
    /// Whether every running pod serves the certificate its Secret holds
    /// now (asked only during a rotation).
    pub pods_current: bool,
}

/// The next step for `set` (pure). A rotation starts when the annotation
/// has a value not acted on yet or the CA expires within a year; it goes
/// on once every pod is current and the phase has lasted `min_phase` (and,
/// before the new CA signs, the overlap); a new annotation value during a
/// rotation starts another one after it.
pub fn next_ca_step(set: &CaSet, facts: &RotationFacts<'_>) -> CaStep {
    let phase = set.phase();
    if phase == CaPhase::Steady {
        return steady_step(set, facts);
    }
    let Some(since) = set.phase_since_unix else {
        return CaStep::Stamp;
    };
    let next = match phase {
        CaPhase::TrustingNext => CaStep::Switch,
        _ => CaStep::Finish,
    };
    let wait = phase_wait(phase, facts.overlap, facts.min_phase);
    if facts.pods_current && facts.now_unix >= since.saturating_add(wait.as_secs()) {
        next
    } else {
        CaStep::Stay
    }
}

/// The shortest a rotation phase lasts: before the new CA signs, the
/// overlap (at least `min_phase`); after, `min_phase`.
pub fn phase_wait(phase: CaPhase, overlap: Duration, min_phase: Duration) -> Duration {
    match phase {
        CaPhase::TrustingNext => overlap.max(min_phase),
        _ => min_phase,
    }
}

/// Where a rotation of `set` is, for the StorageCluster's status (pure):
/// `None` for a steady set. The next step is taken no earlier than the
/// phase's start plus its wait (`phase_wait`), and only once `waiting_for`
/// (the pods not yet serving their renewed certificate) is empty.
pub fn rotation_status(
    set: &CaSet,
    overlap: Duration,
    min_phase: Duration,
    waiting_for: &[String],
) -> Option<CaRotationStatus> {
    let phase = set.phase();
    let step = match phase {
        CaPhase::Steady => return None,
        CaPhase::TrustingNext => "TrustingNewCa",
        CaPhase::DroppingPrevious => "NewCaSigning",
    };
    let at = |unix: u64| {
        i64::try_from(unix)
            .ok()
            .and_then(|secs| k8s_openapi::jiff::Timestamp::from_second(secs).ok())
            .map(|t| t.to_string())
    };
    let wait = phase_wait(phase, overlap, min_phase).as_secs();
    Some(CaRotationStatus {
        step: step.into(),
        since: set.phase_since_unix.and_then(at),
        next_step_after: set
            .phase_since_unix
            .and_then(|since| at(since.saturating_add(wait))),
        waiting_for: waiting_for.to_vec(),
    })
}

/// Whether a steady set begins a rotation, and why.
fn steady_step(set: &CaSet, facts: &RotationFacts<'_>) -> CaStep {
    if let Some(value) = facts.requested.filter(|v| !v.trim().is_empty()) {
        if set.request.as_deref() != Some(value) {
            return CaStep::Begin {
                why: RotationCause::Asked(value.to_string()),
            };
        }
    }
    let expiring = facts.current_not_after_unix.is_some_and(|at| {
        at < facts
            .now_unix
            .saturating_add(ROTATE_BEFORE_EXPIRY.as_secs())
    });
    if expiring {
        CaStep::Begin {
            why: RotationCause::Expiring,
        }
    } else {
        CaStep::Stay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 2_000_000_000;
    const YEAR: u64 = 365 * 24 * 3600;

    fn ca(name: &str) -> CaPem {
        CaPem {
            cert_pem: format!("CERT {name}\n"),
            key_pem: format!("KEY {name}\n"),
        }
    }

    fn facts(requested: Option<&str>, pods_current: bool, now_unix: u64) -> RotationFacts<'_> {
        RotationFacts {
            requested,
            current_not_after_unix: Some(NOW + 5 * YEAR),
            now_unix,
            overlap: Duration::from_secs(600),
            min_phase: Duration::from_secs(120),
            pods_current,
        }
    }

    #[test]
    fn a_steady_ca_stays_until_asked_or_expiring() {
        let set = CaSet::single(ca("a"));
        assert_eq!(next_ca_step(&set, &facts(None, true, NOW)), CaStep::Stay);
        assert_eq!(
            next_ca_step(&set, &facts(Some("  "), true, NOW)),
            CaStep::Stay
        );
        let mut expiring = facts(None, true, NOW);
        expiring.current_not_after_unix = Some(NOW + YEAR - 1);
        assert_eq!(
            next_ca_step(&set, &expiring),
            CaStep::Begin {
                why: RotationCause::Expiring
            }
        );
    }

    #[test]
    fn each_new_annotation_value_rotates_once() {
        let set = CaSet::single(ca("a"));
        let step = next_ca_step(&set, &facts(Some("1"), true, NOW));
        assert_eq!(
            step,
            CaStep::Begin {
                why: RotationCause::Asked("1".into())
            }
        );
        let trusting = set.after(&step, Some(ca("b")), NOW);
        let switched = trusting.after(&CaStep::Switch, None, NOW + 600);
        let done = switched.after(&CaStep::Finish, None, NOW + 720);
        assert_eq!(done.phase(), CaPhase::Steady);
        assert_eq!(
            next_ca_step(&done, &facts(Some("1"), true, NOW + 800)),
            CaStep::Stay
        );
        assert!(matches!(
            next_ca_step(&done, &facts(Some("2"), true, NOW + 800)),
            CaStep::Begin { .. }
        ));
    }

    #[test]
    fn the_new_ca_signs_only_after_every_pod_trusts_it_and_the_overlap_passed() {
        let set = CaSet::single(ca("a")).after(
            &CaStep::Begin {
                why: RotationCause::Expiring,
            },
            Some(ca("b")),
            NOW,
        );
        assert_eq!(set.phase(), CaPhase::TrustingNext);
        assert_eq!(set.trusted_pem(), "CERT a\nCERT b\n");
        assert_eq!(
            next_ca_step(&set, &facts(None, true, NOW + 599)),
            CaStep::Stay
        );
        assert_eq!(
            next_ca_step(&set, &facts(None, false, NOW + 600)),
            CaStep::Stay
        );
        assert_eq!(
            next_ca_step(&set, &facts(None, true, NOW + 600)),
            CaStep::Switch
        );
        // A new request meanwhile does not restart the rotation.
        assert_eq!(
            next_ca_step(&set, &facts(Some("x"), false, NOW + 600)),
            CaStep::Stay
        );
    }

    #[test]
    fn the_previous_ca_is_dropped_only_once_every_pod_serves_from_the_new() {
        let set = CaSet::single(ca("a"))
            .after(
                &CaStep::Begin {
                    why: RotationCause::Asked("r".into()),
                },
                Some(ca("b")),
                NOW,
            )
            .after(&CaStep::Switch, None, NOW + 600);
        assert_eq!(set.phase(), CaPhase::DroppingPrevious);
        assert_eq!(set.current, ca("b"));
        assert_eq!(set.trusted_pem(), "CERT b\nCERT a\n");
        assert_eq!(set.phase_since_unix, Some(NOW + 600));
        assert_eq!(
            next_ca_step(&set, &facts(None, false, NOW + 9999)),
            CaStep::Stay
        );
        // Pods the operator cannot ask get the kubelet's time to catch up.
        assert_eq!(
            next_ca_step(&set, &facts(None, true, NOW + 719)),
            CaStep::Stay
        );
        assert_eq!(
            next_ca_step(&set, &facts(None, true, NOW + 720)),
            CaStep::Finish
        );
        let done = set.after(&CaStep::Finish, None, NOW + 720);
        assert_eq!(done.trusted_pem(), "CERT b\n");
        assert_eq!(done.request.as_deref(), Some("r"));
    }

    #[test]
    fn a_short_overlap_still_waits_the_shortest_phase() {
        let set = CaSet::single(ca("a")).after(
            &CaStep::Begin {
                why: RotationCause::Expiring,
            },
            Some(ca("b")),
            NOW,
        );
        let mut short = facts(None, true, NOW + 119);
        short.overlap = Duration::ZERO;
        assert_eq!(next_ca_step(&set, &short), CaStep::Stay);
        short.now_unix = NOW + 120;
        assert_eq!(next_ca_step(&set, &short), CaStep::Switch);
    }

    #[test]
    fn a_phase_without_its_start_is_stamped_now_and_waits_from_then() {
        let mut set = CaSet::single(ca("a")).after(
            &CaStep::Begin {
                why: RotationCause::Expiring,
            },
            Some(ca("b")),
            NOW,
        );
        set.phase_since_unix = None;
        assert_eq!(
            next_ca_step(&set, &facts(None, true, NOW + 9999)),
            CaStep::Stamp
        );
        let stamped = set.after(&CaStep::Stamp, None, NOW + 9999);
        assert_eq!(stamped.phase(), CaPhase::TrustingNext);
        assert_eq!(stamped.next, set.next);
        assert_eq!(
            next_ca_step(&stamped, &facts(None, true, NOW + 9999)),
            CaStep::Stay
        );
        assert_eq!(
            next_ca_step(&stamped, &facts(None, true, NOW + 9999 + 600)),
            CaStep::Switch
        );
    }

    #[test]
    fn an_expiring_ca_is_not_rotated_again_while_its_successor_is_young() {
        let set = CaSet::single(ca("a"))
            .after(
                &CaStep::Begin {
                    why: RotationCause::Expiring,
                },
                Some(ca("b")),
                NOW,
            )
            .after(&CaStep::Switch, None, NOW)
            .after(&CaStep::Finish, None, NOW);
        // The successor's expiry is what counts from now on.
        assert_eq!(next_ca_step(&set, &facts(None, true, NOW)), CaStep::Stay);
    }

    #[test]
    fn the_status_tells_the_step_since_when_the_earliest_next_and_the_pods_awaited() {
        let overlap = Duration::from_secs(600);
        let min = Duration::from_secs(120);
        let steady = CaSet::single(ca("a"));
        assert_eq!(rotation_status(&steady, overlap, min, &[]), None);

        let trusting = steady.after(
            &CaStep::Begin {
                why: RotationCause::Expiring,
            },
            Some(ca("b")),
            NOW,
        );
        let waiting = vec!["media-node-2: serves an older certificate".to_string()];
        let status = rotation_status(&trusting, overlap, min, &waiting).unwrap();
        assert_eq!(status.step, "TrustingNewCa");
        assert_eq!(status.since.as_deref(), Some("2033-05-18T03:33:20Z"));
        assert_eq!(
            status.next_step_after.as_deref(),
            Some("2033-05-18T03:43:20Z")
        );
        assert_eq!(status.waiting_for, waiting);

        let signing = trusting.after(&CaStep::Switch, None, NOW + 600);
        let status = rotation_status(&signing, overlap, min, &[]).unwrap();
        assert_eq!(status.step, "NewCaSigning");
        assert_eq!(status.since.as_deref(), Some("2033-05-18T03:43:20Z"));
        assert_eq!(
            status.next_step_after.as_deref(),
            Some("2033-05-18T03:45:20Z")
        );
        assert!(status.waiting_for.is_empty());

        // A phase whose start the Secret lost says no times until stamped.
        let mut unstamped = signing;
        unstamped.phase_since_unix = None;
        let status = rotation_status(&unstamped, overlap, min, &[]).unwrap();
        assert_eq!((status.since, status.next_step_after), (None, None));
    }
}
