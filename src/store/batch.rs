//! Batched rotations (PostgreSQL): refreshes that arrive while the database is busy
//! ride together in one statement over arrays, so one round trip and one commit carry
//! many of them. Nothing waits for a batch to fill: a worker takes whatever is queued
//! the moment it is free, so a lone refresh goes alone, at once.
//!
//! Each rotation keeps its own rules and its own winner: the batch is the single-row
//! update of `sessions::pg::ROTATE` joined to the arrays, one session at most once per
//! batch (a second refresh of a session waits for the next), sessions in id order so two
//! batches never wait on each other's rows in opposite orders.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{Rotated, StoreError};

/// One plain rotation: a bearer refresh of a session-row token asking for the whole
/// scope (anything else goes through the single statement).
#[derive(Debug)]
pub(crate) struct Plain {
    pub session_id: Uuid,
    pub generation: i64,
    pub hash: Vec<u8>,
    pub successor: Vec<u8>,
    pub sealed: Vec<u8>,
    pub now: i64,
    pub ttl_secs: i64,
    pub client_id: String,
    pub ip: Option<String>,
    pub agent: Option<i64>,
    pub dpop_jkt: Option<String>,
}

type Reply = oneshot::Sender<Result<Option<Rotated>, StoreError>>;

/// The queue rotations wait in, and the workers that take them.
pub(crate) struct Batcher {
    queue: mpsc::Sender<(Plain, Reply)>,
}

/// The batch statement: `pg::ROTATE`'s update, one row of the arrays per rotation.
const ROTATE_BATCH: &str = "
UPDATE sessions AS s
   SET generation = s.generation + 1, token_hash = i.successor,
       token_issued_at = GREATEST(i.now, floor(extract(epoch FROM clock_timestamp()))::bigint),
       token_expires_at = LEAST(i.now + i.ttl, s.expires_at),
       last_used_at = GREATEST(i.now, floor(extract(epoch FROM clock_timestamp()))::bigint),
       prev_hash = s.token_hash, prev_sealed = i.sealed, prev_replays = 0,
       prev_ip = i.ip, prev_agent = i.agent
  FROM unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bigint[],
              $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[])
         AS i(id, generation, hash, successor, sealed, now, ttl, client_id, ip, agent, jkt),
       users AS u
 WHERE s.id = i.id AND s.generation = i.generation AND s.token_hash = i.hash
   AND s.token_expires_at > i.now AND s.revoked_at IS NULL AND s.expires_at > i.now
   AND u.id = s.user_id AND u.disabled_at IS NULL
   AND s.client_id = i.client_id
   AND (s.dpop_jkt IS NULL OR s.dpop_jkt = i.jkt)
RETURNING s.id AS session_id, s.user_id, s.client_id, s.scope,
          s.token_expires_at AS expires_at, u.roles";

impl Batcher {
    /// `workers` batches in flight at most, each of at most `max` rotations.
    pub(crate) fn start(pool: PgPool, workers: usize, max: usize) -> Arc<Self> {
        let (queue, rx) = mpsc::channel::<(Plain, Reply)>(4096);
        let rx = Arc::new(Mutex::new(Taken {
            rx,
            deferred: Vec::new(),
        }));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(pool.clone(), rx.clone(), max.max(1)));
        }
        Arc::new(Self { queue })
    }

    /// Rotates `plain` in the next batch: `None` when it was refused (the rules judge
    /// why, as for the single statement).
    pub(crate) async fn rotate(&self, plain: Plain) -> Result<Option<Rotated>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((plain, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The workers' end of the queue, and rotations held back for the next batch because
/// theirs already had their session.
struct Taken {
    rx: mpsc::Receiver<(Plain, Reply)>,
    deferred: Vec<(Plain, Reply)>,
}

fn gone() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

async fn work(pool: PgPool, taken: Arc<Mutex<Taken>>, max: usize) {
    loop {
        let batch = {
            let mut taken = taken.lock().await;
            let mut batch: Vec<(Plain, Reply)> = Vec::with_capacity(max);
            for job in std::mem::take(&mut taken.deferred) {
                if batch.len() < max {
                    admit(&mut batch, &mut taken.deferred, job);
                } else {
                    taken.deferred.push(job);
                }
            }
            if batch.is_empty() {
                match taken.rx.recv().await {
                    Some(job) => batch.push(job),
                    None => return,
                }
            }
            while batch.len() < max {
                match taken.rx.try_recv() {
                    Ok(job) => admit(&mut batch, &mut taken.deferred, job),
                    Err(_) => break,
                }
            }
            batch
        };
        run(&pool, batch).await;
    }
}

/// Adds `job` to the batch unless the batch already rotates its session.
fn admit(batch: &mut Vec<(Plain, Reply)>, deferred: &mut Vec<(Plain, Reply)>, job: (Plain, Reply)) {
    if batch.iter().any(|(p, _)| p.session_id == job.0.session_id) {
        deferred.push(job);
    } else {
        batch.push(job);
    }
}

async fn run(pool: &PgPool, mut batch: Vec<(Plain, Reply)>) {
    batch.sort_by_key(|(p, _)| p.session_id);
    let column = |f: fn(&Plain) -> i64| batch.iter().map(|(p, _)| f(p)).collect::<Vec<_>>();
    let (generations, nows, ttls) = (
        column(|p| p.generation),
        column(|p| p.now),
        column(|p| p.ttl_secs),
    );
    let agents: Vec<Option<i64>> = batch.iter().map(|(p, _)| p.agent).collect();
    let ids: Vec<Uuid> = batch.iter().map(|(p, _)| p.session_id).collect();
    let bytes = |f: fn(&Plain) -> &[u8]| batch.iter().map(|(p, _)| f(p)).collect::<Vec<_>>();
    let (hashes, successors, sealed) = (
        bytes(|p| &p.hash),
        bytes(|p| &p.successor),
        bytes(|p| &p.sealed),
    );
    let clients: Vec<&str> = batch.iter().map(|(p, _)| p.client_id.as_str()).collect();
    let ips: Vec<Option<&str>> = batch.iter().map(|(p, _)| p.ip.as_deref()).collect();
    let jkts: Vec<Option<&str>> = batch.iter().map(|(p, _)| p.dpop_jkt.as_deref()).collect();
    let rows = sqlx::query(ROTATE_BATCH)
        .bind(&ids)
        .bind(&generations)
        .bind(&hashes)
        .bind(&successors)
        .bind(&sealed)
        .bind(&nows)
        .bind(&ttls)
        .bind(&clients)
        .bind(&ips)
        .bind(&agents)
        .bind(&jkts)
        .fetch_all(pool)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let e = StoreError::from(e);
            for (_, reply) in batch {
                let _ = reply.send(Err(e.duplicate()));
            }
            return;
        }
    };
    let mut rotated: HashMap<Uuid, Rotated> = HashMap::with_capacity(rows.len());
    for row in &rows {
        match super::postgres::rotated_row(row) {
            Ok(r) => {
                rotated.insert(r.session_id, r);
            }
            Err(e) => tracing::warn!(error = %e, "a batched rotation's row could not be read"),
        }
    }
    for (plain, reply) in batch {
        let _ = reply.send(Ok(rotated.remove(&plain.session_id)));
    }
}
