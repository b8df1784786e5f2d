//! Prometheus metrics (`prometheus-client`): HTTP requests and latency by route,
//! security events, argon2 queue wait and database pool use.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LoginOutcome {
    ok,
    failed,
    throttled,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefreshOutcome {
    ok,
    replayed_in_grace,
    replay_refused,
    reuse_detected,
    /// A DPoP-bound refresh token without a proof by its key.
    dpop_refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabel {
    outcome: LoginOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabel {
    outcome: RefreshOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    state: &'static str,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.25 ms .. ~8 s
    exponential_buckets(0.000_25, 2.0, 16)
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_latency: Family<RouteLabels, Histogram>,
    logins: Family<LoginLabel, Counter>,
    refreshes: Family<RefreshLabel, Counter>,
    revocations: Family<Reason, Counter>,
    pub argon2_wait: Histogram,
    pool: Family<PoolState, Gauge>,
    /// Store reads of the revocation feed (pages, stream backlogs, the shared reader).
    pub feed_reads: Counter,
    /// Revocation streams open on this instance.
    pub feed_streams: Gauge,
    pruned: Family<Table, Counter>,
    dpop_refused: Family<Reason, Counter>,
    /// Security events left out of the audit log as repeats (see `auth::dpop`).
    pub audit_left_out: Counter,
    /// Readiness checks that reached the store (not `/readyz` requests: those share them).
    pub readiness_checks: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Table {
    table: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        let logins = Family::default();
        let refreshes = Family::default();
        let revocations = Family::default();
        let argon2_wait = Histogram::new(latency_buckets());
        let pool = Family::default();
        let feed_reads = Counter::default();
        let feed_streams = Gauge::default();
        let pruned = Family::<Table, Counter>::default();
        let dpop_refused = Family::<Reason, Counter>::default();
        let audit_left_out = Counter::default();
        let readiness_checks = Counter::default();
        registry.register(
            "readiness_checks",
            "Readiness writes sent to the store (probes share them)",
            readiness_checks.clone(),
        );
        registry.register(
            "audit_rows_left_out",
            "Repeated security events counted but not written to the audit log",
            audit_left_out.clone(),
        );
        registry.register(
            "dpop_proofs_refused",
            "DPoP proofs refused, by reason (replayed, use_nonce, wrong_key, ...)",
            dpop_refused.clone(),
        );
        registry.register(
            "pruned_rows",
            "Rows the janitor deleted, by table",
            pruned.clone(),
        );
        registry.register(
            "revocation_feed_reads",
            "Store reads of the revocation feed",
            feed_reads.clone(),
        );
        registry.register(
            "revocation_streams",
            "Revocation streams open on this instance",
            feed_streams.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_latency.clone(),
        );
        registry.register("logins", "Password logins by outcome", logins.clone());
        registry.register(
            "refreshes",
            "Refresh-token grants by outcome",
            refreshes.clone(),
        );
        registry.register(
            "revocations",
            "Sessions ended, by reason",
            revocations.clone(),
        );
        registry.register(
            "argon2_queue_wait_seconds",
            "Time a password hash waited for a slot",
            argon2_wait.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by state",
            pool.clone(),
        );
        Self {
            registry,
            http_requests,
            http_latency,
            logins,
            refreshes,
            revocations,
            argon2_wait,
            pool,
            feed_reads,
            feed_streams,
            pruned,
            dpop_refused,
            audit_left_out,
            readiness_checks,
        }
    }

    pub fn dpop_refused(&self, reason: &str) {
        self.dpop_refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn dpop_refusals(&self, reason: &str) -> u64 {
        self.dpop_refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .get()
    }

    pub fn login(&self, outcome: LoginOutcome) {
        self.logins.get_or_create(&LoginLabel { outcome }).inc();
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.refreshes
            .get_or_create(&RefreshLabel { outcome })
            .inc();
    }

    pub fn revoked(&self, reason: &str, sessions: usize) {
        self.revocations
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc_by(sessions as u64);
    }

    pub fn pruned(&self, table: &'static str, rows: u64) {
        self.pruned.get_or_create(&Table { table }).inc_by(rows);
    }

    pub fn logins(&self, outcome: LoginOutcome) -> u64 {
        self.logins.get_or_create(&LoginLabel { outcome }).get()
    }

    pub fn refreshes(&self, outcome: RefreshOutcome) -> u64 {
        self.refreshes
            .get_or_create(&RefreshLabel { outcome })
            .get()
    }

    /// The Prometheus text exposition, with the pool's state read now.
    pub fn render(&self, pool_in_use: u32, pool_idle: u32) -> String {
        self.pool
            .get_or_create(&PoolState { state: "in_use" })
            .set(i64::from(pool_in_use));
        self.pool
            .get_or_create(&PoolState { state: "idle" })
            .set(i64::from(pool_idle));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
