//! Integration tests of single flight: one leader per key, shared results, re-entrance,
//! abandonment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use sark_native::core::single_flight::{Join, SingleFlight, Wait};

fn load(sf: &SingleFlight<u64>, key: &[u8], calls: &AtomicUsize) -> u64 {
    loop {
        match sf.join(key) {
            Join::Leader(l) => {
                calls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                l.finish(42);
                return 42;
            }
            Join::Waiter(f) => loop {
                match f.wait(Duration::from_millis(10)) {
                    Wait::Done => return f.with_result(|v| *v).unwrap(),
                    Wait::Abandoned => break,
                    Wait::Pending => {}
                }
            },
            Join::Reentrant => panic!("not re-entrant here"),
        }
    }
}

#[test]
fn one_leader_many_waiters() {
    let sf = Arc::new(SingleFlight::<u64>::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (sf, calls, b) = (sf.clone(), calls.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                load(&sf, b"k", &calls)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 42);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(sf.in_flight(), 0);
}

#[test]
fn the_leader_asking_again_is_reentrant() {
    let sf = SingleFlight::<u64>::new();
    let Join::Leader(leader) = sf.join(b"k") else {
        panic!("first caller leads")
    };
    assert!(matches!(sf.join(b"k"), Join::Reentrant));
    assert!(matches!(sf.join(b"other"), Join::Leader(_)));
    leader.finish(1);
    assert!(matches!(sf.join(b"k"), Join::Leader(_)));
}

#[test]
fn an_abandoned_flight_lets_a_waiter_lead() {
    let sf = Arc::new(SingleFlight::<u64>::new());
    let Join::Leader(leader) = sf.join(b"k") else {
        panic!("first caller leads")
    };
    let sf2 = sf.clone();
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let Join::Waiter(f) = sf2.join(b"k") else {
            panic!("second caller waits")
        };
        joined_tx.send(()).unwrap();
        let seen = loop {
            match f.wait(Duration::from_millis(10)) {
                Wait::Pending => continue,
                other => break other,
            }
        };
        assert_eq!(seen, Wait::Abandoned);
        match sf2.join(b"k") {
            Join::Leader(l) => l.finish(7),
            _ => panic!("after abandonment the waiter leads"),
        }
    });
    // Abandon only once the waiter is waiting (a sleep here would race on a loaded machine).
    joined_rx.recv().unwrap();
    drop(leader);
    waiter.join().unwrap();
    assert_eq!(sf.in_flight(), 0);
}
