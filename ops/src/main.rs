//! `ops`: Quayside's operator tool.
//!
//! - `ops up`: the whole platform on this machine: a private PostgreSQL under `./.data` (unless
//!   DATABASE_URL is set), migrations, the API and one worker, as child processes (the same
//!   binaries that get deployed). Ctrl-C stops all of it; a second `up` reuses the data.
//! - `ops bench queue`: the queue benchmark; prints one JSON line.

mod bench;
mod stack;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ops",
    about = "Quayside operator tool: local stack and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run PostgreSQL (embedded unless DATABASE_URL is set), the API and a worker until Ctrl-C.
    Up {
        /// Port of the API.
        #[arg(long, env = "API_PORT", default_value_t = 8080)]
        api_port: u16,
        /// Port of the worker's /metrics.
        #[arg(long, env = "METRICS_PORT", default_value_t = 9090)]
        metrics_port: u16,
    },
    /// Benchmarks; each prints one JSON line on stdout.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            api_port,
            metrics_port,
        } => up::run(api_port, metrics_port).await,
        Command::Bench { which } => bench::run(which).await,
    };
    if let Err(e) = result {
        eprintln!("ops: {e:#}");
        std::process::exit(1);
    }
}
