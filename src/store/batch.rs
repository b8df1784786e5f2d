//! Batched rotations (PostgreSQL): refreshes that arrive while the database is busy
//! ride together in one statement over arrays, so one round trip and one commit carry
//! many of them. Nothing waits for a batch to fill: a worker takes whatever is queued
//! the moment it is free, so a lone refresh goes alone, at once.
//!
//! Each rotation keeps its own rules and its own winner: the batch is the single-row
//! update of `sessions::pg::ROTATE` joined to the arrays, one session at most once per
//! batch (a second refresh of a session waits for the next), its sessions locked in id
//! order first so two batches never wait on each other's rows in opposite orders.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::StoreError;

/// One plain rotation: a refresh of a session-row token asking for the whole scope,
/// with or without a DPoP proof (anything else goes through the single statement).
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
    /// The request's DPoP proof to remember against replay, claimed by the batch.
    pub proof: Option<super::ProofClaim>,
    /// When it was queued.
    pub queued: Instant,
}

type Reply = oneshot::Sender<Result<Batched, StoreError>>;

/// The queue rotations wait in, and the workers that take them.
pub(crate) struct Batcher {
    queue: mpsc::Sender<(Plain, Reply)>,
}

/// The batch's sessions, locked first, in id order, skipping any row another
/// transaction holds: a batch never waits for a session's row, so it can neither
/// deadlock with another batch or a revocation nor stall the rotations riding with a
/// locked session. A skipped rotation goes through the single statement instead, which
/// waits. The one wait left is on another transaction claiming the same DPoP proof;
/// every statement locks its sessions before it claims proofs, and a batch claims them
/// in key order, so those waits cannot form a circle.
macro_rules! locked {
    () => {
        "locked AS MATERIALIZED (
    SELECT id FROM sessions WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
)"
    };
}

/// `pg::ROTATE`'s update over arrays, one row of them per rotation, of the rows locked
/// above only.
macro_rules! update {
    ($input:literal, $proof:literal) => {
        concat!(
            "rotated AS (
    UPDATE sessions AS s
       SET generation = s.generation + 1, token_hash = i.successor,
           token_issued_at = GREATEST(i.now, floor(extract(epoch FROM clock_timestamp()))::bigint),
           token_expires_at = LEAST(i.now + i.ttl, s.expires_at),
           last_used_at = GREATEST(i.now, floor(extract(epoch FROM clock_timestamp()))::bigint),
           prev_hash = s.token_hash, prev_sealed = i.sealed, prev_replays = 0,
           prev_ip = i.ip, prev_agent = i.agent
      FROM ",
            $input,
            ", locked AS l, users AS u
     WHERE s.id = ANY($1::uuid[]) AND s.id = l.id
       AND s.id = i.id AND s.generation = i.generation AND s.token_hash = i.hash
       AND s.token_expires_at > i.now AND s.revoked_at IS NULL AND s.expires_at > i.now
       AND u.id = s.user_id AND u.disabled_at IS NULL
       AND s.client_id = i.client_id
       AND (s.dpop_jkt IS NULL OR s.dpop_jkt = i.jkt)",
            $proof,
            "
    RETURNING s.id AS session_id, s.user_id, s.client_id, s.scope,
              s.token_expires_at AS expires_at, u.roles
)"
        )
    };
}

/// A batch of bearer refreshes: one row per locked session, with its rotation if it
/// rotated.
const ROTATE_BATCH: &str = concat!(
    "WITH ",
    locked!(),
    ", ",
    update!(
        "unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bigint[],
              $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[])
         AS i(id, generation, hash, successor, sealed, now, ttl, client_id, ip, agent, jkt)",
        ""
    ),
    "
SELECT l.id AS locked_id, true AS proof_fresh, r.session_id, r.user_id, r.client_id, r.scope,
       r.expires_at, r.roles
  FROM locked AS l LEFT JOIN rotated AS r ON r.session_id = l.id"
);

/// A batch with DPoP proofs (`$12`, until `$13`; NULL for a bearer refresh): the proofs
/// of the locked sessions remembered, a rotation done only if its proof was fresh, and
/// one row per locked session saying which (as `sessions::pg::ROTATE_WITH_PROOF` does
/// for one). No proof is twice in a batch.
const ROTATE_BATCH_WITH_PROOFS: &str = concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[],
                         $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::bigint[],
                         $11::text[], $12::bytea[], $13::bigint[])
      AS i(id, generation, hash, successor, sealed, now, ttl, client_id, ip, agent, jkt,
           proof, proof_expires)
), ",
    locked!(),
    ", proof AS (
    INSERT INTO dpop_proofs (key, expires_at)
    SELECT i.proof, i.proof_expires FROM input AS i JOIN locked AS l ON l.id = i.id
     WHERE i.proof IS NOT NULL
     ORDER BY i.proof
    ON CONFLICT DO NOTHING
    RETURNING key
), ",
    update!(
        "input AS i",
        "
       AND (i.proof IS NULL OR i.proof IN (SELECT key FROM proof))"
    ),
    "
SELECT l.id AS locked_id, (i.proof IS NULL OR i.proof IN (SELECT key FROM proof)) AS proof_fresh,
       r.session_id, r.user_id, r.client_id, r.scope, r.expires_at, r.roles
  FROM locked AS l JOIN input AS i ON i.id = l.id LEFT JOIN rotated AS r ON r.session_id = l.id"
);

/// What became of a rotation sent to the batcher.
#[derive(Debug)]
pub(crate) enum Batched {
    /// Judged in the batch, with the single statement's outcomes.
    Done(super::Rotate),
    /// Its session's row was held by another transaction: not tried; the single
    /// statement (which waits for the row) must do it.
    Skipped,
}

impl Batcher {
    /// `workers` batches in flight at most, each of at most `max` rotations; a rotation
    /// that has waited `wait_limit` for its batch (as long as a request may wait for a
    /// connection) is answered "unavailable" instead of run, so it never commits after
    /// its request gave up.
    pub(crate) fn start(
        pool: PgPool,
        workers: usize,
        max: usize,
        wait_limit: Duration,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel::<(Plain, Reply)>(4096);
        let rx = Arc::new(Mutex::new(Taken {
            rx,
            deferred: Vec::new(),
        }));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(pool.clone(), rx.clone(), max.max(1), wait_limit));
        }
        Arc::new(Self { queue })
    }

    /// Rotates `plain` in the next batch.
    pub(crate) async fn rotate(&self, plain: Plain) -> Result<Batched, StoreError> {
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

async fn work(pool: PgPool, taken: Arc<Mutex<Taken>>, max: usize, wait_limit: Duration) {
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
        run(&pool, batch, wait_limit).await;
    }
}

/// Adds `job` to the batch unless the batch already rotates its session or claims its
/// DPoP proof (a proof twice in one insert would be claimed once and let both through).
fn admit(batch: &mut Vec<(Plain, Reply)>, deferred: &mut Vec<(Plain, Reply)>, job: (Plain, Reply)) {
    let proof = job.0.proof.map(|p| p.key);
    if batch.iter().any(|(p, _)| {
        p.session_id == job.0.session_id || (proof.is_some() && p.proof.map(|c| c.key) == proof)
    }) {
        deferred.push(job);
    } else {
        batch.push(job);
    }
}

async fn run(pool: &PgPool, mut batch: Vec<(Plain, Reply)>, wait_limit: Duration) {
    // A request that gave up (its future dropped) or waited too long is not run: its
    // client was, or is about to be, told it failed (its reply, dropped, says 503).
    let live = |(plain, reply): &(Plain, Reply)| {
        !reply.is_closed() && plain.queued.elapsed() <= wait_limit
    };
    batch.retain(live);
    if batch.is_empty() {
        return;
    }
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let e = StoreError::from(e);
            for (_, reply) in batch {
                let _ = reply.send(Err(e.duplicate()));
            }
            return;
        }
    };
    // Again: the connection may have taken a while.
    batch.retain(live);
    if batch.is_empty() {
        return;
    }
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
    let with_proofs = batch.iter().any(|(p, _)| p.proof.is_some());
    let proofs: Vec<Option<&[u8]>> = batch
        .iter()
        .map(|(p, _)| p.proof.as_ref().map(|c| &c.key[..]))
        .collect();
    let proof_expiries: Vec<Option<i64>> = batch
        .iter()
        .map(|(p, _)| p.proof.map(|c| c.expires_at))
        .collect();
    let query = sqlx::query(if with_proofs {
        ROTATE_BATCH_WITH_PROOFS
    } else {
        ROTATE_BATCH
    })
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
    .bind(&jkts);
    let rows = if with_proofs {
        query.bind(&proofs).bind(&proof_expiries)
    } else {
        query
    }
    .fetch_all(&mut *conn)
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
    let mut outcomes: HashMap<Uuid, super::Rotate> = HashMap::with_capacity(rows.len());
    let mut unreadable = false;
    for row in &rows {
        match outcome(row) {
            Ok((id, o)) => {
                outcomes.insert(id, o);
            }
            Err(e) => {
                unreadable = true;
                tracing::warn!(error = %e, "a batched rotation's row could not be read");
            }
        }
    }
    for (plain, reply) in batch {
        // A session missing from the answer was not locked, so not tried: unless a row
        // could not be read, which may have been its rotation.
        let answer = match outcomes.remove(&plain.session_id) {
            Some(outcome) => Ok(Batched::Done(outcome)),
            None if unreadable => Err(StoreError::Other(sqlx::Error::Protocol(
                "a batched rotation's answer could not be read".into(),
            ))),
            None => Ok(Batched::Skipped),
        };
        let _ = reply.send(answer);
    }
}

/// One row of a batch's answer: the locked session it is about and what became of its
/// rotation.
fn outcome(row: &sqlx::postgres::PgRow) -> Result<(Uuid, super::Rotate), sqlx::Error> {
    use sqlx::Row as _;
    let id: Uuid = row.try_get("locked_id")?;
    if !row.try_get::<bool, _>("proof_fresh")? {
        return Ok((id, super::Rotate::ProofReplayed));
    }
    if row.try_get::<Option<Uuid>, _>("session_id")?.is_none() {
        return Ok((id, super::Rotate::Refused));
    }
    Ok((
        id,
        super::Rotate::Rotated(super::postgres::rotated_row(row)?),
    ))
}
