//! The `one-loyalty` command: serve, migrate, manage API keys.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use one_loyalty::config::{Overrides, Settings};
use one_loyalty::domain::clock::SystemClock;
use one_loyalty::persistence::access::SeaAccessRepository;
use one_loyalty::persistence::db;
use one_loyalty::service::access::AccessService;
use one_loyalty::startup::{Application, shutdown_signal};
use one_loyalty::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "one-loyalty",
    version,
    about = "ONe Loyalty: loyalty points for the ONe B2B platform"
)]
struct Cli {
    /// A configuration file layered over the defaults.
    #[arg(long, global = true, env = "LOYALTY_CONFIG")]
    config: Option<PathBuf>,
    /// The database URL (<sqlite://PATH> or postgres://...).
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve {
        /// The listen address, e.g. 127.0.0.1:50051.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key; it is printed once, only its hash is stored.
    Create {
        #[arg(long)]
        tenant: String,
        /// Repeat for several roles.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
}

/// mimalloc instead of glibc's allocator: a call allocates and frees many small buffers on two
/// threads, and glibc's `malloc`/`free` were about 12 % of the service's CPU per earn
/// (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let listen = match &cli.command {
        Some(Command::Serve { listen }) => *listen,
        _ => None,
    };
    let overrides = Overrides {
        listen,
        database_url: cli.database_url.clone(),
    };
    let settings = Settings::load(cli.config.as_deref(), &overrides)?;
    telemetry::init(&settings.telemetry);
    match cli.command.unwrap_or(Command::Serve { listen: None }) {
        Command::Serve { .. } => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Migrate => {
            let conn = db::connect(&settings.database).await?;
            db::migrate(&conn).await?;
            println!("migrations applied");
        }
        Command::ApiKey(ApiKeyCommand::Create {
            tenant,
            roles,
            label,
        }) => {
            let conn = db::connect(&settings.database).await?;
            db::migrate(&conn).await?;
            let access = AccessService::new(
                Arc::new(SeaAccessRepository::new(conn)),
                Arc::new(SystemClock),
            );
            let issued = access.issue_key(&tenant, &roles, &label).await?;
            println!("key id: {}", issued.key_id);
            println!("api key (shown once, store it now): {}", issued.secret);
        }
    }
    Ok(())
}
