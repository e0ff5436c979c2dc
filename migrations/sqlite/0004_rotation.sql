-- Rotation: a key names the key that replaced it and the one it replaced. A user
-- key in the grace period of its rotation is still live (it verifies until its
-- expiry) but no longer counts against the one-live-user-key rule: its
-- replacement does. The generated column that the unique index enforces that
-- rule with is redefined to leave rotated keys out (VIRTUAL: SQLite cannot add a
-- STORED column to an existing table; the unique index stores it anyway).
ALTER TABLE api_keys ADD COLUMN rotated_to_id TEXT NULL;
ALTER TABLE api_keys ADD COLUMN rotated_from_id TEXT NULL;
DROP INDEX uq_api_keys_live_user;
ALTER TABLE api_keys DROP COLUMN live_user_id;
ALTER TABLE api_keys ADD COLUMN live_user_id TEXT GENERATED ALWAYS AS
    (CASE WHEN key_type = 1 AND revoke_time IS NULL AND rotated_to_id IS NULL THEN user_id END) VIRTUAL;
CREATE UNIQUE INDEX uq_api_keys_live_user ON api_keys (organization_id, live_user_id);
