-- Readiness is a write that commits: one row every instance's /readyz upserts, so a
-- read-only database (a failover to a standby) or a full disk makes instances unready.
CREATE TABLE readiness_probe (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL
);
