-- The ids callers see in ListKeyEvents count one organization's events only: a
-- global counter would let one tenant read other tenants' activity in its gaps.
-- `id` stays the global sequence the cross-instance invalidation poll reads;
-- `org_seq` is what the API calls the event id.
ALTER TABLE key_events ADD COLUMN org_seq INTEGER NOT NULL DEFAULT 0;

UPDATE key_events SET org_seq = r.n
FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY organization_id ORDER BY id) AS n
      FROM key_events) AS r
WHERE key_events.id = r.id;

-- The last org_seq handed out per organization, bumped first by every write
-- transaction that records events, so the sequence is gap-free.
CREATE TABLE org_event_seq (
    organization_id TEXT    NOT NULL PRIMARY KEY,
    last_seq        INTEGER NOT NULL
) STRICT;

INSERT INTO org_event_seq (organization_id, last_seq)
SELECT organization_id, MAX(org_seq) FROM key_events GROUP BY organization_id;

DROP INDEX ix_key_events_org;
DROP INDEX ix_key_events_org_key;
CREATE UNIQUE INDEX uq_key_events_org_seq ON key_events (organization_id, org_seq);
CREATE INDEX ix_key_events_org_key_seq ON key_events (organization_id, key_id, org_seq);
