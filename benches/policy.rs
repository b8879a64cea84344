//! Criterion benchmarks of the pure-Rust policy core (`core::policy`), no Python.
//!
//! `cargo bench --no-default-features --bench policy` (part of `make bench-rust`). Same workload
//! as `benches/py/bench_policy.py` (`benches/policy/authz.rego`, its data and a 10-field input):
//! one decision on the VM and on the interpreter, the JSON parse of the input (regorus's own
//! `Value::from_json_str`, what a JSON-fed binding pays), and decisions from 1 and 2 threads at
//! once (per decision, so 2 threads scaling perfectly show half the time of 1).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use sark_native::core::policy::{Config, PolicyEngine, Value};

const PATH: &str = "data.sark.authz.allow";
const INPUT: &str = r#"{"user": {"id": "u-1842", "role": "developer", "teams": ["payments", "core"], "disabled": false}, "resource": {"id": "tool-77", "type": "tool", "sensitivity": "internal", "owner_team": "payments"}, "action": "invoke", "context": {"hour": 14, "ip": "10.2.3.4"}}"#;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

fn engine(vm: bool) -> Arc<PolicyEngine> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/policy");
    let e = PolicyEngine::new(Config {
        vm,
        ..Config::default()
    })
    .expect("engine");
    e.load_policy(
        "authz",
        &std::fs::read_to_string(format!("{dir}/authz.rego")).expect("policy"),
    )
    .expect("load");
    let data = std::fs::read_to_string(format!("{dir}/data.json")).expect("data");
    e.set_data(Value::from_json_str(&data).expect("json"))
        .expect("data");
    Arc::new(e)
}

fn bench_policy(c: &mut Criterion) {
    let input = Value::from_json_str(INPUT).expect("input");
    let vm = engine(true);
    let interp = engine(false);
    assert_eq!(
        vm.evaluate(PATH, Some(input.clone())).expect("eval"),
        Some(Value::Bool(true))
    );
    let mut g = c.benchmark_group("policy");
    g.bench_function("evaluate_vm", |b| {
        b.iter(|| vm.evaluate(PATH, Some(black_box(input.clone()))))
    });
    g.bench_function("evaluate_interpreter", |b| {
        b.iter(|| interp.evaluate(PATH, Some(black_box(input.clone()))))
    });
    g.bench_function("input_from_json", |b| {
        b.iter(|| Value::from_json_str(black_box(INPUT)))
    });
    for threads in [1usize, 2] {
        let e = vm.clone();
        g.bench_function(format!("evaluate_vm_{threads}_threads"), move |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(threads as u64);
                let started = Instant::now();
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let e = e.clone();
                        std::thread::spawn(move || {
                            // Each thread its own input, as requests are.
                            let input = Value::from_json_str(INPUT).expect("input");
                            for _ in 0..per {
                                black_box(e.evaluate(PATH, Some(input.clone())).ok());
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().expect("thread");
                }
                // The wall time of `iters` decisions shared by the threads: criterion reports it
                // per decision, so perfect scaling on 2 threads halves it.
                started.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_policy
}
criterion_main!(benches);
