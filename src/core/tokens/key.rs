//! One Ed25519 key (a private key with its public half, or a public key alone): generation from
//! OS randomness, PKCS#8/SPKI PEM and RFC 8037 JWK import and export, the RFC 7638 thumbprint,
//! raw signatures and strict verification.
//!
//! Private key material lives in `ed25519_dalek::SigningKey`, which zeroizes its secret on drop;
//! every temporary copy (a seed, a DER document, a PEM text) is wrapped in `Zeroizing`. `Debug`
//! shows the `kid` only.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::core::error::{Error, Result};

/// DER prefix of a PKCS#8 v1 `PrivateKeyInfo` for Ed25519 (RFC 8410 section 7), before the
/// 32-byte seed: the form OpenSSL and `cryptography` write.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410 section 4), before the 32-byte key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// PEM armour with 64-character lines, as OpenSSL writes it.
fn pem_encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let body = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(body.len() + 80));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// A public key, refusing encodings that do not decompress and the small-order points (the
/// identity and the torsion points: any signature "verifies" under them).
pub fn public_key_from_bytes(bytes: &[u8]) -> Result<VerifyingKey> {
    let bytes: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid("an Ed25519 public key is 32 bytes"))?;
    let key = VerifyingKey::from_bytes(bytes)
        .map_err(|_| invalid("not a valid Ed25519 public key (the point does not decompress)"))?;
    if key.is_weak() {
        return Err(invalid("refusing a small-order Ed25519 public key"));
    }
    Ok(key)
}

fn b64url_field(jwk: &Map<String, Value>, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => URL_SAFE_NO_PAD
            .decode(text)
            .map(|v| Some(Zeroizing::new(v)))
            .map_err(|_| {
                invalid(format!(
                    "JWK member {name:?} is not base64url without padding"
                ))
            }),
        Some(_) => Err(invalid(format!("JWK member {name:?} must be a string"))),
    }
}

fn str_field<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(format!("JWK member {name:?} must be a string"))),
    }
}

/// An Ed25519 key with its `kid`: private (can sign) or public-only (verifies).
pub struct Key {
    signing: Option<SigningKey>,
    verifying: VerifyingKey,
    kid: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("private", &self.signing.is_some())
            .finish()
    }
}

impl Key {
    fn new(signing: Option<SigningKey>, verifying: VerifyingKey, kid: Option<String>) -> Self {
        let kid = kid.unwrap_or_else(|| thumbprint(verifying.as_bytes()));
        Key {
            signing,
            verifying,
            kid,
        }
    }

    /// A new private key from the operating system's randomness.
    pub fn generate(kid: Option<String>) -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut())
            .map_err(|e| Error::Token(format!("the OS random source failed: {e}")))?;
        Ok(Self::from_seed(&seed, kid))
    }

    /// The private key whose RFC 8032 secret (seed) is `seed`.
    pub fn from_seed(seed: &[u8; 32], kid: Option<String>) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let verifying = signing.verifying_key();
        Self::new(Some(signing), verifying, kid)
    }

    /// A public-only key from its 32-byte encoding.
    pub fn from_public_bytes(bytes: &[u8], kid: Option<String>) -> Result<Self> {
        Ok(Self::new(None, public_key_from_bytes(bytes)?, kid))
    }

    /// A private key from a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, v1 or v2).
    pub fn from_private_pem(pem: &str, kid: Option<String>) -> Result<Self> {
        let signing = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| {
            invalid("not an Ed25519 private key in PKCS#8 PEM (\"-----BEGIN PRIVATE KEY-----\")")
        })?;
        let verifying = public_key_from_bytes(signing.verifying_key().as_bytes())?;
        Ok(Self::new(Some(signing), verifying, kid))
    }

    /// A public-only key from an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_public_pem(pem: &str, kid: Option<String>) -> Result<Self> {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| {
            invalid("not an Ed25519 public key in SPKI PEM (\"-----BEGIN PUBLIC KEY-----\")")
        })?;
        Self::from_public_bytes(key.as_bytes(), kid)
    }

    /// A key from an RFC 8037 JWK (`kty` `OKP`, `crv` `Ed25519`, `x`, and `d` for a private
    /// key). `kid` overrides the JWK's own `kid`; without either, the RFC 7638 thumbprint.
    /// With `public_only`, a `d` member is ignored.
    pub fn from_jwk(
        jwk: &Map<String, Value>,
        kid: Option<String>,
        public_only: bool,
    ) -> Result<Self> {
        match str_field(jwk, "kty")? {
            Some("OKP") => {}
            Some(other) => return Err(invalid(format!("JWK kty must be \"OKP\", not {other:?}"))),
            None => return Err(invalid("JWK has no \"kty\"")),
        }
        match str_field(jwk, "crv")? {
            Some("Ed25519") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "JWK crv must be \"Ed25519\", not {other:?}"
                )));
            }
            None => return Err(invalid("JWK has no \"crv\"")),
        }
        if let Some(alg) = str_field(jwk, "alg")?
            && alg != "EdDSA"
            && alg != "Ed25519"
        {
            return Err(invalid(format!(
                "JWK alg must be EdDSA or Ed25519, not {alg:?}"
            )));
        }
        if let Some(use_) = str_field(jwk, "use")?
            && use_ != "sig"
        {
            return Err(invalid(format!("JWK use must be \"sig\", not {use_:?}")));
        }
        let kid = match kid {
            Some(k) => Some(k),
            None => str_field(jwk, "kid")?.map(str::to_owned),
        };
        let x = b64url_field(jwk, "x")?.ok_or_else(|| invalid("JWK has no \"x\""))?;
        let verifying = public_key_from_bytes(&x)?;
        let d = if public_only {
            None
        } else {
            b64url_field(jwk, "d")?
        };
        match d {
            None => Ok(Self::new(None, verifying, kid)),
            Some(d) => {
                let seed: &[u8; 32] = d
                    .as_slice()
                    .try_into()
                    .map_err(|_| invalid("JWK \"d\" must be 32 bytes"))?;
                let signing = SigningKey::from_bytes(seed);
                if signing.verifying_key() != verifying {
                    return Err(invalid("JWK \"x\" is not the public key of \"d\""));
                }
                Ok(Self::new(Some(signing), verifying, kid))
            }
        }
    }

    /// This key without its private half.
    pub fn to_public(&self) -> Key {
        Key {
            signing: None,
            verifying: self.verifying,
            kid: self.kid.clone(),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn has_private(&self) -> bool {
        self.signing.is_some()
    }

    /// The 32-byte public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.verifying.to_bytes()
    }

    fn signing(&self) -> Result<&SigningKey> {
        self.signing.as_ref().ok_or_else(|| {
            Error::Token(format!("key {:?} is public-only: it cannot sign", self.kid))
        })
    }

    /// The PKCS#8 v1 PEM of the private key (what OpenSSL and `cryptography` write).
    pub fn private_pem(&self) -> Result<Zeroizing<String>> {
        let signing = self.signing()?;
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_PREFIX);
        der.extend_from_slice(signing.as_bytes());
        Ok(pem_encode("PRIVATE KEY", &der))
    }

    /// The SPKI PEM of the public key.
    pub fn public_pem(&self) -> String {
        let mut der = Vec::with_capacity(44);
        der.extend_from_slice(&SPKI_PREFIX);
        der.extend_from_slice(self.verifying.as_bytes());
        pem_encode("PUBLIC KEY", &der).to_string()
    }

    /// The public JWK: `kty`, `crv`, `x`, `kid`, `use`.
    pub fn public_jwk(&self) -> Map<String, Value> {
        let mut jwk = Map::new();
        jwk.insert("kty".into(), "OKP".into());
        jwk.insert("crv".into(), "Ed25519".into());
        jwk.insert(
            "x".into(),
            URL_SAFE_NO_PAD.encode(self.verifying.as_bytes()).into(),
        );
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert("use".into(), "sig".into());
        jwk
    }

    /// The private JWK: the public members plus `d` (the base64url seed).
    pub fn private_jwk(&self) -> Result<(Map<String, Value>, Zeroizing<String>)> {
        let signing = self.signing()?;
        Ok((
            self.public_jwk(),
            Zeroizing::new(URL_SAFE_NO_PAD.encode(signing.as_bytes())),
        ))
    }

    /// The RFC 7638 thumbprint of the public key (base64url SHA-256).
    pub fn thumbprint(&self) -> String {
        thumbprint(self.verifying.as_bytes())
    }

    /// The 64-byte Ed25519 signature of `data` (RFC 8032: deterministic).
    pub fn sign(&self, data: &[u8]) -> Result<[u8; 64]> {
        Ok(self.signing()?.sign(data).to_bytes())
    }

    /// Strict verification (`verify_strict`): `false` for a signature of the wrong length, a
    /// non-canonical `S`, a small-order or non-canonical `R`, or one that does not verify.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <&[u8; 64]>::try_from(signature) else {
            return false;
        };
        let signature = Signature::from_bytes(bytes);
        self.verifying.verify_strict(data, &signature).is_ok()
    }
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key: base64url(SHA-256 of
/// `{"crv":"Ed25519","kty":"OKP","x":"..."}`), as RFC 8037 section A.3 shows.
pub fn thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}
