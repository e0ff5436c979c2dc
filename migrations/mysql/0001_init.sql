-- Ids, hashes and scopes are ASCII and compared byte for byte: organization and user
-- ids are opaque, so `Bob` and `bob` are different people.
CREATE TABLE api_keys (
    id                CHAR(36)       CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    organization_id   VARCHAR(64)    CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    key_type          SMALLINT       NOT NULL,
    user_id           VARCHAR(128)   CHARACTER SET ascii COLLATE ascii_bin NULL,
    name              VARCHAR(255)   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    scopes            TEXT           CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    allowed_hostnames TEXT           CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    secret_hash       BINARY(32)     NOT NULL,
    key_prefix        VARCHAR(16)    CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_four         CHAR(4)        CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    request_count     BIGINT         NOT NULL DEFAULT 0,
    create_time       BIGINT         NOT NULL,
    update_time       BIGINT         NOT NULL,
    last_used_time    BIGINT         NULL,
    revoke_time       BIGINT         NULL,
    expire_time       BIGINT         NULL,
    created_by        VARCHAR(128)   CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- The owner of a live user key, NULL otherwise: the unique index below then
    -- allows one live user key per user and organization, enforced by the database.
    live_user_id      VARCHAR(128)   CHARACTER SET ascii COLLATE ascii_bin
        GENERATED ALWAYS AS (CASE WHEN key_type = 1 AND revoke_time IS NULL THEN user_id END) STORED,
    PRIMARY KEY (id),
    UNIQUE KEY uq_api_keys_secret_hash (secret_hash),
    UNIQUE KEY uq_api_keys_live_user (organization_id, live_user_id),
    KEY ix_api_keys_org_user (organization_id, user_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE key_events (
    id              BIGINT        NOT NULL AUTO_INCREMENT,
    key_id          CHAR(36)      CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    organization_id VARCHAR(64)   CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    action          SMALLINT      NOT NULL,
    actor_id        VARCHAR(128)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    event_time      BIGINT        NOT NULL,
    -- Lets every instance drop the key from its cache, which is keyed by hash, even
    -- after the key row is gone. The hash, never the secret.
    secret_hash     BINARY(32)    NOT NULL,
    PRIMARY KEY (id),
    KEY ix_key_events_org (organization_id, id),
    KEY ix_key_events_org_key (organization_id, key_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
