//! The `tessera` command: parses the CLI and calls into the library.

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tessera::config::Config;
use tessera::server::{self, Server, StartError};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "An authorization server: JWT access tokens, rotating refresh tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage OAuth clients (backend services).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Exit 0 if the server at TESSERA_LISTEN answers /healthz (container HEALTHCHECK).
    Healthcheck,
    /// Delete what can no longer matter (what the server's janitor does every
    /// TESSERA_JANITOR_INTERVAL_SECS), for cron; prints the rows deleted per table.
    Prune,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client; prints {"client_id", "scopes", "require_dpop", "client_secret"}
    /// once as JSON.
    Create {
        #[arg(long)]
        name: String,
        /// A confidential client (a backend service) with a secret; otherwise public.
        #[arg(long)]
        confidential: bool,
        /// The scopes the client may be granted, space-separated; none if omitted.
        #[arg(long, default_value = "")]
        scopes: String,
        /// Its token requests must carry a DPoP proof (RFC 9449), so all its tokens are
        /// bound to the client's key; otherwise DPoP is optional.
        #[arg(long)]
        require_dpop: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new signing key now: published at once, signing after one JWKS cache
    /// lifetime; the old key stays published until its tokens have expired.
    Rotate,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create {
        #[arg(long)]
        email: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input (required: never from arguments).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

fn init_logging(filter: &str, format: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let targets = filter
        .parse::<tracing_subscriber::filter::Targets>()
        .unwrap_or_else(|_| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    let registry = tracing_subscriber::registry().with(targets);
    let _ = if format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        // Colours only on a terminal: log files and collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}

async fn run(cli: Cli) -> Result<(), StartError> {
    let config = Config::from_env()?;
    // `RUST_LOG`, the Rust convention, is honoured when the log filter was set
    // nowhere else (neither `TESSERA_LOG` nor the configuration file changed it).
    let filter = match (std::env::var_os("TESSERA_LOG"), std::env::var("RUST_LOG")) {
        (None, Ok(rust_log)) if !rust_log.trim().is_empty() && config.log == "info" => rust_log,
        _ => config.log.clone(),
    };
    init_logging(&filter, &config.log_format);
    match cli.command {
        Command::Serve => {
            let server = Server::bind(&config).await?;
            tracing::info!(addr = %server.local_addr()?, store = server.state().auth.store.backend(), "tessera listening");
            if let Some(addr) = server.metrics_addr() {
                tracing::info!(%addr, "metrics listening (loopback unless TESSERA_METRICS_LISTEN says otherwise)");
            }
            server.run(server::shutdown_signal()).await
        }
        Command::Healthcheck => {
            let mut addr = config.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()
                .map_err(|e| StartError::Other(e.to_string()))?;
            let response = client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .map_err(|e| StartError::Other(format!("healthcheck: {e}")))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(StartError::Other(format!(
                    "healthcheck: status {}",
                    response.status()
                )))
            }
        }
        Command::Prune => {
            let state = server::build_state(&config).await?;
            let report = state.auth.prune(tessera::http::extract::now()).await;
            println!("{}", serde_json::json!(report));
            if report.failed.is_empty() {
                Ok(())
            } else {
                Err(StartError::Other(format!(
                    "pruning failed for: {}",
                    report.failed.join(", ")
                )))
            }
        }
        Command::Migrate => {
            let store = server::open_store(&config).await?;
            tracing::info!(store = store.backend(), "migrations applied");
            Ok(())
        }
        Command::Client(ClientCommand::Create {
            name,
            confidential,
            scopes,
            require_dpop,
        }) => {
            let state = server::build_state(&config).await?;
            let client = state
                .auth
                .create_client_with_scopes(
                    &name,
                    confidential,
                    &scopes,
                    require_dpop,
                    tessera::http::extract::now(),
                )
                .await
                .map_err(|e| StartError::Other(e.to_string()))?;
            let mut out = serde_json::json!({
                "client_id": client.client_id,
                "scopes": client.scopes,
                "require_dpop": client.require_dpop,
            });
            if let Some(secret) = client.client_secret {
                out["client_secret"] = secret.into();
            }
            println!("{out}");
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate) => {
            let state = server::build_state(&config).await?;
            let now = tessera::http::extract::now();
            state
                .auth
                .rotate_keys(now, true)
                .await
                .map_err(|e| StartError::Other(e.to_string()))?;
            let keys = state
                .auth
                .store
                .signing_keys()
                .await
                .map_err(|e| StartError::Other(e.to_string()))?;
            let listed: Vec<_> = keys
                .iter()
                .map(|k| serde_json::json!({"kid": k.kid, "alg": k.alg, "activates_at": k.activates_at, "retires_at": k.retires_at}))
                .collect();
            println!("{}", serde_json::json!({"keys": listed}));
            Ok(())
        }
        Command::User(UserCommand::Create { email, admin, .. }) => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .map_err(|e| StartError::Other(format!("reading the password from stdin: {e}")))?;
            let password = password.strip_suffix('\n').unwrap_or(&password);
            let password = password.strip_suffix('\r').unwrap_or(password);
            let password: SecretString = password.into();
            let state = server::build_state(&config).await?;
            let roles = if admin {
                vec![tessera::auth::ADMIN_ROLE.to_owned()]
            } else {
                vec![]
            };
            let user = state
                .auth
                .create_user(&email, password, roles, None, tessera::http::extract::now())
                .await
                .map_err(|e| StartError::Other(e.to_string()))?;
            println!(
                "{}",
                serde_json::json!({"id": user.id, "email": user.email, "roles": user.roles})
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: {e}");
            ExitCode::FAILURE
        }
    }
}
