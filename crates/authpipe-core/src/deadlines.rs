//! Expiry deadlines for the JS memo. The memo never reads a clock (that would cost more than
//! the rest of a warm `getCredential`); instead, one task per engine bumps a connection's
//! generation shortly before its token expires, and the memo's next check misses. Serving
//! from Rust, the engine checks expiry exactly, so the margin only has to cover timer lag.

use crate::clock::Clock;
use crate::generations::Generations;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long before expiry the memo stops serving a token.
pub const EXPIRY_MARGIN_MS: i64 = 1_000;

/// The deadline task of one engine; stops when dropped.
#[derive(Debug)]
pub struct Deadlines {
    tx: mpsc::UnboundedSender<(i64, u32, u32)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Deadlines {
    /// Starts the task on the current tokio runtime.
    pub fn start(generations: Arc<Generations>, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            task: tokio::spawn(run(rx, generations, clock)),
        }
    }

    /// Invalidates `slot` at `expires_at_ms - EXPIRY_MARGIN_MS`, unless it changed meanwhile
    /// (its generation is no longer `generation`).
    pub fn watch(&self, expires_at_ms: i64, slot: u32, generation: u32) {
        let _ = self
            .tx
            .send((expires_at_ms - EXPIRY_MARGIN_MS, slot, generation));
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<(i64, u32, u32)>,
    generations: Arc<Generations>,
    clock: Arc<dyn Clock>,
) {
    // (due at, slot, generation), earliest first: one timer for all connections.
    let mut due: BTreeSet<(i64, u32, u32)> = BTreeSet::new();
    loop {
        let wait = match due.first() {
            Some(&(at, _, _)) => Duration::from_millis((at - clock.now_ms()).max(0) as u64),
            None => Duration::from_secs(24 * 3600),
        };
        tokio::select! {
            message = rx.recv() => match message {
                Some(deadline) => { due.insert(deadline); }
                None => return,
            },
            () = tokio::time::sleep(wait) => {
                let now = clock.now_ms();
                while let Some(&(at, slot, generation)) = due.first() {
                    if at > now {
                        break;
                    }
                    due.pop_first();
                    if generations.current(slot) == generation {
                        generations.bump(slot);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test(start_paused = true)]
    async fn bumps_a_slot_just_before_expiry_unless_it_changed() {
        let generations = Arc::new(Generations::default());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let deadlines = Deadlines::start(generations.clone(), clock.clone());
        let (a, gen_a) = generations.allocate();
        let (b, gen_b) = generations.allocate();
        deadlines.watch(1_010_000, a, gen_a);
        deadlines.watch(1_010_000, b, gen_b);
        generations.bump(b); // b changed (say, refreshed) before its old deadline

        let step = |ms: i64| {
            clock.advance(ms);
            tokio::time::advance(Duration::from_millis(ms as u64))
        };
        // Due at 1_010_000 - EXPIRY_MARGIN_MS: one millisecond before that, nothing happens.
        step(10_000 - EXPIRY_MARGIN_MS - 1).await;
        tokio::task::yield_now().await;
        assert_eq!(generations.current(a), gen_a, "not yet due");
        step(1).await;
        tokio::task::yield_now().await;
        assert_eq!(
            generations.current(a),
            gen_a + 1,
            "invalidated {EXPIRY_MARGIN_MS} ms before expiry"
        );
        assert_eq!(
            generations.current(b),
            gen_b + 1,
            "a changed slot is left alone"
        );
    }
}
