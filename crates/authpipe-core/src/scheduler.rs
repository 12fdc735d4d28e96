//! One timer queue per engine, for everything that must happen at a time: invalidating JS
//! memos before a token goes stale, proactive refreshes, health probes, store housekeeping. A single task sleeps
//! until the earliest job is due (no polling, no task per connection), runs invalidations
//! inline and hands refreshes and probes to a [`Runner`].

use crate::clock::Clock;
use crate::generations::Generations;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Bump `slot` unless it changed since `generation` (memos then miss).
    Invalidate { slot: u32, generation: u32 },
    /// Refresh the connection with this cache key (if it is still due).
    Refresh(String),
    /// Probe the connection's health.
    Check(String),
    /// Drop ended connect flows and sessions from the store (and schedule the next time).
    PruneEnded,
    /// Tenant-key maintenance: unfinished rotations, the format migration, the rotation policy.
    TenantKeys,
}

/// Runs the jobs the timer task does not run itself.
pub trait Runner: Send + Sync + 'static {
    fn run(self: Arc<Self>, job: Job);
}

/// The timer task of one engine; stops when dropped.
#[derive(Debug)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<(i64, Job)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scheduler {
    /// Starts the task on the current tokio runtime. It holds the runner weakly, so an engine
    /// that owns its scheduler is still dropped when its last user lets go.
    pub fn start(
        generations: Arc<Generations>,
        clock: Arc<dyn Clock>,
        runner: Weak<dyn Runner>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            task: tokio::spawn(run(rx, generations, clock, runner)),
        }
    }

    /// Runs `job` at `due_ms` (at once if that has passed).
    pub fn at(&self, due_ms: i64, job: Job) {
        let _ = self.tx.send((due_ms, job));
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<(i64, Job)>,
    generations: Arc<Generations>,
    clock: Arc<dyn Clock>,
    runner: Weak<dyn Runner>,
) {
    // (due, sequence) -> job: earliest first, ties in arrival order.
    let mut due: BTreeMap<(i64, u64), Job> = BTreeMap::new();
    let mut sequence = 0u64;
    loop {
        let wait = match due.first_key_value() {
            Some((&(at, _), _)) => Duration::from_millis((at - clock.now_ms()).max(0) as u64),
            None => Duration::from_secs(24 * 3600),
        };
        tokio::select! {
            message = rx.recv() => match message {
                Some((at, job)) => {
                    sequence += 1;
                    due.insert((at, sequence), job);
                    // Take everything already queued before sleeping again: opening a store
                    // schedules two jobs per connection at once.
                    while let Ok((at, job)) = rx.try_recv() {
                        sequence += 1;
                        due.insert((at, sequence), job);
                    }
                }
                None => return,
            },
            () = tokio::time::sleep(wait) => {
                let now = clock.now_ms();
                while let Some(entry) = due.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    match entry.remove() {
                        Job::Invalidate { slot, generation } => {
                            if generations.current(slot) == generation {
                                generations.bump(slot);
                            }
                        }
                        job => match runner.upgrade() {
                            Some(runner) => runner.run(job),
                            None => return,
                        },
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
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Job>>);

    impl Runner for Recorder {
        fn run(self: Arc<Self>, job: Job) {
            self.0.lock().push(job);
        }
    }

    struct Fixture {
        generations: Arc<Generations>,
        clock: Arc<ManualClock>,
        recorder: Arc<Recorder>,
        scheduler: Scheduler,
    }

    fn fixture() -> Fixture {
        let generations = Arc::new(Generations::default());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let recorder = Arc::new(Recorder::default());
        let weak: Weak<dyn Runner> = Arc::downgrade(&(recorder.clone() as Arc<dyn Runner>));
        let scheduler = Scheduler::start(generations.clone(), clock.clone(), weak);
        Fixture {
            generations,
            clock,
            recorder,
            scheduler,
        }
    }

    impl Fixture {
        /// Moves both the engine clock and tokio's paused clock, then lets the task run.
        async fn advance(&self, ms: i64) {
            self.clock.advance(ms);
            tokio::time::advance(Duration::from_millis(ms as u64)).await;
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn invalidates_a_slot_when_due_unless_it_changed() {
        let f = fixture();
        let (a, gen_a) = f.generations.allocate();
        let (b, gen_b) = f.generations.allocate();
        f.scheduler.at(
            1_010_000,
            Job::Invalidate {
                slot: a,
                generation: gen_a,
            },
        );
        f.scheduler.at(
            1_010_000,
            Job::Invalidate {
                slot: b,
                generation: gen_b,
            },
        );
        f.generations.bump(b); // b changed (say, refreshed) before its old deadline
        f.advance(9_999).await;
        assert_eq!(f.generations.current(a), gen_a, "not yet due");
        f.advance(1).await;
        assert_eq!(f.generations.current(a), gen_a + 1);
        assert_eq!(
            f.generations.current(b),
            gen_b + 1,
            "a changed slot is left alone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hands_jobs_to_the_runner_in_due_order() {
        let f = fixture();
        f.scheduler.at(1_000_300, Job::Check("c".into()));
        f.scheduler.at(1_000_100, Job::Refresh("a".into()));
        f.scheduler.at(1_000_100, Job::Refresh("b".into()));
        f.scheduler.at(900_000, Job::Refresh("overdue".into()));
        f.advance(0).await;
        assert_eq!(*f.recorder.0.lock(), [Job::Refresh("overdue".into())]);
        f.advance(100).await;
        f.advance(199).await;
        assert_eq!(f.recorder.0.lock().len(), 3);
        f.advance(1).await;
        assert_eq!(
            *f.recorder.0.lock(),
            [
                Job::Refresh("overdue".into()),
                Job::Refresh("a".into()),
                Job::Refresh("b".into()),
                Job::Check("c".into())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_the_runner_is_gone() {
        let f = fixture();
        f.scheduler.at(1_000_001, Job::Refresh("x".into()));
        let Fixture {
            recorder,
            clock,
            scheduler,
            ..
        } = f;
        drop(recorder);
        clock.advance(5);
        tokio::time::advance(Duration::from_millis(5)).await;
        tokio::task::yield_now().await;
        assert!(scheduler.task.is_finished());
    }
}
