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
}

impl Rejection {
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::SessionRevoked => "the session has been revoked",
            Rejection::UserDisabled => "the user is disabled",
            Rejection::SessionExpired => "the session has expired",
            Rejection::TokenExpired => "the refresh token has expired",
            Rejection::WrongClient => "the refresh token was issued to another client",
        }
    }
}

/// How a spent token came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Presented after the grace window closed.
    OutsideGrace,
    /// Presented inside the window, but its successor was already used.
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

/// Judges a refresh token that the rotation statement did not spend.
pub fn judge(state: &TokenState, client_id: Option<&str>, now: i64, grace_secs: i64) -> Decision {
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
    let Some(spent_at) = state.spent_at else {
        return if state.expires_at <= now {
            Decision::Reject(Rejection::TokenExpired)
        } else {
            Decision::Rotate
        };
    };
    let in_window = grace_secs > 0 && now - spent_at <= grace_secs;
    if !in_window {
        return Decision::Reuse(Reuse::OutsideGrace);
    }
    let successor_usable = !state.successor_spent
        && state.successor_expires_at.is_some_and(|e| e > now)
        && state.sealed_successor.is_some();
    if successor_usable {
        Decision::Replay
    } else {
        Decision::Reuse(Reuse::SuccessorUsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Session;
    use uuid::Uuid;

    const GRACE: i64 = 10;

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
            },
            roles: vec![],
            user_disabled: false,
            issued_at: 1000,
            expires_at: 2000,
            spent_at: Some(1100),
            sealed_successor: Some(vec![1, 2, 3]),
            successor_spent: false,
            successor_expires_at: Some(3000),
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
            judge(&spent_token(), None, 1100, 0),
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
}
