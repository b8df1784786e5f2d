//! Password hashing: argon2id at OWASP parameters, on tokio's blocking pool behind a
//! semaphore, so a login flood can neither starve the async workers nor queue without
//! bound. Unknown users are checked against a dummy hash so they cost the same time.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// OWASP: argon2id, m=19 MiB, t=2, p=1.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

pub const MIN_PASSWORD_BYTES: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every slot stayed busy for the whole queue timeout.
    #[error("password hashing is at capacity")]
    Busy,
    #[error("password hashing failed")]
    Internal,
}

#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    dummy_hash: String,
    /// Where the time spent waiting for a slot is recorded.
    wait: Option<prometheus_client::metrics::histogram::Histogram>,
}

fn argon2() -> Argon2<'static> {
    // These constants are valid parameters; `Params::DEFAULT` is the fallback that
    // keeps this function total.
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_now(password: &[u8]) -> Result<String, PasswordError> {
    argon2()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Internal)
}

impl Passwords {
    /// Computes the dummy hash once (one argon2 run at start-up).
    pub async fn new(
        slots: usize,
        queue_timeout: Duration,
        wait: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> Result<Self, PasswordError> {
        let dummy_hash =
            tokio::task::spawn_blocking(|| hash_now(&crate::tokens::random_bytes::<16>()))
                .await
                .map_err(|_| PasswordError::Internal)??;
        Ok(Self {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(slots.max(1))),
                queue_timeout,
                dummy_hash,
                wait,
            }),
        })
    }

    pub async fn hash(&self, password: &SecretString) -> Result<String, PasswordError> {
        let password = password.clone();
        self.run(move || hash_now(password.expose_secret().as_bytes()))
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
            .run(move || {
                argon2()
                    .verify_password(password.expose_secret().as_bytes(), hash.as_str())
                    .is_ok()
            })
            .await?;
        Ok(known && matches)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let queued = std::time::Instant::now();
        let permit = tokio::time::timeout(
            self.inner.queue_timeout,
            self.inner.slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| PasswordError::Busy)?
        .map_err(|_| PasswordError::Internal)?;
        if let Some(wait) = &self.inner.wait {
            wait.observe(queued.elapsed().as_secs_f64());
        }
        // The permit moves into the blocking task: if the request is dropped, the slot
        // stays taken until the hash has really finished.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|_| PasswordError::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() -> Result<(), PasswordError> {
        let passwords = Passwords::new(2, Duration::from_secs(5), None).await?;
        let pw: SecretString = "correct horse battery".into();
        let hash = passwords.hash(&pw).await?;
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
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
    async fn full_slots_answer_busy_instead_of_queueing() -> Result<(), PasswordError> {
        let passwords = Passwords::new(1, Duration::from_millis(1), None).await?;
        let held = passwords
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| PasswordError::Internal)?;
        let result = passwords.hash(&"whatever password".into()).await;
        assert!(matches!(result, Err(PasswordError::Busy)));
        drop(held);
        assert!(passwords.hash(&"whatever password".into()).await.is_ok());
        Ok(())
    }
}
