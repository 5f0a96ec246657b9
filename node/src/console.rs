//! The web console (`/ui/`) and the API's OpenAPI document (`/openapi.json`): static files
//! written by hand in `node/console/`, embedded in the binary. No token is needed for them;
//! the console asks for one (a login form) when the API answers 401, and sends it as a
//! bearer token.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// The console's page.
pub const INDEX_HTML: &str = include_str!("../console/index.html");
/// Its script.
pub const CONSOLE_JS: &str = include_str!("../console/console.js");
/// Its style sheet.
pub const CONSOLE_CSS: &str = include_str!("../console/console.css");
/// The OpenAPI 3.1 document of every route a node serves.
pub const OPENAPI_JSON: &str = include_str!("../console/openapi.json");

/// Scripts and styles only from the node itself, no inline script or handler, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: to the console.
pub async fn root() -> Redirect {
    Redirect::to("/ui/")
}

/// `GET /ui`: to `/ui/` (the page's relative asset links need the slash).
pub async fn ui_no_slash() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/console.js`
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

/// `GET /ui/console.css`
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// `GET /openapi.json`
pub async fn openapi() -> Response {
    let mut r = asset("application/json", OPENAPI_JSON);
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_handler() {
        let page = INDEX_HTML.to_ascii_lowercase();
        assert!(!page.contains("<script>"), "inline script");
        assert!(page.contains("<script src=\"console.js\""));
        for attr in [
            " onclick",
            " onload",
            " onerror",
            " onsubmit",
            " oninput",
            "style=\"",
        ] {
            assert!(!page.contains(attr), "inline {attr} in index.html");
        }
        assert!(
            !CONSOLE_JS.contains("innerHTML"),
            "the script builds nodes, never HTML text"
        );
        assert!(!CONSOLE_JS.contains("eval("));
    }

    #[test]
    fn the_openapi_document_is_json_of_version_3_1() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    }
}
