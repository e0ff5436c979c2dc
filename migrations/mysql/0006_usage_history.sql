-- Usage history: verifications per key, UTC hour or day, and outcome code. A row
-- per (key, bucket, code) rather than a column per code: a flush upserts only
-- the outcomes that happened, new codes need no migration, and the answer leaves
-- out zero outcomes for free. Hours and days are separate tables because they
-- are kept for different times (--usage-history-retention, and 400 days).
CREATE TABLE usage_hourly (
    key_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    bucket_start BIGINT   NOT NULL,
    code         SMALLINT NOT NULL,
    count        BIGINT   NOT NULL,
    PRIMARY KEY (key_id, bucket_start, code),
    KEY ix_usage_hourly_start (bucket_start)
) ENGINE = InnoDB;

CREATE TABLE usage_daily (
    key_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    bucket_start BIGINT   NOT NULL,
    code         SMALLINT NOT NULL,
    count        BIGINT   NOT NULL,
    PRIMARY KEY (key_id, bucket_start, code),
    KEY ix_usage_daily_start (bucket_start)
) ENGINE = InnoDB;
