-- Events and their deliveries are pruned after --event-retention, oldest
-- first in small batches by event id: the deliveries of a batch are found by
-- their event id, which the primary key (endpoint first) cannot serve.
CREATE INDEX ix_webhook_deliveries_event ON webhook_deliveries (event_id);
