// The portal's only way to the server: the public /v1 API, with the session's token.

let token = null;

/** The session's token (`qr3p_…`), kept in memory and in this tab's sessionStorage. */
export function setToken(value) {
  token = value;
}

/** A failed API call: the API's `{"error": {"code", "message"}}` and the status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the API. Resolves to `{status, body}` for a 2xx answer; rejects with an
 * `ApiError` otherwise (401: the session expired or was revoked).
 */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection and try again.");
  }
  let parsed = null;
  const text = await response.text();
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      parsed = null;
    }
  }
  if (!response.ok) {
    const error = (parsed && parsed.error) || {};
    throw new ApiError(response.status, error.code || "error", error.message || `HTTP ${response.status}`);
  }
  return { status: response.status, body: parsed };
}

/** The event types a webhook can subscribe to, from the API's OpenAPI document. */
export async function eventTypes() {
  const response = await fetch("/v1/openapi.json", { cache: "no-store", credentials: "omit" });
  const doc = await response.json();
  const schema = doc.components.schemas.EventSubscription;
  return schema.enum.filter((name) => name !== "*");
}

/** `path` with the query parameters that have a value. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
