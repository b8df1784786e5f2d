//! Micro-benchmarks on one core, each beside the primitive it stands on: access-token
//! sign and verify per algorithm beside raw `jsonwebtoken::decode` and the raw
//! signature check; refresh-token mint, seal and open; one argon2id hash.
//! `cargo bench --bench micro` (TESSERA_BENCH_SECS per measurement, default 3).
//!
//! A plain timing loop (warm-up, then as many calls as fit in the time) rather than
//! criterion or divan: the figures wanted are rates and their ratios, and this keeps
//! the dev-dependency tree as it is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tessera::tokens::access::AccessTokens;
use tessera::tokens::keys::{KeySet, SecretKey, generate};
use tessera::tokens::refresh::RefreshToken;
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
    println!(
        "| alg | sign (/s) | tessera::verify (/s) | raw jsonwebtoken::decode (/s) | verify / raw decode | raw signature check (/s) |"
    );
    println!("|---|---|---|---|---|---|");
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let secret = SecretKey::generate();
        let keys = KeySet::load(&secret, &[generate(alg, &secret, 0).unwrap()], None, 0).unwrap();
        let minter = AccessTokens::new(ISS, ISS, 900);
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let claims = minter.claims(Uuid::new_v4(), Uuid::new_v4(), "app", "read", vec![], now);
        let token = minter.sign(&keys, &claims);
        let sign = rate(secs, || {
            black_box(minter.sign(&keys, black_box(&claims)));
        });

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
        let (message, signature) = token.rsplit_once('.').unwrap();
        let signature_only = rate(secs, || {
            assert!(
                jsonwebtoken::crypto::verify(black_box(signature), message.as_bytes(), &key, alg)
                    .unwrap()
            );
        });
        println!(
            "| {alg:?} | {sign:.0} | {ours:.0} | {raw:.0} | {:.2} | {signature_only:.0} |",
            ours / raw
        );
    }

    let parent = RefreshToken::generate();
    let child = RefreshToken::generate();
    let sealed = parent.seal(&child);
    let mint = rate(secs, || {
        black_box(RefreshToken::generate().hash());
    });
    let seal = rate(secs, || {
        black_box(parent.seal(black_box(&child)));
    });
    let open = rate(secs, || {
        black_box(parent.open(black_box(&sealed))).unwrap();
    });
    let params = argon2::Params::new(19_456, 2, 1, Some(32)).unwrap();
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut memory = vec![argon2::Block::default(); 19_456];
    let mut out = [0u8; 32];
    let argon2 = rate(secs.max(3.0), || {
        hasher
            .hash_password_into_with_memory(
                b"benchmark password",
                b"sixteen byte slt",
                &mut out,
                &mut memory,
            )
            .unwrap();
    });
    println!();
    println!("| refresh token | /s (one core) |");
    println!("|---|---|");
    println!("| mint (256 random bits + SHA-256) | {mint:.0} |");
    println!("| seal successor (HKDF + ChaCha20-Poly1305) | {seal:.0} |");
    println!("| open successor | {open:.0} |");
    println!("| argon2id m=19456 t=2 p=1, one hash | {argon2:.1} |");
}
