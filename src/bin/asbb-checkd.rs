//! `asbb-checkd`: the HTTP endpoint SLURM's submit path asks before a job may run.
//!
//! Serves `POST /api/v1/budget/check` (price the job, hold its estimate), `GET /health`,
//! `GET /metrics` and `GET /version` from a fixed pool of worker threads, with one writer
//! thread that commits concurrent checks together (see `asbb::check`). Listens on
//! `check.listen` (loopback by default), or on the socket systemd passes (`LISTEN_FDS`, socket
//! activation). No retries of its own: a check it cannot decide is answered with a reason code
//! (503 `database_unavailable`, …) and `job_submit.lua` applies the site's fail policy. SIGTERM
//! or SIGINT stops accepting, finishes the requests in hand, and exits 0.

/// mimalloc, for this binary only (and, through its `override` feature, for SQLite and libpq
/// in it too): with glibc's malloc the writer waited for arena locks that the workers held,
/// and SQLite's statement journal allocates a block for every page it saves. The batch jobs
/// keep glibc's, which returned memory better (their peak RSS grew by 40 % with mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

/// asbb-checkd — the asbb budget check endpoint.
#[derive(Debug, Parser)]
#[command(name = "asbb-checkd", version)]
struct Args {
    /// Configuration file [default: $ASBB_CONFIG, else /etc/asbb/asbb.toml if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Database URL [default: $ASBB_DATABASE_URL, else the config file's database.url].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Address to listen on [default: check.listen, 127.0.0.1:8080]. Keep it on loopback
    /// unless a proxy guards it. Ignored when systemd passes a socket.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
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
    let config = &loaded.config;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| config.database.url.clone());
    let db_url = asbb::db::DbUrl::parse(&url)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| config.check.listen.clone());
    let mut cfg = config.server_config(&listen, db_url)?;
    let token_file = config.check.token_file.trim();
    if !token_file.is_empty() {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("failed to read check.token_file {token_file}"))?;
        let token = token.trim().to_string();
        anyhow::ensure!(
            !token.is_empty(),
            "check.token_file {token_file} is empty; write a token into it or unset the key"
        );
        cfg.token = Some(token);
    }
    // Socket activation: systemd passes the listening socket as fd 3 (LISTEN_FDS=1).
    let inherited = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)
        .context("failed to take the socket systemd passed (LISTEN_FDS)")?;
    if inherited.is_some() {
        tracing::info!("using the socket passed by systemd");
    }
    asbb::check::serve(cfg, inherited, stop)?;
    Ok(())
}
