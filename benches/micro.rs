//! Micro-benchmarks (divan), each beside the primitive it stands on:
//! - access tokens per algorithm: sign; `tessera::verify` beside raw
//!   `jsonwebtoken::decode` and the raw signature check of the same library;
//! - refresh tokens: mint (256 random bits + SHA-256), seal and open the successor;
//! - argon2id at the server's parameters, one hash;
//! - DPoP proofs: a client signing one, the server's stateless check of one.
//!
//! `cargo bench --bench micro` (divan's own flags after `--`, e.g. `-- access`).
//! The load benchmark prints the verify / raw-decode ratio in its run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

fn main() {
    // At least a second per benchmark (divan's default is a hundred samples, which for
    // a 50 us verify is 5 ms: one scheduler hiccup on a shared machine skews it).
    divan::Divan::from_args()
        .min_time(std::time::Duration::from_secs(1))
        .main();
}

mod access_token {
    use super::common::{ALGS, Tokens};
    use divan::Bencher;

    #[divan::bench(args = ALGS)]
    fn sign(bencher: Bencher, alg: &str) {
        let tokens = Tokens::new(alg);
        bencher.bench_local(|| tokens.sign());
    }

    #[divan::bench(args = ALGS)]
    fn verify_tessera(bencher: Bencher, alg: &str) {
        let tokens = Tokens::new(alg);
        bencher.bench_local(|| tokens.verify());
    }

    #[divan::bench(args = ALGS)]
    fn decode_raw_jsonwebtoken(bencher: Bencher, alg: &str) {
        let tokens = Tokens::new(alg);
        bencher.bench_local(|| tokens.raw_decode());
    }

    #[divan::bench(args = ALGS)]
    fn signature_check_raw(bencher: Bencher, alg: &str) {
        let tokens = Tokens::new(alg);
        bencher.bench_local(|| tokens.raw_signature_check());
    }
}

mod refresh_token {
    use divan::black_box;
    use tessera::tokens::refresh::{RefreshMac, RefreshToken};
    use uuid::Uuid;

    fn issue() -> RefreshToken {
        RefreshToken::issue(&RefreshMac::new(&[7; 32]), Uuid::now_v7(), 1)
    }

    #[divan::bench]
    fn mint() -> impl Sized {
        issue().hash()
    }

    /// Checking a presented token's tag: the work an invented token costs the server.
    #[divan::bench]
    fn check_tag(bencher: divan::Bencher) {
        let mac = RefreshMac::new(&[7; 32]);
        let token = RefreshToken::issue(&mac, Uuid::now_v7(), 1);
        bencher.bench_local(|| black_box(&token).presented(&mac).unwrap());
    }

    #[divan::bench]
    fn seal_successor(bencher: divan::Bencher) {
        let (parent, child) = (issue(), issue());
        bencher.bench_local(|| parent.seal(black_box(&child)));
    }

    #[divan::bench]
    fn open_successor(bencher: divan::Bencher) {
        let (parent, child) = (issue(), issue());
        let sealed = parent.seal(&child);
        bencher.bench_local(|| parent.open(black_box(&sealed)).unwrap());
    }
}

mod password {
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn argon2id_m19456_t2_p1(bencher: divan::Bencher) {
        let mut hasher = super::common::Argon2Hasher::new();
        bencher.bench_local(|| hasher.hash());
    }
}

mod dpop_proof {
    use super::common::DpopSigner;
    use divan::Bencher;
    use tessera::verify::dpop::{Expect, check};

    const PROOF_ALGS: [&str; 2] = ["ES256", "EdDSA"];
    const HTU: &str = "https://auth.example.com/oauth/token";

    #[divan::bench(args = PROOF_ALGS)]
    fn client_signs(bencher: Bencher, alg: &str) {
        let signer = DpopSigner::new(alg);
        bencher.bench_local(|| signer.proof("POST", HTU, None));
    }

    /// Signature, `typ`, key, thumbprint, `htm`, `htu`, `iat`: what a token request adds.
    #[divan::bench(args = PROOF_ALGS)]
    fn server_checks(bencher: Bencher, alg: &str) {
        let signer = DpopSigner::new(alg);
        let proof = signer.proof("POST", HTU, None);
        let now = tessera::http::extract::now();
        let expect = Expect {
            method: "POST",
            url: HTU,
            also_url: None,
            access_token: None,
            now,
        };
        bencher.bench_local(|| check(&proof, &expect).unwrap());
    }
}
