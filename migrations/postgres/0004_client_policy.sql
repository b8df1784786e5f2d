-- Each client's scope allow-list: space-separated scope tokens, '' for none. The
-- default public client `app` takes its list from config (default_client_scopes).
ALTER TABLE clients ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
