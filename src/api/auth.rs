//! Who may see which order: bearer tokens (JWT) checked against the keys of the
//! configuration.
//!
//! - A token signed with the HS256 secret or the RS256 public key of `[auth]`, unexpired
//!   (`exp` is required), with the configured issuer and audience when those are set.
//! - A token whose roles (`roles`, a list, or `role`, one string) include
//!   `auth.operator_role` sees every order. Any other token is a customer's: its `sub` is a
//!   `customer_id`, and it sees only the orders of that customer. For any other order the
//!   answer is exactly that of an order that does not exist (404), so a token cannot probe
//!   which order ids exist.
//! - No token, or one that fails any check: 401 with `WWW-Authenticate: Bearer`.
//!
//! The token comes in the `Authorization: Bearer ...` header or, for the browser's
//! `EventSource` and the tracker page (which cannot set headers), in the `access_token`
//! query parameter (RFC 6750 section 2.3). A token in a URL ends up in browser history and
//! proxy logs: acceptable for the demo, not for production pages, which should use a cookie
//! or the header.

use std::path::PathBuf;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `[auth]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Check tokens on the order routes. Default true; false lets every request see every
    /// order (a closed network only).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The HS256 shared secret, at least 32 bytes (better set from the environment:
    /// `MILESTONES__AUTH__HS256_SECRET`). Default none.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// A PEM file with the RS256 public key of the token issuer. Default none.
    #[serde(default)]
    pub rs256_public_key_file: Option<PathBuf>,
    /// The role that sees every order. Default `operator`.
    #[serde(default = "default_operator_role")]
    pub operator_role: String,
    /// When set, tokens must carry this `iss`. Default none.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`. Default none.
    #[serde(default)]
    pub audience: Option<String>,
}

fn default_enabled() -> bool {
    true
}
fn default_operator_role() -> String {
    "operator".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: default_enabled(),
            hs256_secret: None,
            rs256_public_key_file: None,
            operator_role: default_operator_role(),
            issuer: None,
            audience: None,
        }
    }
}

/// Why the keys of `[auth]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "auth.enabled is true but neither auth.hs256_secret nor auth.rs256_public_key_file is \
         set: configure a key, or set auth.enabled = false to serve every order to anyone"
    )]
    NoKey,
    #[error("auth.hs256_secret is {0} bytes: it must be at least 32")]
    ShortSecret(usize),
    #[error("auth.rs256_public_key_file {path}: {message}")]
    PublicKey { path: PathBuf, message: String },
    #[error("signing a token: {0}")]
    Sign(String),
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Sees every order.
    Operator,
    /// Sees the orders of this customer only.
    Customer(String),
}

impl Caller {
    /// Whether this caller may see an order of `customer_id` (None: the order names no
    /// customer yet, so only an operator may see it).
    pub fn may_see(&self, customer_id: Option<&str>) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Customer(me) => customer_id == Some(me.as_str()),
        }
    }
}

/// The claims the service reads; others are ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Checks tokens with the configured keys.
pub struct Authenticator {
    enabled: bool,
    keys: Vec<(DecodingKey, Validation)>,
    operator_role: String,
}

impl Authenticator {
    /// Loads the keys of `config`.
    ///
    /// Errors: [`AuthError`] when auth is enabled without a key, the secret is short, or the
    /// public key file cannot be read or parsed.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        let validation = |algorithm| {
            let mut v = Validation::new(algorithm);
            v.set_required_spec_claims(&["exp", "sub"]);
            v.leeway = 30;
            if let Some(issuer) = &config.issuer {
                v.set_issuer(&[issuer]);
            }
            match &config.audience {
                Some(audience) => v.set_audience(&[audience]),
                None => v.validate_aud = false,
            }
            v
        };
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            if secret.len() < 32 {
                return Err(AuthError::ShortSecret(secret.len()));
            }
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        if let Some(path) = &config.rs256_public_key_file {
            let key_error = |message: String| AuthError::PublicKey {
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| key_error(e.to_string()))?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| key_error(e.to_string()))?;
            keys.push((key, validation(Algorithm::RS256)));
        }
        if config.enabled && keys.is_empty() {
            return Err(AuthError::NoKey);
        }
        Ok(Authenticator {
            enabled: config.enabled,
            keys,
            operator_role: config.operator_role.clone(),
        })
    }

    /// Who `token` (the bearer token, if the request had one) belongs to; None when the
    /// request must be refused with 401.
    pub fn caller(&self, token: Option<&str>) -> Option<Caller> {
        if !self.enabled {
            return Some(Caller::Operator);
        }
        let token = token?;
        let algorithm = jsonwebtoken::decode_header(token).ok()?.alg;
        let claims = self
            .keys
            .iter()
            .filter(|(_, validation)| validation.algorithms.contains(&algorithm))
            .find_map(|(key, validation)| decode::<Claims>(token, key, validation).ok())?
            .claims;
        let operator = claims.roles.contains(&self.operator_role)
            || claims.role.as_deref() == Some(self.operator_role.as_str());
        if operator {
            Some(Caller::Operator)
        } else if claims.sub.is_empty() {
            None
        } else {
            Some(Caller::Customer(claims.sub))
        }
    }
}

/// Signs an HS256 token for `sub` (a customer id), with the operator role when `operator`,
/// valid for `ttl_secs`: what `milestones token` prints for the demo and the tests use.
///
/// Errors: [`AuthError::NoKey`] without an HS256 secret; [`AuthError::Sign`] if signing fails.
pub fn hs256_token(
    config: &AuthConfig,
    sub: &str,
    operator: bool,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let secret = config.hs256_secret.as_ref().ok_or(AuthError::NoKey)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: sub.to_string(),
        exp: now + ttl_secs,
        roles: if operator {
            vec![config.operator_role.clone()]
        } else {
            Vec::new()
        },
        role: None,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a test secret that is long enough for HS256";

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn customers_see_their_own_orders_and_operators_every_order() {
        let auth = Authenticator::new(&config()).unwrap();
        let customer = hs256_token(&config(), "C-1", false, 60).unwrap();
        let operator = hs256_token(&config(), "ops-7", true, 60).unwrap();
        let caller = auth.caller(Some(&customer)).unwrap();
        assert_eq!(caller, Caller::Customer("C-1".into()));
        assert!(caller.may_see(Some("C-1")));
        assert!(!caller.may_see(Some("C-2")));
        assert!(!caller.may_see(None));
        assert_eq!(auth.caller(Some(&operator)), Some(Caller::Operator));
    }

    #[test]
    fn missing_forged_expired_and_garbled_tokens_are_refused() {
        let auth = Authenticator::new(&config()).unwrap();
        assert_eq!(auth.caller(None), None);
        assert_eq!(auth.caller(Some("not a token")), None);
        let other = AuthConfig {
            hs256_secret: Some("another secret, also long enough for HS256".into()),
            ..AuthConfig::default()
        };
        let forged = hs256_token(&other, "C-1", true, 60).unwrap();
        assert_eq!(auth.caller(Some(&forged)), None);
        // Expired beyond the leeway.
        let expired = {
            let claims = Claims {
                sub: "C-1".into(),
                exp: 1_000_000,
                roles: vec![],
                role: None,
            };
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        assert_eq!(auth.caller(Some(&expired)), None);
    }

    #[test]
    fn a_config_that_cannot_check_tokens_is_refused() {
        assert!(matches!(
            Authenticator::new(&AuthConfig::default()),
            Err(AuthError::NoKey)
        ));
        let short = AuthConfig {
            hs256_secret: Some("short".into()),
            ..AuthConfig::default()
        };
        assert!(matches!(
            Authenticator::new(&short),
            Err(AuthError::ShortSecret(5))
        ));
        let off = AuthConfig {
            enabled: false,
            ..AuthConfig::default()
        };
        assert_eq!(
            Authenticator::new(&off).unwrap().caller(None),
            Some(Caller::Operator)
        );
    }
}
