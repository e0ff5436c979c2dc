-- Identities: the customer or service that owns keys. Its rate limits and
-- quota are kept as a key's are (see 0003): `quota_used` counts the credits
-- taken in the period that starts at `quota_period_start`, by every one of
-- its keys on every instance.
CREATE TABLE identities (
    id                 CHAR(36)      CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    organization_id    VARCHAR(64)   CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    external_id        VARCHAR(255)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    metadata           TEXT          CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    rate_limits        VARCHAR(1024) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    quota_limit        BIGINT        NULL,
    quota_period       SMALLINT      NULL,
    quota_used         BIGINT        NOT NULL DEFAULT 0,
    quota_period_start BIGINT        NOT NULL DEFAULT 0,
    create_time        BIGINT        NOT NULL,
    update_time        BIGINT        NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_identities_external (organization_id, external_id),
    KEY ix_identities_org (organization_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The identity a key belongs to, NULL for none; indexed for DeleteIdentity's
-- check that no live key still uses it.
ALTER TABLE api_keys
    ADD COLUMN identity_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD KEY ix_api_keys_identity (identity_id);

-- The identity an identity event is about: every instance drops it from its
-- cache when it reads the event.
ALTER TABLE key_events
    ADD COLUMN identity_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL;
