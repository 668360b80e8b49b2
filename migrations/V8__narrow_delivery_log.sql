-- qr3 webhooks: a narrower delivery log.
--
-- V5 stored each payload once, but an attempt row still carried three text ids of 30
-- bytes, the event id, the workspace id and three words as text, and its per-webhook
-- index repeated two text ids in leaf pages left half full. From this version the
-- senders write attempts to `delivery_log` and their payloads to
-- `delivery_log_payloads`:
--   delivery_log.id, .webhook_id
--                     the 128 bits of the `whd_…` / `wh_…` ULID as a uuid (16 bytes;
--                     uuid order is ULID order is the text ids' order);
--   delivery_log.event
--                     the key of the attempt's payload row, qr3_payload_key(workspace,
--                     event id): the payload row names the workspace and the event, so
--                     the attempt repeats neither;
--   event_type, trigger, status
--                     small codes (qr3_log_event_type_name, qr3_log_trigger_name,
--                     qr3_log_status_name give the words back);
--   sent_headers, request_headers, request_body, response_body, error
--                     as in V5 (request_body only when it differs from the payload;
--                     request_headers only with sent_headers format 0).
-- The per-webhook index is on the top 64 bits of the webhook and attempt ids: a 16-byte
-- key whose entries Postgres packs into full leaf pages even while ten webhooks'
-- inserts interleave (it only does so for entries of at most two int8), where the
-- 72-byte entries of delivery_attempts were left in half-full pages. Readers take
-- `qr3_uuid_hi(id)` first and the whole id after it, so the order is exactly the id's.
--
-- Safe on a live database: new tables, indexes and functions, and the partition
-- functions replaced; nothing existing is rewritten or locked for long. Rows written
-- before, and by senders of the previous release during a rollout, stay in
-- delivery_attempts / event_payloads; readers of this release read both, and retention
-- drops both tables' daily partitions until the old ones are gone.

-- The top 64 bits of a uuid as a signed int8. A ULID's top bits are its millisecond
-- time, so for ids the sign bit is 0 and int8 order is id order.
CREATE FUNCTION qr3_uuid_hi(u uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('x' || encode(substring(uuid_send(u) FROM 1 FOR 8), 'hex'))::bit(64)::bigint
$$;

-- The lowercase Crockford base32 spelling of a ULID held in a uuid (26 characters),
-- as the ids' text after their prefix.
CREATE FUNCTION qr3_ulid_text(u uuid) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(substr('0123456789abcdefghjkmnpqrstvwxyz',
                             substring(b FROM i * 5 + 1 FOR 5)::integer + 1, 1), '' ORDER BY i)
    FROM (SELECT B'00' || ('x' || replace(u::text, '-', ''))::bit(128) AS b) bits,
         generate_series(0, 25) AS i
$$;

-- The key of an event's payload row: the first 128 bits of SHA-256 over the workspace
-- and event ids (neither can contain ':'). Two events of different workspaces never
-- share a key short of a SHA-256 collision. The writer computes the same in Rust.
CREATE FUNCTION qr3_payload_key(workspace_id text, event_id text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(substring(sha256(convert_to(workspace_id || ':' || event_id, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid
$$;

-- The words behind the codes (the store writes the same numbers).
CREATE FUNCTION qr3_log_event_type_name(code smallint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE code
        WHEN 1 THEN 'qr.created' WHEN 2 THEN 'qr.updated' WHEN 3 THEN 'qr.deleted'
        WHEN 4 THEN 'qr.scanned' WHEN 5 THEN 'qr.flagged' WHEN 6 THEN 'scan.created'
        WHEN 7 THEN 'workspace.updated' WHEN 8 THEN 'webhook.ping' END
$$;
CREATE FUNCTION qr3_log_trigger_name(code smallint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE code WHEN 1 THEN 'event' WHEN 2 THEN 'ping' WHEN 3 THEN 'manual' END
$$;
CREATE FUNCTION qr3_log_status_name(code smallint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE code WHEN 0 THEN 'failed' WHEN 1 THEN 'success' END
$$;

-- One row per attempt, append-only, no primary key (as delivery_attempts).
CREATE TABLE delivery_log (
    id                uuid NOT NULL,
    webhook_id        uuid NOT NULL,
    event             uuid NOT NULL,
    created_at        timestamptz NOT NULL,
    response_time_ms  integer NOT NULL,
    status_code       smallint,
    attempt           smallint NOT NULL,
    event_type        smallint NOT NULL CHECK (event_type BETWEEN 1 AND 8),
    trigger           smallint NOT NULL CHECK (trigger BETWEEN 1 AND 3),
    status            smallint NOT NULL CHECK (status IN (0, 1)),
    sent_headers      bytea,
    error             text,
    response_body     text,
    request_body      text,
    request_headers   jsonb
) PARTITION BY RANGE (created_at);
CREATE INDEX delivery_log_webhook ON delivery_log (qr3_uuid_hi(webhook_id), qr3_uuid_hi(id));
CREATE INDEX delivery_log_event ON delivery_log (event);
CREATE TABLE delivery_log_default PARTITION OF delivery_log DEFAULT;

-- An event's payload once per (workspace, event, UTC day of the attempts that sent
-- it), as event_payloads, under its key. `body` is NULL only when the first attempt
-- logged had no detail.
CREATE TABLE delivery_log_payloads (
    event         uuid NOT NULL,
    created_at    timestamptz NOT NULL,
    workspace_id  text NOT NULL,
    event_id      text NOT NULL,
    body          text,
    PRIMARY KEY (event, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE delivery_log_payloads_default PARTITION OF delivery_log_payloads DEFAULT;

-- Every attempt, old table and new, in delivery_attempts's words (for operators'
-- queries; the service reads each table through its own indexes).
CREATE VIEW delivery_log_all AS
    SELECT id, webhook_id, workspace_id, event_id, event_type, status, status_code,
           response_time_ms, attempt, trigger, error, created_at
    FROM delivery_attempts
    UNION ALL
    SELECT 'whd_' || qr3_ulid_text(a.id), 'wh_' || qr3_ulid_text(a.webhook_id), p.workspace_id,
           p.event_id, qr3_log_event_type_name(a.event_type), qr3_log_status_name(a.status),
           a.status_code, a.response_time_ms, a.attempt, qr3_log_trigger_name(a.trigger),
           a.error, a.created_at
    FROM delivery_log a
    JOIN delivery_log_payloads p
      ON p.event = a.event AND p.created_at = date_trunc('day', a.created_at, 'UTC');

-- As in V5, for the four tables of the log.
CREATE OR REPLACE FUNCTION qr3_ensure_delivery_partitions(first_day date, days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d date;
    parent text;
    name text;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := first_day + i;
        FOREACH parent IN ARRAY ARRAY['delivery_attempts', 'event_payloads', 'delivery_log', 'delivery_log_payloads'] LOOP
            name := parent || '_p' || to_char(d, 'YYYYMMDD');
            IF to_regclass(name) IS NULL THEN
                BEGIN
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                        name, parent, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
                EXCEPTION WHEN check_violation THEN
                    RAISE WARNING '%: % has rows for % in the default partition; not partitioned', parent, name, d;
                END;
            END IF;
        END LOOP;
    END LOOP;
END $$;

-- As in V5, for the four tables; counts the attempts' partitions (old and new).
CREATE OR REPLACE FUNCTION qr3_drop_delivery_partitions_before(keep_from date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname, p.relname AS parent
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('delivery_attempts', 'event_payloads', 'delivery_log', 'delivery_log_payloads')
          AND c.relname ~ '_p[0-9]{8}$'
    LOOP
        IF to_date(right(part.relname, 8), 'YYYYMMDD') < keep_from THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            IF part.parent IN ('delivery_attempts', 'delivery_log') THEN
                dropped := dropped + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

-- The new tables' partitions for the days the workers keep ready.
SELECT qr3_ensure_delivery_partitions((now() AT TIME ZONE 'UTC')::date - 1, 9);
