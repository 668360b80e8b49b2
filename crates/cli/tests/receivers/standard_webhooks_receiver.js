// A receiver that verifies the Standard Webhooks headers (webhook-id, webhook-timestamp,
// webhook-signature) with the public `standardwebhooks` npm package, over the raw body.
// Usage: node standard_webhooks_receiver.js SECRETS_FILE  (prints the port it listens on)
// SECRETS_FILE holds a JSON object of named `whsec_…` secrets, re-read on every request
// so a test can add the secret a rotation returns. Each request is verified with each
// secret on its own and printed as one JSON line: the Standard Webhooks and X-QR3
// headers, the raw body and the names of the secrets that verified it. It answers 200
// when at least one verified, 401 otherwise.
const fs = require("fs");
const express = require("express");
const { Webhook } = require("standardwebhooks");

const secretsFile = process.argv[2];
const app = express();
app.post("/webhooks/qr3", express.raw({ type: "application/json" }), (req, res) => {
  const secrets = JSON.parse(fs.readFileSync(secretsFile, "utf8"));
  const body = req.body.toString("utf8");
  const verified = [];
  for (const [name, secret] of Object.entries(secrets)) {
    try {
      new Webhook(secret).verify(body, req.headers);
      verified.push(name);
    } catch (error) {
      // Not signed with this secret (or too old): try the next one.
    }
  }
  console.log(
    JSON.stringify({
      webhook_id: req.get("webhook-id") ?? null,
      webhook_timestamp: req.get("webhook-timestamp") ?? null,
      webhook_signature: req.get("webhook-signature") ?? null,
      x_qr3_event_id: req.get("x-qr3-event-id") ?? null,
      x_qr3_timestamp: req.get("x-qr3-timestamp") ?? null,
      x_qr3_signature: req.get("x-qr3-signature") ?? null,
      body,
      verified,
    }),
  );
  if (verified.length === 0) return res.status(401).json({ error: "Invalid signature" });
  res.json({ received: true });
});
const server = app.listen(0, "127.0.0.1", () => {
  console.log(server.address().port);
});
