//! `asbb-checkd`: the HTTP endpoint SLURM's submit path talks to.
//!
//! Serves `GET /health` (database reachable, schema current) on a loopback address with a small
//! fixed pool of worker threads. SIGTERM or SIGINT stops accepting, finishes the requests in
//! hand, and exits 0. No retries: a failed health probe answers 503 with a reason code.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;

/// asbb-checkd — the asbb HTTP endpoint (health of the ledger database).
#[derive(Debug, Parser)]
#[command(name = "asbb-checkd", version)]
struct Args {
    /// Configuration file [default: $ASBB_CONFIG, else /etc/asbb/asbb.toml if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Database URL [default: $ASBB_DATABASE_URL, else the config file's database.url].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Address to listen on. Keep it on loopback unless a proxy guards it.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ASBB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let code = match run(&args) {
        Ok(()) => asbb::exit::OK,
        Err(e) => {
            eprintln!("asbb-checkd: {e:#}");
            asbb::exit::ERROR
        }
    };
    std::process::exit(code);
}

fn run(args: &Args) -> anyhow::Result<()> {
    let loaded = asbb::config::load(args.config.as_deref(), &|k| std::env::var(k).ok())?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| loaded.config.database.url.clone());
    let db_url = asbb::db::DbUrl::parse(&url)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let cfg = asbb::check::ServerConfig {
        listen: args.listen.clone(),
        db_url,
        connect: loaded.config.connect_options(),
    };
    asbb::check::serve(cfg, stop)?;
    Ok(())
}
