-- Usage limits (rate limits and quotas). Rate limits are read with the key and
-- counted in memory (or Redis), so they are one column; a quota's use is counted
-- here, the one place every instance agrees on: `quota_used` holds the credits
-- taken (spent or leased by an instance) in the period that starts at
-- `quota_period_start` (microseconds; 0 for a quota that never resets).
ALTER TABLE api_keys
    ADD COLUMN rate_limits        VARCHAR(1024) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    ADD COLUMN quota_limit        BIGINT        NULL,
    ADD COLUMN quota_period       SMALLINT      NULL,
    ADD COLUMN quota_used         BIGINT        NOT NULL DEFAULT 0,
    ADD COLUMN quota_period_start BIGINT        NOT NULL DEFAULT 0;
