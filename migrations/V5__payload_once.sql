-- qr3 webhooks: each payload stored once in the delivery log.
--
-- Until now every attempt row carried the full request body and every request header
-- as jsonb, so a fan-out to ten webhooks stored the same payload ten times, and each
-- retry again. From this version:
--   event_payloads           the body of an event, once per (workspace, event) and UTC
--                            day of the attempts that sent it; partitioned by day like
--                            delivery_attempts, so retention drops both together and an
--                            attempt never outlives its payload.
--   delivery_attempts.sent_headers
--                            what only this attempt's headers say, compactly: a format
--                            byte, then for format 1 the user agent's version and the raw
--                            HMACs of `x-qr3-signature` and `webhook-signature`; every
--                            other header is rebuilt from the row (ids, attempt number,
--                            the timestamp's Unix seconds). Format 0: the headers are in
--                            request_headers as before (anything format 1 cannot rebuild
--                            exactly).
--   delivery_attempts.request_body
--                            NULL on new rows whose body is their event's payload; set
--                            only when an attempt sent something else.
--
-- Safe on a live database: a new table, a nullable column without default (no rewrite,
-- a brief catalog lock), and functions replaced. Rows written before keep their
-- request_headers and request_body and are read as they are.

CREATE TABLE event_payloads (
    workspace_id  text NOT NULL,
    event_id      text NOT NULL,
    -- Midnight UTC of the day of the attempts that share this copy.
    created_at    timestamptz NOT NULL,
    body          text NOT NULL,
    PRIMARY KEY (workspace_id, event_id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE event_payloads_default PARTITION OF event_payloads DEFAULT;

ALTER TABLE delivery_attempts ADD COLUMN sent_headers bytea;

-- As in V1, and the same days of event_payloads beside.
CREATE OR REPLACE FUNCTION qr3_ensure_delivery_partitions(first_day date, days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d date;
    parent text;
    name text;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := first_day + i;
        FOREACH parent IN ARRAY ARRAY['delivery_attempts', 'event_payloads'] LOOP
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

-- As in V1, for both tables of the log.
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
        WHERE p.relname IN ('delivery_attempts', 'event_payloads')
          AND c.relname ~ '_p[0-9]{8}$'
    LOOP
        IF to_date(right(part.relname, 8), 'YYYYMMDD') < keep_from THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            IF part.parent = 'delivery_attempts' THEN
                dropped := dropped + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

-- event_payloads's partitions for the days the workers keep ready (they call this
-- again at start-up and every hour).
SELECT qr3_ensure_delivery_partitions((now() AT TIME ZONE 'UTC')::date - 1, 9);
