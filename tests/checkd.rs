//! `asbb-checkd` as a real process: health answers, reason codes, clean shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Checkd {
    child: Child,
    addr: String,
}

impl Checkd {
    fn start(db_url: &str) -> Checkd {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("asbb.toml");
        std::fs::write(&config, "").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_asbb-checkd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                db_url,
                "--config",
                config.to_str().unwrap(),
            ])
            .env("ASBB_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("checkd exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_string();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Checkd { child, addr }
    }

    fn request(&self, raw: &str) -> (u16, serde_json::Value) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            code,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap().code()
    }
}

db_test!(health_of_a_migrated_ledger, |db| {
    let c = Checkd::start(&db.url);
    let (code, body) = c.request("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["schema"], "current");
    let (code, body) = c.request("POST /health HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        (code, body["reason"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (code, body) = c.request("GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!((code, body["reason"].as_str()), (404, Some("not_found")));
    let (code, body) = c.request("POST /health HTTP/1.0\r\nContent-Length: 10000000\r\n\r\n");
    assert_eq!(
        (code, body["reason"].as_str()),
        (413, Some("body_too_large"))
    );
    assert_eq!(c.stop(), Some(0), "SIGTERM is a clean exit");
});

#[test]
fn health_reports_a_database_that_is_not_ready() {
    let db = common::TestDb::unmigrated_sqlite();
    let c = Checkd::start(&db.url);
    let (code, body) = c.request("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(code, 503);
    assert_eq!(body["reason"], "schema_not_current");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("asbb database migrate"));
    assert_eq!(c.stop(), Some(0));
}
