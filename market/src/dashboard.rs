//! The web dashboard: a few static files built into the binary and served under `/dashboard/`
//! (no separate server, nothing fetched from elsewhere at run time). The pages read the public
//! API like any client; the ledger page checks the node's export with the ledger verifier
//! compiled to WebAssembly (`ledger/wasm`, committed as `market/dashboard/ledger.wasm` and
//! rebuilt byte for byte by `scripts/build-dashboard-wasm.sh --check` in CI), and checks what
//! the API shows (entries, results) against the verified export. The page itself comes from the
//! node: it protects a visitor from a node's wrong answers, not from a node that serves another
//! page (against such a node, `market-ledger verify` on one's own machine). A buyer's results
//! are read with a request the page signs in the browser with the buyer's key file (WebCrypto
//! Ed25519, a non-extractable key); only the signature is sent, and only for the two reads the
//! page makes, and a result is offered only if the verified ledger's release names it and its
//! bytes hash to it.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::ApiError;

/// What the pages may load: their own files, the API on the same origin, and the WebAssembly
/// module they compile. No inline script or style, no other origin, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The files, by name, with their media types.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../dashboard/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../dashboard/style.css"),
    ),
    (
        "ledger.wasm",
        "application/wasm",
        include_bytes!("../dashboard/ledger.wasm"),
    ),
];

/// `/` and `/dashboard`: to the dashboard's page.
pub(crate) async fn home() -> Redirect {
    Redirect::to("/dashboard/")
}

/// `/dashboard/`: the page.
pub(crate) async fn index() -> Response {
    serve("index.html")
}

/// `/dashboard/{file}`: one of the page's files (a name that is not even UTF-8 is none of
/// them: the same JSON 404).
pub(crate) async fn asset(
    file: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    match file {
        Ok(Path(file)) => serve(&file),
        Err(_) => ApiError::not_found("dashboard file").into_response(),
    }
}

fn serve(name: &str) -> Response {
    let Some((_, media_type, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found("dashboard file").into_response();
    };
    let mut response = (StatusCode::OK, *bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change only with the binary; a browser asks again each time (they are small,
    // except the verifier, which it revalidates).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_its_type_and_the_policy() {
        for (name, media_type, bytes) in ASSETS {
            let r = serve(name);
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], *media_type);
            assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap_or_default()
                .contains("default-src 'none'"));
            assert!(!bytes.is_empty(), "{name} is empty");
        }
        assert_eq!(serve("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_verifier_is_a_webassembly_module() {
        let (_, _, wasm) = ASSETS
            .iter()
            .find(|(n, _, _)| *n == "ledger.wasm")
            .unwrap_or_else(|| unreachable!("listed above"));
        assert_eq!(&wasm[..4], b"\0asm");
    }
}
