-- The shared GCRA state of each webhook with a max_per_second: the next free send slot
-- (Unix microseconds, Postgres's clock). Senders take slots in blocks with one atomic
-- statement, so max_per_second holds across every sender process.
CREATE TABLE webhook_rate_slots (
    webhook_id   text COLLATE "C" PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    next_slot_us bigint NOT NULL
);
