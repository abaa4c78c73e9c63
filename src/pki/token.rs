//! Join tokens: `<sha256 of the CA certificate, hex>.<JWT>`, KubeEdge's layout (`keadm
//! join --token`), so an edge checks the CA it is handed before trusting it, and a real
//! KubeEdge edgecore can join with one. The JWT is HS256 over `{jti, iat, exp}` with a
//! secret of cloudcore's own (not the CA key, as KubeEdge uses: a token secret that leaks
//! must not sign certificates). Unlike KubeEdge's, every token has an id in a registry on
//! disk, so tokens can be listed and revoked one by one.
//!
//! The JWT is written here rather than with a JWT crate: HS256 with a fixed header is a
//! few lines over ring's HMAC (already in the build for rustls), while the maintained JWT
//! crates bring RSA and elliptic-curve stacks this never uses.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pki::files;

/// The only header this issues and accepts.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    jti: String,
    iat: u64,
    exp: u64,
}

/// One token in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id (`jti`).
    pub id: String,
    /// Seconds since the epoch it was made.
    pub created: u64,
    /// Seconds since the epoch it stops working.
    pub expires: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Registry {
    tokens: Vec<TokenRecord>,
}

/// Why a token was refused; each is also a metric label ([`Refusal::label`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not `<hash>.<header>.<claims>.<signature>`.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Made for another cloudcore's CA.
    #[error("the token is for another CA (its CA hash {token}, this cloudcore's {ours})")]
    OtherCa {
        /// The hash in the token.
        token: String,
        /// This CA's.
        ours: String,
    },
    /// The signature does not match: changed or forged.
    #[error("the token's signature does not match (tampered or forged)")]
    Tampered,
    /// Past its expiry.
    #[error("the token expired {0} s ago")]
    Expired(u64),
    /// Revoked, or not in the registry.
    #[error("the token {0} was revoked")]
    Revoked(String),
}

impl Refusal {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "token_malformed",
            Refusal::OtherCa { .. } => "token_other_ca",
            Refusal::Tampered => "token_tampered",
            Refusal::Expired(_) => "token_expired",
            Refusal::Revoked(_) => "token_revoked",
        }
    }
}

/// The SHA-256 of a CA certificate (DER), in hex, as tokens carry it.
pub fn ca_hash(ca_der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, ca_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits a token into its CA hash and the JWT (what an edge sends as `Bearer`).
pub fn split(token: &str) -> Result<(&str, &str), Refusal> {
    let (hash, jwt) = token
        .split_once('.')
        .ok_or_else(|| Refusal::Malformed("no CA hash before the first '.'".into()))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::Malformed(
            "the CA hash is not 64 hex digits".into(),
        ));
    }
    if jwt.split('.').count() != 3 {
        return Err(Refusal::Malformed("the JWT is not three parts".into()));
    }
    Ok((hash, jwt))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Issues, lists, revokes and checks tokens, with the secret and registry in a folder.
pub struct Tokens {
    key: hmac::Key,
    registry: PathBuf,
    ca_hash: String,
}

impl Tokens {
    /// Opens (creating on first use) `token.key` and `tokens.json` in `dir`, for the CA
    /// whose certificate is `ca_der`.
    pub fn open(dir: &Path, ca_der: &[u8]) -> Result<Self> {
        let secret = files::secret(&dir.join("token.key"), 32)?;
        Ok(Tokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            registry: dir.join("tokens.json"),
            ca_hash: ca_hash(ca_der),
        })
    }

    fn load(&self) -> Result<Registry> {
        match std::fs::read(&self.registry) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Pki(format!("{}: {e}", self.registry.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(e) => Err(Error::Pki(format!("{}: {e}", self.registry.display()))),
        }
    }

    fn save(&self, registry: &Registry) -> Result<()> {
        let text = serde_json::to_vec_pretty(registry).map_err(|e| Error::Pki(e.to_string()))?;
        files::write_private(&self.registry, &text)
    }

    /// A new token valid for `ttl`.
    pub fn create(&self, ttl: Duration) -> Result<(String, TokenRecord)> {
        let id = files::random_hex(8)?;
        let created = now();
        let claims = Claims {
            jti: id.clone(),
            iat: created,
            exp: created + ttl.as_secs(),
        };
        let body = serde_json::to_vec(&claims).map_err(|e| Error::Pki(e.to_string()))?;
        let signed = format!("{}.{}", B64.encode(HEADER), B64.encode(body));
        let tag = hmac::sign(&self.key, signed.as_bytes());
        let token = format!("{}.{signed}.{}", self.ca_hash, B64.encode(tag.as_ref()));
        let record = TokenRecord {
            id,
            created,
            expires: claims.exp,
            revoked: false,
        };
        let mut registry = self.load()?;
        registry.tokens.retain(|t| t.expires > created);
        registry.tokens.push(record.clone());
        self.save(&registry)?;
        Ok((token, record))
    }

    /// Every token not yet expired.
    pub fn list(&self) -> Result<Vec<TokenRecord>> {
        let now = now();
        let mut tokens = self.load()?.tokens;
        tokens.retain(|t| t.expires > now);
        Ok(tokens)
    }

    /// Revokes token `id`; false when there is none.
    pub fn revoke(&self, id: &str) -> Result<bool> {
        let mut registry = self.load()?;
        let Some(record) = registry.tokens.iter_mut().find(|t| t.id == id) else {
            return Ok(false);
        };
        record.revoked = true;
        self.save(&registry)?;
        Ok(true)
    }

    /// Checks a whole token (`hash.jwt`) or a bare JWT (what an edge sends as `Bearer`);
    /// Ok holds its id.
    pub fn verify(&self, token: &str) -> Result<String, Refusal> {
        let jwt = match split(token) {
            Ok((hash, jwt)) if hash.eq_ignore_ascii_case(&self.ca_hash) => jwt,
            Ok((hash, _)) => {
                return Err(Refusal::OtherCa {
                    token: hash.to_owned(),
                    ours: self.ca_hash.clone(),
                });
            }
            Err(_) if token.split('.').count() == 3 => token,
            Err(e) => return Err(e),
        };
        let (signed, signature) = jwt.rsplit_once('.').expect("three parts");
        let signature = B64
            .decode(signature)
            .map_err(|_| Refusal::Malformed("the signature is not base64url".into()))?;
        hmac::verify(&self.key, signed.as_bytes(), &signature).map_err(|_| Refusal::Tampered)?;
        let (header, body) = signed.split_once('.').expect("two parts");
        if B64.decode(header).ok().as_deref() != Some(HEADER.as_bytes()) {
            return Err(Refusal::Malformed("unexpected JWT header".into()));
        }
        let claims: Claims = B64
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Refusal::Malformed("unreadable claims".into()))?;
        let now = now();
        if claims.exp <= now {
            return Err(Refusal::Expired(now - claims.exp));
        }
        let registry = self
            .load()
            .map_err(|e| Refusal::Malformed(format!("token registry: {e}")))?;
        match registry.tokens.iter().find(|t| t.id == claims.jti) {
            Some(t) if !t.revoked => Ok(claims.jti),
            _ => Err(Refusal::Revoked(claims.jti)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &Path) -> Tokens {
        Tokens::open(dir, b"a CA certificate").unwrap()
    }

    #[test]
    fn a_token_verifies_until_it_expires_or_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let (token, record) = t.create(Duration::from_secs(3600)).unwrap();
        assert_eq!(token.split('.').count(), 4, "KubeEdge's layout: hash.jwt");
        assert!(token.starts_with(&ca_hash(b"a CA certificate")));
        assert_eq!(t.verify(&token), Ok(record.id.clone()));
        // What an edge sends as Bearer: the JWT alone.
        let (_, jwt) = split(&token).unwrap();
        assert_eq!(t.verify(jwt), Ok(record.id.clone()));
        assert_eq!(t.list().unwrap(), vec![record.clone()]);

        assert!(t.revoke(&record.id).unwrap());
        assert_eq!(t.verify(&token), Err(Refusal::Revoked(record.id.clone())));
        assert!(!t.revoke("nope").unwrap());

        let (expired, _) = t.create(Duration::ZERO).unwrap();
        assert!(matches!(t.verify(&expired), Err(Refusal::Expired(_))));
    }

    #[test]
    fn tampered_forged_and_foreign_tokens_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let (token, _) = t.create(Duration::from_secs(3600)).unwrap();
        // A longer life written into the claims: the signature no longer matches.
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[2]).unwrap()).unwrap();
        claims["exp"] = serde_json::json!(claims["exp"].as_u64().unwrap() + 86_400);
        let forged = format!(
            "{}.{}.{}.{}",
            parts[0],
            parts[1],
            B64.encode(claims.to_string()),
            parts[3]
        );
        assert_eq!(t.verify(&forged), Err(Refusal::Tampered));
        // Signed by another cloudcore (another secret) for the same CA.
        let other_dir = tempfile::tempdir().unwrap();
        let (theirs, _) = tokens(other_dir.path())
            .create(Duration::from_secs(60))
            .unwrap();
        assert_eq!(t.verify(&theirs), Err(Refusal::Tampered));
        // For another CA.
        let foreign = Tokens::open(other_dir.path(), b"another CA").unwrap();
        let (foreign, _) = foreign.create(Duration::from_secs(60)).unwrap();
        assert!(matches!(t.verify(&foreign), Err(Refusal::OtherCa { .. })));
        assert!(matches!(t.verify("abc"), Err(Refusal::Malformed(_))));
        assert_eq!(Refusal::Tampered.label(), "token_tampered");
    }

    #[test]
    fn the_secret_and_registry_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        t.create(Duration::from_secs(60)).unwrap();
        for file in ["token.key", "tokens.json"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
