-- A rotation chain A -> B -> C is one logical key for its usage limits: every
-- link spends the rate limits and quota of the chain's newest key. A key's
-- lineage is the id of the chain's first key: `lineage_root` holds it for a
-- rotation's replacement and is NULL otherwise, and `lineage_id` is generated
-- from it, so a row inserted without it (by a keygate of the previous version
-- during a rolling upgrade) is a lineage of its own. The newest link of a
-- lineage is the one with no `rotated_to_id`.
ALTER TABLE api_keys
    ADD COLUMN lineage_root VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL;
-- Chains rotated before this migration: every later link gets its first key's id.
UPDATE api_keys k JOIN (
    WITH RECURSIVE chain(id, root) AS (
        SELECT id, id FROM api_keys WHERE rotated_from_id IS NULL
        UNION ALL
        SELECT r.id, chain.root FROM api_keys r JOIN chain ON r.rotated_from_id = chain.id
    )
    SELECT id, root FROM chain
) c ON c.id = k.id SET k.lineage_root = c.root WHERE c.root <> k.id;
-- MariaDB refuses an indexed expression over a CHAR column whose value could
-- depend on sql_mode's PAD_CHAR_TO_FULL_LENGTH: RTRIM makes it independent
-- (ids are 36-character UUIDs, with nothing to trim).
ALTER TABLE api_keys
    ADD COLUMN lineage_id VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin
        GENERATED ALWAYS AS (IFNULL(lineage_root, RTRIM(id))) STORED,
    ADD INDEX ix_api_keys_lineage (lineage_id);
