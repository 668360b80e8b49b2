-- qr3 webhooks: initial schema.
-- Ids are prefixed ULIDs in lowercase Crockford base32: byte order is creation order,
-- hence COLLATE "C" on every id column that is sorted or paged on.

CREATE TABLE workspaces (
    id          text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are `qr3k_<ulid>_<secret>`; only SHA-256(secret) is stored, and it is
-- compared in constant time after the row is found by its public id.
CREATE TABLE api_keys (
    id            text COLLATE "C" PRIMARY KEY,
    workspace_id  text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    secret_sha256 bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX api_keys_workspace ON api_keys (workspace_id);

-- Webhook secrets are encrypted with AES-256-GCM (nonce || ciphertext || tag), the
-- webhook id as associated data so a ciphertext cannot be moved to another row.
CREATE TABLE webhooks (
    id                    text COLLATE "C" PRIMARY KEY,
    workspace_id          text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    url                   text NOT NULL,
    events                text[] NOT NULL,
    secret_ciphertext     bytea NOT NULL,
    secret_hint           text NOT NULL,
    is_active             boolean NOT NULL DEFAULT true,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    disabled_at           timestamptz,
    disabled_reason       text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
-- Listing a workspace's webhooks newest first, and fan-out lookups.
CREATE INDEX webhooks_workspace_id ON webhooks (workspace_id, id DESC);

-- Idempotent ingest: one row per (workspace, event id). `fanned_out_at` is set only once
-- every delivery job is confirmed by the broker, so an ingest worker that dies between
-- claiming and publishing leaves the event to be fanned out again on redelivery.
CREATE TABLE ingested_events (
    workspace_id   text NOT NULL,
    event_id       text NOT NULL,
    event_type     text NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    fanned_out_at  timestamptz,
    webhooks       integer,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX ingested_events_claimed_at ON ingested_events (claimed_at);

-- The delivery log: one row per attempt, append-only, written in batches by the
-- senders. Partitioned by day on created_at so retention is a DROP of old partitions,
-- never a DELETE. No primary key: ids are generated unique, and every extra index is a
-- cost on the hottest write path. Reads are per webhook, newest first.
CREATE TABLE delivery_attempts (
    id                text COLLATE "C" NOT NULL,
    webhook_id        text COLLATE "C" NOT NULL,
    workspace_id      text NOT NULL,
    event_id          text NOT NULL,
    event_type        text NOT NULL,
    status            text NOT NULL CHECK (status IN ('success', 'failed')),
    status_code       smallint,
    response_time_ms  integer NOT NULL,
    attempt           smallint NOT NULL,
    trigger           text NOT NULL CHECK (trigger IN ('event', 'ping', 'manual')),
    error             text,
    created_at        timestamptz NOT NULL
) PARTITION BY RANGE (created_at);
CREATE INDEX delivery_attempts_webhook_id ON delivery_attempts (webhook_id, id DESC);
CREATE INDEX delivery_attempts_event ON delivery_attempts (event_id);

-- Rows whose day has no partition yet land here instead of failing the batch.
CREATE TABLE delivery_attempts_default PARTITION OF delivery_attempts DEFAULT;

-- Creates the daily partitions from `first_day` for `days` days; idempotent. A day
-- whose rows already sit in the default partition (clock skew, or partitions not made
-- in time) cannot get its own partition: that day is skipped with a warning instead of
-- failing start-up, and its rows expire from the default partition.
CREATE FUNCTION qr3_ensure_delivery_partitions(first_day date, days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d date;
    name text;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := first_day + i;
        name := 'delivery_attempts_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF delivery_attempts FOR VALUES FROM (%L) TO (%L)',
                    name, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            EXCEPTION WHEN check_violation THEN
                RAISE WARNING 'delivery_attempts: % has rows for % in the default partition; not partitioned', name, d;
            END;
        END IF;
    END LOOP;
END $$;

-- Drops the daily partitions that end before `keep_from`; returns how many.
CREATE FUNCTION qr3_drop_delivery_partitions_before(keep_from date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'delivery_attempts'
          AND c.relname ~ '^delivery_attempts_p[0-9]{8}$'
    LOOP
        IF to_date(substring(part.relname FROM 20), 'YYYYMMDD') < keep_from THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;
