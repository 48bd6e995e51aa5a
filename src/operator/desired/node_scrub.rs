//! The node pods' scrub settings from `spec.scrub` (pure).

use crate::operator::crd::ScrubSpec;

/// The node arguments `spec` asks for (none when it leaves a setting
/// out: the node's default then holds, and pods made before are not
/// replaced), or what is wrong with it.
pub fn scrub_args(spec: Option<&ScrubSpec>) -> Result<Vec<String>, String> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let mut args = Vec::new();
    if let Some(interval) = &spec.interval {
        let rest = crate::operator::lifecycle::parse_duration(interval)
            .map_err(|e| format!("scrub.interval: {e}"))?;
        args.extend(["--scrub-interval-secs".into(), rest.as_secs().to_string()]);
    }
    if let Some(rate) = &spec.max_bytes_per_second {
        let bytes =
            crate::units::parse_bytes(rate).map_err(|e| format!("scrub.maxBytesPerSecond: {e}"))?;
        args.extend(["--scrub-max-bytes-per-sec".into(), bytes.to_string()]);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_left_out_add_no_argument() {
        assert!(scrub_args(None).unwrap().is_empty());
        assert!(scrub_args(Some(&ScrubSpec::default())).unwrap().is_empty());
    }

    #[test]
    fn the_interval_and_rate_become_node_flags() {
        let spec = ScrubSpec {
            interval: Some("6h".into()),
            max_bytes_per_second: Some("128Mi".into()),
        };
        assert_eq!(
            scrub_args(Some(&spec)).unwrap(),
            [
                "--scrub-interval-secs",
                "21600",
                "--scrub-max-bytes-per-sec",
                &(128u64 << 20).to_string()
            ]
        );
        let never = ScrubSpec {
            interval: Some("0s".into()),
            ..ScrubSpec::default()
        };
        assert_eq!(
            scrub_args(Some(&never)).unwrap(),
            ["--scrub-interval-secs", "0"]
        );
    }

    #[test]
    fn a_rate_that_does_not_parse_is_refused_by_name() {
        let spec = ScrubSpec {
            max_bytes_per_second: Some("fast".into()),
            ..ScrubSpec::default()
        };
        assert!(scrub_args(Some(&spec))
            .unwrap_err()
            .starts_with("scrub.maxBytesPerSecond"));
    }
}
