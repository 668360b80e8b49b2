//! Request extractors whose every rejection is an [`ApiError`] (axum's own `Json`,
//! `Query` and `Path` reject with plain text): a JSON body, query parameters and the
//! webhook id of the path.
//!
//! Body and query errors name the field at fault: serde's "unknown field", "missing
//! field" and "duplicate field" messages carry the name, and `serde_path_to_error`
//! gives the path of a value of the wrong type.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts, HeaderMap, StatusCode},
};
use qr3_domain::{DeliveryId, WebhookId};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_path_to_error::Segment;

use crate::{error::ApiError, state::ApiState};

/// A JSON object body of type `T`, sent as `application/json`.
///
/// 400 when the body is not JSON, not an object or has another content type; 413 when
/// it is, or its `Content-Length` says it is, larger than `api.max_body_bytes`; 422
/// naming the field when it does not fit `T` (wrong type, unknown, missing or
/// duplicated field).
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::Malformed(
                "Content-Type must be application/json".into(),
            ));
        }
        // A declared length over the limit is refused before reading a byte of it.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = state.config.max_body_bytes;
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: state.config.max_body_bytes,
                }
            } else {
                ApiError::Malformed("cannot read the request body".into())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Like [`JsonBody`], for a route whose body may be left out: no body at all (empty,
/// whatever its `Content-Type`) is `T::default()`; any other body follows
/// [`JsonBody`]'s rules.
#[derive(Debug)]
pub(crate) struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<ApiState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::Malformed("cannot read the request body".into())
            }
        })?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(ApiError::Malformed(
                "Content-Type must be application/json".into(),
            ));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON object body into `T`; see [`JsonBody`] for the error mapping.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let not_json =
        |e: serde_json::Error| ApiError::Malformed(format!("request body is not valid JSON: {e}"));
    // Checked first: serde would also read a struct from a JSON array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(bytes) {
            Err(e) => not_json(e),
            Ok(_) => ApiError::Malformed("request body must be a JSON object".into()),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => de.end().map(|()| value).map_err(not_json),
        // A type error can be found before a syntax error further on; a body that is
        // not JSON at all is malformed whatever else is wrong with it.
        Err(error) => match serde_json::from_slice::<IgnoredAny>(bytes) {
            Err(syntax) => Err(not_json(syntax)),
            Ok(_) => Err(field_error(&error, "field")),
        },
    }
}

/// The query string as a `T` whose fields are all `Option<String>` (parsed further by
/// the handler). Unknown and repeated parameters are refused with 422, so a typo does
/// not silently return unfiltered results.
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or_default();
        let mut params = serde_json::Map::new();
        for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            let name = name.into_owned();
            if params.contains_key(&name) {
                return Err(ApiError::invalid_field(
                    name.clone(),
                    format!("query parameter `{name}` is given more than once"),
                ));
            }
            params.insert(name, serde_json::Value::String(value.into_owned()));
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(params))
            .map(Query)
            .map_err(|e| field_error(&e, "query parameter"))
    }
}

/// The `{id}` of a `/v1/webhooks/{id}…` route. Anything that is not a webhook id
/// answers 404, like an id that does not exist: ids are not validated for the caller.
#[derive(Debug)]
pub(crate) struct WebhookPath(pub WebhookId);

impl<S: Send + Sync> FromRequestParts<S> for WebhookPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::webhook_not_found())?;
        WebhookId::parse(&raw)
            .map(WebhookPath)
            .map_err(|_| ApiError::webhook_not_found())
    }
}

/// The webhook and delivery ids of `/v1/webhooks/{id}/deliveries/{delivery_id}…`; 404
/// when either is not a well-formed id.
#[derive(Debug)]
pub(crate) struct DeliveryPath(pub WebhookId, pub DeliveryId);

impl<S: Send + Sync> FromRequestParts<S> for DeliveryPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((webhook, delivery)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::webhook_not_found())?;
        let webhook = WebhookId::parse(&webhook).map_err(|_| ApiError::webhook_not_found())?;
        let delivery = DeliveryId::parse(&delivery).map_err(|_| ApiError::delivery_not_found())?;
        Ok(DeliveryPath(webhook, delivery))
    }
}

/// A 422 naming the field a deserialization error is about. `noun` is how the message
/// calls a field ("field" for bodies, "query parameter" for query strings).
fn field_error(error: &serde_path_to_error::Error<serde_json::Error>, noun: &str) -> ApiError {
    let inner = error.inner();
    let mut message = inner.to_string();
    // serde_json appends the position; the field name says more.
    if inner.line() > 0 {
        if let Some((head, _)) = message.rsplit_once(" at line ") {
            message = head.to_owned();
        }
    }
    // "unknown field `event`, expected …", "missing field `url`", "duplicate field `url`".
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|marker| {
            let start = message.find(marker)? + marker.len();
            let len = message[start..].find('`')?;
            Some(message[start..start + len].to_owned())
        });
    let message = message.replace("field `", &format!("{noun} `"));
    if let Some(field) = named {
        return ApiError::invalid_field(field, message);
    }
    let field = error
        .path()
        .iter()
        .find_map(|segment| match segment {
            Segment::Map { key } => Some(key.clone()),
            _ => None,
        })
        .unwrap_or_default();
    ApiError::invalid_field(field, format!("{}: {message}", error.path()))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only deserialized
    struct Body {
        url: String,
        events: Vec<String>,
        secret: Option<String>,
    }

    fn field_of(body: &str) -> (String, String) {
        match parse_json::<Body>(body.as_bytes()) {
            Err(ApiError::InvalidField { field, message }) => (field, message),
            other => panic!("expected a field error for {body}, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_at_fault() {
        let (field, message) = field_of(r#"{"url":"u","event":["qr.created"]}"#);
        assert_eq!(field, "event");
        assert!(message.starts_with("unknown field `event`"), "{message}");
        assert_eq!(field_of(r#"{"events":[]}"#).0, "url");
        assert_eq!(field_of(r#"{"url":"u","url":"v","events":[]}"#).0, "url");
        let (field, message) = field_of(r#"{"url":"u","events":["a",5]}"#);
        assert_eq!(field, "events");
        assert_eq!(
            message,
            "events[1]: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn syntax_errors_and_non_objects_are_malformed() {
        for body in [
            "",
            "{",
            r#"{"url": "u""#,
            r#"{"event": [1"#,
            "[1,2]",
            "\"x\"",
            "null",
            r#"{"url":"u","events":[]} trailing"#,
        ] {
            assert!(
                matches!(
                    parse_json::<Body>(body.as_bytes()),
                    Err(ApiError::Malformed(_))
                ),
                "{body}"
            );
        }
    }
}
