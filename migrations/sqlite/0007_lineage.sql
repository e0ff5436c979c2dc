-- A rotation chain A -> B -> C is one logical key for its usage limits: every
-- link spends the rate limits and quota of the chain's newest key. A key's
-- lineage is the id of the chain's first key: `lineage_root` holds it for a
-- rotation's replacement and is NULL otherwise, and `lineage_id` is generated
-- from it, so a row inserted without it (by a keygate of the previous version
-- during a rolling upgrade) is a lineage of its own. The newest link of a
-- lineage is the one with no `rotated_to_id`.
ALTER TABLE api_keys ADD COLUMN lineage_root TEXT NULL;
-- Chains rotated before this migration: every later link gets its first key's id.
WITH RECURSIVE chain(id, root) AS (
    SELECT id, id FROM api_keys WHERE rotated_from_id IS NULL
    UNION ALL
    SELECT k.id, chain.root FROM api_keys k JOIN chain ON k.rotated_from_id = chain.id
)
UPDATE api_keys SET lineage_root =
    (SELECT root FROM chain WHERE chain.id = api_keys.id AND chain.root <> api_keys.id);
ALTER TABLE api_keys ADD COLUMN lineage_id TEXT GENERATED ALWAYS AS
    (COALESCE(lineage_root, id)) VIRTUAL;
CREATE INDEX ix_api_keys_lineage ON api_keys (lineage_id);
