//! The live revocation feed behind `GET /v1/revocations` streams: one reader per
//! instance reads the table when a revocation is announced (or every resync period)
//! and fans the rows out to every open stream, so a thousand streams cost one store
//! read per revocation, not a thousand. Streams are capped per client and in total:
//! each holds a connection and a place in the fan-out, and a client that opens them
//! without end would otherwise take the instance's memory and file descriptors.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::store::{Revocation, Store, StoreError};

/// Rows a read asks for at once.
pub const PAGE: i64 = 1000;
/// Batches a slow stream may fall behind before it re-reads the table itself.
const FANOUT_BUFFER: usize = 256;

/// How many streams may be open.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub per_client: usize,
    pub total: usize,
}

pub struct FeedHub {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limits: StreamLimits,
    resync: Duration,
    batches: broadcast::Sender<Arc<[Revocation]>>,
    /// The highest `seq` the shared reader has read.
    read_up_to: AtomicI64,
    open: Mutex<OpenStreams>,
    closed: watch::Sender<bool>,
}

#[derive(Default)]
struct OpenStreams {
    total: usize,
    per_client: HashMap<String, usize>,
}

/// A stream's place, given back when the stream ends (the client hung up, or the
/// server is shutting down).
pub struct StreamSlot {
    hub: Arc<FeedHub>,
    client_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.hub.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.client_id) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client_id);
            }
        }
        self.hub.metrics.feed_streams.set(open.total as i64);
    }
}

/// Which cap a new stream would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    Client,
    Total,
}

impl FeedHub {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limits: StreamLimits,
        resync: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            limits,
            resync,
            batches: broadcast::channel(FANOUT_BUFFER).0,
            read_up_to: AtomicI64::new(0),
            open: Mutex::new(OpenStreams::default()),
            closed: watch::channel(false).0,
        })
    }

    /// Takes a place for a new stream of `client_id`, if both caps allow it.
    pub fn admit(self: &Arc<Self>, client_id: &str) -> Result<StreamSlot, OverCap> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.total {
            return Err(OverCap::Total);
        }
        let mine = open.per_client.entry(client_id.to_owned()).or_default();
        if *mine >= self.limits.per_client {
            return Err(OverCap::Client);
        }
        *mine += 1;
        open.total += 1;
        self.metrics.feed_streams.set(open.total as i64);
        Ok(StreamSlot {
            hub: self.clone(),
            client_id: client_id.to_owned(),
        })
    }

    /// Ends every stream (shutdown), so in-flight connections can finish.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Feed rows after `after` whose tokens may still be unexpired at `now`, every page.
    pub async fn read_after(
        &self,
        after: i64,
        now: i64,
        max_pages: usize,
    ) -> Result<Vec<Revocation>, StoreError> {
        let mut rows = Vec::new();
        let mut cursor = after;
        for _ in 0..max_pages {
            self.metrics.feed_reads.inc();
            let page = self.store.revocations_after(cursor, now, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            cursor = page.last().map_or(cursor, |r| r.seq);
            rows.extend(page);
            if !full {
                break;
            }
        }
        Ok(rows)
    }

    /// The shared reader: runs for the life of the server. A burst of announcements
    /// (one per ended session, e.g. a user's twenty sessions) is one read.
    pub async fn run(self: Arc<Self>) {
        let mut announced = self.store.subscribe_revocations();
        let mut closed = self.closed.subscribe();
        loop {
            tokio::select! {
                _ = closed.changed() => return,
                () = tokio::time::sleep(self.resync) => {}
                received = announced.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = received {
                        announced = self.store.subscribe_revocations();
                    }
                    while announced.try_recv().is_ok() {}
                }
            }
            // With no stream open there is nobody to read for; a stream that opens
            // later reads its own backlog.
            if self.batches.receiver_count() == 0 {
                continue;
            }
            let after = self.read_up_to.load(Ordering::Acquire);
            match self
                .read_after(after, crate::http::extract::now(), usize::MAX)
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    let last = rows.last().map_or(after, |r| r.seq);
                    self.read_up_to.store(last, Ordering::Release);
                    let _ = self.batches.send(rows.into());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the revocation feed failed; retrying at the next announcement or resync")
                }
            }
        }
    }

    /// A stream's view of the feed, starting after `after`. It joins the fan-out before
    /// reading its backlog, so nothing committed between the two is missed (rows seen
    /// twice are skipped by `seq`).
    pub fn subscribe(self: &Arc<Self>, slot: StreamSlot, after: i64) -> Subscriber {
        Subscriber {
            hub: self.clone(),
            batches: self.batches.subscribe(),
            closed: self.closed.subscribe(),
            pending: VecDeque::new(),
            last_seq: after,
            backlog_read: false,
            _slot: slot,
        }
    }
}

/// One stream's position in the feed.
pub struct Subscriber {
    hub: Arc<FeedHub>,
    batches: broadcast::Receiver<Arc<[Revocation]>>,
    closed: watch::Receiver<bool>,
    pending: VecDeque<Revocation>,
    last_seq: i64,
    backlog_read: bool,
    _slot: StreamSlot,
}

impl Subscriber {
    /// Reads the table past what this stream has seen: its backlog when it opens, or
    /// after it fell too far behind the fan-out. On a store error it waits for the next
    /// batch and tries again.
    async fn catch_up(&mut self) {
        let after = self.pending.back().map_or(self.last_seq, |r| r.seq);
        match self
            .hub
            .read_after(after, crate::http::extract::now(), usize::MAX)
            .await
        {
            Ok(rows) => {
                self.pending.extend(rows);
                self.backlog_read = true;
            }
            Err(e) => tracing::warn!(error = %e, "reading a stream's revocation backlog failed"),
        }
    }

    /// The next entry in `seq` order, or `None` when the server is shutting down.
    pub async fn next(&mut self) -> Option<Revocation> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            if !self.backlog_read {
                self.catch_up().await;
            }
            while let Some(r) = self.pending.pop_front() {
                if r.seq > self.last_seq {
                    self.last_seq = r.seq;
                    return Some(r);
                }
            }
            tokio::select! {
                _ = self.closed.changed() => return None,
                // A backlog read that failed is tried again.
                () = tokio::time::sleep(self.hub.resync), if !self.backlog_read => {}
                received = self.batches.recv() => match received {
                    Ok(batch) => self.pending.extend(batch.iter().filter(|r| r.seq > self.last_seq).cloned()),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.backlog_read = false,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}
