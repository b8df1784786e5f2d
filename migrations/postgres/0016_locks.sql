-- Row locks instead of advisory locks. Advisory lock keys are one namespace for every
-- role that can connect, so a neighbour holding Tessera's well-known keys could stall
-- every revocation. Locking a row here (`SELECT ... FOR UPDATE`) needs UPDATE on this
-- table, which only Tessera's roles have.
CREATE TABLE locks (
    name TEXT PRIMARY KEY
);
INSERT INTO locks (name) VALUES ('revocation_feed'), ('signing_keys'), ('janitor');
