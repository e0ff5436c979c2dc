-- Identities: the customer or service that owns keys. Its rate limits and
-- quota are kept as a key's are (see 0003): `quota_used` counts the credits
-- taken in the period that starts at `quota_period_start`, by every one of
-- its keys on every instance.
CREATE TABLE identities (
    id                 TEXT    NOT NULL PRIMARY KEY,
    organization_id    TEXT    NOT NULL,
    external_id        TEXT    NOT NULL,
    metadata           TEXT    NULL,
    rate_limits        TEXT    NOT NULL DEFAULT '',
    quota_limit        INTEGER NULL,
    quota_period       INTEGER NULL,
    quota_used         INTEGER NOT NULL DEFAULT 0,
    quota_period_start INTEGER NOT NULL DEFAULT 0,
    create_time        INTEGER NOT NULL,
    update_time        INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX uq_identities_external ON identities (organization_id, external_id);
CREATE INDEX ix_identities_org ON identities (organization_id, id);

-- The identity a key belongs to, NULL for none; indexed for DeleteIdentity's
-- check that no live key still uses it.
ALTER TABLE api_keys ADD COLUMN identity_id TEXT NULL;
CREATE INDEX ix_api_keys_identity ON api_keys (identity_id);

-- The identity an identity event is about: every instance drops it from its
-- cache when it reads the event.
ALTER TABLE key_events ADD COLUMN identity_id TEXT NULL;
