//! The access keys an S3 endpoint accepts, kept current while it runs:
//! keys given at start (the environment's), a credentials file (every
//! profile with both keys) and a directory as Kubernetes mounts a Secret
//! (`accessKey` and `secretKey`, and a `credentials` file). Files are
//! read again every few seconds, so adding, rotating or revoking a key is
//! an edit of the file or the Secret, not a restart. A source that
//! yields no key on a re-read (missing, half written, empty) keeps the
//! keys it had: an empty Secret is taken for a mistake, not for revoking
//! everyone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

use super::credentials::{check_keys, parse_profiles, S3Keys};

/// How often key files are read again, unless configured otherwise.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// In a Secret's directory: the access key id.
pub const ACCESS_KEY_FILE: &str = "accessKey";
/// In a Secret's directory: its secret.
pub const SECRET_KEY_FILE: &str = "secretKey";
/// In a Secret's directory: further keys, as a credentials file.
pub const CREDENTIALS_FILE: &str = "credentials";

/// Where some of an endpoint's keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key given at start (the environment's), accepted while it runs.
    Fixed(S3Keys),
    /// A credentials file: every profile with both keys is a key.
    CredentialsFile(PathBuf),
    /// A directory as Kubernetes mounts a Secret: `accessKey` with
    /// `secretKey` is a key, and every profile of `credentials` is one.
    SecretDir(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Fixed(keys) => write!(f, "{keys:?}"),
            KeySource::CredentialsFile(path) => write!(f, "credentials file {}", path.display()),
            KeySource::SecretDir(path) => write!(f, "Secret directory {}", path.display()),
        }
    }
}

impl KeySource {
    /// The keys the source holds now, or why it holds none.
    pub fn read(&self) -> Result<Vec<S3Keys>, String> {
        let keys = match self {
            KeySource::Fixed(keys) => vec![keys.clone()],
            KeySource::CredentialsFile(path) => credentials_file(path)?,
            KeySource::SecretDir(dir) => secret_dir(dir)?,
        };
        if keys.is_empty() {
            return Err(format!("{self:?} holds no access key"));
        }
        Ok(keys)
    }
}

fn credentials_file(path: &Path) -> Result<Vec<S3Keys>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let keys: Vec<S3Keys> = parse_profiles(&text).into_iter().map(|(_, k)| k).collect();
    if keys.is_empty() {
        return Err(format!(
            "{} holds no profile with both aws_access_key_id and aws_secret_access_key",
            path.display()
        ));
    }
    Ok(keys)
}

/// A Secret's value as a file, without the line end an editor or `echo`
/// adds.
fn secret_value(dir: &Path, name: &str) -> Result<Option<String>, String> {
    match std::fs::read_to_string(dir.join(name)) {
        Ok(text) => {
            let value = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            Ok(Some(value.to_string()).filter(|v| !v.is_empty()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", dir.join(name).display())),
    }
}

fn secret_dir(dir: &Path) -> Result<Vec<S3Keys>, String> {
    let mut keys = Vec::new();
    match (
        secret_value(dir, ACCESS_KEY_FILE)?,
        secret_value(dir, SECRET_KEY_FILE)?,
    ) {
        (Some(access_key), Some(secret_key)) => keys.push(S3Keys {
            access_key,
            secret_key,
        }),
        (None, None) => {}
        _ => {
            return Err(format!(
                "{} has one of {ACCESS_KEY_FILE} and {SECRET_KEY_FILE} without the other",
                dir.display()
            ))
        }
    }
    if dir.join(CREDENTIALS_FILE).exists() {
        keys.extend(credentials_file(&dir.join(CREDENTIALS_FILE))?);
    }
    if keys.is_empty() {
        return Err(format!(
            "{} holds neither {ACCESS_KEY_FILE} and {SECRET_KEY_FILE} nor {CREDENTIALS_FILE}",
            dir.display()
        ));
    }
    Ok(keys)
}

/// What a re-read decided: the keys of each source from now on, and what
/// to warn about.
#[derive(Debug, PartialEq)]
pub struct NextKeys {
    /// Each source's keys, in the sources' order.
    pub per_source: Vec<Vec<S3Keys>>,
    /// Sources that yielded no key this time (their keys were kept), or a
    /// conflict that kept every previous key.
    pub warnings: Vec<String>,
}

/// The keys after a re-read (pure): a source that yields keys gives them,
/// one that yields none keeps its previous keys; if the result names an
/// access key id twice with different secrets, nothing changes.
pub fn next_keys(previous: &[Vec<S3Keys>], read: Vec<Result<Vec<S3Keys>, String>>) -> NextKeys {
    let mut warnings = Vec::new();
    let per_source: Vec<Vec<S3Keys>> = read
        .into_iter()
        .zip(previous)
        .map(|(read, previous)| match read {
            Ok(keys) => keys,
            Err(why) => {
                warnings.push(format!("{why}; its keys stay as they were"));
                previous.clone()
            }
        })
        .collect();
    if let Err(why) = check_keys(&per_source.concat()) {
        warnings.push(format!("{why}; no key changes"));
        return NextKeys {
            per_source: previous.to_vec(),
            warnings,
        };
    }
    NextKeys {
        per_source,
        warnings,
    }
}

/// The keys in force, shared by the S3 service (which asks it for
/// secrets) and the task that re-reads the sources.
#[derive(Clone)]
pub struct Keyring {
    sources: Arc<Vec<KeySource>>,
    per_source: Arc<Mutex<Vec<Vec<S3Keys>>>>,
    secrets: Arc<RwLock<HashMap<String, SecretKey>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({:?})", self.access_keys())
    }
}

impl Keyring {
    /// Reads every source: each must yield a key, and no access key id
    /// may come with two secrets.
    pub fn load(sources: Vec<KeySource>) -> Result<Self, String> {
        if sources.is_empty() {
            return Err("no access key".into());
        }
        let per_source = sources
            .iter()
            .map(KeySource::read)
            .collect::<Result<Vec<_>, _>>()?;
        check_keys(&per_source.concat())?;
        let keyring = Self {
            sources: Arc::new(sources),
            per_source: Arc::new(Mutex::new(Vec::new())),
            secrets: Arc::default(),
        };
        keyring.install(per_source);
        Ok(keyring)
    }

    /// Reads the sources again and puts what they hold in force; returns
    /// the warnings (sources that yielded nothing, conflicts).
    pub fn refresh(&self) -> Vec<String> {
        let read = self.sources.iter().map(KeySource::read).collect();
        let previous = self.per_source.lock().expect("keyring lock").clone();
        let next = next_keys(&previous, read);
        if next.per_source != previous {
            self.install(next.per_source);
            tracing::info!(keys = ?self.access_keys(), "S3 access keys changed");
        }
        next.warnings
    }

    fn install(&self, per_source: Vec<Vec<S3Keys>>) {
        let secrets = per_source
            .iter()
            .flatten()
            .map(|k| (k.access_key.clone(), SecretKey::from(k.secret_key.clone())))
            .collect();
        *self.secrets.write().expect("keyring lock") = secrets;
        *self.per_source.lock().expect("keyring lock") = per_source;
    }

    /// The access key ids in force, sorted.
    pub fn access_keys(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .secrets
            .read()
            .expect("keyring lock")
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Re-reads the sources every `every`, forever.
    pub async fn refresh_forever(self, every: std::time::Duration) {
        let mut warned = Vec::new();
        loop {
            tokio::time::sleep(every).await;
            let keyring = self.clone();
            let Ok(warnings) = tokio::task::spawn_blocking(move || keyring.refresh()).await else {
                continue;
            };
            // Say each problem once, not every few seconds.
            for warning in warnings.iter().filter(|w| !warned.contains(*w)) {
                tracing::warn!("S3 access keys: {warning}");
            }
            warned = warnings;
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for Keyring {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let secrets = self.secrets.read().expect("keyring lock");
        match secrets.get(access_key) {
            Some(secret) => Ok(secret.clone()),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(access: &str, secret: &str) -> S3Keys {
        S3Keys {
            access_key: access.into(),
            secret_key: secret.into(),
        }
    }

    #[test]
    fn a_secret_directory_gives_its_key_and_every_profile_of_its_credentials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("accessKey"), "MAIN").unwrap();
        std::fs::write(dir.path().join("secretKey"), "main secret\n").unwrap();
        let source = KeySource::SecretDir(dir.path().into());
        assert_eq!(source.read().unwrap(), [key("MAIN", "main secret")]);
        std::fs::write(
            dir.path().join("credentials"),
            "[alice]\naws_access_key_id = ALICE\naws_secret_access_key = a\n\
             [bob]\naws_access_key_id = BOB\naws_secret_access_key = b\n",
        )
        .unwrap();
        assert_eq!(
            source.read().unwrap(),
            [
                key("MAIN", "main secret"),
                key("ALICE", "a"),
                key("BOB", "b")
            ]
        );
        // Only the credentials file is enough too.
        std::fs::remove_file(dir.path().join("accessKey")).unwrap();
        std::fs::remove_file(dir.path().join("secretKey")).unwrap();
        assert_eq!(source.read().unwrap().len(), 2);
    }

    #[test]
    fn a_secret_directory_with_half_a_key_or_nothing_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let source = KeySource::SecretDir(dir.path().into());
        let empty = source.read().unwrap_err();
        assert!(empty.contains("neither accessKey"), "{empty}");
        std::fs::write(dir.path().join("accessKey"), "MAIN").unwrap();
        let half = source.read().unwrap_err();
        assert!(half.contains("without the other"), "{half}");
        std::fs::write(dir.path().join("secretKey"), "s").unwrap();
        std::fs::write(dir.path().join("credentials"), "[x]\n").unwrap();
        let no_profile = source.read().unwrap_err();
        assert!(no_profile.contains("no profile"), "{no_profile}");
    }

    #[test]
    fn a_source_that_yields_nothing_keeps_its_keys_and_the_others_change() {
        let previous = vec![
            vec![key("ENV", "e")],
            vec![key("A", "a")],
            vec![key("B", "b")],
        ];
        let next = next_keys(
            &previous,
            vec![
                Ok(vec![key("ENV", "e")]),
                Err("cannot read the file".into()),
                Ok(vec![key("C", "c")]),
            ],
        );
        assert_eq!(
            next.per_source,
            vec![
                vec![key("ENV", "e")],
                vec![key("A", "a")],
                vec![key("C", "c")]
            ]
        );
        assert_eq!(next.warnings.len(), 1);
        assert!(next.warnings[0].contains("cannot read the file"));
    }

    #[test]
    fn a_re_read_naming_a_key_id_with_two_secrets_changes_nothing() {
        let previous = vec![vec![key("ENV", "e")], vec![key("A", "a")]];
        let next = next_keys(
            &previous,
            vec![Ok(vec![key("ENV", "e")]), Ok(vec![key("ENV", "other")])],
        );
        assert_eq!(next.per_source, previous);
        assert!(next.warnings[0].contains("twice"), "{:?}", next.warnings);
    }

    #[tokio::test]
    async fn a_changed_file_changes_the_keys_in_force_and_a_removed_profile_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[a]\naws_access_key_id = A\naws_secret_access_key = a\n",
        )
        .unwrap();
        let keyring = Keyring::load(vec![
            KeySource::Fixed(key("ENV", "e")),
            KeySource::CredentialsFile(path.clone()),
        ])
        .unwrap();
        assert_eq!(keyring.access_keys(), ["A", "ENV"]);
        std::fs::write(
            &path,
            "[b]\naws_access_key_id = B\naws_secret_access_key = b\n",
        )
        .unwrap();
        assert!(keyring.refresh().is_empty());
        assert_eq!(keyring.access_keys(), ["B", "ENV"]);
        assert!(keyring.get_secret_key("A").await.is_err(), "A is revoked");
        assert_eq!(keyring.get_secret_key("B").await.unwrap().expose(), "b");
        // A vanished file keeps B, with a warning.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(keyring.refresh().len(), 1);
        assert_eq!(keyring.access_keys(), ["B", "ENV"]);
    }

    #[test]
    fn loading_needs_every_source_to_hold_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Keyring::load(vec![
            KeySource::Fixed(key("ENV", "e")),
            KeySource::CredentialsFile(dir.path().join("nothing")),
        ])
        .unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
        assert!(Keyring::load(Vec::new()).is_err());
    }
}
