-- qr3 webhooks: delivery detail, manual retries and per-webhook rate limits.

-- What each attempt sent and what came back, for GET /v1/webhooks/:id/deliveries/:id
-- and for manual retries (which re-send `request_body`). Nullable and without default,
-- so adding them to the partitioned table rewrites nothing; rows logged before this
-- migration simply have no detail. They expire with their partition, like the rest of
-- the log.
--   request_headers  every header the sender set, as a JSON object of strings
--   request_body     the exact payload posted
--   response_body    the first delivery.response_body_bytes of the response (UTF-8,
--                    lossily decoded); NULL when not stored
ALTER TABLE delivery_attempts
    ADD COLUMN request_headers jsonb,
    ADD COLUMN request_body    text,
    ADD COLUMN response_body   text;

-- Optional cap on deliveries per second to one webhook; NULL means no cap. The senders
-- space the webhook's attempts out instead of failing them.
ALTER TABLE webhooks
    ADD COLUMN max_per_second integer CHECK (max_per_second BETWEEN 1 AND 10000);

-- Manual retries and recoveries per webhook, counted in fixed one-minute windows so the
-- limit holds across every API replica (the webhook row is the lock).
ALTER TABLE webhooks
    ADD COLUMN manual_window_start timestamptz,
    ADD COLUMN manual_window_count integer NOT NULL DEFAULT 0;
