//! `asbb`: the admin CLI and every batch command.
//!
//! Parses the command line, runs one command from the library, prints errors to stderr, and
//! exits with one of the documented codes in `asbb::exit`. No retries here: each command is
//! one idempotent operation, safe to run again.

use clap::Parser;

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ASBB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    let cli = asbb::cli::Cli::parse();
    let code = match asbb::cli::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("asbb: {}", e.message);
            e.code
        }
    };
    std::process::exit(code);
}
