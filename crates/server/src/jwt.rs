//! The JSON Web Token verifier behind `--jwt-key` (the core's [`Verifier`]), and the
//! HS256 minting of `ringcast token`.
//!
//! jsonwebtoken 9 signs and verifies with `ring`, which the server links for rustls
//! already (the later majors make the caller pick aws-lc-rs, which needs cmake to
//! build, or a RustCrypto backend).
//!
//! The key decides the algorithm, never the token: an HS256 secret (the file's bytes, a
//! trailing newline ignored), or a PEM public key: RSA -> RS256, EC P-256 -> ES256,
//! Ed25519 -> EdDSA. A token whose header names another algorithm (or `none`, which the
//! library does not even parse) is refused. Time is the core's: `exp` (required) and
//! `nbf` are checked here against `now_unix`, with [`LEEWAY`] either way.

use anyhow::{bail, Context as _};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ringcast_core::auth::{Identity, RoomPattern, TokenError, Verifier};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock skew tolerated between the token's issuer and this server, for `exp` and `nbf`.
pub const LEEWAY: u64 = 30;

/// The claims ringcast reads; others are ignored.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publish: Option<bool>,
}

/// Verifies tokens against one key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        let algorithms = &self.validation.algorithms;
        f.debug_struct("JwtVerifier")
            .field("algorithms", algorithms)
            .finish()
    }
}

/// The HS256 secret in a key file: its bytes, without one trailing newline.
fn secret(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

impl JwtVerifier {
    /// Reads `--jwt-key`: a PEM public key, or else an HS256 secret.
    pub fn load(path: &Path) -> anyhow::Result<JwtVerifier> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading --jwt-key {}", path.display()))?;
        Self::from_key(&bytes).with_context(|| format!("--jwt-key {}", path.display()))
    }

    pub fn from_key(bytes: &[u8]) -> anyhow::Result<JwtVerifier> {
        let (key, algorithm) = if bytes.starts_with(b"-----BEGIN") {
            if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
                (key, Algorithm::ES256)
            } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
                (key, Algorithm::EdDSA)
            } else {
                bail!("not an RSA, EC (P-256) or Ed25519 public key in PEM");
            }
        } else {
            let secret = secret(bytes);
            if secret.is_empty() {
                bail!("the HS256 secret is empty");
            }
            (DecodingKey::from_secret(secret), Algorithm::HS256)
        };
        let mut validation = Validation::new(algorithm);
        // Time is checked against the core's clock, below.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        Ok(JwtVerifier { key, validation })
    }
}

impl Verifier for JwtVerifier {
    fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenError::BadSignature
                }
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
                _ => TokenError::Malformed,
            })?
            .claims;
        let exp = claims.exp.ok_or(TokenError::MissingClaim)?;
        if exp.saturating_add(LEEWAY) <= now_unix {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_unix.saturating_add(LEEWAY))
        {
            return Err(TokenError::NotYetValid);
        }
        let name = claims.sub.ok_or(TokenError::MissingClaim)?;
        if !ringcast_proto::valid_name(&name) {
            return Err(TokenError::Malformed);
        }
        Ok(Identity {
            name,
            rooms: claims
                .rooms
                .map(|rooms| rooms.iter().map(|r| RoomPattern::parse(r)).collect()),
            publish: claims.publish.unwrap_or(true),
            // The connection is closed once the leeway is over too.
            expires_at: exp.saturating_add(LEEWAY),
        })
    }
}

/// Options of `ringcast token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user's name (the token's `sub`).
    #[arg(long)]
    pub sub: String,
    /// Rooms the token allows, comma-separated: exact names or prefixes ending in `*`
    /// [default: any room].
    #[arg(long, value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// A read-only token (`publish: false`): its chat lines go nowhere.
    #[arg(long)]
    pub read_only: bool,
    /// How long the token is valid (e.g. 1h, 30m, 90s).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The HS256 secret file, as `ringcast serve --jwt-key` reads it.
    #[arg(long, value_name = "FILE")]
    pub key: std::path::PathBuf,
}

/// A duration as `--ttl` takes it: hours (`1h`) besides what every duration flag takes.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    match text.strip_suffix('h').map(str::parse::<u64>) {
        Some(Ok(hours)) => Ok(Duration::from_secs(hours.saturating_mul(3600))),
        _ => ringcast_util::units::parse_duration(text),
    }
}

/// `ringcast token`: prints an HS256 token.
pub fn token(args: TokenArgs) -> anyhow::Result<std::process::ExitCode> {
    let key = std::fs::read(&args.key)
        .with_context(|| format!("reading --key {}", args.key.display()))?;
    let spec = TokenSpec {
        sub: args.sub,
        rooms: args.rooms,
        read_only: args.read_only,
        ttl: args.ttl,
    };
    println!("{}", mint(&spec, &key)?);
    Ok(std::process::ExitCode::SUCCESS)
}

/// What `ringcast token` mints.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub sub: String,
    pub rooms: Option<Vec<String>>,
    pub read_only: bool,
    pub ttl: Duration,
}

/// An HS256 token for `spec`, signed with the secret in `key` (as `--jwt-key` reads it).
pub fn mint(spec: &TokenSpec, key: &[u8]) -> anyhow::Result<String> {
    if !ringcast_proto::valid_name(&spec.sub) {
        bail!(
            "--sub {:?} is not a valid name (1-32 letters, digits, '_', '-' or '.')",
            spec.sub
        );
    }
    let secret = secret(key);
    if secret.is_empty() || key.starts_with(b"-----BEGIN") {
        bail!("minting needs an HS256 secret (a PEM key signs elsewhere)");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let claims = Claims {
        sub: Some(spec.sub.clone()),
        exp: Some((now + spec.ttl).as_secs()),
        nbf: None,
        rooms: spec.rooms.clone(),
        publish: spec.read_only.then_some(false),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .context("signing the token")
}

#[cfg(test)]
mod tests;
