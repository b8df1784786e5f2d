//! A request body that must arrive within a deadline. Without one, a client that sends
//! a head and then one body byte a second holds a request "in flight" until the request
//! timeout, and such connections can fill the cap. While the body is awaited, the
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
    /// Set while the body is still to be read whole (then it counts in `Activity`).
    activity: Option<Arc<Activity>>,
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
    pub fn new(body: Incoming, activity: &Arc<Activity>, within: Duration) -> Self {
        if body.is_end_stream() {
            return Self {
                body,
                activity: None,
                deadline: None,
                timed_out: false,
            };
        }
        activity.body_started();
        Self {
            body,
            activity: Some(activity.clone()),
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            timed_out: false,
        }
    }

    fn done(&mut self) {
        if let Some(activity) = self.activity.take() {
            activity.body_done();
        }
        self.deadline = None;
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.done();
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
            Poll::Ready(Some(Ok(frame))) => {
                if self.body.is_end_stream() {
                    self.done();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.done();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let due = self
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !due {
                    return Poll::Pending;
                }
                self.done();
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
