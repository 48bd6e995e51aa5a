//! The TLS files of a fleet on one machine (`redstuff dev --tls`): a CA
//! kept under the data directory, and a serving certificate for
//! 127.0.0.1, localhost and the gateway's own address issued from it at
//! every start.

use std::path::{Path, PathBuf};

use super::{LocalCa, TlsError, SERVING_VALIDITY};
use crate::auth::write_private_file;

/// Where the files of a local fleet's TLS are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTlsFiles {
    /// The CA's certificate: what the gateway, the loop and nodes trust.
    pub ca_cert: PathBuf,
    /// The nodes' serving certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, content: &str) -> Result<(), TlsError> {
    write_private_file(path, content.as_bytes()).map_err(|e| TlsError::Read {
        path: path.into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Makes `dir` hold a CA (kept when there is one) and a serving
/// certificate for 127.0.0.1, localhost and the `also` addresses (where
/// the gateway listens, when it is not loopback), newly issued by it.
pub fn ensure_local_files(
    dir: &Path,
    also: &[std::net::IpAddr],
) -> Result<LocalTlsFiles, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
        path: dir.into(),
        source,
    })?;
    let files = LocalTlsFiles {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    let ca_key = dir.join("ca.key");
    const NAME: &str = "redstuff dev";
    let ca = if files.ca_cert.is_file() && ca_key.is_file() {
        LocalCa::from_pem(&read_string(&files.ca_cert)?, &read_string(&ca_key)?)?
    } else {
        let ca = LocalCa::generate(NAME)?;
        write(&ca_key, &ca.key_pem())?;
        write(&files.ca_cert, ca.cert_pem())?;
        ca
    };
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    for ip in also {
        // An unspecified address listens everywhere: no name to cover.
        if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
    }
    let issued = ca.issue(&names, SERVING_VALIDITY)?;
    write(&files.key, &issued.key_pem)?;
    write(&files.cert, &issued.cert_pem)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IP addresses the certificate in `files` names.
    fn ip_names(files: &LocalTlsFiles) -> Vec<std::net::IpAddr> {
        let pem = std::fs::read(&files.cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_certificate_covers_loopback_and_the_gateways_own_address_and_the_ca_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let own: std::net::IpAddr = "198.18.0.7".parse().unwrap();
        let any: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        let first = ensure_local_files(dir.path(), &[own, any]).unwrap();
        let ips = ip_names(&first);
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()), "{ips:?}");
        assert!(ips.contains(&own), "{ips:?}");
        assert!(!ips.contains(&any), "{ips:?}");
        let ca = std::fs::read(&first.ca_cert).unwrap();
        let cert = std::fs::read(&first.cert).unwrap();
        let again = ensure_local_files(dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read(&again.ca_cert).unwrap(), ca, "the CA is kept");
        assert_ne!(std::fs::read(&again.cert).unwrap(), cert, "issued anew");
        assert_eq!(
            ip_names(&again),
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
