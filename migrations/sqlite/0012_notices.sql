-- Notices sent (key.expiring, key.dormant, quota.low, quota.exhausted): one row
-- per occurrence, claimed in the transaction that writes the notice's event, so
-- of several instances noticing the same occurrence only the first sends it.
-- An occurrence is named by its subject (a key's or an identity's id), its kind
-- and what made it: the expiry, the last use, or the quota period's start
-- (`occurrence`) with the quota's limit (`variant`, 0 for the others).
CREATE TABLE notice_claims (
    subject_id  TEXT    NOT NULL,
    kind        INTEGER NOT NULL,
    occurrence  INTEGER NOT NULL,
    variant     INTEGER NOT NULL,
    claim_time  INTEGER NOT NULL,
    PRIMARY KEY (subject_id, kind, occurrence, variant)
) STRICT;

-- The expiry scan reads keys by expiry.
CREATE INDEX ix_api_keys_expire ON api_keys (expire_time);
