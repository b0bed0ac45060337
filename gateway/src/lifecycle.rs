//! Graceful shutdown: serving → draining (no new requests, streams in flight go on) →
//! cancelling (what is left is cancelled and ends with a final frame) → stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// New requests are refused; running streams continue.
    Draining,
    /// Running streams are being cancelled.
    Cancelling,
}

/// The shared shutdown state and the count of requests in flight.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    inflight: AtomicUsize,
    idle: Notify,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Serving),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

impl Lifecycle {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// A receiver that sees every phase change.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Requests in flight (any transport).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Counts a new request in flight until the guard drops, unless shutdown has begun.
    /// Counting before checking the phase closes the race with [`Lifecycle::shut_down`]:
    /// either shutdown sees this request, or the request sees shutdown.
    pub fn try_enter(self: &Arc<Self>) -> Option<InflightGuard> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = InflightGuard(self.clone());
        (self.phase() == Phase::Serving).then_some(guard)
    }

    /// Moves to `phase` (never backwards).
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    /// Drains: refuses new work, waits up to `grace` for what is in flight, then cancels the
    /// rest and waits up to `cancel_wait` for it to end. Returns how many requests were
    /// cancelled and how many were still in flight at the end.
    pub async fn shut_down(&self, grace: Duration, cancel_wait: Duration) -> (usize, usize) {
        self.advance(Phase::Draining);
        let mut cancelled = 0;
        if !self.wait_idle(grace).await {
            cancelled = self.inflight();
        }
        // Always: whatever is still running now (or raced past the drain) is cancelled.
        self.advance(Phase::Cancelling);
        self.wait_idle(cancel_wait).await;
        (cancelled, self.inflight())
    }

    async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inflight() == 0;
            }
        }
    }
}

/// One request in flight.
#[derive(Debug)]
pub struct InflightGuard(Arc<Lifecycle>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_after_shutdown_began_are_refused_and_the_rest_waited_for() {
        let l = Arc::new(Lifecycle::default());
        let g = l.try_enter().unwrap();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                l.shut_down(Duration::from_secs(10), Duration::from_secs(1))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(l.phase(), Phase::Draining);
        assert!(l.try_enter().is_none(), "admitted while draining");
        assert_eq!(l.inflight(), 1, "a refused request is not counted");
        drop(g);
        assert_eq!(waiter.await.unwrap(), (0, 0));
        assert_eq!(l.phase(), Phase::Cancelling);
    }

    #[tokio::test]
    async fn what_outlives_the_grace_period_is_cancelled() {
        let l = Arc::new(Lifecycle::default());
        let g = l.try_enter().unwrap();
        let (cancelled, left) = l
            .shut_down(Duration::from_millis(10), Duration::from_millis(10))
            .await;
        assert_eq!((cancelled, left), (1, 1));
        drop(g);
        assert_eq!(l.inflight(), 0);
    }
}
