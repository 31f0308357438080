-- An endpoint's config update waiting for its models to load (`aifuncs serve` loads the new served entities
-- while the old ones keep serving, then switches): one row per endpoint at most, gone once applied.
CREATE TABLE pending_configs (
    name TEXT COLLATE nocase PRIMARY KEY,
    kind TEXT NOT NULL,
    options TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    requested_at TEXT NOT NULL,
    requested_by TEXT NOT NULL
);
