//! Input rules for emails, passwords, roles and scopes.

use secrecy::{ExposeSecret, SecretString};

use super::AuthError;
use crate::passwords::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};

const MAX_EMAIL: usize = 254;
const MAX_SCOPE: usize = 1024;
const MAX_ROLES: usize = 32;

/// Trims and lower-cases an email and checks its shape (one `@`, a dotted domain,
/// no spaces or control characters). Deliverability is not our business.
pub fn normalize_email(raw: &str) -> Result<String, AuthError> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(AuthError::InvalidEmail("email is required"));
    }
    if email.len() > MAX_EMAIL {
        return Err(AuthError::InvalidEmail("email is too long"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(AuthError::InvalidEmail("email must contain @"));
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '@';
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty()
        || local.len() > 64
        || !domain_ok
        || email.chars().filter(|c| *c == '@').count() != 1
        || local.chars().any(bad_char)
        || domain.chars().any(bad_char)
    {
        return Err(AuthError::InvalidEmail("email is not a valid address"));
    }
    Ok(email)
}

pub fn password(password: &SecretString) -> Result<(), AuthError> {
    // Counting stops past the maximum: the work is bounded whatever the length.
    let len = password
        .expose_secret()
        .chars()
        .take(MAX_PASSWORD_CHARS + 1)
        .count();
    if len < MIN_PASSWORD_CHARS {
        return Err(AuthError::InvalidPassword(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if len > MAX_PASSWORD_CHARS {
        return Err(AuthError::InvalidPassword(format!(
            "password must be at most {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

fn is_token_char(c: char) -> bool {
    // RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

/// A requested scope as a space-separated, de-duplicated list in request order.
pub fn normalize_scope(raw: Option<&str>) -> Result<String, AuthError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_SCOPE {
        return Err(AuthError::InvalidScope("scope is too long"));
    }
    let mut out: Vec<&str> = Vec::new();
    for token in raw.split(' ').filter(|t| !t.is_empty()) {
        if !token.chars().all(is_token_char) {
            return Err(AuthError::InvalidScope("scope contains invalid characters"));
        }
        if !out.contains(&token) {
            out.push(token);
        }
    }
    Ok(out.join(" "))
}

/// Client ids are short words; anything else cannot name a client.
pub fn client_id(id: Option<&str>) -> Result<Option<&str>, AuthError> {
    match id {
        Some(id)
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')) =>
        {
            Err(AuthError::InvalidClient)
        }
        other => Ok(other),
    }
}

/// Roles are scope-like words: lower-case letters, digits, `_`, `-`, `:`.
pub fn roles(roles: Vec<String>) -> Result<Vec<String>, AuthError> {
    if roles.len() > MAX_ROLES {
        return Err(AuthError::InvalidRequest("too many roles".into()));
    }
    let mut out: Vec<String> = Vec::new();
    for role in roles {
        let ok = !role.is_empty()
            && role.len() <= 64
            && role.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | ':')
            });
        if !ok {
            return Err(AuthError::InvalidRequest(format!("invalid role {role:?}")));
        }
        if !out.contains(&role) {
            out.push(role);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").ok().as_deref(),
            Some("alice@example.com")
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@b@example.com",
            "alice@.example.com",
            "alice@example..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn passwords_have_character_bounds() {
        assert!(password(&"1234567".into()).is_err());
        assert!(password(&"12345678".into()).is_ok());
        assert!(password(&"x".repeat(1024).into()).is_ok());
        assert!(password(&"x".repeat(1025).into()).is_err());
        // Characters, not bytes: 4 two-byte characters are too short, 1024 are fine.
        assert!(password(&"\u{e9}".repeat(4).into()).is_err());
        assert!(password(&"\u{e9}".repeat(8).into()).is_ok());
        assert!(password(&"\u{e9}".repeat(1024).into()).is_ok());
        assert!(password(&"\u{e9}".repeat(1025).into()).is_err());
    }

    #[test]
    fn scopes_are_deduplicated_and_checked() {
        assert_eq!(
            normalize_scope(Some(" read  write read ")).ok().as_deref(),
            Some("read write")
        );
        assert_eq!(normalize_scope(None).ok().as_deref(), Some(""));
        assert!(normalize_scope(Some("read \"quoted\"")).is_err());
        assert!(normalize_scope(Some("caf\u{e9}")).is_err());
    }

    #[test]
    fn client_ids_are_words() {
        assert_eq!(client_id(Some("app")).ok(), Some(Some("app")));
        assert_eq!(client_id(None).ok(), Some(None));
        for bad in ["", "a\0b", "with space", "é"] {
            assert!(client_id(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_are_words() {
        assert_eq!(
            roles(vec!["admin".into(), "admin".into()]).ok(),
            Some(vec!["admin".to_owned()])
        );
        assert!(roles(vec!["Admin".into()]).is_err());
        assert!(roles(vec!["a b".into()]).is_err());
    }
}
