"""A receiver written as SPEC Part A documents it in Python: the signature is checked
over the raw body with hmac.compare_digest.
Usage: python3 python_receiver.py SECRET  (prints the port it listens on)"""
import hashlib
import hmac
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = sys.argv[1]


def verify_signature(payload: str, signature: str, secret: str) -> bool:
    expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    received = signature.removeprefix("sha256=")
    return hmac.compare_digest(expected, received)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        valid = verify_signature(body.decode("utf-8"), self.headers.get("x-qr3-signature", ""), SECRET)
        answer = b'{"received":true}' if valid else b'{"error":"Invalid signature"}'
        self.send_response(200 if valid else 401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
