//! Verification rate of `tessera::verify` beside raw `jsonwebtoken::decode` with the
//! same key and checks, per algorithm, on one core. `cargo bench --bench verify`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tessera::tokens::access::AccessTokens;
use tessera::tokens::keys::{KeySet, SecretKey, generate};
use tessera::verify::{Verifier, VerifierConfig};
use uuid::Uuid;

const ISS: &str = "https://issuer.bench";

/// Runs `f` for about `secs`, returning calls per second.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..200 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::var("TESSERA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    println!("| alg | tessera::verify (verifies/s) | raw jsonwebtoken::decode (/s) | ratio |");
    println!("|---|---|---|---|");
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let secret = SecretKey::generate();
        let keys = KeySet::load(&secret, &[generate(alg, &secret, 0).unwrap()], None, 0).unwrap();
        let minter = AccessTokens::new(ISS, ISS, 900);
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let token = minter.sign(
            &keys,
            &minter.claims(Uuid::new_v4(), Uuid::new_v4(), "app", "read", vec![], now),
        );

        let verifier =
            Verifier::from_jwks(VerifierConfig::new(ISS, ISS), keys.jwks_json()).unwrap();
        assert!(verifier.verify_cached(&token).is_ok());
        let ours = rate(secs, || {
            black_box(verifier.verify_cached(black_box(&token))).unwrap();
        });

        let set: JwkSet = serde_json::from_str(keys.jwks_json()).unwrap();
        let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[ISS]);
        validation.set_audience(&[ISS]);
        let raw = rate(secs, || {
            black_box(jsonwebtoken::decode::<tessera::verify::Claims>(
                black_box(&token),
                &key,
                &validation,
            ))
            .unwrap();
        });
        println!("| {alg:?} | {ours:.0} | {raw:.0} | {:.2} |", ours / raw);
    }
}
