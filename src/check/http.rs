//! Just enough HTTP/1.1 for a loopback endpoint with hard limits: requests are parsed with
//! `httparse`, every read has a deadline, bodies have a size cap, and a connection is kept
//! alive only while nobody else waits for a worker.
//!
//! Why not a general server crate: the endpoint must never hang on a slow client and must never
//! grow threads under load. `tiny_http` reads without timeouts and spawns a thread per
//! connection; an async stack would be most of the binary for three routes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most headers in one request.
const HEADERS_MAX: usize = 64;
/// How long a worker waits for the next request on a kept-alive connection.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
/// How often a worker waiting on an idle connection looks up (shutdown, others waiting).
pub const IDLE_POLL: Duration = Duration::from_millis(50);
/// How long writing an answer may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// One request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the client allows another request on this connection.
    pub keep_alive: bool,
}

impl Request {
    /// A header's value (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read. Each maps to an answer (or to silence, for a closed
/// connection).
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection (or stayed idle) between requests.
    Closed,
    /// The request did not arrive within the time limit.
    Timeout,
    /// The head is larger than [`HEAD_BYTES_MAX`].
    HeadTooLarge,
    /// The body is larger than allowed (the size it announced).
    BodyTooLarge(u64),
    /// No `Content-Length` on a request with a body (chunked bodies are not accepted).
    LengthRequired,
    /// Not HTTP/1.x.
    Malformed(String),
}

/// What the reader needs to know.
pub struct Limits {
    /// Time for a whole request, from its first byte.
    pub request_timeout: Duration,
    /// Largest body.
    pub body_bytes_max: usize,
}

/// Reads one request from `stream`. `buf` keeps bytes read past the end of a request (a
/// pipelined next one). `idle` is called while waiting for the first byte; when it returns
/// `false` the wait ends with [`ReadError::Closed`].
pub fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
    idle: &mut dyn FnMut() -> bool,
) -> Result<Request, ReadError> {
    let mut chunk = [0u8; 4096];
    // Wait for the first byte of the next request, looking up now and then.
    let idle_until = Instant::now() + KEEPALIVE_IDLE;
    while buf.is_empty() {
        if !idle() || Instant::now() >= idle_until {
            return Err(ReadError::Closed);
        }
        let _ = stream.set_read_timeout(Some(IDLE_POLL));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Err(ReadError::Closed),
        }
    }
    let deadline = Instant::now() + limits.request_timeout;
    let mut read_more = |stream: &mut TcpStream, buf: &mut Vec<u8>| -> Result<(), ReadError> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ReadError::Timeout)?;
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if is_timeout(&e) => Err(ReadError::Timeout),
            Err(_) => Err(ReadError::Closed),
        }
    };
    let (head_len, method, path, headers, minor) = loop {
        let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req
                    .path
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                break (n, method, path, headers, req.version.unwrap_or(1));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > HEAD_BYTES_MAX {
                    return Err(ReadError::HeadTooLarge);
                }
                read_more(stream, buf)?;
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
            Err(e) => return Err(ReadError::Malformed(e.to_string())),
        }
    };
    if head_len > HEAD_BYTES_MAX {
        return Err(ReadError::HeadTooLarge);
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if header("transfer-encoding").is_some() {
        return Err(ReadError::LengthRequired);
    }
    let length: u64 = match header("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| ReadError::Malformed(format!("Content-Length '{v}' is not a number")))?,
        None => 0,
    };
    if length > limits.body_bytes_max as u64 {
        return Err(ReadError::BodyTooLarge(length));
    }
    let connection = header("connection").map(str::to_ascii_lowercase);
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => minor >= 1,
    };
    if length > 0 && header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let total = head_len + length as usize;
    while buf.len() < total {
        read_more(stream, buf)?;
    }
    let body = buf[head_len..total].to_vec();
    buf.drain(..total);
    Ok(Request {
        method,
        path,
        headers,
        body,
        keep_alive,
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes one answer.
pub fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut out = Vec::with_capacity(body.len() + 160);
    write!(
        out,
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        status_text(code),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )?;
    if code == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()
}
