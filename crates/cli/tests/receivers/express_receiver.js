// A receiver written exactly as SPEC Part A documents it: Express parses the body with
// express.json() and the signature is checked over JSON.stringify(req.body).
// Usage: node express_receiver.js SECRET  (prints the port it listens on)
const crypto = require("crypto");
const express = require("express");

function verifySignature(payload, signature, secret) {
  const expected = crypto.createHmac("sha256", secret).update(payload).digest("hex");
  const received = signature.replace("sha256=", "");
  return crypto.timingSafeEqual(Buffer.from(expected, "hex"), Buffer.from(received, "hex"));
}

const secret = process.argv[2];
const app = express();
// The documentation's receiver: the default body limit (100 kB).
app.use(express.json());
app.post("/webhooks/qr3", (req, res) => {
  const signature = req.headers["x-qr3-signature"] || "";
  const valid = verifySignature(JSON.stringify(req.body), signature, secret);
  if (!valid) return res.status(401).json({ error: "Invalid signature" });
  res.json({ received: true });
});
const server = app.listen(0, "127.0.0.1", () => {
  console.log(server.address().port);
});
