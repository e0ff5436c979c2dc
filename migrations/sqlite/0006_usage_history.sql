-- Usage history: verifications per key, UTC hour or day, and outcome code. A row
-- per (key, bucket, code) rather than a column per code: a flush upserts only
-- the outcomes that happened, new codes need no migration, and the answer leaves
-- out zero outcomes for free. Hours and days are separate tables because they
-- are kept for different times (--usage-history-retention, and 400 days).
CREATE TABLE usage_hourly (
    key_id       TEXT    NOT NULL,
    bucket_start INTEGER NOT NULL,
    code         INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (key_id, bucket_start, code)
) STRICT;
CREATE INDEX ix_usage_hourly_start ON usage_hourly (bucket_start);

CREATE TABLE usage_daily (
    key_id       TEXT    NOT NULL,
    bucket_start INTEGER NOT NULL,
    code         INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (key_id, bucket_start, code)
) STRICT;
CREATE INDEX ix_usage_daily_start ON usage_daily (bucket_start);
