-- wrk script for `cargo xtask load`: authenticated requests to /v1/webhooks.
-- QR3_LOAD_API_KEY is the bearer key; QR3_LOAD_METHOD is GET (list) or POST (create).
-- At the end it prints one line, "QR3_LOAD " followed by a JSON summary.

local key = os.getenv("QR3_LOAD_API_KEY")
local method = os.getenv("QR3_LOAD_METHOD") or "GET"

wrk.method = method
wrk.headers["Authorization"] = "Bearer " .. key
if method == "POST" then
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"url":"https://example.com/webhooks/qr3","events":["qr.scanned","qr.created"]}'
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'QR3_LOAD {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
