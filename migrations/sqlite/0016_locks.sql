-- The rows PostgreSQL instances lock to take turns (see the PostgreSQL migration).
-- SQLite has one writer and no neighbours in the database: the table is unused here,
-- kept so both schemas have the same tables.
CREATE TABLE locks (
    name TEXT PRIMARY KEY
);
INSERT INTO locks (name) VALUES ('revocation_feed'), ('signing_keys'), ('janitor');
