//! A request body that must arrive within a deadline. Without one, a client that sends
//! a head and then one body byte a second holds a request "in flight" until the request
//! timeout, and such connections can fill the cap. While the handler waits for body frames, the
//! connection's [`Activity`] knows the client is the slow one (it may be evicted at the
//! cap); past the deadline the body fails, the handler answers 400 in our error shape,
//! and hyper closes the connection (its body was not read whole).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

use super::activity::Activity;

/// The request body, failing once `deadline` has passed with frames still to come.
pub struct Reading {
    body: Incoming,
    /// None for a request without a body.
    activity: Option<Arc<Activity>>,
    /// Whether the handler is waiting for the client's next frame (then it counts in
    /// `Activity`: the connection is the client's to hold up, not the server's).
    waiting: bool,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
}

/// The error a body past its deadline ends with.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within the body-read timeout")
    }
}

impl std::error::Error for BodyTimedOut {}

impl Reading {
    /// `within`: from now (the head has been read) to the body's end.
    pub fn new(body: Incoming, activity: &Arc<Activity>, within: Duration) -> Self {
        let empty = body.is_end_stream();
        Self {
            body,
            activity: (!empty).then(|| activity.clone()),
            waiting: false,
            deadline: (!empty).then(|| Box::pin(tokio::time::sleep(within))),
            timed_out: false,
        }
    }

    fn waiting(&mut self, waiting: bool) {
        if self.waiting == waiting {
            return;
        }
        self.waiting = waiting;
        if let Some(activity) = &self.activity {
            if waiting {
                activity.body_started();
            } else {
                activity.body_done();
            }
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.waiting(false);
    }
}

impl Body for Reading {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.waiting(false);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let due = self
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !due {
                    self.waiting(true);
                    return Poll::Pending;
                }
                self.waiting(false);
                self.timed_out = true;
                Poll::Ready(Some(Err(BodyTimedOut.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
