-- qr3 webhooks: workspaces provisioned by the platform through /admin/v1.

-- Offboarding (DELETE /admin/v1/workspaces/:id) first marks the workspace deleted, in the
-- transaction that deletes its webhooks and API keys, then erases its delivery-log rows
-- and ingest claims, and deletes the row itself last. A marked workspace is gone for
-- everything else (reads answer 404, a PUT 409, ingest no longer claims its events),
-- and a DELETE repeated after a crash midway finds the row and finishes the erasure.
-- NULL for every live workspace; adding it rewrites nothing.
ALTER TABLE workspaces ADD COLUMN deleted_at timestamptz;

-- GET /admin/v1/workspaces pages newest first on (created_at, id): platform ids do not
-- sort by creation time as generated ones do.
CREATE INDEX workspaces_created ON workspaces (created_at DESC, id DESC);

-- A workspace's created_at is shown, and paged on, with millisecond precision, so it is
-- stored with that precision: the cursor of the last row seen is then exactly its key.
ALTER TABLE workspaces ALTER COLUMN created_at SET DEFAULT date_trunc('milliseconds', now());
UPDATE workspaces SET created_at = date_trunc('milliseconds', created_at)
    WHERE created_at <> date_trunc('milliseconds', created_at);
