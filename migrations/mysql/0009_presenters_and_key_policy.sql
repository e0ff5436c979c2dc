-- Who may present a key: its networks (CIDRs) and workload identities, each
-- list space-separated (neither a CIDR nor an identity URI holds a space).
-- NULL is none, so a key without them costs no bytes, and a row written by a
-- keygate of the previous version during a rolling upgrade is unrestricted,
-- as it was.
ALTER TABLE api_keys
    ADD COLUMN allowed_networks TEXT CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN bound_principals TEXT CHARACTER SET ascii COLLATE ascii_bin NULL;

-- An organization's rules for its keys (SetKeyPolicy); no row is no rule.
-- Durations in microseconds, NULL for a rule that is not set; the bot scopes
-- space-separated, empty for none.
CREATE TABLE key_policies (
    organization_id               VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    max_lifetime                  BIGINT      NULL,
    require_networks_for_bot_keys SMALLINT    NOT NULL,
    allowed_bot_scopes            TEXT        CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    max_rotation_grace            BIGINT      NULL,
    update_time                   BIGINT      NOT NULL,
    PRIMARY KEY (organization_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
