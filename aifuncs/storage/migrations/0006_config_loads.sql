-- Every server process loads a staged config before the switch: the server processes with model workers (one
-- row each, seen_at renewed every few seconds while it runs), and each one's load of a pending config (READY or
-- FAILED with why), which the process that took the update waits for.
CREATE TABLE serving_processes (
    process TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL
);
CREATE TABLE config_loads (
    name TEXT COLLATE nocase NOT NULL,
    requested_at TEXT NOT NULL,
    process TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    reported_at TEXT NOT NULL,
    PRIMARY KEY (name, requested_at, process)
);
