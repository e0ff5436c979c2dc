-- Who may present a key: its networks (CIDRs) and workload identities, each
-- list space-separated (neither a CIDR nor an identity URI holds a space).
-- NULL is none, so a key without them costs no bytes, and a row written by a
-- keygate of the previous version during a rolling upgrade is unrestricted,
-- as it was.
ALTER TABLE api_keys ADD COLUMN allowed_networks TEXT NULL;
ALTER TABLE api_keys ADD COLUMN bound_principals TEXT NULL;

-- An organization's rules for its keys (SetKeyPolicy); no row is no rule.
-- Durations in microseconds, NULL for a rule that is not set; the bot scopes
-- space-separated, empty for none.
CREATE TABLE key_policies (
    organization_id               TEXT    NOT NULL PRIMARY KEY,
    max_lifetime                  INTEGER NULL,
    require_networks_for_bot_keys INTEGER NOT NULL,
    allowed_bot_scopes            TEXT    NOT NULL,
    max_rotation_grace            INTEGER NULL,
    update_time                   INTEGER NOT NULL
) STRICT;
