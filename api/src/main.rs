//! `api`: serve the HTTP API (`api`), apply migrations (`api migrate`), print the OpenAPI
//! spec (`api openapi`), or check a running process (`api healthcheck`, the container's
//! health check: the image has no shell and no curl).

use api::config::{EnvWithDotenv, Settings};
use clap::{Parser, Subcommand};
use engine::config::ConfigError;

#[derive(Parser)]
#[command(name = "api", version, about = "Quayside HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations and exit.
    Migrate,
    /// Print the OpenAPI spec (what `openapi.json` holds).
    Openapi,
    /// Exit 0 if `GET /health` on this host's `PORT` (or `--url`) answers 2xx within 2 s;
    /// else print why and exit 1. Reads no other setting.
    Healthcheck {
        /// What to ask instead, e.g. a worker's `http://127.0.0.1:9090/metrics`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Create an admin user. The password is read from ADMIN_PASSWORD, else from the first
    /// line of standard input.
    CreateAdmin {
        /// The admin's user name.
        #[arg(long)]
        username: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Openapi) => {
            print!("{}", api::spec_json());
            return;
        }
        Some(Command::Healthcheck { url }) => match healthcheck(url.clone()).await {
            Ok(()) => return,
            Err(e) => {
                eprintln!("api healthcheck: {e:#}");
                std::process::exit(1);
            }
        },
        _ => {}
    }
    // Only serving signs tokens: `migrate` and `create-admin` leave the key alone.
    let settings = match load_settings(cli.command.is_none()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("api: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_level)
                .expect("LOG_LEVEL was validated with the settings"),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli.command, settings).await {
        eprintln!("api: {e:#}");
        std::process::exit(1);
    }
}

fn load_settings(serve: bool) -> Result<Settings, ConfigError> {
    let mut settings = Settings::from_source(&EnvWithDotenv::load()?)?;
    if serve && settings.secret_key.is_none() {
        // Only development gets here: the settings refuse every other environment.
        let path = std::path::Path::new(api::config::DEV_SECRET_KEY_FILE);
        settings.secret_key = Some(api::config::development_secret_key(path)?);
    }
    Ok(settings)
}

async fn run(command: Option<Command>, settings: Settings) -> anyhow::Result<()> {
    let pool = engine::db::pool(&settings.database)?;
    let applied = engine::db::migrate(&pool).await?;
    tracing::info!(migrations_applied = applied, "migrated");
    match command {
        Some(Command::Migrate) => return Ok(()),
        Some(Command::CreateAdmin { username }) => {
            let password = match &settings.admin_password {
                Some(p) => p.expose().to_owned(),
                None => read_password_line()?,
            };
            if api::auth::ensure_admin(&pool, &username, &password).await? {
                println!("created admin {username}");
                return Ok(());
            }
            anyhow::bail!("a user named {username} already exists");
        }
        Some(Command::Openapi | Command::Healthcheck { .. }) | None => {}
    }
    if let Some((username, password)) = settings.bootstrap_admin() {
        let created = api::auth::ensure_admin(&pool, username, password.expose()).await?;
        tracing::info!(%username, created, "admin from ADMIN_USERNAME");
    }
    let (host, port) = (settings.host.clone(), settings.port);
    let listener = poem::listener::TcpListener::bind(format!("{host}:{port}"));
    tracing::info!(%host, port, environment = %settings.environment, "api listening");
    poem::Server::new(listener)
        .run_with_graceful_shutdown(
            api::app(pool, &settings),
            engine::signal::shutdown(),
            Some(std::time::Duration::from_secs(10)),
        )
        .await?;
    Ok(())
}

/// The first line of standard input, without its line ending.
fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "no password: set ADMIN_PASSWORD or pipe it on standard input"
    );
    Ok(password)
}

/// `GET url` (default: `/health` on `PORT`, else `API_PORT`, else 8080, on 127.0.0.1).
async fn healthcheck(url: Option<String>) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let port = std::env::var("PORT")
                .or_else(|_| std::env::var("API_PORT"))
                .unwrap_or_else(|_| "8080".into());
            let port: u16 = port
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("PORT {port:?} is not a port number"))?;
            format!("http://127.0.0.1:{port}/health")
        }
    };
    let answer = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?
        .get(&url)
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "{url} answered {}",
        answer.status()
    );
    Ok(())
}
