//! The HTTP surface of `asbb-checkd`.
//!
//! This module serves `GET /health`: whether the database answers and its schema is the one
//! this build knows. The budget check itself (`POST /api/v1/budget/check`) is not served by
//! this version; unknown paths answer 404 with a reason code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::db::{self, ConnectOptions, DbUrl};

/// Worker threads: a small fixed pool, so a burst of requests cannot exhaust the host.
pub const WORKERS: usize = 4;

/// How often a worker looks up from waiting to notice a shutdown request.
const SHUTDOWN_POLL: Duration = Duration::from_millis(250);

/// Largest request body read; anything bigger is refused without reading it.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// What the server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// The database.
    pub db_url: DbUrl,
    /// How to connect.
    pub connect: ConnectOptions,
}

/// The answer to `GET /health`: status code and JSON body.
pub fn health(db_url: &DbUrl, opts: &ConnectOptions) -> (u16, serde_json::Value) {
    let backend = db_url.backend().as_str();
    match db::connect_checked(db_url, opts) {
        Ok(_) => (
            200,
            json!({"status": "ok", "database": backend, "schema": "current", "version": env!("CARGO_PKG_VERSION")}),
        ),
        Err(e) => {
            let reason = match e {
                db::DbError::Unmigrated { .. } | db::DbError::MissingFile(_) => {
                    "schema_not_current"
                }
                db::DbError::TooNew(_) => "schema_too_new",
                _ => "database_unavailable",
            };
            (
                503,
                json!({"status": "unavailable", "database": backend, "reason": reason, "message": e.to_string()}),
            )
        }
    }
}

fn respond(req: tiny_http::Request, code: u16, body: &serde_json::Value) {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
        .expect("static header is valid");
    let resp = tiny_http::Response::from_string(body.to_string())
        .with_status_code(code)
        .with_header(header);
    if let Err(e) = req.respond(resp) {
        tracing::debug!("client went away before the answer: {e}");
    }
}

fn handle(req: tiny_http::Request, cfg: &ServerConfig) {
    let too_big = req.body_length().is_some_and(|n| n > BODY_BYTES_MAX);
    let path = req.url().split('?').next().unwrap_or("").to_string();
    match (req.method(), path.as_str()) {
        _ if too_big => respond(
            req,
            413,
            &json!({"reason": "body_too_large", "message": format!("request bodies are limited to {BODY_BYTES_MAX} bytes")}),
        ),
        (tiny_http::Method::Get, "/health") => {
            let (code, body) = health(&cfg.db_url, &cfg.connect);
            respond(req, code, &body)
        }
        (_, "/health") => respond(
            req,
            405,
            &json!({"reason": "method_not_allowed", "message": "use GET /health"}),
        ),
        _ => respond(
            req,
            404,
            &json!({"reason": "not_found", "message": format!("no endpoint {path}")}),
        ),
    }
}

/// Serves until `stop` becomes true; then finishes the requests in hand and returns.
pub fn serve(cfg: ServerConfig, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let server =
        Arc::new(tiny_http::Server::http(&cfg.listen).map_err(|e| {
            std::io::Error::other(format!("failed to listen on {}: {e}", cfg.listen))
        })?);
    // Logged with the bound address so that `--listen 127.0.0.1:0` tells where it went.
    match server.server_addr() {
        tiny_http::ListenAddr::IP(addr) => tracing::info!("asbb-checkd listening on {addr}"),
        other => tracing::info!("asbb-checkd listening on {other}"),
    }
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = Arc::clone(&server);
            let stop = Arc::clone(&stop);
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match server.recv_timeout(SHUTDOWN_POLL) {
                        Ok(Some(req)) => handle(req, &cfg),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("failed to accept a request: {e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    tracing::info!("asbb-checkd stopped");
    Ok(())
}
