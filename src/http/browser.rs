//! Browser apps: the refresh token travels in an `HttpOnly` cookie, out of reach of the
//! page's scripts (so an XSS cannot read it), and every request the cookie speaks for
//! must prove it was sent by a script the server's CORS policy allowed (CSRF).
//!
//! One cookie with fixed attributes is written and read here by hand: a `Set-Cookie`
//! line and a lookup of one name in a `Cookie` header do not earn a crate.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;

use super::ApiError;

/// The header a cookie-authenticated request must carry. A cross-site form cannot set
/// a header, and a cross-site script cannot without a CORS preflight we refuse.
pub const CSRF_HEADER: &str = "x-tessera-csrf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

/// How the refresh cookie is written, and who may spend it.
#[derive(Debug, Clone)]
pub struct Browser {
    /// `__Host-` prefix, `Secure` and `Path=/`; off only for plain-http development,
    /// where the cookie is confined to `/oauth` instead.
    pub secure: bool,
    pub same_site: SameSite,
    pub allowed_origins: Vec<String>,
}

impl Browser {
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-tessera_refresh"
        } else {
            "tessera_refresh"
        }
    }

    fn attributes(&self, max_age: i64) -> String {
        let mut s = format!(
            "Path={}; Max-Age={max_age}; HttpOnly; SameSite={}",
            if self.secure { "/" } else { "/oauth" },
            self.same_site.as_str()
        );
        if self.secure {
            s.push_str("; Secure");
        }
        s
    }

    /// The `Set-Cookie` value delivering a refresh token for `max_age` seconds.
    pub fn set(&self, token: &str, max_age: i64) -> Option<HeaderValue> {
        let line = format!(
            "{}={token}; {}",
            self.cookie_name(),
            self.attributes(max_age)
        );
        HeaderValue::from_str(&line).ok()
    }

    /// The `Set-Cookie` value that makes the browser forget the refresh token.
    pub fn clear(&self) -> HeaderValue {
        let line = format!("{}=; {}", self.cookie_name(), self.attributes(0));
        HeaderValue::from_str(&line).unwrap_or(HeaderValue::from_static(""))
    }

    /// The refresh token from the request's cookies, if it carries ours.
    pub fn read(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, v)| *k == name && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    }

    /// The CSRF proof: the custom header, and an allowed `Origin` when there is one.
    /// Checked before anything is spent, so a refused request rotates nothing.
    pub fn check_csrf(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let proof = headers
            .get(CSRF_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        let origin_ok = match headers.get(header::ORIGIN) {
            None => true,
            Some(origin) => self
                .allowed_origins
                .iter()
                .any(|o| o.as_bytes() == origin.as_bytes()),
        };
        if proof && origin_ok {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_check_failed",
            if proof {
                "the request's Origin is not allowed"
            } else {
                "a cookie-authenticated request must carry X-Tessera-CSRF: 1"
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browser(secure: bool) -> Browser {
        Browser {
            secure,
            same_site: SameSite::Strict,
            allowed_origins: vec!["https://app.example".into()],
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn secure_cookie_is_host_prefixed_at_root() {
        let v = browser(true).set("tsr_x", 60).unwrap();
        assert_eq!(
            v,
            "__Host-tessera_refresh=tsr_x; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
    }

    #[test]
    fn development_cookie_is_confined_to_oauth() {
        let v = browser(false).clear();
        assert_eq!(
            v,
            "tessera_refresh=; Path=/oauth; Max-Age=0; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn reads_only_its_own_name() {
        let b = browser(true);
        let h = headers(&[(
            "cookie",
            "a=1; tessera_refresh=no; __Host-tessera_refresh=tsr_y",
        )]);
        assert_eq!(b.read(&h).as_deref(), Some("tsr_y"));
        assert_eq!(b.read(&headers(&[("cookie", "a=1")])), None);
    }

    #[test]
    fn csrf_needs_the_header_and_an_allowed_origin() {
        let b = browser(true);
        assert!(b.check_csrf(&headers(&[("x-tessera-csrf", "1")])).is_ok());
        assert!(
            b.check_csrf(&headers(&[
                ("x-tessera-csrf", "1"),
                ("origin", "https://app.example")
            ]))
            .is_ok()
        );
        assert!(b.check_csrf(&headers(&[])).is_err());
        assert!(
            b.check_csrf(&headers(&[
                ("x-tessera-csrf", "1"),
                ("origin", "https://evil.example")
            ]))
            .is_err()
        );
        assert!(
            b.check_csrf(&headers(&[("x-tessera-csrf", "1"), ("origin", "null")]))
                .is_err()
        );
    }
}
