//! Virtual-hosted-style addressing: which bucket a request's Host header
//! names under the configured base domain.
//!
//! `BUCKET.DOMAIN[:PORT]` names BUCKET; `DOMAIN[:PORT]` and any other host
//! (an address, `localhost`, a Service name) are path style. The port is
//! never part of the decision, so clients that reach the endpoint on a
//! port other than 80 or 443 work (s3s's own `SingleDomain` compares the
//! whole header, port included, and takes any other name for a bucket).

use s3s::host::{S3Host, VirtualHost};
use s3s::S3Result;

/// The bucket `host` names under `domain`, if it is virtual-hosted style.
pub fn virtual_bucket<'a>(domain: &str, host: &'a str) -> Option<&'a str> {
    let name = strip_port(host);
    let bucket = name
        .len()
        .checked_sub(domain.len() + 1)
        .filter(|&at| name.as_bytes()[at] == b'.' && name[at + 1..].eq_ignore_ascii_case(domain))
        .map(|at| &name[..at])?;
    (!bucket.is_empty()).then_some(bucket)
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Virtual-hosted style under one base domain, path style everywhere else.
#[derive(Debug, Clone)]
pub struct BaseDomain {
    domain: String,
}

impl BaseDomain {
    /// Buckets are addressed as `BUCKET.domain`.
    pub fn new(domain: &str) -> Result<Self, String> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(Self { domain })
        } else {
            Err(format!(
                "{domain:?} is not a domain name (labels of letters, digits and '-', no port)"
            ))
        }
    }
}

impl S3Host for BaseDomain {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let found = VirtualHost::new(self.domain.as_str());
        Ok(match virtual_bucket(&self.domain, host) {
            Some(bucket) => found.with_bucket(bucket),
            None => found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_the_label_before_the_base_domain_whatever_the_port() {
        let d = "s3.example.test";
        assert_eq!(virtual_bucket(d, "photos.s3.example.test"), Some("photos"));
        assert_eq!(
            virtual_bucket(d, "photos.s3.example.test:7780"),
            Some("photos")
        );
        assert_eq!(
            virtual_bucket(d, "my.dotted.bucket.S3.Example.test:80"),
            Some("my.dotted.bucket")
        );
        assert_eq!(virtual_bucket(d, "s3.example.test:7780"), None);
        assert_eq!(virtual_bucket(d, "s3.example.test"), None);
        assert_eq!(virtual_bucket(d, ".s3.example.test"), None);
        assert_eq!(virtual_bucket(d, "localhost:7780"), None);
        assert_eq!(virtual_bucket(d, "xs3.example.test"), None);
        assert_eq!(virtual_bucket(d, "redstuff-s3.default.svc:7780"), None);
        assert_eq!(virtual_bucket(d, "[::1]:7780"), None);
    }

    #[test]
    fn a_base_domain_must_be_a_plain_name() {
        assert!(BaseDomain::new("s3.example.test").is_ok());
        assert!(BaseDomain::new("s3.example.test:7780").is_err());
        assert!(BaseDomain::new("").is_err());
        assert!(BaseDomain::new("a..b").is_err());
    }
}
