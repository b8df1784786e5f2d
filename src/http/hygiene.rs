//! What every answer says to caches and browsers, and what of a request may reach a log
//! line. Answers carry users' data (emails, addresses, user agents), so nothing is
//! stored by a cache unless the handler chose its own caching (the JWKS); a caller's
//! request id and path are bounded and plain, so they cannot forge fields in text logs.

use std::borrow::Cow;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::Response;

/// HSTS for an https issuer: a year, this host only (the issuer's parent domain may
/// serve other things over plain http).
const HSTS: &str = "max-age=31536000";

/// `Cache-Control: no-store` unless the handler set its own, `nosniff` always, and HSTS
/// when the issuer is https.
pub fn security_headers(https: bool, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if https {
        headers
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(HeaderValue::from_static(HSTS));
    }
    response
}

/// The longest request id taken from a caller.
pub const MAX_REQUEST_ID: usize = 64;

/// Whether a caller's request id may be kept: short, and only `[A-Za-z0-9._:-]`.
pub fn plain_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// Drops a caller's `x-request-id` that is not one plain value, so that a new one is
/// made for the request (and echoed) instead.
pub async fn plain_request_ids(mut request: Request) -> Request {
    let ids = request.headers().get_all("x-request-id");
    let mut count = 0usize;
    let all_plain = ids.iter().all(|v| {
        count += 1;
        plain_request_id(v.as_bytes())
    });
    if count > 1 || !all_plain {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// Paths longer than this are cut in log lines.
pub const MAX_LOGGED_PATH: usize = 256;

/// `text`, cut to at most `max` bytes at a character boundary, with a marker saying how
/// long it was.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let cut = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    Cow::Owned(format!("{}…[{} bytes]", &text[..cut], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_must_be_short_and_plain() {
        assert!(plain_request_id(b"abc-123.x:y_Z"));
        assert!(plain_request_id("a".repeat(64).as_bytes()));
        assert!(!plain_request_id("a".repeat(65).as_bytes()));
        assert!(!plain_request_id(b""));
        assert!(!plain_request_id(b"a b"));
        assert!(!plain_request_id(b"a\"b"));
        assert!(!plain_request_id("é".as_bytes()));
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(bounded("/short", 256), "/short");
        let long = format!("/{}", "é".repeat(300));
        let cut = bounded(&long, 256);
        assert!(cut.starts_with('/') && cut.ends_with(&format!("…[{} bytes]", long.len())));
        assert!(cut.len() <= 256 + 20, "{}", cut.len());
    }
}
