-- qr3 webhooks: secret rotation with overlap.
-- POST /v1/webhooks/:id/rotate-secret moves the current secret here and sets a new one
-- on the webhook. Until `expires_at` the sender signs `webhook-signature` with this
-- secret too, beside the current one, so receivers can switch without downtime.
-- `secret_ciphertext` is the webhook's former ciphertext, moved as it is: AES-256-GCM
-- (nonce || ciphertext || tag) with the webhook id as associated data, like
-- webhooks.secret_ciphertext. `id` orders rotations: a higher id is a newer secret.
CREATE TABLE webhook_previous_secrets (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id         text COLLATE "C" NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    secret_ciphertext  bytea NOT NULL,
    rotated_at         timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL
);
-- The sender's lookup of a webhook's previous secrets, newest first.
CREATE INDEX webhook_previous_secrets_webhook ON webhook_previous_secrets (webhook_id, id DESC);
-- Retention deletes expired rows.
CREATE INDEX webhook_previous_secrets_expires_at ON webhook_previous_secrets (expires_at);
