//! Rollout bucketing: murmur3 x86_32 against published vectors, Unleash's normalized values,
//! long keys, and the distribution over many ids.

use sark_native::core::bucket::{
    BUCKETS, MAX_FEATURES, Murmur3, RolloutTable, bucket, is_in_rollout, murmur3_x86_32,
};

#[test]
fn murmur3_matches_the_published_vectors() {
    // SMHasher's MurmurHash3_x86_32 vectors (as collected in the well-known test-vector list).
    let cases: &[(&[u8], u32, u32)] = &[
        (b"", 0, 0),
        (b"", 1, 0x514e_28b7),
        (b"", 0xffff_ffff, 0x81f1_6f39),
        (b"\xff\xff\xff\xff", 0, 0x7629_3b50),
        (b"\x21\x43\x65\x87", 0, 0xf55b_516b),
        (b"\x21\x43\x65\x87", 0x5082_edee, 0x2362_f9de),
        (b"\x21\x43\x65", 0, 0x7e4a_8634),
        (b"\x21\x43", 0, 0xa0f7_b07a),
        (b"\x21", 0, 0x7266_1cf4),
        (b"\x00\x00\x00\x00", 0, 0x2362_f9de),
        (b"\x00\x00\x00", 0, 0x85f0_b427),
        (b"\x00\x00", 0, 0x30f4_c306),
        (b"\x00", 0, 0x514e_28b7),
        (b"aaaa", 0x9747_b28c, 0x5a97_808a),
        (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
        (
            b"The quick brown fox jumps over the lazy dog",
            0x9747_b28c,
            0x2fa8_26cd,
        ),
        (b"hello", 0, 0x248b_fa47),
    ];
    for (data, seed, want) in cases {
        assert_eq!(
            murmur3_x86_32(data, *seed),
            *want,
            "{data:?} seed {seed:#x}"
        );
    }
}

#[test]
fn streaming_murmur3_equals_the_one_shot_at_every_split() {
    let data: Vec<u8> = (0u8..=40).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    for len in 0..data.len() {
        let whole = murmur3_x86_32(&data[..len], 0x9747_b28c);
        for a in 0..=len {
            for b in a..=len {
                let mut h = Murmur3::new(0x9747_b28c);
                h.write(&data[..a]).write(&data[a..b]).write(&data[b..len]);
                assert_eq!(h.finish(), whole, "len {len} split {a} {b}");
            }
        }
    }
}

#[test]
fn bucket_is_unleash_normalized_value_minus_one() {
    // Unleash clients (node, java, go) share these: normalizedValue("123", "gr1") == 73 and
    // normalizedValue("999", "groupX") == 25, where the hashed string is "{groupId}:{id}".
    assert_eq!(bucket("gr1", "123") + 1, 73);
    assert_eq!(bucket("groupX", "999") + 1, 25);
}

#[test]
fn long_keys_hash_like_short_ones() {
    let feature = "f".repeat(300);
    let unit = "ü".repeat(200);
    let key = format!("{feature}:{unit}");
    assert_eq!(
        bucket(&feature, &unit),
        murmur3_x86_32(key.as_bytes(), 0) % BUCKETS
    );
    for n in [0, 1, 2, 3, 4, 5, 6, 7, 8, 250, 254, 255, 256, 257, 1000] {
        let unit = "x".repeat(n);
        let key = format!("a:{unit}");
        assert_eq!(
            bucket("a", &unit),
            murmur3_x86_32(key.as_bytes(), 0) % BUCKETS,
            "{n}"
        );
    }
}

#[test]
fn buckets_are_uniform_over_many_ids() {
    let n = 100_000u32;
    let mut counts = [0u32; BUCKETS as usize];
    for i in 0..n {
        counts[bucket("rust_opa", &format!("user-{i}")) as usize] += 1;
    }
    // Chi-squared with 99 degrees of freedom: the 99.9th percentile is about 148.
    let expected = f64::from(n) / f64::from(BUCKETS);
    let chi2: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 148.0, "chi2 = {chi2}, counts = {counts:?}");
}

#[test]
fn rollout_only_grows_with_the_percentage() {
    for i in 0..2000 {
        let unit = format!("u{i}");
        let mut was_in = false;
        for p in 0..=100 {
            let now_in = is_in_rollout("feat", &unit, p);
            assert!(now_in || !was_in, "{unit} left the rollout at {p}%");
            was_in = now_in;
        }
        assert!(!is_in_rollout("feat", &unit, 0));
        assert!(is_in_rollout("feat", &unit, 100));
        assert!(is_in_rollout("feat", &unit, 250));
    }
}

#[test]
fn rollout_table_decides_counts_and_replaces_atomically() {
    let table = RolloutTable::new();
    assert!(!table.is_enabled("f", "u1")); // unknown: 0%, counted
    assert_eq!(table.percentages(), vec![]);
    assert_eq!(table.assignments(), vec![("f".to_string(), 1, 0)]);
    assert_eq!(table.set("f", 30), 0);
    assert_eq!(table.set("f", 250), 30); // clamped
    assert_eq!(table.get("f"), 100);
    table.set("f", 30);
    let mut on = 0;
    for i in 0..1000 {
        let unit = format!("u{i}");
        let got = table.is_enabled("f", &unit);
        assert_eq!(got, bucket("f", &unit) < 30);
        on += u64::from(got);
    }
    assert_eq!(table.assignments(), vec![("f".to_string(), 1001 - on, on)]);
    table.replace_all([("g", 5)]);
    assert_eq!(table.get("f"), 0);
    assert_eq!(table.percentages(), vec![("g".to_string(), 5)]);
    assert_eq!(table.assignments()[0], ("f".to_string(), 1001 - on, on)); // counters stay
    assert!(!table.is_enabled("", "u")); // an empty name is never tracked
    assert_eq!(table.assignments().len(), 1);
}

#[test]
fn rollout_table_bounds_the_features_it_tracks() {
    let table = RolloutTable::new();
    for i in 0..MAX_FEATURES + 50 {
        table.is_enabled(&format!("f{i}"), "u");
    }
    assert_eq!(table.assignments().len(), MAX_FEATURES);
}
