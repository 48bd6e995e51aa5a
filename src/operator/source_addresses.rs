//! Which addresses a Blob's URL source may reach. The operator fetches a
//! source with its own network identity, so a Blob could otherwise store,
//! for its author to read back, what only the operator's pod may read: the
//! services on its loopback and the cloud's metadata endpoint (link-local,
//! with the node's credentials). Those addresses are refused, whether the
//! URL names them, a name resolves to them or a redirect leads there,
//! unless the operator is told to allow them (`--blob-sources-may-reach`).
//! In-cluster services and everything else stay reachable. Through a
//! proxy (HTTP_PROXY, HTTPS_PROXY in the operator's environment) names are
//! resolved by the proxy: only addresses written in the URL are checked.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Addresses a Blob source may not reach unless allowed. An IPv4 address
/// written in IPv6 (mapped, compatible, translated, NAT64's 64:ff9b::/96)
/// is judged by its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum LocalAddresses {
    /// 127.0.0.0/8, ::1 and the unspecified addresses (0.0.0.0/8, ::),
    /// which reach the operator's own pod.
    Loopback,
    /// 169.254.0.0/16 and fe80::/10, where cloud metadata endpoints live,
    /// and the metadata addresses outside them (fd00:ec2::254 of AWS,
    /// 100.100.100.200 of Alibaba Cloud).
    LinkLocal,
}

impl LocalAddresses {
    /// Which of them `ip` is, if any.
    pub fn of(ip: IpAddr) -> Option<LocalAddresses> {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Some(v4) => Self::of_v4(v4),
                None if v6.is_loopback() || v6.is_unspecified() => Some(Self::Loopback),
                None if is_link_local_v6(v6) || v6 == AWS_METADATA_V6 => Some(Self::LinkLocal),
                None => None,
            },
        }
    }

    fn of_v4(v4: Ipv4Addr) -> Option<LocalAddresses> {
        if v4.is_loopback() || v4.octets()[0] == 0 {
            Some(Self::Loopback)
        } else if v4.is_link_local() || v4 == ALIBABA_METADATA {
            Some(Self::LinkLocal)
        } else {
            None
        }
    }

    fn describe(self) -> &'static str {
        match self {
            LocalAddresses::Loopback => "a loopback address (the operator's own pod)",
            LocalAddresses::LinkLocal => "a link-local address (where cloud metadata is served)",
        }
    }

    /// Its value of `--blob-sources-may-reach`.
    pub fn flag_value(self) -> &'static str {
        match self {
            LocalAddresses::Loopback => "loopback",
            LocalAddresses::LinkLocal => "link-local",
        }
    }
}

/// The IPv6 address of AWS's instance metadata service (a unique local
/// address, not link-local).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Alibaba Cloud's metadata service (in the shared address space).
const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

fn is_link_local_v6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The IPv4 address an IPv6 address carries in its last 32 bits, when it
/// is one written in IPv6: mapped (::ffff:0:0/96), translated
/// (::ffff:0:0:0/96), NAT64 (64:ff9b::/96, 64:ff9b:1::/48) or compatible
/// (::/96, but :: and ::1).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 1, _, _, _, _, _] => Some(last),
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_loopback() && !ip.is_unspecified() => Some(last),
        _ => None,
    }
}

/// A URL source refused for where it leads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} is {}: Blob sources may not reach it unless the operator \
     runs with --blob-sources-may-reach {}",
    .class.describe(),
    .class.flag_value()
)]
pub struct NotAllowed {
    /// The host as the URL or the resolver named it.
    pub host: String,
    /// What kind of address it is.
    pub class: LocalAddresses,
}

/// The addresses Blob sources may reach beyond the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceReach {
    allowed: BTreeSet<LocalAddresses>,
}

impl SourceReach {
    /// Sources may also reach `allowed`.
    pub fn allowing(allowed: impl IntoIterator<Item = LocalAddresses>) -> Self {
        Self {
            allowed: allowed.into_iter().collect(),
        }
    }

    /// Every address: for tests whose sources are served on loopback.
    pub fn anywhere() -> Self {
        Self::allowing([LocalAddresses::Loopback, LocalAddresses::LinkLocal])
    }

    /// Whether a source may connect to `ip`; `host` names it in the refusal.
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), NotAllowed> {
        match LocalAddresses::of(ip) {
            Some(class) if !self.allowed.contains(&class) => Err(NotAllowed {
                host: host.to_string(),
                class,
            }),
            _ => Ok(()),
        }
    }

    /// Whether a source may be fetched from `url` as far as its host is an
    /// address (a name is checked once resolved). A URL that does not parse
    /// is left to the HTTP client to refuse.
    pub fn check_url(&self, url: &str) -> Result<(), NotAllowed> {
        let Ok(url) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        // The parser writes an address in its usual form (2130706433 and
        // 0x7f.1 are 127.0.0.1), IPv6 in brackets.
        let host = url.host_str().unwrap_or_default();
        match host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => self.check_address(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// An HTTP client for sources that connects only where this allows:
    /// names resolve to allowed addresses only, and a redirect to an
    /// address that is not allowed ends the download (as do more than ten
    /// redirects).
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::Client {
        let redirects = self.clone();
        builder
            .dns_resolver(Arc::new(ReachableResolver(self.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 10 {
                    return attempt.error("more than 10 redirects");
                }
                match redirects.check_url(attempt.url().as_str()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
            .build()
            .expect("HTTP client for Blob sources")
    }
}

/// Whether `error`, or an error it was caused by, is a [`NotAllowed`].
pub fn not_allowed_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotAllowed> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<NotAllowed>() {
            return Some(refused);
        }
        cause = error.source();
    }
    None
}

/// The system resolver, keeping only the addresses sources may reach.
struct ReachableResolver(SourceReach);

impl reqwest::dns::Resolve for ReachableResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(reachable_addresses(
            self.0.clone(),
            name.as_str().to_string(),
        ))
    }
}

/// The addresses `host` resolves to that `reach` allows; refused when it
/// resolves to none but addresses not allowed.
async fn reachable_addresses(
    reach: SourceReach,
    host: String,
) -> Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
    let mut refused = None;
    let mut reachable = Vec::new();
    for address in found {
        match reach.check_address(&host, address.ip()) {
            Ok(()) => reachable.push(address),
            Err(not_allowed) => refused = Some(not_allowed),
        }
    }
    match refused {
        Some(refused) if reachable.is_empty() => Err(Box::new(refused)),
        _ => Ok(Box::new(reachable.into_iter())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_unspecified_and_link_local_addresses_are_refused_by_default() {
        let reach = SourceReach::default();
        for (address, class) in [
            ("127.0.0.1", LocalAddresses::Loopback),
            ("127.8.9.10", LocalAddresses::Loopback),
            ("0.0.0.0", LocalAddresses::Loopback),
            ("::1", LocalAddresses::Loopback),
            ("::", LocalAddresses::Loopback),
            ("::ffff:127.0.0.1", LocalAddresses::Loopback),
            ("169.254.169.254", LocalAddresses::LinkLocal),
            ("::ffff:169.254.169.254", LocalAddresses::LinkLocal),
            ("fe80::1", LocalAddresses::LinkLocal),
            ("febf::1", LocalAddresses::LinkLocal),
            ("fd00:ec2::254", LocalAddresses::LinkLocal),
            ("0.1.2.3", LocalAddresses::Loopback),
            ("100.100.100.200", LocalAddresses::LinkLocal),
            // IPv4 written in IPv6: compatible, translated, NAT64.
            ("::7f00:1", LocalAddresses::Loopback),
            ("::ffff:0:a9fe:a9fe", LocalAddresses::LinkLocal),
            ("64:ff9b::a9fe:a9fe", LocalAddresses::LinkLocal),
            ("64:ff9b::7f00:1", LocalAddresses::Loopback),
            ("64:ff9b:1::a9fe:a9fe", LocalAddresses::LinkLocal),
        ] {
            let refused = reach.check_address(address, ip(address)).unwrap_err();
            assert_eq!(refused.class, class, "{address}");
        }
    }

    #[test]
    fn in_cluster_private_and_public_addresses_are_reachable() {
        let reach = SourceReach::default();
        for address in [
            "10.96.0.10",
            "192.168.1.5",
            "198.18.0.7",
            "8.8.8.8",
            "fd12::1",
            "fec0::1",
            "2001:db8::1",
            "100.100.100.201",
            "64:ff9b::808:808",
        ] {
            assert_eq!(
                reach.check_address(address, ip(address)),
                Ok(()),
                "{address}"
            );
        }
    }

    #[test]
    fn an_allowed_class_is_reachable_and_the_other_still_refused() {
        let reach = SourceReach::allowing([LocalAddresses::Loopback]);
        assert_eq!(reach.check_url("http://127.0.0.1:8080/x"), Ok(()));
        let refused = reach
            .check_url("http://169.254.169.254/latest")
            .unwrap_err();
        assert_eq!(refused.class, LocalAddresses::LinkLocal);
        assert!(
            refused
                .to_string()
                .contains("--blob-sources-may-reach link-local"),
            "{refused}"
        );
    }

    #[test]
    fn a_url_naming_an_address_is_checked_before_anything_is_resolved() {
        let reach = SourceReach::default();
        assert!(reach.check_url("http://[::1]:9000/").is_err());
        assert!(reach.check_url("https://[fe80::1]/").is_err());
        assert!(reach.check_url("http://0.0.0.0/").is_err());
        assert!(reach.check_url("http://2130706433/").is_err());
        assert!(reach.check_url("http://0x7f.1:80/").is_err());
        // Names are for the resolver to check.
        assert_eq!(reach.check_url("http://localhost/"), Ok(()));
        assert_eq!(reach.check_url("http://probe.ns.svc:8080/b"), Ok(()));
    }

    #[test]
    fn a_refusal_is_found_in_the_errors_it_caused() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Wrapper(#[source] NotAllowed);
        let refused = NotAllowed {
            host: "localhost".into(),
            class: LocalAddresses::Loopback,
        };
        let wrapped = Wrapper(refused.clone());
        assert_eq!(not_allowed_in(&wrapped), Some(&refused));
        assert_eq!(not_allowed_in(&std::io::Error::other("no")), None);
    }
}
