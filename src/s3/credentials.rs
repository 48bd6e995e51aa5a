//! The S3 access keys of a gateway: from the environment when set, else
//! read from (or generated into) a file in the AWS shared-credentials
//! format, so `AWS_SHARED_CREDENTIALS_FILE=FILE AWS_PROFILE=redstuff aws ...`
//! works as it is. Every other profile of the file with both keys is a
//! further key the endpoint accepts.

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

/// Every profile of a credentials file that has both keys, in the
/// file's order.
pub fn parse_profiles(text: &str) -> Vec<(String, S3Keys)> {
    let mut profiles: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            profiles.push((name.trim().to_string(), None, None));
            continue;
        }
        let (Some((name, value)), Some(profile)) = (line.split_once('='), profiles.last_mut())
        else {
            continue;
        };
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match name.trim() {
            "aws_access_key_id" => profile.1 = value,
            "aws_secret_access_key" => profile.2 = value,
            _ => {}
        }
    }
    profiles
        .into_iter()
        .filter_map(|(name, access_key, secret_key)| {
            Some((
                name,
                S3Keys {
                    access_key: access_key?,
                    secret_key: secret_key?,
                },
            ))
        })
        .collect()
}

/// Reads the keys of the `redstuff` profile from a credentials file.
pub fn parse(text: &str) -> Option<S3Keys> {
    parse_profiles(text)
        .into_iter()
        .find(|(name, _)| name == PROFILE)
        .map(|(_, keys)| keys)
}

/// The file's text for `keys`.
pub fn render(keys: &S3Keys) -> String {
    render_profile(PROFILE, keys)
}

fn render_profile(name: &str, keys: &S3Keys) -> String {
    format!(
        "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        keys.access_key, keys.secret_key
    )
}

/// The keys: `given` (from the environment) if set, else those in `path`,
/// else new ones. Whatever is used is written to `path` (mode 0600) as
/// its `redstuff` profile; the file's other profiles are kept.
pub fn ensure(path: &Path, given: Option<S3Keys>) -> anyhow::Result<S3Keys> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let keys = match (given, parse(&text)) {
        (Some(keys), _) => keys,
        (None, Some(keys)) => return Ok(keys),
        (None, None) => S3Keys::generate()?,
    };
    let mut file = render(&keys);
    for (name, other) in parse_profiles(&text) {
        if name != PROFILE {
            file.push_str(&render_profile(&name, &other));
        }
    }
    crate::auth::write_private_file(path, file.as_bytes())?;
    Ok(keys)
}

/// Checks a set of keys an endpoint accepts: at least one, and no access
/// key id twice with different secrets.
pub fn check_keys(keys: &[S3Keys]) -> Result<(), String> {
    if keys.is_empty() {
        return Err("no access key".into());
    }
    for (i, key) in keys.iter().enumerate() {
        if keys[..i]
            .iter()
            .any(|k| k.access_key == key.access_key && k.secret_key != key.secret_key)
        {
            return Err(format!(
                "access key {} is given twice with different secrets",
                key.access_key
            ));
        }
    }
    Ok(())
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
    fn every_profile_with_both_keys_is_a_key_and_a_key_id_has_one_secret() {
        let text = "[redstuff]\naws_access_key_id = A\naws_secret_access_key = a\n\
                    [half]\naws_access_key_id = H\n\
                    [bob]\n aws_secret_access_key = b \n aws_access_key_id = B\n";
        let names: Vec<String> = parse_profiles(text).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["redstuff", "bob"]);
        assert_eq!(parse_profiles(text)[1].1.secret_key, "b");
        let key = |a: &str, s: &str| S3Keys {
            access_key: a.into(),
            secret_key: s.into(),
        };
        assert!(check_keys(&[key("A", "a"), key("B", "b"), key("A", "a")]).is_ok());
        assert!(check_keys(&[key("A", "a"), key("A", "other")]).is_err());
        assert!(check_keys(&[]).is_err());
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
        // Further profiles are further keys, and survive the file's rewrite.
        let other = "[alice]\naws_access_key_id = ALICE\naws_secret_access_key = a-secret\n";
        let text = std::fs::read_to_string(&path).unwrap() + other;
        std::fs::write(&path, &text).unwrap();
        let replaced = S3Keys {
            access_key: "NEW".into(),
            secret_key: "new-secret".into(),
        };
        ensure(&path, Some(replaced.clone())).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse(&text), Some(replaced));
        assert_eq!(
            parse_profiles(&text)[1],
            (
                "alice".to_string(),
                S3Keys {
                    access_key: "ALICE".into(),
                    secret_key: "a-secret".into()
                }
            )
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
