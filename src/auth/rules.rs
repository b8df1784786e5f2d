//! The refresh-token rules as pure decisions over values, `now` included: no clock,
//! no database, no HTTP. The store's one-statement rotation already applies the happy
//! path; these rules judge a token that statement refused.

use crate::store::TokenState;

/// Why a refresh token is refused without harm to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    SessionRevoked,
    UserDisabled,
    SessionExpired,
    TokenExpired,
    WrongClient,
    /// A retry inside the grace window after the parent's replays were used up.
    ReplaysExhausted,
    /// The token's client is confidential and the caller did not authenticate as it.
    ClientAuthRequired,
    /// A refresh asked for a scope the session was not granted.
    ScopeWidened,
    /// The session is bound to a DPoP key and the request had no proof.
    DpopProofRequired,
    /// The session's client requires DPoP (the session is not bound) and the request
    /// had no proof.
    ClientRequiresDpop,
    /// The session is bound to another DPoP key than the proof's.
    DpopKeyMismatch,
}

impl Rejection {
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::SessionRevoked => "the session has been revoked",
            Rejection::UserDisabled => "the user is disabled",
            Rejection::SessionExpired => "the session has expired",
            Rejection::TokenExpired => "the refresh token has expired",
            Rejection::WrongClient => "the refresh token was issued to another client",
            Rejection::ReplaysExhausted => {
                "the refresh token was already rotated and retried too often; use its successor"
            }
            Rejection::ClientAuthRequired => "the refresh token's client must authenticate",
            Rejection::ScopeWidened => "a refresh may narrow the scope, never widen it",
            Rejection::DpopProofRequired => {
                "the refresh token is bound to a DPoP key: a DPoP proof by that key is required"
            }
            Rejection::DpopKeyMismatch => "the refresh token is bound to another DPoP key",
            Rejection::ClientRequiresDpop => "this client requires a DPoP proof",
        }
    }
}

/// How a spent token came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Presented after the grace window closed.
    OutsideGrace,
    /// Presented inside the window, but its successor was already used; or more than
    /// one generation behind its session, however long ago (its successor was spent
    /// too; the session row keeps only the last two generations).
    SuccessorUsed,
}

impl Reuse {
    pub fn as_str(self) -> &'static str {
        match self {
            Reuse::OutsideGrace => "outside_grace_window",
            Reuse::SuccessorUsed => "successor_already_used",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A retry inside the grace window: hand back the same (still unused) successor.
    Replay,
    /// A spent token presented again: the session is compromised; revoke it.
    Reuse(Reuse),
    Reject(Rejection),
    /// Unspent and valid: the rotation lost a race with a transaction that rolled back;
    /// rotating once more is safe.
    Rotate,
}

/// The grace window: how long after a rotation, and how many times, a retry with the
/// spent parent gets its successor back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    pub secs: i64,
    /// Replays per parent. A few tabs racing need one or two; past the cap a replay is
    /// refused without revoking the session, so a thief replaying a stolen parent
    /// cannot mint access tokens at will, and cannot log the holder out either.
    pub max_replays: i64,
}

/// Who presents a refresh token, and the scope they ask of it.
#[derive(Debug, Clone, Copy)]
pub struct Presenter<'a> {
    /// The client the request named or authenticated as; `None`: the default client.
    pub client_id: Option<&'a str>,
    /// Whether the caller proved `client_id`'s secret.
    pub authenticated: bool,
    /// A narrower scope asked for; `None`: the session's whole grant.
    pub scope: Option<&'a [String]>,
    /// The thumbprint of the request's DPoP proof key, if it had a proof.
    pub dpop_jkt: Option<&'a str>,
}

/// May this caller use this token at all? Checked before [`judge`], so a caller that
/// may not use a token triggers neither a grace replay nor reuse detection (an old
/// copy of a confidential client's token is worthless without the client's secret, a
/// DPoP-bound one without the key).
pub fn check_presenter(
    state: &TokenState,
    client_confidential: bool,
    client_requires_dpop: bool,
    presenter: &Presenter<'_>,
) -> Result<(), Rejection> {
    let owner = state.session.client_id.as_str();
    let named_owner = presenter.client_id == Some(owner);
    if client_confidential && !(presenter.authenticated && named_owner) {
        return Err(if presenter.authenticated {
            Rejection::WrongClient
        } else {
            Rejection::ClientAuthRequired
        });
    }
    if presenter.client_id.is_some() && !named_owner {
        return Err(Rejection::WrongClient);
    }
    match (state.session.dpop_jkt.as_deref(), presenter.dpop_jkt) {
        (Some(_), None) => return Err(Rejection::DpopProofRequired),
        (Some(bound), Some(key)) if bound != key => return Err(Rejection::DpopKeyMismatch),
        (None, None) if client_requires_dpop => return Err(Rejection::ClientRequiresDpop),
        _ => {}
    }
    let granted: Vec<&str> = state.session.scope.split(' ').collect();
    if presenter
        .scope
        .is_some_and(|asked| asked.iter().any(|a| !granted.contains(&a.as_str())))
    {
        return Err(Rejection::ScopeWidened);
    }
    Ok(())
}

/// Judges a refresh token that the rotation statement did not spend.
pub fn judge(state: &TokenState, client_id: Option<&str>, now: i64, grace: Grace) -> Decision {
    if state.session.revoked_at.is_some() {
        return Decision::Reject(Rejection::SessionRevoked);
    }
    if state.user_disabled {
        return Decision::Reject(Rejection::UserDisabled);
    }
    if state.session.expires_at <= now {
        return Decision::Reject(Rejection::SessionExpired);
    }
    if client_id.is_some_and(|c| c != state.session.client_id) {
        return Decision::Reject(Rejection::WrongClient);
    }
    if state.generations_behind > 1 {
        return Decision::Reuse(Reuse::SuccessorUsed);
    }
    let Some(spent_at) = state.spent_at else {
        return if state.expires_at <= now {
            Decision::Reject(Rejection::TokenExpired)
        } else {
            Decision::Rotate
        };
    };
    let in_window = grace.secs > 0 && now - spent_at <= grace.secs;
    if !in_window {
        return Decision::Reuse(Reuse::OutsideGrace);
    }
    let successor_usable = !state.successor_spent
        && state.successor_expires_at.is_some_and(|e| e > now)
        && state.sealed_successor.is_some();
    if !successor_usable {
        Decision::Reuse(Reuse::SuccessorUsed)
    } else if state.replays >= grace.max_replays {
        Decision::Reject(Rejection::ReplaysExhausted)
    } else {
        Decision::Replay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Session;
    use uuid::Uuid;

    const GRACE: Grace = Grace {
        secs: 10,
        max_replays: 3,
    };

    /// A token issued at 1000, spent at 1100, whose successor is unspent.
    fn spent_token() -> TokenState {
        TokenState {
            session: Session {
                id: Uuid::nil(),
                user_id: Uuid::nil(),
                client_id: "app".into(),
                scope: String::new(),
                created_at: 1000,
                last_used_at: 1100,
                expires_at: 100_000,
                revoked_at: None,
                user_agent: None,
                ip: None,
                dpop_jkt: None,
            },
            roles: vec![],
            user_disabled: false,
            issued_at: 1000,
            expires_at: 2000,
            spent_at: Some(1100),
            sealed_successor: Some(vec![1, 2, 3]),
            successor_spent: false,
            successor_expires_at: Some(3000),
            replays: 0,
            spent_ip: None,
            spent_agent: None,
            generations_behind: 1,
        }
    }

    /// A token of any older generation is reuse, inside the grace window or long
    /// after, whatever else its state says; but a revoked session or another client's
    /// token is refused first, as for any spent token.
    #[test]
    fn a_token_two_or_more_generations_back_is_reuse() {
        for (behind, now) in [(2, 1101), (10_000, 1101), (2, 99_999)] {
            let state = TokenState {
                spent_at: None,
                sealed_successor: None,
                successor_spent: true,
                generations_behind: behind,
                ..spent_token()
            };
            assert_eq!(
                judge(&state, None, now, GRACE),
                Decision::Reuse(Reuse::SuccessorUsed),
                "{behind} {now}"
            );
            assert_eq!(
                judge(&state, Some("other"), now, GRACE),
                Decision::Reject(Rejection::WrongClient)
            );
        }
    }

    #[test]
    fn unspent_valid_token_is_rotated() {
        let state = TokenState {
            spent_at: None,
            sealed_successor: None,
            successor_expires_at: None,
            ..spent_token()
        };
        assert_eq!(judge(&state, None, 1500, GRACE), Decision::Rotate);
    }

    #[test]
    fn replay_in_window_with_unspent_successor_gets_it_back() {
        assert_eq!(judge(&spent_token(), None, 1100, GRACE), Decision::Replay);
        assert_eq!(
            judge(&spent_token(), Some("app"), 1110, GRACE),
            Decision::Replay
        );
    }

    #[test]
    fn replay_in_window_with_spent_successor_is_reuse() {
        let state = TokenState {
            successor_spent: true,
            ..spent_token()
        };
        assert_eq!(
            judge(&state, None, 1105, GRACE),
            Decision::Reuse(Reuse::SuccessorUsed)
        );
    }

    #[test]
    fn replay_after_window_is_reuse() {
        assert_eq!(
            judge(&spent_token(), None, 1111, GRACE),
            Decision::Reuse(Reuse::OutsideGrace)
        );
    }

    #[test]
    fn zero_grace_disables_replay() {
        assert_eq!(
            judge(&spent_token(), None, 1100, Grace { secs: 0, ..GRACE }),
            Decision::Reuse(Reuse::OutsideGrace)
        );
    }

    #[test]
    fn expired_token_is_rejected() {
        let state = TokenState {
            spent_at: None,
            ..spent_token()
        };
        assert_eq!(
            judge(&state, None, 2000, GRACE),
            Decision::Reject(Rejection::TokenExpired)
        );
    }

    #[test]
    fn expired_session_is_rejected_even_inside_the_window() {
        let mut state = spent_token();
        state.session.expires_at = 1105;
        assert_eq!(
            judge(&state, None, 1105, GRACE),
            Decision::Reject(Rejection::SessionExpired)
        );
    }

    #[test]
    fn revoked_session_is_rejected_without_a_new_reuse_event() {
        let mut state = spent_token();
        state.session.revoked_at = Some(1101);
        assert_eq!(
            judge(&state, None, 1102, GRACE),
            Decision::Reject(Rejection::SessionRevoked)
        );
        assert_eq!(
            judge(&state, None, 99_999, GRACE),
            Decision::Reject(Rejection::SessionRevoked)
        );
    }

    #[test]
    fn disabled_user_is_rejected() {
        let state = TokenState {
            user_disabled: true,
            ..spent_token()
        };
        assert_eq!(
            judge(&state, None, 1101, GRACE),
            Decision::Reject(Rejection::UserDisabled)
        );
    }

    #[test]
    fn another_clients_token_is_rejected() {
        assert_eq!(
            judge(&spent_token(), Some("cli"), 1101, GRACE),
            Decision::Reject(Rejection::WrongClient)
        );
    }

    fn presenter<'a>(client_id: Option<&'a str>, authenticated: bool) -> Presenter<'a> {
        Presenter {
            client_id,
            authenticated,
            scope: None,
            dpop_jkt: None,
        }
    }

    #[test]
    fn a_confidential_clients_token_needs_that_client_authenticated() {
        let mut state = spent_token();
        state.session.client_id = "svc".into();
        for unauthenticated in [None, Some("svc"), Some("app")] {
            assert_eq!(
                check_presenter(&state, true, false, &presenter(unauthenticated, false)),
                Err(Rejection::ClientAuthRequired),
                "{unauthenticated:?}"
            );
        }
        assert_eq!(
            check_presenter(&state, true, false, &presenter(Some("other"), true)),
            Err(Rejection::WrongClient)
        );
        assert_eq!(
            check_presenter(&state, true, false, &presenter(Some("svc"), true)),
            Ok(())
        );
    }

    #[test]
    fn a_public_clients_token_needs_no_secret_but_the_right_name() {
        let state = spent_token();
        assert_eq!(
            check_presenter(&state, false, false, &presenter(None, false)),
            Ok(())
        );
        assert_eq!(
            check_presenter(&state, false, false, &presenter(Some("app"), false)),
            Ok(())
        );
        assert_eq!(
            check_presenter(&state, false, false, &presenter(Some("svc"), true)),
            Err(Rejection::WrongClient)
        );
    }

    #[test]
    fn a_refresh_may_narrow_the_scope_never_widen_it() {
        let mut state = spent_token();
        state.session.scope = "read write".into();
        let ask = |state: &TokenState, scope: &[&str]| {
            let scope: Vec<String> = scope.iter().map(|s| (*s).to_owned()).collect();
            check_presenter(
                state,
                false,
                false,
                &Presenter {
                    scope: Some(&scope),
                    ..presenter(None, false)
                },
            )
        };
        assert_eq!(ask(&state, &["read"]), Ok(()));
        assert_eq!(ask(&state, &["write", "read"]), Ok(()));
        assert_eq!(
            ask(&state, &["read", "admin"]),
            Err(Rejection::ScopeWidened)
        );
        state.session.scope = String::new();
        assert_eq!(ask(&state, &["read"]), Err(Rejection::ScopeWidened));
    }

    #[test]
    fn a_bound_session_rotates_only_with_a_proof_by_its_key() {
        let mut state = spent_token();
        state.session.dpop_jkt = Some("key-a".into());
        let with = |jkt| Presenter {
            dpop_jkt: jkt,
            ..presenter(None, false)
        };
        assert_eq!(
            check_presenter(&state, false, false, &with(None)),
            Err(Rejection::DpopProofRequired)
        );
        assert_eq!(
            check_presenter(&state, false, false, &with(Some("key-b"))),
            Err(Rejection::DpopKeyMismatch)
        );
        assert_eq!(
            check_presenter(&state, false, false, &with(Some("key-a"))),
            Ok(())
        );
        // An unbound session: a proof is welcome, and needed only if the client says so.
        state.session.dpop_jkt = None;
        assert_eq!(check_presenter(&state, false, false, &with(None)), Ok(()));
        assert_eq!(
            check_presenter(&state, false, false, &with(Some("key-b"))),
            Ok(())
        );
        assert_eq!(
            check_presenter(&state, false, true, &with(None)),
            Err(Rejection::ClientRequiresDpop)
        );
    }

    #[test]
    fn expired_successor_cannot_be_replayed() {
        let state = TokenState {
            successor_expires_at: Some(1105),
            ..spent_token()
        };
        assert_eq!(
            judge(&state, None, 1105, GRACE),
            Decision::Reuse(Reuse::SuccessorUsed)
        );
    }

    #[test]
    fn replays_stop_at_the_cap_without_harm_to_the_session() {
        let state = TokenState {
            replays: 2,
            ..spent_token()
        };
        assert_eq!(judge(&state, None, 1105, GRACE), Decision::Replay);
        let state = TokenState {
            replays: 3,
            ..spent_token()
        };
        assert_eq!(
            judge(&state, None, 1105, GRACE),
            Decision::Reject(Rejection::ReplaysExhausted)
        );
        let none = Grace {
            max_replays: 0,
            ..GRACE
        };
        assert_eq!(
            judge(&spent_token(), None, 1105, none),
            Decision::Reject(Rejection::ReplaysExhausted)
        );
        // Past the window it is reuse, however many replays were left.
        assert_eq!(
            judge(&spent_token(), None, 1111, GRACE),
            Decision::Reuse(Reuse::OutsideGrace)
        );
    }
}
