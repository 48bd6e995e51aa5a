//! The S3 access key of a gateway: from the environment when set, else
//! read from (or generated into) a file in the AWS shared-credentials
//! format, so `AWS_SHARED_CREDENTIALS_FILE=FILE AWS_PROFILE=redstuff aws ...`
//! works as it is.

use std::path::Path;

/// The profile name in the credentials file.
pub const PROFILE: &str = "redstuff";

/// An access key id and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Keys {
    /// The access key id.
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
}

impl std::fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Keys({}, <secret>)", self.access_key)
    }
}

/// Reads the keys of the `redstuff` profile from a credentials file.
pub fn parse(text: &str) -> Option<S3Keys> {
    let mut in_profile = false;
    let (mut access_key, mut secret_key) = (None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == PROFILE;
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if !in_profile {
            continue;
        }
        match name.trim() {
            "aws_access_key_id" => access_key = Some(value.trim().to_string()),
            "aws_secret_access_key" => secret_key = Some(value.trim().to_string()),
            _ => {}
        }
    }
    Some(S3Keys {
        access_key: access_key.filter(|k| !k.is_empty())?,
        secret_key: secret_key.filter(|k| !k.is_empty())?,
    })
}

/// The file's text for `keys`.
pub fn render(keys: &S3Keys) -> String {
    format!(
        "[{PROFILE}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        keys.access_key, keys.secret_key
    )
}

/// The keys: `given` (from the environment) if set, else those in `path`,
/// else new ones. Whatever is used is written to `path` (mode 0600).
pub fn ensure(path: &Path, given: Option<S3Keys>) -> anyhow::Result<S3Keys> {
    let existing = std::fs::read_to_string(path).ok().and_then(|t| parse(&t));
    let keys = match (given, existing) {
        (Some(keys), _) => keys,
        (None, Some(keys)) => return Ok(keys),
        (None, None) => S3Keys::generate()?,
    };
    crate::auth::write_private_file(path, render(&keys).as_bytes())?;
    Ok(keys)
}

impl S3Keys {
    /// New keys: an access key id of 20 upper-case characters starting
    /// with RS, a secret of 64 hex digits.
    pub fn generate() -> std::io::Result<Self> {
        Ok(Self {
            access_key: format!(
                "RS{}",
                &crate::auth::random_token()?[..18].to_ascii_uppercase()
            ),
            secret_key: crate::auth::random_token()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_credentials_file_format() {
        let keys = S3Keys {
            access_key: "AK".into(),
            secret_key: "s/e+c".into(),
        };
        assert_eq!(parse(&render(&keys)), Some(keys));
        assert_eq!(
            parse("[other]\naws_access_key_id = x\naws_secret_access_key = y\n"),
            None
        );
    }

    #[test]
    fn generated_keys_are_kept_and_given_keys_replace_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3-credentials");
        let first = ensure(&path, None).unwrap();
        assert_eq!(ensure(&path, None).unwrap(), first, "kept across restarts");
        let given = S3Keys {
            access_key: "MINE".into(),
            secret_key: "secret".into(),
        };
        assert_eq!(ensure(&path, Some(given.clone())).unwrap(), given);
        assert_eq!(parse(&std::fs::read_to_string(&path).unwrap()), Some(given));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
