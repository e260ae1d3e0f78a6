//! Helpers for the API tests: `refstream serve` as a process, tokens made with the CLI, JSON
//! requests over the from-scratch HTTP client.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::{bin, free_port, http, spawn, HttpResponse, Proc};

/// `refstream serve` on a free port.
pub struct Api {
    pub port: u16,
    pub proc: Proc,
}

impl Api {
    pub fn start(db_url: &str, extra: &[(String, String)]) -> Self {
        let port = free_port();
        let mut env = vec![
            ("REFSTREAM__DATABASE__URL".to_owned(), db_url.to_owned()),
            ("REFSTREAM__API__LISTEN".to_owned(), format!("127.0.0.1:{port}")),
            ("REFSTREAM__METRICS__LISTEN".to_owned(), format!("127.0.0.1:{}", free_port())),
        ];
        env.extend(extra.iter().cloned());
        let proc = spawn("refstream", &["serve"], &env);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "refstream serve did not listen: {}", proc.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { port, proc }
    }

    /// A request with an optional bearer token and JSON body.
    pub fn call(&self, method: &str, target: &str, token: Option<&str>, body: Option<&Json>) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let bytes = body.map(|b| serde_json::to_vec(b).expect("json")).unwrap_or_default();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http(self.port, method, target, &headers, &bytes)
    }
}

/// The JSON body of a response.
pub fn json(r: &HttpResponse) -> Json {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// Creates a token with `refstream api-token create`; returns the printed secret.
pub fn token(db_url: &str, role: &str, name: &str, user: Option<&str>) -> String {
    let mut args = vec!["api-token", "create", "--role", role, "--name", name];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    let out = Command::new(bin("refstream"))
        .args(&args)
        .env("REFSTREAM__DATABASE__URL", db_url)
        .env("REFSTREAM__DEV_MODE", "true")
        .output()
        .expect("run refstream api-token create");
    assert!(out.status.success(), "api-token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}
