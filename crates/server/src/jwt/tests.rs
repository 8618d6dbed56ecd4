use super::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

const SECRET: &[u8] = b"s3cret\n";
const NOW: u64 = 1_700_000_000;

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("signs")
}

fn verify(token: &str) -> Result<Identity, TokenError> {
    JwtVerifier::from_key(SECRET)
        .expect("key")
        .verify(token, NOW)
}

#[test]
fn a_valid_token_names_rooms_and_publish() {
    let token = hs256(
        &serde_json::json!({"sub": "ann", "exp": NOW + 60, "rooms": ["a", "news.*"], "publish": false}),
        b"s3cret",
    );
    let identity = verify(&token).expect("valid");
    assert_eq!(identity.name, "ann");
    assert!(!identity.publish);
    assert!(identity.may_join("news.sport") && !identity.may_join("b"));
    assert_eq!(identity.expires_at, NOW + 60 + LEEWAY);
}

#[test]
fn expiry_and_not_before_are_checked_on_the_callers_clock_with_the_leeway() {
    let within = hs256(&serde_json::json!({"sub": "a", "exp": NOW - 10}), b"s3cret");
    assert!(verify(&within).is_ok());
    let expired = hs256(
        &serde_json::json!({"sub": "a", "exp": NOW - LEEWAY}),
        b"s3cret",
    );
    assert_eq!(verify(&expired), Err(TokenError::Expired));
    let early = hs256(
        &serde_json::json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + 100}),
        b"s3cret",
    );
    assert_eq!(verify(&early), Err(TokenError::NotYetValid));
}

#[test]
fn refusals_name_their_reason() {
    let other_key = hs256(&serde_json::json!({"sub": "a", "exp": NOW + 60}), b"other");
    assert_eq!(verify(&other_key), Err(TokenError::BadSignature));
    assert_eq!(verify("not.a.token"), Err(TokenError::Malformed));
    assert_eq!(verify(""), Err(TokenError::Malformed));
    let no_sub = hs256(&serde_json::json!({"exp": NOW + 60}), b"s3cret");
    assert_eq!(verify(&no_sub), Err(TokenError::MissingClaim));
    let no_exp = hs256(&serde_json::json!({"sub": "a"}), b"s3cret");
    assert_eq!(verify(&no_exp), Err(TokenError::MissingClaim));
    let bad_name = hs256(
        &serde_json::json!({"sub": "a b", "exp": NOW + 60}),
        b"s3cret",
    );
    assert_eq!(verify(&bad_name), Err(TokenError::Malformed));
}

/// A token with this header and claims, and `signature` as its signature.
fn forged(header: &str, claims: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[test]
fn the_key_decides_the_algorithm_never_the_token() {
    let claims = format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60);
    let none = forged(r#"{"alg":"none","typ":"JWT"}"#, &claims, b"");
    assert!(verify(&none).is_err());
    let rs256 = forged(r#"{"alg":"RS256","typ":"JWT"}"#, &claims, &[7; 256]);
    assert_eq!(verify(&rs256), Err(TokenError::BadSignature));

    // An Ed25519 public key: EdDSA tokens pass; an HS256 token "signed" with the public
    // key's PEM as its secret (the classic confusion) does not.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let mut spki = hex_prefix();
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&spki)
    );
    let verifier = JwtVerifier::from_key(pem.as_bytes()).expect("an Ed25519 key");
    let claims_json = serde_json::json!({"sub": "ed", "exp": NOW + 60});
    let eddsa = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims_json,
        &EncodingKey::from_ed_der(pkcs8.as_ref()),
    )
    .expect("signs");
    assert_eq!(verifier.verify(&eddsa, NOW).expect("valid").name, "ed");
    let confused = hs256(&claims_json, pem.as_bytes());
    assert_eq!(
        verifier.verify(&confused, NOW),
        Err(TokenError::BadSignature)
    );
}

/// The DER head of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
fn hex_prefix() -> Vec<u8> {
    vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ]
}

#[test]
fn minted_tokens_verify_and_keys_are_checked() {
    let spec = TokenSpec {
        sub: "bob".into(),
        rooms: Some(vec!["news.*".into()]),
        read_only: true,
        ttl: Duration::from_secs(3600),
    };
    let token = mint(&spec, SECRET).expect("mints");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let identity = JwtVerifier::from_key(b"s3cret")
        .expect("key")
        .verify(&token, now)
        .expect("valid");
    assert_eq!(identity.name, "bob");
    assert!(!identity.publish && identity.may_join("news.x") && !identity.may_join("x"));
    assert!(JwtVerifier::from_key(b"\n").is_err());
    assert!(JwtVerifier::from_key(b"-----BEGIN PUBLIC KEY-----\nxx\n").is_err());
    let bad = TokenSpec {
        sub: "no spaces".into(),
        ..spec
    };
    assert!(mint(&bad, SECRET).is_err());
}
