-- A key's metadata, returned with every verification: a JSON object of string
-- values (at most 32 entries, 4 KiB), NULL for none. TEXT rather than JSON:
-- keygate never queries inside it, and MariaDB's JSON is LONGTEXT anyway.
ALTER TABLE api_keys ADD COLUMN metadata TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
