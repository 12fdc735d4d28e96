//! Whether a store answers: each store counts its failed operations and notices when it answers
//! again after failing (a database restart, a network cut), for the metrics and the logs.

use crate::error::{Error, ErrorCode, Result};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// A change in whether the store answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Availability {
    /// An operation failed: the store's own message (it names no secret: values are sent as
    /// parameters, never printed).
    Lost { message: String },
    /// It answered again after failing this long.
    Regained { down_ms: u64 },
}

type Listener = Box<dyn Fn(Availability) + Send + Sync>;

/// One store's availability, observed from the results of its operations.
#[derive(Default)]
pub struct StoreHealth {
    errors: AtomicU64,
    reconnects: AtomicU64,
    down: AtomicBool,
    down_since: Mutex<Option<Instant>>,
    listener: OnceLock<Listener>,
}

impl std::fmt::Debug for StoreHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHealth")
            .field("up", &self.up())
            .field("errors", &self.errors())
            .field("reconnects", &self.reconnects())
            .finish_non_exhaustive()
    }
}

impl StoreHealth {
    /// Notes what an operation's result says of the store. Errors of the caller's making (a
    /// conflict, bad input) say nothing about it and are not counted.
    pub fn observe<T>(&self, result: &Result<T>) {
        match result {
            Ok(_) => self.answered(),
            Err(e) if e.code == ErrorCode::StoreError => self.failed(e),
            Err(_) => {}
        }
    }

    fn answered(&self) {
        // The common case is one atomic load.
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let since = self.down_since.lock().take();
        if self.down.swap(false, Ordering::AcqRel) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            let down_ms = since.map_or(0, |s| s.elapsed().as_millis() as u64);
            self.tell(Availability::Regained { down_ms });
        }
    }

    fn failed(&self, error: &Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::AcqRel) {
            *self.down_since.lock() = Some(Instant::now());
            self.tell(Availability::Lost {
                message: error.message.clone(),
            });
        }
    }

    fn tell(&self, change: Availability) {
        if let Some(listener) = self.listener.get() {
            listener(change);
        }
    }

    /// Who hears of availability changes (the engine, once).
    pub fn listen(&self, listener: impl Fn(Availability) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(listener));
    }

    /// Failed operations so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Times it answered again after failing.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Whether the last operation reached it.
    pub fn up(&self) -> bool {
        !self.down.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_outage_is_told_once_and_its_end_once() {
        let health = StoreHealth::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        health.listen(move |change| sink.lock().push(change));
        let down = || Err::<(), _>(Error::store("PostgreSQL: connect", "connection refused"));
        health.observe(&Ok(()));
        health.observe(&down());
        health.observe(&down());
        assert!(!health.up());
        health.observe(&Ok(()));
        health.observe(&Ok(()));
        assert!(health.up());
        assert_eq!((health.errors(), health.reconnects()), (2, 1));
        let heard = heard.lock();
        assert_eq!(heard.len(), 2);
        assert!(matches!(&heard[0], Availability::Lost { message } if message.contains("refused")));
        assert!(matches!(heard[1], Availability::Regained { .. }));
    }

    #[test]
    fn the_callers_errors_say_nothing_of_the_store() {
        let health = StoreHealth::default();
        health.observe(&Err::<(), _>(Error::new(
            ErrorCode::ConnectionNotFound,
            "no such connection",
        )));
        assert!(health.up());
        assert_eq!(health.errors(), 0);
    }
}
