//! Tests of the Argon2 core: RFC 9106 test vectors, PHC parsing and caps, memory reuse, and the
//! bounded pool (small m and t throughout).

use std::sync::mpsc;
use std::time::Duration;

use sark_native::core::error::Error;
use sark_native::core::hashing::{Algorithm, Config, Hasher, Memory, Spec, Version, phc, pool};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 9106 section 5: password 32 x 0x01, salt 16 x 0x02, secret 8 x 0x03, ad 12 x 0x04,
/// m=32 KiB, t=3, p=4, tag 32 bytes, version 0x13.
fn rfc9106(algorithm: Algorithm, expected: &str) {
    let spec = Spec {
        algorithm,
        version: Version::V0x13,
        m_cost: 32,
        t_cost: 3,
        p_cost: 4,
    };
    let mut out = [0u8; 32];
    let mut memory = Memory::new();
    sark_native::core::hashing::compute(
        &spec,
        &[1u8; 32],
        &[2u8; 16],
        &[3u8; 8],
        &[4u8; 12],
        &mut out,
        &mut memory,
    )
    .unwrap();
    assert_eq!(out.to_vec(), hex(expected));
    // The same memory, reused, gives the same tag.
    let mut again = [0u8; 32];
    sark_native::core::hashing::compute(
        &spec,
        &[1u8; 32],
        &[2u8; 16],
        &[3u8; 8],
        &[4u8; 12],
        &mut again,
        &mut memory,
    )
    .unwrap();
    assert_eq!(out, again);
}

#[test]
fn rfc9106_argon2d() {
    rfc9106(
        Algorithm::Argon2d,
        "51 2b 39 1b 6f 11 62 97 53 71 d3 09 19 73 42 94 f8 68 e3 be 39 84 f3 c1 a1 3a 4d b9 fa be 4a cb",
    );
}

#[test]
fn rfc9106_argon2i() {
    rfc9106(
        Algorithm::Argon2i,
        "c8 14 d9 d1 dc 7f 37 aa 13 f0 d7 7f 24 94 bd a1 c8 de 6b 01 6d d3 88 d2 99 52 a4 c4 67 2b 6c e8",
    );
}

#[test]
fn rfc9106_argon2id() {
    rfc9106(
        Algorithm::Argon2id,
        "0d 64 0d f5 8d 78 76 6c 08 c0 37 a3 4a 8b 53 c9 d0 1e f0 45 2d 75 b6 5e b5 25 20 e9 6b 01 e6 59",
    );
}

fn small() -> Hasher {
    Hasher::new(Config {
        time_cost: 1,
        memory_cost: 64,
        parallelism: 1,
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn hash_then_verify_round_trips() {
    let h = small();
    let mut mem = Memory::new();
    let s = h.hash(b"correct horse", &mut mem).unwrap();
    assert!(s.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{s}");
    h.verify(&s, b"correct horse", &mut mem).unwrap();
    assert_eq!(h.verify(&s, b"wrong", &mut mem), Err(Error::VerifyMismatch));
    assert!(!h.needs_rehash(&s).unwrap());
    let other = Hasher::new(Config {
        time_cost: 2,
        memory_cost: 64,
        ..Config::default()
    })
    .unwrap();
    assert!(other.needs_rehash(&s).unwrap());
    // Salts are random.
    assert_ne!(s, h.hash(b"correct horse", &mut mem).unwrap());
}

#[test]
fn verifies_a_known_phc_string_of_the_reference_implementation() {
    // The reference implementation's test.c: argon2i, v=19, t=2, m=2^16, p=1, "password",
    // "somesalt".
    let h = Hasher::new(Config::default()).unwrap();
    let mut mem = Memory::new();
    let phc_str =
        "$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
    h.verify(phc_str, b"password", &mut mem).unwrap();
    assert_eq!(
        h.verify(phc_str, b"passwore", &mut mem),
        Err(Error::VerifyMismatch)
    );
    // The worker kept only the hasher's own block (m=65536 here, the same).
    assert!(mem.len() <= 65536);
}

#[test]
fn memory_is_trimmed_to_the_hashers_own_size() {
    let big = Hasher::new(Config {
        time_cost: 1,
        memory_cost: 256,
        ..Config::default()
    })
    .unwrap();
    let mut mem = Memory::new();
    let s = big.hash(b"pw", &mut mem).unwrap();
    assert_eq!(mem.len(), 256);
    let h = small();
    h.verify(&s, b"pw", &mut mem).unwrap();
    assert_eq!(mem.len(), 64);
}

#[test]
fn malformed_strings_are_invalid_hash() {
    let h = small();
    let mut mem = Memory::new();
    let good = h.hash(b"pw", &mut mem).unwrap();
    let bad = [
        "",
        "$",
        "argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2x$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=18$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$t=1,m=64,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=064,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=64,t=1,p=1,x=2$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=64,t=0,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=7,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=64,t=1,p=0$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=99999999999,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaGhhc2g",
        "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGE",
        "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g=",
        "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFz!GhhcG",
        "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g$",
        "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ",
    ];
    for s in bad {
        assert!(
            matches!(h.verify(s, b"pw", &mut mem), Err(Error::InvalidHash(_))),
            "{s:?}"
        );
        assert!(
            matches!(h.needs_rehash(s), Err(Error::InvalidHash(_))),
            "{s:?}"
        );
    }
    let long = format!("{good}{}", "A".repeat(phc::MAX_PHC_LEN));
    assert!(matches!(
        h.verify(&long, b"pw", &mut mem),
        Err(Error::InvalidHash(_))
    ));
    // The hasher stays usable.
    h.verify(&good, b"pw", &mut mem).unwrap();
}

#[test]
fn parameters_beyond_the_caps_are_refused_before_any_work() {
    let h = small();
    let mut mem = Memory::new();
    for s in [
        "$argon2id$v=19$m=262145,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=64,t=17,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=4096,t=1,p=17$c29tZXNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=19$m=4294967295,t=4294967295,p=1$c29tZXNhbHQ$aGFzaGhhc2g",
    ] {
        assert!(
            matches!(h.verify(s, b"pw", &mut mem), Err(Error::InvalidHash(_))),
            "{s}"
        );
    }
    assert!(mem.is_empty());
}

#[test]
fn bad_settings_are_invalid_arguments() {
    let base = Config::default();
    for c in [
        Config {
            time_cost: 0,
            ..base.clone()
        },
        Config {
            parallelism: 0,
            ..base.clone()
        },
        Config {
            memory_cost: 7,
            ..base.clone()
        },
        Config {
            memory_cost: 15,
            parallelism: 2,
            ..base.clone()
        },
        Config {
            hash_len: 3,
            ..base.clone()
        },
        Config {
            salt_len: 7,
            ..base.clone()
        },
        Config {
            time_cost: 17,
            ..base.clone()
        },
        Config {
            memory_cost: 262_145,
            ..base.clone()
        },
        Config {
            max_password_len: 0,
            ..base.clone()
        },
    ] {
        assert!(
            matches!(Hasher::new(c.clone()), Err(Error::InvalidArgument(_))),
            "{c:?}"
        );
    }
}

#[test]
fn passwords_over_the_cap_are_refused() {
    let h = small();
    let mut mem = Memory::new();
    let s = h.hash(&[b'a'; 4096], &mut mem).unwrap();
    h.verify(&s, &[b'a'; 4096], &mut mem).unwrap();
    assert!(matches!(
        h.hash(&[b'a'; 4097], &mut mem),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        h.verify(&s, &[b'a'; 4097], &mut mem),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn verifies_version_0x10_hashes() {
    let spec = Spec {
        algorithm: Algorithm::Argon2id,
        version: Version::V0x10,
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    };
    let salt = b"somesaltsomesalt".to_vec();
    let mut hash = vec![0u8; 32];
    let mut mem = Memory::new();
    sark_native::core::hashing::compute(&spec, b"pw", &salt, &[], &[], &mut hash, &mut mem)
        .unwrap();
    let s = format!(
        "$argon2id$m=64,t=1,p=1${}${}",
        phc::encode_b64(&salt),
        phc::encode_b64(&hash)
    );
    let h = small();
    h.verify(&s, b"pw", &mut mem).unwrap();
    assert!(h.needs_rehash(&s).unwrap());
}

/// The pool tests share the process-wide pool: one test drives it through every state.
#[test]
fn pool_runs_jobs_sheds_load_and_shuts_down() {
    let s = pool::configure(Some(1), Some(2)).unwrap();
    assert_eq!(
        s,
        pool::Settings {
            workers: 1,
            max_pending: 2
        }
    );
    assert!(pool::configure(Some(0), None).is_err());
    assert!(pool::configure(None, Some(0)).is_err());

    // Runs a job with the worker's memory.
    let (tx, rx) = mpsc::channel();
    let h = small();
    pool::submit(Box::new(move |mem| {
        tx.send(h.hash(b"pw", mem)).unwrap();
    }))
    .unwrap();
    assert!(rx.recv().unwrap().unwrap().starts_with("$argon2id$"));
    assert!(pool::is_running());

    // Block the single worker, fill the queue, and the next submit fails at once.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    pool::submit(Box::new(move |_| {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    }))
    .unwrap();
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (done_tx, done_rx) = mpsc::channel::<u32>();
    for i in 0..2 {
        let d = done_tx.clone();
        pool::submit(Box::new(move |_| d.send(i).unwrap())).unwrap();
    }
    assert_eq!(pool::queue_depth(), 2);
    assert!(matches!(
        pool::submit(Box::new(|_| {})),
        Err(Error::Overloaded(_))
    ));
    release_tx.send(()).unwrap();
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 1);

    // A panicking job does not kill the worker; guarded() reports it as Internal.
    pool::submit(Box::new(|_| panic!("boom"))).unwrap();
    let (tx, rx) = mpsc::channel();
    pool::submit(Box::new(move |_| {
        tx.send(pool::guarded::<()>(|| panic!("inner"))).unwrap();
    }))
    .unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Err(Error::Internal(_))
    ));

    // configure() retires the running pool; its queued work still runs, and shutdown joins it.
    let (slow_tx, slow_rx) = mpsc::channel::<()>();
    pool::submit(Box::new(move |_| {
        std::thread::sleep(Duration::from_millis(50));
        slow_tx.send(()).unwrap();
    }))
    .unwrap();
    pool::configure(Some(2), Some(4)).unwrap();
    assert_eq!(
        pool::settings(),
        pool::Settings {
            workers: 2,
            max_pending: 4
        }
    );

    // Shutdown drains the queues (the retired pool's too), then refuses work.
    let (tx, rx) = mpsc::channel();
    pool::submit(Box::new(move |_| tx.send(()).unwrap())).unwrap();
    pool::shutdown();
    rx.try_recv().unwrap();
    slow_rx.try_recv().unwrap();
    assert!(!pool::is_running());
    assert!(matches!(
        pool::submit(Box::new(|_| {})),
        Err(Error::Overloaded(_))
    ));
}
