//! Single flight: one loader per key, every concurrent caller of that key waits for its result.
//!
//! The first caller of a key becomes the leader and gets a [`Leader`] guard; later callers get
//! the shared [`Flight`] and wait on it. The leader publishes its result with [`Leader::finish`];
//! if it is dropped without finishing (its loader was interrupted, or panicked) the flight is
//! marked abandoned and the waiters try again, the first of them becoming the next leader. A
//! leader asking for its own key again is told so ([`Join::Reentrant`]) instead of deadlocking.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

enum State<T> {
    Running,
    Done(T),
    Abandoned,
}

/// One load in progress, shared by its leader and its waiters.
pub struct Flight<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
    owner: ThreadId,
}

/// What a waiter found.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// The result is there: read it with [`Flight::with_result`].
    Done,
    /// The leader gave up; call [`SingleFlight::join`] again.
    Abandoned,
    /// The timeout passed first.
    Pending,
}

impl<T> Flight<T> {
    /// Waits up to `timeout` for the leader.
    pub fn wait(&self, timeout: Duration) -> Wait {
        let mut st = self.state.lock();
        if matches!(*st, State::Running) {
            self.cond.wait_for(&mut st, timeout);
        }
        match *st {
            State::Running => Wait::Pending,
            State::Done(_) => Wait::Done,
            State::Abandoned => Wait::Abandoned,
        }
    }

    /// Reads the result, if the flight is done.
    pub fn with_result<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        match &*self.state.lock() {
            State::Done(t) => Some(f(t)),
            _ => None,
        }
    }

    /// The thread that leads this flight.
    pub fn owner(&self) -> ThreadId {
        self.owner
    }
}

/// The role a caller of [`SingleFlight::join`] gets.
pub enum Join<'a, T> {
    /// Run the loader, then call [`Leader::finish`].
    Leader(Leader<'a, T>),
    /// Another thread is loading: wait on the flight.
    Waiter(Arc<Flight<T>>),
    /// This thread is already loading this key: waiting would deadlock.
    Reentrant,
}

type FlightMap<T> = HashMap<Box<[u8]>, Arc<Flight<T>>, foldhash::fast::RandomState>;

/// The registry of flights in progress, by key.
pub struct SingleFlight<T> {
    flights: Mutex<FlightMap<T>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::default()),
        }
    }
}

impl<T> SingleFlight<T> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the flight for `key`, starting one (as leader) when there is none.
    pub fn join(&self, key: &[u8]) -> Join<'_, T> {
        let me = std::thread::current().id();
        let mut map = self.flights.lock();
        if let Some(f) = map.get(key) {
            return if f.owner == me {
                Join::Reentrant
            } else {
                Join::Waiter(Arc::clone(f))
            };
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(State::Running),
            cond: Condvar::new(),
            owner: me,
        });
        map.insert(key.into(), Arc::clone(&flight));
        Join::Leader(Leader {
            registry: self,
            key: key.into(),
            flight: Some(flight),
        })
    }

    /// Flights in progress.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }

    fn end(&self, key: &[u8], flight: &Arc<Flight<T>>) {
        let mut map = self.flights.lock();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// The guard of a flight's leader.
pub struct Leader<'a, T> {
    registry: &'a SingleFlight<T>,
    key: Box<[u8]>,
    flight: Option<Arc<Flight<T>>>,
}

impl<T> Leader<'_, T> {
    /// Publishes the result to every waiter and ends the flight.
    pub fn finish(mut self, result: T) {
        let flight = self.flight.take().expect("a leader finishes once");
        self.registry.end(&self.key, &flight);
        *flight.state.lock() = State::Done(result);
        flight.cond.notify_all();
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            self.registry.end(&self.key, &flight);
            *flight.state.lock() = State::Abandoned;
            flight.cond.notify_all();
        }
    }
}
