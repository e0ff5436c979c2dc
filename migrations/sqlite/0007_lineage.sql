-- A rotation chain A -> B -> C is one logical key for its usage limits: every
-- link spends the rate limits and quota of the chain's newest key. A key's
-- lineage is the id of the chain's first key (its own id for a key never
-- rotated); the newest link of a lineage is the one with no `rotated_to_id`.
ALTER TABLE api_keys ADD COLUMN lineage_id TEXT NULL;
-- Chains rotated before this migration: every link gets its first key's id.
WITH RECURSIVE chain(id, root) AS (
    SELECT id, id FROM api_keys WHERE rotated_from_id IS NULL
    UNION ALL
    SELECT k.id, chain.root FROM api_keys k JOIN chain ON k.rotated_from_id = chain.id
)
UPDATE api_keys SET lineage_id = (SELECT root FROM chain WHERE chain.id = api_keys.id);
-- A link whose predecessor is gone (never written by keygate, but a row
-- edited by hand may say so) is a lineage of its own.
UPDATE api_keys SET lineage_id = id WHERE lineage_id IS NULL;
CREATE INDEX ix_api_keys_lineage ON api_keys (lineage_id);
