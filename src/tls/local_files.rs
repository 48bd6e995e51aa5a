//! The TLS files of a fleet on one machine (`redstuff dev --tls`): a CA
//! kept under the data directory, and a serving certificate for
//! 127.0.0.1 and localhost issued from it at every start.

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
/// certificate for 127.0.0.1 and localhost, newly issued by it.
pub fn ensure_local_files(dir: &Path) -> Result<LocalTlsFiles, TlsError> {
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
    let issued = ca.issue(
        &["127.0.0.1".to_string(), "localhost".to_string()],
        SERVING_VALIDITY,
    )?;
    write(&files.key, &issued.key_pem)?;
    write(&files.cert, &issued.cert_pem)?;
    Ok(files)
}
