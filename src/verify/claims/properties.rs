//! Generated input for the one decoding path: arbitrary strings, dotted parts of
//! arbitrary bytes or JSON, and header objects with arbitrary members never panic, are
//! never accepted without a key, and reach the key lookup only with a JSON header that
//! says `typ: at+jwt` and names a `kid`. Past the size limit nothing is read at all.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn rules() -> Rules {
    Rules::new("https://issuer.test", "api", 5)
}

/// Decodes with a lookup that finds nothing and reports the `kid` it was asked for.
fn decode_recording(token: &str) -> (Result<Claims, VerifyError>, Option<String>) {
    let mut asked = None;
    let result = rules().decode(token, |kid| {
        asked = Some(kid.to_owned());
        None
    });
    (result, asked)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A header object: the three members we read, each present or not and each of the
/// right or a wrong type, plus arbitrary others.
fn header_object() -> impl Strategy<Value = Value> {
    let alg = prop_oneof![
        prop::sample::select(vec![
            "EdDSA", "ES256", "RS256", "HS256", "none", "None", "PS256", ""
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let typ = prop_oneof![
        prop::sample::select(vec![
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "JWT",
            "jwt",
            ""
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let kid = prop_oneof![any::<String>().prop_map(Value::from), json_value()];
    (
        prop::option::of(alg),
        prop::option::of(typ),
        prop::option::of(kid),
        prop::collection::btree_map(any::<String>(), json_value(), 0..4),
    )
        .prop_map(|(alg, typ, kid, extra)| {
            let mut object: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (name, value) in [("alg", alg), ("typ", typ), ("kid", kid)] {
                if let Some(v) = value {
                    object.insert(name.to_owned(), v);
                }
            }
            Value::Object(object)
        })
}

/// One dotted part: base64url of arbitrary bytes, of JSON, or arbitrary text.
fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        json_value().prop_map(|v| URL_SAFE_NO_PAD.encode(v.to_string())),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(crate::proptest_config(256))]

    #[test]
    fn arbitrary_strings_are_refused(token in any::<String>()) {
        let (result, _) = decode_recording(&token);
        prop_assert!(result.is_err());
    }

    #[test]
    fn arbitrary_dotted_parts_are_refused(parts in prop::collection::vec(part(), 0..6)) {
        let (result, _) = decode_recording(&parts.join("."));
        prop_assert!(result.is_err());
    }

    #[test]
    fn only_an_at_jwt_header_with_a_kid_reaches_the_key_lookup(
        header in header_object(),
        rest in prop::collection::vec(part(), 0..4),
    ) {
        let encoded = URL_SAFE_NO_PAD.encode(header.to_string());
        let token = std::iter::once(encoded).chain(rest).collect::<Vec<_>>().join(".");
        let (result, asked) = decode_recording(&token);
        prop_assert!(result.is_err());
        let typ_ok = header["typ"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt"));
        let alg_ok = header["alg"]
            .as_str()
            .is_some_and(|a| a.parse::<Algorithm>().is_ok());
        let kid = header["kid"].as_str();
        if token.len() > MAX_TOKEN_BYTES {
            prop_assert_eq!(result, Err(VerifyError::TooLarge));
            prop_assert_eq!(asked, None);
        } else if typ_ok && alg_ok {
            prop_assert_eq!(asked.as_deref(), kid, "{}", header);
        } else {
            prop_assert_eq!(asked, None, "{}", header);
        }
    }

    /// Bounded work: past the limit the answer is `TooLarge`, from the length alone.
    #[test]
    fn oversized_tokens_are_refused_unread(
        extra in 1..256 * 1024_usize,
        fill in prop::sample::select(vec!['a', '.', '{', '"', '=']),
    ) {
        let token = fill.to_string().repeat(MAX_TOKEN_BYTES + extra);
        let (result, asked) = decode_recording(&token);
        prop_assert_eq!(result, Err(VerifyError::TooLarge));
        prop_assert_eq!(asked, None);
    }
}
