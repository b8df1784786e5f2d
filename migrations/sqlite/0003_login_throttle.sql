-- Login throttling shared by every instance: per client address (attempts in a
-- fixed window) and per account (consecutive failures and the backoff they earned).
CREATE TABLE login_throttle (
    key           TEXT PRIMARY KEY,
    window_start  BIGINT NOT NULL,
    hits          BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL DEFAULT 0
);
