//! Hands what the engine broadcasts (connection events, log records) to a JS listener, from a
//! task of its own, until the instance closes.

use napi::bindgen_prelude::JsValuesTupleIntoVec;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use tokio::sync::broadcast;

/// A JS listener for `T`s: weak, so it never keeps the process alive.
pub type Listener<T> = ThreadsafeFunction<T, (), T, napi::Status, false, true>;

/// What can be handed to a JS listener.
pub trait ForJs: JsValuesTupleIntoVec + Send + 'static {}
impl<T: JsValuesTupleIntoVec + Send + 'static> ForJs for T {}

/// The task that forwards a broadcast to a JS listener, and how to end it.
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
    /// Ends the task once it has handed over everything already sent.
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Forwarder {
    /// Forwards each `S` the receiver gets, converted, to `listener`. A listener that falls more
    /// than the channel's buffer behind misses the oldest (it is told nothing: what it gets is
    /// still in order).
    pub fn start<S, T>(mut receiver: broadcast::Receiver<S>, listener: Listener<T>) -> Self
    where
        S: Clone + Send + 'static,
        T: From<S> + ForJs,
    {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let deliver = move |item: S| {
            listener.call(item.into(), ThreadsafeFunctionCallMode::NonBlocking);
        };
        let task = napi::bindgen_prelude::spawn(async move {
            loop {
                tokio::select! {
                    // Items first: those sent before close() asked to stop are all delivered.
                    biased;
                    received = receiver.recv() => match received {
                        Ok(item) => deliver(item),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = &mut stopped => {
                        while let Ok(item) = receiver.try_recv() {
                            deliver(item);
                        }
                        break;
                    }
                }
            }
        });
        Self { task, stop }
    }

    /// Hands over what was sent until now, then ends.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Ends at once (a newer listener replaces this one).
    pub fn abort(self) {
        self.task.abort();
    }
}
