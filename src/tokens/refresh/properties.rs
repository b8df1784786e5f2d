//! Generated input for the refresh-token parser: it accepts exactly the shape we issue
//! (checked against an oracle written apart from it), never panics, and rejects any
//! other length before decoding anything, so its work is bounded whatever it is sent.

use proptest::prelude::*;

use super::*;

const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The issued shapes, spelled out: `tsr_` and either 96 base64url characters (72
/// bytes, no stray bits) or, issued before sessions were one row, 43 whose last
/// carries no stray bits (43 x 6 = 258 bits for 256).
fn oracle(s: &str) -> bool {
    let Some(body) = s.strip_prefix(PREFIX) else {
        return false;
    };
    let values: Option<Vec<usize>> = body.chars().map(|c| ALPHABET.find(c)).collect();
    match values {
        Some(v) => v.len() == 96 || (v.len() == 43 && v[42] % 4 == 0),
        None => false,
    }
}

/// A string near an issued shape: a real token of either shape with one edit.
fn near_miss() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            prop::collection::vec(any::<u8>(), 32),
            prop::collection::vec(any::<u8>(), 72)
        ],
        0..LENGTH + 1,
        any::<char>(),
        0..3_u8,
    )
        .prop_map(|(bytes, at, c, edit)| {
            let mut chars: Vec<char> = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
                .chars()
                .collect();
            let at = at.min(chars.len());
            match edit {
                0 if at < chars.len() => chars[at] = c,
                1 => chars.insert(at, c),
                _ if at < chars.len() => {
                    chars.remove(at);
                }
                _ => chars.push(c),
            }
            chars.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(crate::proptest_config(256))]

    #[test]
    fn parse_accepts_exactly_the_issued_shape(s in any::<String>()) {
        let parsed = RefreshToken::parse(&s);
        prop_assert_eq!(parsed.is_some(), oracle(&s));
        if let Some(t) = parsed {
            prop_assert_eq!(t.expose(), s.as_str());
        }
    }

    #[test]
    fn parse_judges_near_misses_like_the_oracle(s in near_miss()) {
        prop_assert_eq!(RefreshToken::parse(&s).is_some(), oracle(&s), "{:?}", s);
    }

    #[test]
    fn any_issued_token_parses_back(bytes in any::<[u8; 32]>(), generation in 1..i64::MAX) {
        let s = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        prop_assert!(RefreshToken::parse(&s).is_some());
        let mac = RefreshMac::new(&bytes);
        let t = RefreshToken::issue(&mac, Uuid::from_bytes(bytes[..16].try_into().unwrap_or_default()), generation);
        prop_assert!(RefreshToken::parse(t.expose()).is_some_and(|p| p.presented(&mac).is_some()));
    }

    /// Bounded work: a wrong length is refused on the length alone, however long.
    #[test]
    fn other_lengths_are_refused_unread(
        len in (0..64 * 1024_usize)
            .prop_filter("not an issued length", |n| *n != LENGTH && *n != LEGACY_LENGTH),
        fill in prop::sample::select(ALPHABET.chars().collect::<Vec<_>>()),
    ) {
        let s = format!("{PREFIX}{}", fill.to_string().repeat(len.saturating_sub(PREFIX.len())));
        prop_assert!(RefreshToken::parse(&s).is_none());
    }
}
