//! The OpenAPI 3.1 document, generated from the handlers' annotations, and the docs
//! page (Swagger UI, its assets built into the binary: no CDN, works offline).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{AppState, account, admin, oauth, ops, services, wellknown};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tessera", description = "Authorization server: JWT access tokens, rotating refresh tokens, revocation. Routes that take a bearer token also take a DPoP-bound one (RFC 9449) as `Authorization: DPoP <token>` with a `DPoP` proof for `<issuer><path>` carrying `ath`; a bound token sent as Bearer is 401 invalid_token, a missing or bad proof 401 invalid_dpop_proof, both with `WWW-Authenticate: DPoP`."),
    paths(
        oauth::token, oauth::revoke,
        account::signup, account::me, account::sessions, account::end_session, account::logout,
        admin::create_user, admin::list_users, admin::user_sessions, admin::revoke_user_sessions,
        admin::revoke_session, admin::disable, admin::enable, admin::audit, admin::list_clients,
        services::introspect, services::revocations,
        wellknown::jwks, wellknown::metadata,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(crate::store::Revocation)),
    modifiers(&Security),
    tags(
        (name = "oauth", description = "Apps: tokens and revocation (RFC 6749, RFC 7009)"),
        (name = "account", description = "Users: their account and sessions"),
        (name = "admin", description = "Admins: users, forced logout, clients; the session is checked live"),
        (name = "services", description = "Backend services: introspection and the revocation feed"),
        (name = "discovery", description = "Keys and metadata"),
        (name = "ops", description = "Operators"),
    )
)]
pub struct ApiDoc;

/// `/openapi.json` and `/docs`.
pub fn router() -> axum::Router<AppState> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        .into()
}
