//! Criterion benchmarks of the pure-Rust token core (`core::tokens`), no Python.
//!
//! `cargo bench --no-default-features --bench tokens` (part of `make bench-rust`). Same workload
//! as `benches/py/bench_tokens.py`: an access token's claims, decode with `exp`/`aud`/`iss`
//! checks, raw sign/verify over 200 bytes. The difference to the Python figures is the cost of
//! the binding (argument conversion, GIL release, building the claims dict).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};

use sark_native::core::tokens::{self, Alg, DecodeOptions, EncodeOptions, Key};

const NOW: f64 = 1_700_000_000.0;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

fn claims() -> Map<String, Value> {
    match json!({
        "sub": "user-1234567890",
        "iss": "https://auth.example",
        "aud": "api",
        "roles": ["reader", "writer"],
        "iat": NOW as i64,
        "exp": NOW as i64 + 3600,
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn bench_tokens(c: &mut Criterion) {
    let key = Key::from_seed(&[7u8; 32], None);
    let enc = EncodeOptions {
        alg: Alg::EdDSA,
        headers: None,
        expires_in: None,
        now: NOW,
    };
    let dec = DecodeOptions {
        audience: Some(vec!["api".into()]),
        issuer: Some(vec!["https://auth.example".into()]),
        leeway: 0.0,
        require: vec!["exp".into()],
        now: NOW,
    };
    let claims = claims();
    let token = tokens::encode(&key, claims.clone(), &enc).expect("encode");
    let message = [42u8; 200];
    let signature = key.sign(&message).expect("sign");

    let mut g = c.benchmark_group("tokens");
    g.bench_function("encode", |b| {
        b.iter(|| tokens::encode(&key, black_box(claims.clone()), &enc))
    });
    g.bench_function("decode", |b| {
        b.iter(|| tokens::decode(black_box(token.as_bytes()), &key, &dec))
    });
    g.bench_function("sign_200B", |b| b.iter(|| key.sign(black_box(&message))));
    g.bench_function("verify_200B", |b| {
        b.iter(|| key.verify(black_box(&message), black_box(&signature)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_tokens
}
criterion_main!(benches);
