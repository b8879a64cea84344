//! Integration tests of the token core: RFC 8032 and RFC 8037 vectors, the fixed serialization,
//! strict decoding (one error variant per kind of bad token), PyJWT's claim rules, key sets and
//! small-order keys. Inputs stay small: debug-build crypto is slow.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use sark_native::core::error::Error;
use sark_native::core::tokens::{
    self, Alg, DecodeOptions, EncodeOptions, Key, KeySet, MAX_TOKEN_SIZE, metrics,
};

const NOW: f64 = 1_700_000_000.0;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn seed(s: &str) -> [u8; 32] {
    hex(s).try_into().unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// RFC 8032 section 7.1, tests 1-3.
const RFC8032: [(&str, &str, &str, &str); 3] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
];

/// The canonical encodings of the eight small-order points (identity, order 2, 4 and 8).
const SMALL_ORDER: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
];

fn rfc_key() -> Key {
    Key::from_seed(&seed(RFC8032[0].0), None)
}

fn enc_opts() -> EncodeOptions {
    EncodeOptions {
        alg: Alg::EdDSA,
        headers: None,
        expires_in: None,
        now: NOW,
    }
}

fn dec_opts() -> DecodeOptions {
    DecodeOptions {
        require: vec!["exp".into()],
        now: NOW,
        ..DecodeOptions::default()
    }
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A token with this header and payload text, signed by `key` (well-formed or not).
fn forge(key: &Key, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

fn header(key: &Key) -> String {
    format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, key.kid())
}

fn decode(key: &Key, token: &str) -> Result<Map<String, Value>, Error> {
    tokens::decode(token.as_bytes(), key, &dec_opts())
}

#[test]
fn rfc8032_vectors() {
    for (sk, pk, msg, sig) in RFC8032 {
        let key = Key::from_seed(&seed(sk), None);
        assert_eq!(key.public_bytes().to_vec(), hex(pk));
        let got = key.sign(&hex(msg)).unwrap();
        assert_eq!(got.to_vec(), hex(sig));
        assert!(key.verify(&hex(msg), &got));
        let public = Key::from_public_bytes(&hex(pk), None).unwrap();
        assert!(public.verify(&hex(msg), &hex(sig)));
        assert!(!public.verify(b"other", &hex(sig)));
    }
}

#[test]
fn rfc8037_jwk_thumbprint_and_jws() {
    let jwk = obj(json!({
        "kty": "OKP", "crv": "Ed25519",
        "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    }));
    let key = Key::from_jwk(&jwk, None, false).unwrap();
    assert!(key.has_private());
    // RFC 8037 A.3
    assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    // RFC 8037 A.4
    let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    let sig = key.sign(input.as_bytes()).unwrap();
    assert_eq!(
        b64(&sig),
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    );
    let (public, d) = key.private_jwk().unwrap();
    assert_eq!(public["x"], jwk["x"]);
    assert_eq!(d.as_str(), jwk["d"].as_str().unwrap());
    assert_eq!(public["use"], "sig");
    assert!(!public.contains_key("d"));
}

#[test]
fn pem_round_trip_and_openssl_form() {
    let key = rfc_key();
    let pem = key.private_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"));
    let again = Key::from_private_pem(&pem, None).unwrap();
    assert_eq!(again.public_bytes(), key.public_bytes());
    let public = Key::from_public_pem(&key.public_pem(), None).unwrap();
    assert!(!public.has_private());
    assert_eq!(public.kid(), key.kid());
    assert!(matches!(
        Key::from_private_pem(&key.public_pem(), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Key::from_private_pem("garbage", None),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn wrong_key_types_are_invalid_arguments() {
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    for jwk in [
        json!({"kty": "EC", "crv": "P-256", "x": x}),
        json!({"kty": "OKP", "crv": "X25519", "x": x}),
        json!({"kty": "OKP", "crv": "Ed448", "x": x}),
        json!({"kty": "OKP", "crv": "Ed25519"}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": "not base64!"}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "RS256"}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "use": "enc"}),
        // d of another key
        json!({"kty": "OKP", "crv": "Ed25519", "x": x,
               "d": "TM0Imyj_ltqdtsNG7BFOD1uKMZ81q6Yk2oz27U-4pvs"}),
    ] {
        let r = Key::from_jwk(&obj(jwk.clone()), None, false);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{jwk}");
    }
}

#[test]
fn small_order_public_keys_are_refused() {
    for enc in SMALL_ORDER {
        let r = Key::from_public_bytes(&hex(enc), None);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{enc}");
        let jwk = obj(json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&hex(enc))}));
        assert!(Key::from_jwk(&jwk, None, true).is_err());
    }
}

#[test]
fn small_order_r_is_refused() {
    let key = rfc_key();
    let input = format!("{}.{}", b64(header(&key).as_bytes()), b64(b"{}"));
    let good = key.sign(input.as_bytes()).unwrap();
    for enc in SMALL_ORDER {
        let mut sig = good;
        sig[..32].copy_from_slice(&hex(enc));
        assert!(!key.verify(input.as_bytes(), &sig));
        let token = format!("{input}.{}", b64(&sig));
        assert!(matches!(
            decode(&key, &token),
            Err(Error::InvalidSignature(_))
        ));
    }
}

#[test]
fn serialization_is_fixed() {
    let key = rfc_key();
    let claims =
        obj(json!({"sub": "é\u{1}\"", "n": 1.5e-7, "big": 1e16, "i": -3, "l": [true, null]}));
    let mut opts = enc_opts();
    opts.headers = Some(obj(json!({"x5t": "a", "b": 1})));
    let token = tokens::encode(&key, claims, &opts).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let h = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let p = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        h,
        format!(
            r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}","x5t":"a","b":1}}"#,
            key.kid()
        )
    );
    assert_eq!(
        p,
        r#"{"sub":"é\u0001\"","n":1.5e-07,"big":1e+16,"i":-3,"l":[true,null]}"#
    );
}

#[test]
fn encode_options() {
    let key = rfc_key();
    let mut opts = enc_opts();
    opts.expires_in = Some(60.0);
    opts.now = NOW + 0.9;
    opts.alg = Alg::Ed25519;
    let claims = obj(json!({"exp": 1, "sub": "a"}));
    let token = tokens::encode(&key, claims, &opts).unwrap();
    let p = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(p).unwrap(),
        r#"{"exp":1700000060,"sub":"a","iat":1700000000}"#
    );
    assert!(token.starts_with(&b64(br#"{"alg":"Ed25519","#)[..20]));
    assert_eq!(decode(&key, &token).unwrap()["sub"], "a");
    for name in ["alg", "typ", "kid"] {
        let mut o = enc_opts();
        o.headers = Some(obj(json!({ name: "x" })));
        assert!(matches!(
            tokens::encode(&key, Map::new(), &o),
            Err(Error::InvalidArgument(_))
        ));
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut o = enc_opts();
        o.expires_in = Some(bad);
        assert!(tokens::encode(&key, Map::new(), &o).is_err());
    }
    assert!(Alg::parse("HS256").is_err());
    let public = key.to_public();
    assert!(matches!(
        tokens::encode(&public, Map::new(), &enc_opts()),
        Err(Error::Token(_))
    ));
}

#[test]
fn malformed_tokens_are_decode_errors() {
    let key = rfc_key();
    let good = forge(&key, &header(&key), r#"{"exp":1800000000}"#);
    assert!(decode(&key, &good).is_ok());
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let cases: Vec<String> = vec![
        String::new(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}.{s}=="),
        format!("{h}.{p}+/.{s}"),
        format!("{h}.{p}.{s}AAA"), // length 4n+1
        format!("{h}.{p}!.{s}"),
        format!("{}.{p}.{s}", &h[..h.len() - 1]),
        "a".repeat(MAX_TOKEN_SIZE + 1),
        forge(&key, "[]", r#"{"exp":1800000000}"#),
        forge(&key, "not json", r#"{"exp":1800000000}"#),
        forge(&key, r#"{"typ":"JWT"}"#, r#"{"exp":1800000000}"#),
        forge(&key, r#"{"alg":1}"#, r#"{"exp":1800000000}"#),
        forge(&key, r#"{"alg":"EdDSA","kid":7}"#, r#"{"exp":1800000000}"#),
        forge(&key, &header(&key), "[1]"),
        forge(&key, &header(&key), "\"s\""),
        forge(&key, &header(&key), "{"),
        forge(&key, &header(&key), r#"{"exp":"1800000000"}"#),
        forge(&key, &header(&key), r#"{"exp":1800000000,"nbf":true}"#),
        forge(&key, &header(&key), r#"{"exp":1800000000,"iat":null}"#),
    ];
    for token in cases {
        let r = decode(&key, &token);
        assert!(matches!(r, Err(Error::Decode(_))), "{token:.80}: {r:?}");
    }
    // Non-canonical trailing bits in the signature segment (64 bytes: the last character
    // carries 2 bits and 4 unused ones, which must be zero).
    let last = s.chars().last().unwrap();
    let bumped = match last {
        'A' => 'B',
        'Q' => 'R',
        'g' => 'h',
        'w' => 'x',
        _ => 'A',
    };
    let token = format!("{h}.{p}.{}{bumped}", &s[..s.len() - 1]);
    assert!(matches!(decode(&key, &token), Err(Error::Decode(_))));
}

#[test]
fn forged_tokens_are_invalid_signatures() {
    let key = rfc_key();
    let other = Key::from_seed(&seed(RFC8032[1].0), None);
    let good = forge(&key, &header(&key), r#"{"exp":1800000000}"#);
    let (h, rest) = good.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let tampered_payload = format!("{h}.{}.{s}", b64(br#"{"exp":1900000000}"#));
    let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
    sig[10] ^= 1;
    let tampered_sig = format!("{h}.{}.{}", rest.split_once('.').unwrap().0, b64(&sig));
    let cases = vec![
        tampered_payload,
        tampered_sig,
        format!(
            "{h}.{}.{}",
            rest.split_once('.').unwrap().0,
            b64(&sig[..63])
        ),
        forge(&key, r#"{"alg":"none"}"#, r#"{"exp":1800000000}"#),
        forge(&key, r#"{"alg":"HS256"}"#, r#"{"exp":1800000000}"#),
        forge(&key, r#"{"alg":"RS256"}"#, r#"{"exp":1800000000}"#),
        forge(&key, r#"{"alg":"ES256"}"#, r#"{"exp":1800000000}"#),
        forge(
            &key,
            r#"{"alg":"EdDSA","crit":["exp"]}"#,
            r#"{"exp":1800000000}"#,
        ),
        forge(
            &key,
            r#"{"alg":"EdDSA","kid":"nope"}"#,
            r#"{"exp":1800000000}"#,
        ),
        forge(&other, &header(&key), r#"{"exp":1800000000}"#),
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(br#"{"exp":1800000000}"#)
        ),
    ];
    for token in cases {
        let r = decode(&key, &token);
        assert!(
            matches!(r, Err(Error::InvalidSignature(_))),
            "{token}: {r:?}"
        );
    }
    // Ed25519 (RFC 9864) is accepted as well as EdDSA.
    let t = forge(&key, r#"{"alg":"Ed25519"}"#, r#"{"exp":1800000000}"#);
    assert!(decode(&key, &t).is_ok());
}

#[test]
fn claims_follow_pyjwt() {
    let key = rfc_key();
    let tok = |payload: Value| forge(&key, &header(&key), &payload.to_string());
    let with = |payload: Value, f: &dyn Fn(&mut DecodeOptions)| {
        let mut o = dec_opts();
        f(&mut o);
        tokens::decode(tok(payload).as_bytes(), &key, &o)
    };
    let none = |_: &mut DecodeOptions| {};
    let exp = NOW as i64;
    assert!(matches!(
        with(json!({"exp": exp}), &none),
        Err(Error::ExpiredSignature(_))
    ));
    assert!(with(json!({"exp": exp + 1}), &none).is_ok());
    assert!(with(json!({"exp": exp}), &|o| o.leeway = 1.0).is_ok());
    assert!(matches!(
        with(json!({}), &none),
        Err(Error::MissingRequiredClaim(_))
    ));
    assert!(matches!(
        with(json!({"exp": null}), &none),
        Err(Error::Decode(_))
    ));
    assert!(with(json!({}), &|o| o.require.clear()).is_ok());
    let later = json!({"exp": exp + 100, "nbf": exp + 10});
    assert!(matches!(
        with(later.clone(), &none),
        Err(Error::ImmatureSignature(_))
    ));
    assert!(with(later, &|o| o.leeway = 10.0).is_ok());
    assert!(matches!(
        with(json!({"exp": exp + 100, "iat": exp + 1}), &none),
        Err(Error::ImmatureSignature(_))
    ));
    assert!(with(json!({"exp": exp + 100, "iat": exp}), &none).is_ok());
    // aud
    fn aud(a: Option<Vec<&'static str>>) -> impl Fn(&mut DecodeOptions) {
        move |o: &mut DecodeOptions| {
            o.audience = a.clone().map(|v| v.into_iter().map(String::from).collect())
        }
    }
    let e = exp + 100;
    assert!(matches!(
        with(json!({"exp": e, "aud": "api"}), &none),
        Err(Error::InvalidAudience(_))
    ));
    assert!(with(json!({"exp": e, "aud": "api"}), &aud(Some(vec!["api"]))).is_ok());
    assert!(
        with(
            json!({"exp": e, "aud": ["x", "api"]}),
            &aud(Some(vec!["api"]))
        )
        .is_ok()
    );
    assert!(with(json!({"exp": e, "aud": "x"}), &aud(Some(vec!["y", "x"]))).is_ok());
    assert!(matches!(
        with(json!({"exp": e, "aud": "x"}), &aud(Some(vec!["api"]))),
        Err(Error::InvalidAudience(_))
    ));
    assert!(matches!(
        with(
            json!({"exp": e, "aud": ["api", 1]}),
            &aud(Some(vec!["api"]))
        ),
        Err(Error::InvalidAudience(_))
    ));
    assert!(matches!(
        with(json!({"exp": e, "aud": 1}), &aud(Some(vec!["api"]))),
        Err(Error::InvalidAudience(_))
    ));
    assert!(matches!(
        with(json!({"exp": e}), &aud(Some(vec!["api"]))),
        Err(Error::MissingRequiredClaim(_))
    ));
    // iss
    let iss = |o: &mut DecodeOptions| o.issuer = Some(vec!["me".into()]);
    assert!(with(json!({"exp": e, "iss": "me"}), &iss).is_ok());
    assert!(matches!(
        with(json!({"exp": e, "iss": "you"}), &iss),
        Err(Error::InvalidIssuer(_))
    ));
    assert!(matches!(
        with(json!({"exp": e, "iss": 1}), &iss),
        Err(Error::InvalidIssuer(_))
    ));
    assert!(matches!(
        with(json!({"exp": e}), &iss),
        Err(Error::MissingRequiredClaim(_))
    ));
    // bad options
    let mut o = dec_opts();
    o.leeway = -1.0;
    assert!(o.check().is_err());
    o.leeway = f64::NAN;
    assert!(o.check().is_err());
}

#[test]
fn key_sets_choose_by_kid() {
    let a = Arc::new(Key::from_seed(&seed(RFC8032[0].0), Some("a".into())));
    let b = Arc::new(Key::from_seed(&seed(RFC8032[1].0), Some("b".into())));
    let set = KeySet::new(vec![a.clone(), b.clone()]).unwrap();
    let claims = obj(json!({"exp": 1800000000}));
    let tb = tokens::encode(&b, claims.clone(), &enc_opts()).unwrap();
    assert!(tokens::decode(tb.as_bytes(), &set, &dec_opts()).is_ok());
    let no_kid = forge(&a, r#"{"alg":"EdDSA"}"#, r#"{"exp":1800000000}"#);
    assert!(matches!(
        tokens::decode(no_kid.as_bytes(), &set, &dec_opts()),
        Err(Error::InvalidSignature(_))
    ));
    let one = KeySet::new(vec![a.clone()]).unwrap();
    assert!(tokens::decode(no_kid.as_bytes(), &one, &dec_opts()).is_ok());
    assert!(matches!(
        tokens::decode(tb.as_bytes(), &one, &dec_opts()),
        Err(Error::InvalidSignature(_))
    ));
    // JWKS round trip: public only, no "d".
    let jwks = set.to_jwks();
    assert!(!jwks.to_string().contains("\"d\""));
    let public = KeySet::from_jwks(&jwks).unwrap();
    assert!(public.keys().iter().all(|k| !k.has_private()));
    assert!(tokens::decode(tb.as_bytes(), &public, &dec_opts()).is_ok());
    assert!(KeySet::new(vec![a.clone(), a]).is_err());
    assert!(KeySet::from_jwks(&json!({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]})).is_err());
    assert!(KeySet::from_jwks(&json!([])).is_err());
}

#[test]
fn debug_shows_no_key_material() {
    let key = rfc_key();
    let text = format!("{key:?}");
    assert!(text.contains(key.kid()));
    assert!(!text.contains("9d61"), "{text}");
    assert!(!text.to_lowercase().contains("secret"));
}

#[test]
fn generated_keys_differ_and_work() {
    let a = Key::generate(None).unwrap();
    let b = Key::generate(Some("b".into())).unwrap();
    assert_ne!(a.public_bytes(), b.public_bytes());
    assert_eq!(b.kid(), "b");
    assert_eq!(a.kid(), a.thumbprint());
    let sig = a.sign(b"x").unwrap();
    assert!(a.verify(b"x", &sig));
    assert!(!b.verify(b"x", &sig));
}

#[test]
fn outcomes_are_counted() {
    let key = rfc_key();
    let before = metrics::snapshot();
    let token = tokens::encode(&key, obj(json!({"exp": 1800000000})), &enc_opts()).unwrap();
    decode(&key, &token).unwrap();
    let _ = decode(&key, "x.y");
    let after = metrics::snapshot();
    assert!(after.issued > before.issued);
    assert!(after.verified > before.verified);
    let idx = metrics::REASONS
        .iter()
        .position(|r| *r == "decode")
        .unwrap();
    assert!(after.rejected[idx].1 > before.rejected[idx].1);
    assert_eq!(
        metrics::reason(&Error::ExpiredSignature(String::new())),
        "expired"
    );
}

/// serde_json refuses JSON nested deeper than 127 levels (the payload object included); the
/// Python path applies the same limit (tests_py/test_tokens_bad_input.py).
#[test]
fn payload_nesting_limit() {
    let key = rfc_key();
    let nested = |n: usize| {
        let (open, close) = ("[".repeat(n), "]".repeat(n));
        format!(r#"{{"exp":1800000000,"n":{open}1{close}}}"#)
    };
    assert!(decode(&key, &forge(&key, &header(&key), &nested(126))).is_ok());
    let r = decode(&key, &forge(&key, &header(&key), &nested(127)));
    assert!(matches!(r, Err(Error::Decode(_))), "{r:?}");
}

/// Unpaired surrogate escapes are not strings serde_json accepts; a pair is one character.
#[test]
fn lone_surrogate_escapes_are_decode_errors() {
    let key = rfc_key();
    for bad in [r#""\ud800""#, r#""\udc00x""#, r#""\ud800\u0041""#] {
        let payload = format!(r#"{{"exp":1800000000,"s":{bad}}}"#);
        let r = decode(&key, &forge(&key, &header(&key), &payload));
        assert!(matches!(r, Err(Error::Decode(_))), "{bad}: {r:?}");
    }
    let ok = r#"{"exp":1800000000,"s":"\ud83d\udd11"}"#;
    assert_eq!(
        decode(&key, &forge(&key, &header(&key), ok)).unwrap()["s"],
        "\u{1f511}"
    );
}
