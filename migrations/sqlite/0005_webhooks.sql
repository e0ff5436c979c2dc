-- Webhooks: the event table becomes an outbox. Each event keeps the key as its
-- transaction left it (JSON, never the secret), so a delivery shows the key as
-- of its event even after later changes or a deletion. Delivery state is one
-- row per event and endpoint (the SHA-256 of its URL without credentials),
-- written by the event's own transaction for the endpoints configured then: a
-- true outbox, and events from before an endpoint was configured are not
-- replayed to it.
ALTER TABLE key_events ADD COLUMN key_snapshot TEXT NULL;

CREATE TABLE webhook_deliveries (
    endpoint          TEXT    NOT NULL,
    event_id          INTEGER NOT NULL,
    -- 0 pending, 1 delivered, 2 given up after 24 hours.
    state             INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_time INTEGER NOT NULL,
    -- An instance delivering the row holds it until then; after a crash the
    -- lease runs out and another instance delivers it again.
    lease_until       INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT    NULL,
    done_time         INTEGER NULL,
    last_error        TEXT    NULL,
    PRIMARY KEY (endpoint, event_id)
) STRICT;

CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (state, next_attempt_time);
