//! Bearer tokens. Nodes require the *cluster token* on every route but
//! health and metrics; the gateway requires a *user token* for writes (and
//! for reads unless anonymous reads are allowed). The two are separate
//! credentials: users never hold the cluster token.
//!
//! A token file holds one token per line (blank lines and `#` comments are
//! ignored); every token in it is accepted and the first is the one sent.
//! The file is re-read while the process runs, so a token is rotated by
//! adding the new one, waiting until every process has read it, moving it
//! to the first line, then removing the old one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api_error::ApiError;

/// Where tokens come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A fixed list (the first is sent).
    Fixed(Vec<String>),
    /// A file re-read while the process runs.
    File(PathBuf),
}

/// The tokens accepted now, and the one sent.
#[derive(Debug)]
pub struct TokenSet {
    source: TokenSource,
    tokens: RwLock<Vec<String>>,
}

/// Parses a token file's text: one token per line, `#` comments.
pub fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn read_token_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
    let tokens = parse_tokens(&text);
    anyhow::ensure!(
        !tokens.is_empty(),
        "token file {} holds no token",
        path.display()
    );
    Ok(tokens)
}

impl TokenSet {
    /// Loads the tokens; an empty set is an error.
    pub fn load(source: TokenSource) -> anyhow::Result<Self> {
        let tokens = match &source {
            TokenSource::Fixed(tokens) => {
                anyhow::ensure!(!tokens.is_empty(), "no token given");
                tokens.clone()
            }
            TokenSource::File(path) => read_token_file(path)?,
        };
        Ok(Self {
            source,
            tokens: RwLock::new(tokens),
        })
    }

    /// A set of one fixed token.
    pub fn single(token: impl Into<String>) -> Arc<Self> {
        let token = token.into();
        Arc::new(Self {
            source: TokenSource::Fixed(vec![token.clone()]),
            tokens: RwLock::new(vec![token]),
        })
    }

    /// Replaces the tokens of a fixed set (a Secret read again); an empty
    /// list changes nothing.
    pub fn replace(&self, tokens: Vec<String>) {
        if !tokens.is_empty() {
            *self.tokens.write().expect("not poisoned") = tokens;
        }
    }

    /// The token to send.
    pub fn primary(&self) -> String {
        self.tokens.read().expect("not poisoned")[0].clone()
    }

    /// Whether `presented` is one of the tokens. Compares BLAKE3 hashes,
    /// whose equality is constant-time, against every token: the time
    /// taken says nothing about how much of a token matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = blake3::hash(presented.as_bytes());
        let mut found = false;
        for token in self.tokens.read().expect("not poisoned").iter() {
            found |= blake3::hash(token.as_bytes()) == presented;
        }
        found
    }

    /// Re-reads a token file; keeps the current tokens on error.
    pub fn refresh(&self) -> anyhow::Result<()> {
        if let TokenSource::File(path) = &self.source {
            let tokens = read_token_file(path)?;
            *self.tokens.write().expect("not poisoned") = tokens;
        }
        Ok(())
    }

    /// Re-reads the file every `period` until the process ends.
    pub fn watch(self: &Arc<Self>, period: Duration) {
        if matches!(self.source, TokenSource::Fixed(_)) {
            return;
        }
        // Ends when the last holder drops the set.
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(tokens) = this.upgrade() else { return };
                if let Err(e) = tokens.refresh() {
                    tracing::warn!("keeping the current tokens: {e:#}");
                }
            }
        });
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The 401 to answer a request that does not carry one of `tokens`;
/// `None` when it does.
pub fn refusal(tokens: &TokenSet, headers: &HeaderMap, what: &str) -> Option<Response> {
    match bearer(headers) {
        Some(token) if tokens.accepts(token) => None,
        presented => {
            let message = match presented {
                Some(_) => format!("the {what} token presented is not valid"),
                None => {
                    format!("this route needs the {what} token: send Authorization: Bearer TOKEN")
                }
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"redstuff\""),
            );
            Some(response)
        }
    }
}

/// Routes served without a token: probes and metrics.
pub fn is_open_route(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Middleware for a node: every route but the open ones needs the cluster token.
pub async fn require_cluster_token(
    State(tokens): State<Arc<TokenSet>>,
    request: Request,
    next: Next,
) -> Response {
    if !is_open_route(request.uri().path()) {
        if let Some(refused) = refusal(&tokens, request.headers(), "cluster") {
            return refused;
        }
    }
    next.run(request).await
}

/// A new random token: 32 bytes from the kernel, hex.
pub fn random_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(crate::hex::encode(&bytes))
}

/// Writes `content` to `path` readable by its owner only (mode 0600),
/// atomically: a temporary file, synced, then renamed over.
pub fn write_private_file(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes a token file readable by its owner only, unless one exists;
/// returns the token it holds.
pub fn ensure_token_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(tokens) = read_token_file(path) {
        return Ok(tokens[0].clone());
    }
    let token = random_token()?;
    write_private_file(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_of_a_file_is_accepted_and_the_first_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# rotation in progress\nnew-token\n\n  old-token  \n",
        )
        .unwrap();
        let set = TokenSet::load(TokenSource::File(path.clone())).unwrap();
        assert_eq!(set.primary(), "new-token");
        assert!(set.accepts("old-token") && set.accepts("new-token"));
        assert!(!set.accepts("new-toke") && !set.accepts(""));
        std::fs::write(&path, "new-token\n").unwrap();
        set.refresh().unwrap();
        assert!(!set.accepts("old-token"));
        std::fs::write(&path, "# emptied by mistake\n").unwrap();
        assert!(set.refresh().is_err());
        assert!(set.accepts("new-token"), "a bad file keeps the tokens");
    }

    #[test]
    fn a_request_needs_a_bearer_header_with_a_valid_token() {
        let set = TokenSet::single("secret");
        let mut headers = HeaderMap::new();
        let refused = refusal(&set, &headers, "cluster").unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().contains_key(header::WWW_AUTHENTICATE));
        headers.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(refusal(&set, &headers, "cluster").is_some());
        headers.insert(header::AUTHORIZATION, "bearer secret".parse().unwrap());
        assert!(refusal(&set, &headers, "cluster").is_none());
        headers.insert(header::AUTHORIZATION, "Basic c2VjcmV0".parse().unwrap());
        assert!(refusal(&set, &headers, "cluster").is_some());
    }

    #[test]
    fn a_token_file_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let first = ensure_token_file(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(ensure_token_file(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
