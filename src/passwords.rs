//! Password hashing: argon2id at OWASP parameters (m=19 MiB, t=2, p=1) on a fixed pool
//! of worker threads, one per slot, behind a semaphore with a queue timeout (503 beyond
//! it, never an unbounded queue). Unknown users are checked against a dummy hash so
//! they cost the same time.
//!
//! Each worker reuses its 19 MiB of argon2 memory from one hash to the next (no
//! allocation, zeroing or page faults per hash; at most slots x 19 MiB, let go when
//! idle) and runs at the lowest CPU priority, so a login flood takes the idle CPU
//! without starving the async workers that serve refreshes and verifications.
//!
//! The lowest priority keeps a hash from taking CPU time from a refresh, but not its
//! caches: argon2 is memory-hard by design, and a hash on every core evicts what the
//! other requests were running on. So while the server has other traffic (a request
//! that did not hash finished in the last [`OTHER_TRAFFIC_WINDOW`]), `spare` workers
//! stay idle; with nothing but password traffic, every worker hashes.
//!
//! Each worker has its next job waiting in the queue (twice as many jobs are admitted
//! as there are workers), so it goes from one hash to the next without a round trip
//! through the async runtime.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordVerifier as _;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// OWASP: argon2id, m=19 MiB, t=2, p=1.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;
/// The PHC prefix of hashes made with the parameters above.
const PHC_PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";
/// Nice 10 (where SCHED_IDLE is not available): below the async workers.
const WORKER_PRIORITY: u8 = 22;
/// A worker frees its argon2 memory after this long without a job.
const IDLE_RELEASE: Duration = Duration::from_secs(30);
/// Spare workers stay idle while a request that did not hash finished this recently.
pub const OTHER_TRAFFIC_WINDOW: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Inside [`Passwords::track`]: whether the request has asked for a hash.
    static HASHED: Cell<bool>;
}

/// Password length in characters (Unicode scalar values), as NIST SP 800-63B counts
/// them and as JSON Schema's `minLength`/`maxLength` do, so the OpenAPI document states
/// the rule exactly. 1024 characters are at most 4 KiB for argon2 to read.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every slot stayed busy for the whole queue timeout.
    #[error("password hashing is at capacity")]
    Busy,
    #[error("password hashing failed")]
    Internal,
}

type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

struct Inner {
    /// Jobs admitted at once: one hashing and one waiting per worker.
    slots: Arc<Semaphore>,
    gate: Arc<Gate>,
    queue_timeout: Duration,
    jobs: Mutex<mpsc::Sender<Job>>,
    dummy_hash: String,
    /// Where the time spent waiting for a slot is recorded.
    wait: Option<prometheus_client::metrics::histogram::Histogram>,
}

fn argon2() -> Argon2<'static> {
    // These constants are valid parameters; `Params::DEFAULT` keeps this function total.
    let params =
        Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN)).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// argon2id into `memory`, as a PHC string.
fn hash_with(password: &[u8], memory: &mut [Block]) -> Result<String, PasswordError> {
    let salt: [u8; SALT_LEN] = crate::tokens::random_bytes();
    let mut out = [0u8; OUTPUT_LEN];
    argon2()
        .hash_password_into_with_memory(password, &salt, &mut out, memory)
        .map_err(|_| PasswordError::Internal)?;
    Ok(format!(
        "{PHC_PREFIX}{}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// Checks `password` against a PHC string: in `memory` when it has our parameters,
/// otherwise (older parameters) through the general, allocating path.
fn verify_with(password: &[u8], phc: &str, memory: &mut [Block]) -> bool {
    let ours = phc
        .strip_prefix(PHC_PREFIX)
        .and_then(|rest| rest.split_once('$'))
        .and_then(|(salt, hash)| {
            Some((
                STANDARD_NO_PAD.decode(salt).ok()?,
                STANDARD_NO_PAD.decode(hash).ok()?,
            ))
        });
    match ours {
        Some((salt, expected)) if expected.len() == OUTPUT_LEN => {
            let mut out = [0u8; OUTPUT_LEN];
            argon2()
                .hash_password_into_with_memory(password, &salt, &mut out, memory)
                .is_ok()
                && out
                    .iter()
                    .zip(&expected)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        _ => argon2().verify_password(password, phc).is_ok(),
    }
}

/// Lowers the calling thread's CPU priority (best effort: without the right to, it
/// just stays): `SCHED_IDLE` on Linux, so any runnable async worker preempts a hash at
/// once; nice 10 elsewhere.
fn lower_priority() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Min,
            idle,
        )
        .is_ok()
        {
            return;
        }
    }
    if let Ok(value) = ThreadPriorityValue::try_from(WORKER_PRIORITY) {
        let _ = thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(value));
    }
}

/// Where workers check in before a hash: how many hash now, and whether the server has
/// other traffic (then at most `shared` of them may).
struct Gate {
    shared: usize,
    /// How long after a request that did not hash the traffic counts as present.
    window: Duration,
    state: Mutex<GateState>,
    changed: Condvar,
    /// When a request that did not hash last finished, in ms since `epoch` (0: never).
    other_at: AtomicU64,
    epoch: Instant,
}

#[derive(Default)]
struct GateState {
    hashing: usize,
    /// Workers holding a job until a hash ends or the other traffic stops.
    held: usize,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The counters stay consistent whatever panicked while the lock was held.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note_other_traffic(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.other_at.store(ms.max(1), Ordering::Relaxed);
    }

    /// How much longer than `now` the other traffic counts as present (zero: it is not).
    fn other_traffic_left(&self, now: Instant) -> Duration {
        match self.other_at.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            at => self.window.saturating_sub(
                now.saturating_duration_since(self.epoch + Duration::from_millis(at)),
            ),
        }
    }

    /// Blocks until this worker may hash; it counts as hashing until the guard drops
    /// (also if the job panics, so a lost worker never holds the others back).
    fn enter(&self) -> Hashing<'_> {
        let mut state = self.lock();
        loop {
            let left = self.other_traffic_left(Instant::now());
            if state.hashing < self.shared || left.is_zero() {
                state.hashing += 1;
                return Hashing(self);
            }
            state.held += 1;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.held -= 1;
        }
    }
}

struct Hashing<'a>(&'a Gate);

impl Drop for Hashing<'_> {
    fn drop(&mut self) {
        self.0.lock().hashing -= 1;
        self.0.changed.notify_one();
    }
}

/// A worker: takes jobs until the pool is dropped. Its argon2 memory is made on first
/// use and let go after `IDLE_RELEASE` without work, so an idle server stays small.
fn worker(jobs: Arc<Mutex<mpsc::Receiver<Job>>>, gate: Arc<Gate>) {
    lower_priority();
    let mut memory: Option<Vec<Block>> = None;
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv_timeout(IDLE_RELEASE),
            Err(_) => return,
        };
        match job {
            Ok(job) => {
                let _hashing = gate.enter();
                job(memory.get_or_insert_with(|| vec![Block::default(); M_COST_KIB as usize]));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => memory = None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Passwords {
    /// Starts `slots` workers and computes the dummy hash (one argon2 run). While other
    /// traffic is present, `spare` of the workers stay idle (at least one still hashes).
    pub async fn new(
        slots: usize,
        spare: usize,
        queue_timeout: Duration,
        wait: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> Result<Self, PasswordError> {
        Self::with_window(slots, spare, OTHER_TRAFFIC_WINDOW, queue_timeout, wait).await
    }

    async fn with_window(
        slots: usize,
        spare: usize,
        window: Duration,
        queue_timeout: Duration,
        wait: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> Result<Self, PasswordError> {
        let slots = slots.max(1);
        let gate = Arc::new(Gate {
            shared: slots.saturating_sub(spare).max(1),
            window,
            state: Mutex::default(),
            changed: Condvar::new(),
            other_at: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..slots {
            let (rx, gate) = (rx.clone(), gate.clone());
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(rx, gate))
                .map_err(|_| PasswordError::Internal)?;
        }
        let dummy_hash = tokio::task::spawn_blocking(|| {
            hash_with(
                b"tessera dummy password",
                &mut vec![Block::default(); M_COST_KIB as usize],
            )
        })
        .await
        .map_err(|_| PasswordError::Internal)??;
        Ok(Self {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(2 * slots)),
                gate,
                queue_timeout,
                jobs: Mutex::new(tx),
                dummy_hash,
                wait,
            }),
        })
    }

    pub async fn hash(&self, password: &SecretString) -> Result<String, PasswordError> {
        let password = password.clone();
        self.run(move |memory| hash_with(password.expose_secret().as_bytes(), memory))
            .await?
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no
    /// user, so both cases take one argon2 run.
    pub async fn verify(
        &self,
        password: &SecretString,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let password = password.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.inner.dummy_hash.clone());
        let matches = self
            .run(move |memory| verify_with(password.expose_secret().as_bytes(), &hash, memory))
            .await?;
        Ok(known && matches)
    }

    /// Runs one request's handling, noting afterwards whether it hashed: requests that
    /// did not are the "other traffic" that spare slots are kept for.
    pub async fn track<F: Future>(&self, request: F) -> F::Output {
        self.track_when(request, |_| true).await
    }

    /// As [`Self::track`], but an answer `counts` rejects is no traffic at all: a
    /// throttled refusal, say, whose flood must not hold a hashing slot idle for itself.
    pub async fn track_when<F: Future>(
        &self,
        request: F,
        counts: impl FnOnce(&F::Output) -> bool,
    ) -> F::Output {
        let (output, hashed) = HASHED
            .scope(Cell::new(false), async {
                let output = request.await;
                (output, HASHED.with(Cell::get))
            })
            .await;
        if !hashed && counts(&output) {
            self.inner.gate.note_other_traffic();
        }
        output
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _ = HASHED.try_with(|hashed| hashed.set(true));
        let queued = Instant::now();
        let permit: OwnedSemaphorePermit = tokio::time::timeout(
            self.inner.queue_timeout,
            self.inner.slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| PasswordError::Busy)?
        .map_err(|_| PasswordError::Internal)?;
        if let Some(wait) = &self.inner.wait {
            wait.observe(queued.elapsed().as_secs_f64());
        }
        let (reply, answer) = oneshot::channel();
        // The permit travels with the job: if the request is dropped, the slot stays
        // taken until the hash has really finished.
        let job: Job = Box::new(move |memory| {
            let _ = reply.send(work(memory));
            drop(permit);
        });
        self.inner
            .jobs
            .lock()
            .map_err(|_| PasswordError::Internal)?
            .send(job)
            .map_err(|_| PasswordError::Internal)?;
        answer.await.map_err(|_| PasswordError::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() -> Result<(), PasswordError> {
        let passwords = Passwords::new(2, 1, Duration::from_secs(5), None).await?;
        let pw: SecretString = "correct horse battery".into();
        let hash = passwords.hash(&pw).await?;
        assert!(hash.starts_with(PHC_PREFIX));
        assert!(passwords.verify(&pw, Some(hash.clone())).await?);
        assert!(
            !passwords
                .verify(&"wrong password".into(), Some(hash))
                .await?
        );
        assert!(!passwords.verify(&pw, None).await?);
        Ok(())
    }

    #[tokio::test]
    async fn hashes_are_standard_phc_and_other_parameters_still_verify() -> Result<(), PasswordError>
    {
        use argon2::password_hash::PasswordHasher as _;
        let passwords = Passwords::new(1, 1, Duration::from_secs(5), None).await?;
        let pw: SecretString = "correct horse battery".into();
        // Our hash checks with the argon2 crate's own verifier...
        let ours = passwords.hash(&pw).await?;
        assert!(
            argon2()
                .verify_password(b"correct horse battery", ours.as_str())
                .is_ok()
        );
        // ...and a hash made elsewhere with other parameters checks with ours.
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 3, 1, None).unwrap_or(Params::DEFAULT),
        )
        .hash_password(b"correct horse battery")
        .map_err(|_| PasswordError::Internal)?
        .to_string();
        assert!(passwords.verify(&pw, Some(other.clone())).await?);
        assert!(!passwords.verify(&"nope nope".into(), Some(other)).await?);
        Ok(())
    }

    /// Waits (without a timing assumption) until `done`; a test that would hang fails.
    async fn until(done: impl Fn() -> bool) -> Result<(), PasswordError> {
        let wait = async {
            while !done() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .map_err(|_| PasswordError::Internal)
    }

    fn gate(passwords: &Passwords) -> MutexGuard<'_, GateState> {
        passwords.inner.gate.lock()
    }

    /// Starts a job that hashes nothing and holds its worker until `release` is sent to;
    /// returns that sender, a flag set when the job starts, and the job's task.
    fn held_job(
        passwords: &Passwords,
    ) -> (
        mpsc::Sender<()>,
        Arc<std::sync::atomic::AtomicBool>,
        tokio::task::JoinHandle<Result<(), PasswordError>>,
    ) {
        let (release, released) = mpsc::channel::<()>();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, flag) = (passwords.clone(), started.clone());
        let task = tokio::spawn(async move {
            p.run(move |_| {
                flag.store(true, Ordering::SeqCst);
                let _ = released.recv();
            })
            .await
        });
        (release, started, task)
    }

    #[tokio::test]
    async fn a_job_that_panics_gives_back_its_place_at_the_gate() -> Result<(), PasswordError> {
        let window = Duration::from_secs(3600);
        let passwords = Passwords::with_window(2, 1, window, Duration::from_secs(5), None).await?;
        // Other traffic: one worker at a time may hash.
        passwords.track(async {}).await;
        let lost = passwords.run(|_| panic!("a job that panics")).await;
        assert!(matches!(lost, Err::<(), _>(PasswordError::Internal)));
        until(|| gate(&passwords).hashing == 0).await?;
        // The other worker still hashes.
        assert!(passwords.hash(&"whatever password".into()).await.is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn with_only_password_traffic_every_worker_hashes() -> Result<(), PasswordError> {
        let passwords = Passwords::new(2, 1, Duration::from_secs(5), None).await?;
        let (release_a, _, a) = held_job(&passwords);
        let (release_b, _, b) = held_job(&passwords);
        // Both hash at once; with a spare worker held back this would never happen.
        until(|| gate(&passwords).hashing == 2).await?;
        let _ = (release_a.send(()), release_b.send(()));
        a.await.map_err(|_| PasswordError::Internal)??;
        b.await.map_err(|_| PasswordError::Internal)??;
        Ok(())
    }

    #[tokio::test]
    async fn while_other_traffic_is_present_the_spare_worker_waits() -> Result<(), PasswordError> {
        // A window far longer than the test, whatever the machine's speed.
        let window = Duration::from_secs(3600);
        let passwords = Passwords::with_window(2, 1, window, Duration::from_secs(5), None).await?;
        // A request that hashed is not other traffic; one that did not is.
        passwords
            .track(passwords.hash(&"whatever password".into()))
            .await?;
        assert!(
            passwords
                .inner
                .gate
                .other_traffic_left(Instant::now())
                .is_zero()
        );
        // Nor is an answer the caller says does not count (a throttled refusal).
        passwords
            .track_when(async { 429 }, |status| *status != 429)
            .await;
        assert!(
            passwords
                .inner
                .gate
                .other_traffic_left(Instant::now())
                .is_zero()
        );
        passwords.track(async {}).await;
        let now = Instant::now();
        assert!(!passwords.inner.gate.other_traffic_left(now).is_zero());
        assert!(
            passwords
                .inner
                .gate
                .other_traffic_left(now + window)
                .is_zero()
        );

        // The hash above has left the gate (its answer can arrive just before).
        until(|| gate(&passwords).hashing == 0).await?;
        let (release_a, a_started, a) = held_job(&passwords);
        until(|| a_started.load(Ordering::SeqCst)).await?;
        let (release_b, b_started, b) = held_job(&passwords);
        // The second job reaches the other worker, which holds it at the gate.
        until(|| gate(&passwords).held == 1).await?;
        assert!(!b_started.load(Ordering::SeqCst));
        assert_eq!(gate(&passwords).hashing, 1);
        // When the first hash ends, the held job starts.
        let _ = release_a.send(());
        a.await.map_err(|_| PasswordError::Internal)??;
        until(|| b_started.load(Ordering::SeqCst)).await?;
        assert_eq!(gate(&passwords).held, 0);
        let _ = release_b.send(());
        b.await.map_err(|_| PasswordError::Internal)??;
        Ok(())
    }

    #[tokio::test]
    async fn full_slots_answer_busy_instead_of_queueing() -> Result<(), PasswordError> {
        let passwords = Passwords::new(1, 0, Duration::from_millis(1), None).await?;
        let held = passwords
            .inner
            .slots
            .acquire_many(2)
            .await
            .map_err(|_| PasswordError::Internal)?;
        let result = passwords.hash(&"whatever password".into()).await;
        assert!(matches!(result, Err(PasswordError::Busy)));
        drop(held);
        assert!(passwords.hash(&"whatever password".into()).await.is_ok());
        Ok(())
    }
}
