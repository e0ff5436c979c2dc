-- Webhooks: the event table becomes an outbox. Each event keeps the key as its
-- transaction left it (JSON, never the secret), so a delivery shows the key as
-- of its event even after later changes or a deletion. Delivery state is one
-- row per event and endpoint (the SHA-256 of its URL without credentials),
-- written by the event's own transaction for the endpoints configured then: a
-- true outbox, and events from before an endpoint was configured are not
-- replayed to it.
ALTER TABLE key_events ADD COLUMN key_snapshot MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;

CREATE TABLE webhook_deliveries (
    endpoint          CHAR(64)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    event_id          BIGINT       NOT NULL,
    -- 0 pending, 1 delivered, 2 given up after 24 hours.
    state             SMALLINT     NOT NULL DEFAULT 0,
    attempts          INT          NOT NULL DEFAULT 0,
    next_attempt_time BIGINT       NOT NULL,
    -- An instance delivering the row holds it until then; after a crash the
    -- lease runs out and another instance delivers it again.
    lease_until       BIGINT       NOT NULL DEFAULT 0,
    lease_owner       CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NULL,
    done_time         BIGINT       NULL,
    last_error        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    PRIMARY KEY (endpoint, event_id),
    KEY ix_webhook_deliveries_due (state, next_attempt_time)
) ENGINE = InnoDB;
