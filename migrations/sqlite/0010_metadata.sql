-- A key's metadata, returned with every verification: a JSON object of string
-- values (at most 32 entries, 4 KiB), NULL for none.
ALTER TABLE api_keys ADD COLUMN metadata TEXT NULL;
