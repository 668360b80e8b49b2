-- qr3 webhooks: customer-portal sessions (POST /v1/portal-sessions).

-- A session lets a browser manage one workspace's webhooks for a short while. Its token
-- is `qr3p_<secret>`; only SHA-256 of the whole token is stored, and a presented token
-- is found by that hash (a hash lookup reveals nothing useful through its timing).
-- A session is refused once `expires_at` has passed or `revoked_at` is set, and with
-- the workspace as soon as the workspace is marked for erasure. Expired sessions are
-- deleted when the workspace next creates one.
CREATE TABLE portal_sessions (
    id            text COLLATE "C" PRIMARY KEY,
    workspace_id  text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    token_sha256  bytea NOT NULL UNIQUE,
    read_only     boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX portal_sessions_workspace ON portal_sessions (workspace_id, expires_at);
