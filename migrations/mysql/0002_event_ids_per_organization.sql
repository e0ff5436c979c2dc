-- The ids callers see in ListKeyEvents count one organization's events only: a
-- global counter would let one tenant read other tenants' activity in its gaps.
-- `id` stays the global sequence the cross-instance invalidation poll reads;
-- `org_seq` is what the API calls the event id.
ALTER TABLE key_events ADD COLUMN org_seq BIGINT NOT NULL DEFAULT 0;

UPDATE key_events e
JOIN (SELECT id, ROW_NUMBER() OVER (PARTITION BY organization_id ORDER BY id) AS n
      FROM key_events) r ON e.id = r.id
SET e.org_seq = r.n;

-- The last org_seq handed out per organization. A write transaction bumps its
-- organization's row first, which serializes that organization's event writers
-- (only theirs) and makes the sequence gap-free.
CREATE TABLE org_event_seq (
    organization_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_seq        BIGINT      NOT NULL,
    PRIMARY KEY (organization_id)
) ENGINE = InnoDB;

INSERT INTO org_event_seq (organization_id, last_seq)
SELECT organization_id, MAX(org_seq) FROM key_events GROUP BY organization_id;

ALTER TABLE key_events
    ADD UNIQUE KEY uq_key_events_org_seq (organization_id, org_seq),
    ADD KEY ix_key_events_org_key_seq (organization_id, key_id, org_seq),
    DROP KEY ix_key_events_org,
    DROP KEY ix_key_events_org_key;
