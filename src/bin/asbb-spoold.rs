//! `asbb-spoold`: watches the spool directories and takes files in as they arrive.
//!
//! notify wakes it; each wake-up rescans with the same intake as `asbb spool scan` and, unless
//! `spool.reconcile = false`, reconciles what came in. A periodic rescan (spool.rescan_interval)
//! covers missed events and NFS. SIGTERM or SIGINT finishes the current batch and exits 0.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;

/// asbb-spoold — the asbb spool watcher.
#[derive(Debug, Parser)]
#[command(name = "asbb-spoold", version)]
struct Args {
    /// Configuration file [default: $ASBB_CONFIG, else /etc/asbb/asbb.toml if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Database URL [default: $ASBB_DATABASE_URL, else the config file's database.url].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// ASBX cost exports [default: spool.asbx_dir].
    #[arg(long, value_name = "DIR")]
    asbx_dir: Option<std::path::PathBuf>,
    /// Job-end records [default: spool.jobs_dir].
    #[arg(long, value_name = "DIR")]
    jobs_dir: Option<std::path::PathBuf>,
    /// ASBA plans [default: spool.plans_dir].
    #[arg(long, value_name = "DIR")]
    plans_dir: Option<std::path::PathBuf>,
    /// One pass, then exit.
    #[arg(long)]
    once: bool,
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
            eprintln!("asbb-spoold: {e:#}");
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
    let mut dirs = config.spool_dirs();
    if let Some(d) = &args.asbx_dir {
        dirs.asbx = Some(d.clone());
    }
    if let Some(d) = &args.jobs_dir {
        dirs.jobs = Some(d.clone());
    }
    if let Some(d) = &args.plans_dir {
        dirs.plans = Some(d.clone());
    }
    if dirs.is_empty() {
        anyhow::bail!("no spool directory configured (set [spool] or pass --asbx-dir, --jobs-dir, --plans-dir)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let cfg = asbb::spool::daemon::DaemonConfig {
        dirs,
        intake: config.intake_options(),
        rescan_interval: config.rescan_interval(),
        reconcile: config.spool.reconcile.then(|| config.reconcile_policy()),
        db_url: asbb::db::DbUrl::parse(&url)?,
        connect: config.connect_options(),
        once: args.once,
    };
    asbb::spool::daemon::run(&cfg, stop)
}
