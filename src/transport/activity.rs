//! What one connection is doing, and when it has been slow or idle for too long.
//!
//! hyper 1.x has one timer for this (`header_read_timeout`), and it also runs while a
//! kept-alive connection waits for its next request, so it cannot tell a slow header
//! from an idle connection. We keep both apart, as Go's `net/http` does: a new
//! connection has `header_read` to send its first request head; between requests a
//! connection may stay silent for `idle`, and once the next request's first byte has
//! arrived its head must be complete within `header_read`. While a request is in flight
//! (from its head to the end of its response body, e.g. a revocation stream) nothing
//! times out here, except a response the client stops reading: a write that cannot
//! progress for `idle` closes the connection too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The limits a connection lives under.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    /// From a request's head to the end of its body (see `body::Reading`).
    pub body_read: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in flight since `since` (the accept, or the end of the last response).
    Waiting {
        since: Instant,
        first_byte: Option<Instant>,
        first_request: bool,
    },
    Busy(usize),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    write_stalled_since: Option<Instant>,
    /// Requests in flight whose body is still awaited from the client: while every
    /// request in flight is one of them, the client, not the server, is what is slow,
    /// and the connection may be evicted like an idle one.
    reading_bodies: usize,
    /// Closed to make room for a new connection (see `Open::evict_one`).
    evicted: bool,
    /// The new connection that gets this one's slot when it closes.
    heir: Option<Heir>,
}

/// Where an evicted connection hands its slot: straight to the connection that evicted
/// it, so that no other newcomer can take it in between.
pub type Heir = tokio::sync::oneshot::Sender<tokio::sync::OwnedSemaphorePermit>;

/// Shared by the connection's I/O, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    /// Set while waiting for the next request's first byte: the read path then takes
    /// the lock once, not on every read.
    awaiting_byte: AtomicBool,
    changed: Notify,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                phase: Phase::Waiting {
                    since: Instant::now(),
                    first_byte: None,
                    first_request: true,
                },
                write_stalled_since: None,
                reading_bodies: 0,
                evicted: false,
                heir: None,
            }),
            awaiting_byte: AtomicBool::new(true),
            changed: Notify::new(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_one();
    }

    /// A request head has been read: held until its response body is done or dropped.
    /// (On a connection just evicted, the request dies with the connection: the client
    /// sees it closed before any answer, as with any closed keep-alive connection.)
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.awaiting_byte.store(false, Ordering::Relaxed);
        self.update(|s| {
            s.phase = match s.phase {
                Phase::Waiting { .. } => Phase::Busy(1),
                Phase::Busy(n) => Phase::Busy(n + 1),
            };
        });
        InFlight(self.clone())
    }

    fn end(&self) {
        let mut waiting = false;
        self.update(|s| {
            s.phase = match s.phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => {
                    waiting = true;
                    Phase::Waiting {
                        since: Instant::now(),
                        first_byte: None,
                        first_request: false,
                    }
                }
            };
        });
        if waiting {
            self.awaiting_byte.store(true, Ordering::Relaxed);
        }
    }

    /// A handler waits for the client's next body frame; [`Self::body_done`] once a
    /// frame (or the end, or an error) has come, or the body is dropped.
    pub(super) fn body_started(&self) {
        self.update(|s| s.reading_bodies += 1);
    }

    pub(super) fn body_done(&self) {
        self.update(|s| s.reading_bodies = s.reading_bodies.saturating_sub(1));
    }

    pub(super) fn read_some(&self) {
        if self.awaiting_byte.swap(false, Ordering::Relaxed) {
            self.update(|s| {
                if let Phase::Waiting { first_byte, .. } = &mut s.phase {
                    first_byte.get_or_insert_with(Instant::now);
                }
            });
        }
    }

    pub(super) fn write_stalled(&self, stalled: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match (stalled, state.write_stalled_since) {
            (true, None) => {
                state.write_stalled_since = Some(Instant::now());
                drop(state);
                self.changed.notify_one();
            }
            (false, Some(_)) => state.write_stalled_since = None,
            _ => {}
        }
    }

    /// Marks the connection for closing if no request is in flight on it, or only
    /// requests whose body the client has not finished sending; checked and set under
    /// one lock, so a request being served is never cut.
    /// `heir` (taken when evicted) receives the slot once the connection has closed.
    pub fn evict_if_waiting(&self, heir: &mut Option<Heir>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let serving = matches!(state.phase, Phase::Busy(n) if state.reading_bodies < n);
        if state.evicted || serving {
            return false;
        }
        state.evicted = true;
        state.heir = heir.take();
        drop(state);
        self.changed.notify_one();
        true
    }

    /// Who gets this connection's slot, if it was evicted.
    pub fn take_heir(&self) -> Option<Heir> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .heir
            .take()
    }

    pub fn is_evicted(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evicted
    }

    #[cfg(test)]
    pub fn is_waiting(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        !state.evicted && matches!(state.phase, Phase::Waiting { .. })
    }

    /// When this connection is due to be closed, if it is.
    fn deadline(&self, t: Timeouts) -> Option<Instant> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.evicted {
            return Some(Instant::now());
        }
        let waiting = match state.phase {
            Phase::Busy(_) => None,
            Phase::Waiting {
                since,
                first_request: true,
                ..
            } => Some(since + t.header_read),
            Phase::Waiting {
                since,
                first_byte,
                first_request: false,
            } => Some(first_byte.map_or(since + t.idle, |b| b + t.header_read)),
        };
        let stalled = state.write_stalled_since.map(|s| s + t.idle);
        match (waiting, stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Resolves once the connection has been slow or idle past its limits.
    pub async fn expired(&self, t: Timeouts) {
        loop {
            match self.deadline(t) {
                Some(due) if due <= Instant::now() => return,
                Some(due) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        body_read: Duration::from_secs(10),
    };

    fn phase(a: &Activity) -> Phase {
        a.state.lock().unwrap().phase
    }

    fn since(a: &Activity) -> Instant {
        match phase(a) {
            Phase::Waiting { since, .. } => since,
            Phase::Busy(_) => panic!("busy"),
        }
    }

    #[tokio::test]
    async fn a_new_connection_has_the_header_timeout_for_its_first_head() {
        let a = Activity::new();
        let opened = since(&a);
        assert_eq!(a.deadline(T), Some(opened + T.header_read));
        a.read_some();
        assert_eq!(
            a.deadline(T),
            Some(opened + T.header_read),
            "bytes do not extend it"
        );
    }

    #[tokio::test]
    async fn nothing_expires_while_a_request_is_in_flight() {
        let a = Activity::new();
        let first = a.begin();
        let second = a.begin();
        assert_eq!(a.deadline(T), None);
        drop(first);
        assert_eq!(a.deadline(T), None, "one still in flight");
        drop(second);
        assert_eq!(
            a.deadline(T),
            Some(since(&a) + T.idle),
            "idle from the end of the response"
        );
    }

    #[tokio::test]
    async fn between_requests_the_header_timeout_runs_from_the_first_byte() {
        let a = Activity::new();
        drop(a.begin());
        a.read_some();
        let Phase::Waiting {
            first_byte: Some(byte),
            ..
        } = phase(&a)
        else {
            panic!("the first byte is noted");
        };
        assert_eq!(a.deadline(T), Some(byte + T.header_read));
    }

    #[tokio::test]
    async fn a_stalled_write_expires_after_idle_even_in_flight() {
        let a = Activity::new();
        let _request = a.begin();
        a.write_stalled(true);
        let stalled = a.state.lock().unwrap().write_stalled_since.unwrap();
        a.write_stalled(true);
        assert_eq!(
            a.deadline(T),
            Some(stalled + T.idle),
            "from the first stall"
        );
        a.write_stalled(false);
        assert_eq!(a.deadline(T), None);
    }

    #[tokio::test]
    async fn only_a_connection_without_a_request_in_flight_is_evicted() {
        let a = Activity::new();
        let request = a.begin();
        let (heir, mut slot) = tokio::sync::oneshot::channel();
        let mut heir = Some(heir);
        assert!(
            !a.evict_if_waiting(&mut heir),
            "a request in flight is never cut"
        );
        assert!(heir.is_some(), "and the heir is kept for another");
        drop(request);
        assert!(a.is_waiting());
        assert!(a.evict_if_waiting(&mut heir));
        assert!(
            !a.is_waiting() && !a.evict_if_waiting(&mut None),
            "evicted once"
        );
        assert!(a.deadline(T).is_some_and(|d| d <= Instant::now()));
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        assert!(a.take_heir().unwrap().send(permit).is_ok());
        assert!(slot.try_recv().is_ok(), "the slot went to the heir");
    }

    #[tokio::test]
    async fn a_request_whose_body_is_awaited_can_be_evicted() {
        let a = Activity::new();
        let request = a.begin();
        a.body_started();
        assert!(a.evict_if_waiting(&mut None), "the client is the slow one");
        let b = Activity::new();
        let _request = b.begin();
        b.body_started();
        b.body_done();
        assert!(
            !b.evict_if_waiting(&mut None),
            "the body is in: being served"
        );
        drop(request);
    }

    #[tokio::test]
    async fn expired_resolves_once_the_deadline_has_passed() {
        let a = Activity::new();
        let none = Timeouts {
            header_read: Duration::ZERO,
            idle: Duration::ZERO,
            body_read: Duration::ZERO,
        };
        a.expired(none).await;
    }
}
