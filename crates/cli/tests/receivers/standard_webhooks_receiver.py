"""A receiver that verifies the Standard Webhooks headers (webhook-id, webhook-timestamp,
webhook-signature) with the public `standardwebhooks` package from PyPI, over the raw
body.
Usage: python3 standard_webhooks_receiver.py SECRETS_FILE  (prints the port it listens on)
SECRETS_FILE holds a JSON object of named `whsec_...` secrets, re-read on every request
so a test can add the secret a rotation returns. Each request is verified with each
secret on its own and printed as one JSON line: the Standard Webhooks and X-QR3 headers,
the raw body and the names of the secrets that verified it. It answers 200 when at least
one verified, 401 otherwise."""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

SECRETS_FILE = sys.argv[1]
# One line per request, even when requests are handled on several threads at once.
OUTPUT = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with open(SECRETS_FILE, encoding="utf-8") as f:
            secrets = json.load(f)
        headers = dict(self.headers.items())
        verified = []
        for name, secret in secrets.items():
            try:
                Webhook(secret).verify(body, headers)
                verified.append(name)
            except WebhookVerificationError:
                pass  # Not signed with this secret (or too old): try the next one.
        record = {
            "webhook_id": self.headers.get("webhook-id"),
            "webhook_timestamp": self.headers.get("webhook-timestamp"),
            "webhook_signature": self.headers.get("webhook-signature"),
            "x_qr3_event_id": self.headers.get("x-qr3-event-id"),
            "x_qr3_timestamp": self.headers.get("x-qr3-timestamp"),
            "x_qr3_signature": self.headers.get("x-qr3-signature"),
            "body": body.decode("utf-8"),
            "verified": verified,
        }
        with OUTPUT:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
        answer = b'{"received":true}' if verified else b'{"error":"Invalid signature"}'
        self.send_response(200 if verified else 401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
