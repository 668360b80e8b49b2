//! The customer portal: a static page at `/portal/` (HTML, CSS and JavaScript modules
//! embedded in the binary, no build step, nothing loaded from elsewhere) that manages
//! one workspace's webhooks through the public `/v1` API with a portal session's token.
//!
//! The token arrives in the URL's fragment (`/portal/#qr3p_…`), which browsers never
//! send to a server; the page moves it to `sessionStorage`, removes it from the address
//! bar and sends it as `Authorization: Bearer` on its API calls, so the session is
//! subject to every rule of the API (404 across workspaces, 403 for a read-only
//! session's changes, the rate limit).
//!
//! Every portal response carries a strict Content-Security-Policy: scripts, styles and
//! API calls from this origin only, no inline script or style, nothing else loaded,
//! and `frame-ancestors` from `portal.frame_ancestors` (`'none'` when unset, plus
//! `X-Frame-Options: DENY` for older browsers).

use axum::{
    extract::{Path, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

use crate::{error::ApiError, state::ApiState};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};

/// Everything under `/portal/` besides the page itself.
const ASSETS: &[Asset] = &[
    Asset {
        name: "portal.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/portal.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/api.js"),
    },
    Asset {
        name: "views.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/views.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/dom.js"),
    },
    Asset {
        name: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/chart.js"),
    },
];

/// The portal's `Content-Security-Policy`, framing allowed to `frame_ancestors`
/// (origins validated by the configuration) or to nobody.
pub(crate) fn content_security_policy(frame_ancestors: &[String]) -> String {
    let ancestors = if frame_ancestors.is_empty() {
        "'none'".to_owned()
    } else {
        frame_ancestors.join(" ")
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors {ancestors}"
    )
}

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/portal", get(|| async { Redirect::permanent("/portal/") }))
        .route("/portal/", get(index))
        .route("/portal/{file}", get(asset))
}

async fn index(State(state): State<ApiState>) -> Response {
    serve(&state, &INDEX)
}

async fn asset(State(state): State<ApiState>, Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.name == file) {
        Some(asset) => serve(&state, asset),
        None => ApiError::NotFound(format!("no portal file {file}")).into_response(),
    }
}

fn serve(state: &ApiState, asset: &Asset) -> Response {
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, asset.content_type),
            // Small files; a new release must not be hidden by a cached old one.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        asset.body,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&state.config.portal_csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    if state.config.portal_csp.ends_with("frame-ancestors 'none'") {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_framing_unless_origins_are_configured() {
        let none = content_security_policy(&[]);
        assert!(none.ends_with("frame-ancestors 'none'"), "{none}");
        assert!(none.contains("script-src 'self';"));
        assert!(!none.contains("unsafe-inline"));
        let some =
            content_security_policy(&["https://app.qr3.app".into(), "https://*.qr3.app".into()]);
        assert!(
            some.ends_with("frame-ancestors https://app.qr3.app https://*.qr3.app"),
            "{some}"
        );
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() {
        let page = INDEX.body;
        assert!(!page.contains("<style"), "no inline <style>");
        assert!(!page.contains("style="), "no style attributes");
        assert!(!page.contains("onclick"), "no inline handlers");
        for script in page.split("<script").skip(1) {
            let tag = &script[..script.find('>').expect("a closed tag")];
            assert!(tag.contains("src="), "only external scripts: <script{tag}>");
        }
        for asset in ASSETS.iter().chain([&INDEX]) {
            for remote in [
                "src=\"http",
                "href=\"http",
                "from \"http",
                "url(",
                "fetch(\"http",
            ] {
                assert!(
                    !asset.body.contains(remote),
                    "{} loads nothing from elsewhere ({remote})",
                    asset.name
                );
            }
        }
    }
}
