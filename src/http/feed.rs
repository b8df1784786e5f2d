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

use tokio::sync::{Semaphore, broadcast, watch};

use crate::metrics::Metrics;
use crate::store::{Revocation, Store, StoreError};

/// Rows a read asks for at once.
pub const PAGE: i64 = 1000;
/// Batches a slow stream may fall behind before it re-reads the table itself.
const FANOUT_BUFFER: usize = 256;
/// Streams reading their own backlog at once (each read is one pooled connection).
const BACKLOG_READS: usize = 4;

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
    /// The highest `seq` the shared reader has read (or skipped: nobody was listening).
    read_up_to: AtomicI64,
    backlog_reads: Semaphore,
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

/// Why a new stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client has as many streams open as it may.
    Client,
    /// The instance has as many streams open as it may.
    Total,
    /// The instance is shutting down; another one will take the stream.
    ShuttingDown,
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
            backlog_reads: Semaphore::new(BACKLOG_READS),
            open: Mutex::new(OpenStreams::default()),
            closed: watch::channel(false).0,
        })
    }

    /// Takes a place for a new stream of `client_id`, if both caps allow it.
    pub fn admit(self: &Arc<Self>, client_id: &str) -> Result<StreamSlot, Refused> {
        if *self.closed.borrow() {
            return Err(Refused::ShuttingDown);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.total {
            return Err(Refused::Total);
        }
        let mine = open.per_client.get(client_id).copied().unwrap_or(0);
        if mine >= self.limits.per_client {
            return Err(Refused::Client);
        }
        open.per_client.insert(client_id.to_owned(), mine + 1);
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

    /// One page of feed rows after `after` whose tokens may still be unexpired at `now`.
    pub async fn read_page(&self, after: i64, now: i64) -> Result<Vec<Revocation>, StoreError> {
        self.metrics.feed_reads.inc();
        self.store.revocations_after(after, now, PAGE).await
    }

    /// The shared reader: runs for the life of the server. A burst of announcements
    /// (one per ended session, e.g. a user's twenty sessions) is one read.
    pub async fn run(self: Arc<Self>) {
        let mut announced = self.store.subscribe_revocations();
        let mut closed = self.closed.subscribe();
        // Start at the end of the feed: streams read their own backlogs.
        let mut started = false;
        loop {
            if !started {
                match self.store.revocations_max_seq().await {
                    Ok(max) => {
                        self.read_up_to.fetch_max(max, Ordering::AcqRel);
                        started = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the revocation feed's end failed; retrying")
                    }
                }
            }
            // An announcement is a wake-up and nothing more: its payload is never
            // trusted (on PostgreSQL any role that can connect may `NOTIFY` on the
            // channel), and what streams get is read from the table.
            let mut woken = false;
            tokio::select! {
                _ = closed.changed() => return,
                () = tokio::time::sleep(self.resync) => {}
                received = announced.recv() => {
                    let mut received = Some(received);
                    while let Some(r) = received.take() {
                        match r {
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => woken = true,
                            Err(broadcast::error::RecvError::Closed) => {
                                announced = self.store.subscribe_revocations();
                                break;
                            }
                        }
                        received = match announced.try_recv() {
                            Ok(r) => Some(Ok(r)),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                            Err(_) => None,
                        };
                    }
                }
            }
            if !started {
                continue;
            }
            // With no stream open there is nobody to read for: a stream that opens later
            // reads its own backlog, so the reader only moves its position to the
            // table's end (every row up to it is committed: the feed's order is commit
            // order), as the table says, not as the announcement does. The end is read
            // before the streams are counted: a stream that opens after the count reads
            // its backlog after the end was read, so it sees every row skipped here.
            if self.batches.receiver_count() == 0 {
                if !woken {
                    continue;
                }
                match self.store.revocations_max_seq().await {
                    Ok(max) if self.batches.receiver_count() == 0 => {
                        self.read_up_to.fetch_max(max, Ordering::AcqRel);
                        continue;
                    }
                    // A stream opened meanwhile: read for it.
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the revocation feed's end failed");
                        continue;
                    }
                }
            }
            self.read_to_end().await;
        }
    }

    /// Reads past `read_up_to` page by page and fans each page out.
    async fn read_to_end(&self) {
        loop {
            let after = self.read_up_to.load(Ordering::Acquire);
            match self.read_page(after, crate::http::extract::now()).await {
                Ok(rows) => {
                    let full = rows.len() as i64 == PAGE;
                    if let Some(last) = rows.last() {
                        self.read_up_to.fetch_max(last.seq, Ordering::AcqRel);
                        let _ = self.batches.send(rows.into());
                    }
                    if !full {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the revocation feed failed; retrying at the next announcement or resync");
                    return;
                }
            }
        }
    }

    /// A stream's view of the feed, starting after `after`. It joins the fan-out before
    /// reading its backlog, so nothing committed between the two is missed.
    pub fn subscribe(self: &Arc<Self>, slot: StreamSlot, after: i64) -> Subscriber {
        Subscriber {
            hub: self.clone(),
            batches: self.batches.subscribe(),
            closed: self.closed.subscribe(),
            pending: VecDeque::new(),
            last_seq: after,
            catching_up: true,
            _slot: slot,
        }
    }
}

/// One stream's position in the feed. Rows wait in the shared batches they came in
/// (no copy per stream); rows at or below `last_seq` are skipped, so a row seen both
/// in the backlog and in a batch goes out once.
pub struct Subscriber {
    hub: Arc<FeedHub>,
    batches: broadcast::Receiver<Arc<[Revocation]>>,
    closed: watch::Receiver<bool>,
    pending: VecDeque<(Arc<[Revocation]>, usize)>,
    last_seq: i64,
    /// Reading its own backlog from the table, a page at a time, before it follows the
    /// fan-out: when it opens, and after it fell too far behind.
    catching_up: bool,
    _slot: StreamSlot,
}

impl Subscriber {
    /// The next unsent row already received.
    fn pop(&mut self) -> Option<Revocation> {
        while let Some((batch, at)) = self.pending.front_mut() {
            let Some(r) = batch.get(*at) else {
                self.pending.pop_front();
                continue;
            };
            *at += 1;
            if r.seq > self.last_seq {
                self.last_seq = r.seq;
                return Some(r.clone());
            }
        }
        None
    }

    /// One page of backlog after `last_seq`, behind the hub's gate so that many
    /// streams reconnecting at once (a restart) do not take the whole pool. Batches
    /// that arrive meanwhile are dropped: their rows are committed, so the next page
    /// reads them. A short page ends the catch-up; a failed read is retried.
    async fn catch_up(&mut self) {
        let Ok(_turn) = self.hub.backlog_reads.acquire().await else {
            return;
        };
        match self
            .hub
            .read_page(self.last_seq, crate::http::extract::now())
            .await
        {
            Ok(rows) => {
                self.catching_up = rows.len() as i64 == PAGE;
                self.pending.clear();
                self.pending.push_back((rows.into(), 0));
            }
            Err(e) => tracing::warn!(error = %e, "reading a stream's revocation backlog failed"),
        }
    }

    /// The next entry in `seq` order, or `None` when the server is shutting down.
    pub async fn next(&mut self) -> Option<Revocation> {
        let mut failed_reads = 0u32;
        loop {
            if *self.closed.borrow() {
                return None;
            }
            if let Some(r) = self.pop() {
                return Some(r);
            }
            if self.catching_up {
                if failed_reads > 0 {
                    tokio::select! {
                        _ = self.closed.changed() => return None,
                        () = tokio::time::sleep(self.hub.resync) => {}
                    }
                }
                // Whatever the fan-out delivered so far is covered by the read.
                while !matches!(
                    self.batches.try_recv(),
                    Err(broadcast::error::TryRecvError::Empty
                        | broadcast::error::TryRecvError::Closed)
                ) {}
                self.catch_up().await;
                failed_reads = if self.pending.is_empty() {
                    failed_reads + 1
                } else {
                    0
                };
                continue;
            }
            tokio::select! {
                _ = self.closed.changed() => return None,
                received = self.batches.recv() => match received {
                    Ok(batch) => self.pending.push_back((batch, 0)),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}
