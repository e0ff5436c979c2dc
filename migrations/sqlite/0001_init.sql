-- STRICT tables make SQLite refuse a value of the wrong type, as MySQL does.
CREATE TABLE api_keys (
    id                TEXT    NOT NULL PRIMARY KEY,
    organization_id   TEXT    NOT NULL,
    key_type          INTEGER NOT NULL,
    user_id           TEXT,
    name              TEXT    NOT NULL,
    scopes            TEXT    NOT NULL,
    allowed_hostnames TEXT    NOT NULL,
    secret_hash       BLOB    NOT NULL,
    key_prefix        TEXT    NOT NULL,
    last_four         TEXT    NOT NULL,
    request_count     INTEGER NOT NULL DEFAULT 0,
    create_time       INTEGER NOT NULL,
    update_time       INTEGER NOT NULL,
    last_used_time    INTEGER,
    revoke_time       INTEGER,
    expire_time       INTEGER,
    created_by        TEXT    NOT NULL,
    -- The owner of a live user key, NULL otherwise: the unique index below then
    -- allows one live user key per user and organization, enforced by the database.
    live_user_id      TEXT GENERATED ALWAYS AS
        (CASE WHEN key_type = 1 AND revoke_time IS NULL THEN user_id END) STORED
) STRICT;

CREATE UNIQUE INDEX uq_api_keys_secret_hash ON api_keys (secret_hash);
CREATE UNIQUE INDEX uq_api_keys_live_user ON api_keys (organization_id, live_user_id);
CREATE INDEX ix_api_keys_org_user ON api_keys (organization_id, user_id, id);

-- AUTOINCREMENT: event ids are never reused, so "events after id N" stays meaningful.
CREATE TABLE key_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id          TEXT    NOT NULL,
    organization_id TEXT    NOT NULL,
    action          INTEGER NOT NULL,
    actor_id        TEXT    NOT NULL,
    event_time      INTEGER NOT NULL,
    -- Lets every instance drop the key from its cache, which is keyed by hash, even
    -- after the key row is gone. The hash, never the secret.
    secret_hash     BLOB    NOT NULL
) STRICT;

CREATE INDEX ix_key_events_org ON key_events (organization_id, id);
CREATE INDEX ix_key_events_org_key ON key_events (organization_id, key_id, id);
