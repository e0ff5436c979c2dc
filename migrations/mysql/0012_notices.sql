-- Notices sent (key.expiring, key.dormant, quota.low, quota.exhausted): one row
-- per occurrence, claimed in the transaction that writes the notice's event, so
-- of several instances noticing the same occurrence only the first sends it.
-- An occurrence is named by its subject (a key's or an identity's id), its kind
-- and what made it: the expiry, the last use, or the quota period's start
-- (`occurrence`) with the quota's limit (`variant`, 0 for the others).
CREATE TABLE notice_claims (
    subject_id  CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind        SMALLINT NOT NULL,
    occurrence  BIGINT   NOT NULL,
    variant     BIGINT   NOT NULL,
    claim_time  BIGINT   NOT NULL,
    PRIMARY KEY (subject_id, kind, occurrence, variant)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The expiry scan reads keys by expiry.
CREATE INDEX ix_api_keys_expire ON api_keys (expire_time);
