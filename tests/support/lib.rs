//! Test support: a fresh Postgres database per test (migrated), the devbroker and the real
//! binaries as child processes, and Kafka helpers to produce and read records. Nothing here
//! mocks the database or the broker: they are the real servers over real connections.

pub mod api;
pub mod browser;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Where cargo put the workspace binaries (the test executable lives in `<dir>/deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(|deps| deps.parent()).expect("target dir").to_path_buf()
}

/// A real binary of the workspace; fails clearly when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace --bins` (make test does)", path.display());
    path
}

/// The admin URL of the test Postgres (`make test` sets it).
pub fn admin_url() -> String {
    std::env::var("REFSTREAM_TEST_DATABASE_URL")
        .expect("REFSTREAM_TEST_DATABASE_URL is not set: run the tests through `make test`, which starts Postgres")
}

/// A fresh, migrated database for one test, dropped at the end.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::created_with("").await
    }

    /// A fresh, migrated database created with `options` appended to `CREATE DATABASE` (a
    /// locale, say).
    pub async fn created_with(options: &str) -> Self {
        let admin = admin_url();
        let name = format!("t_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin).await.expect("connect to the test Postgres");
        sqlx::query(&format!("CREATE DATABASE {name} {options}")).execute(&mut conn).await.expect("create database");
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).expect("url with a database");
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new().max_connections(5).connect(&url).await.expect("connect to the test database");
        refstream_runtime::db::migrate(&pool).await.expect("migrations");
        Self { url, pool, name }
    }

    /// The referral code minted for `user`.
    /// `user`'s referral code, once attribution has minted it (waits up to 60 s).
    pub async fn minted_code(&self, user: &str) -> String {
        let pool = self.pool.clone();
        eventually(Duration::from_secs(60), &format!("{user}'s referral code"), || {
            let (pool, user) = (pool.clone(), user.to_owned());
            async move {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM referral_codes WHERE user_id = $1")
                    .bind(user)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    == 1
            }
        })
        .await;
        self.code_of(user).await
    }

    pub async fn code_of(&self, user: &str) -> String {
        sqlx::query_scalar("SELECT code FROM referral_codes WHERE user_id = $1").bind(user).fetch_one(&self.pool).await.expect("code")
    }

    /// The status of the referral whose referee is `referee`.
    pub async fn status_of(&self, referee: &str) -> String {
        sqlx::query_scalar("SELECT status FROM referrals WHERE referee_id = $1")
            .bind(referee)
            .fetch_one(&self.pool)
            .await
            .expect("referral")
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_url();
        // Best effort: a leftover database only costs disk in a throwaway cluster.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.ok()
            })
        });
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGTERM and waits up to `deadline` for the process to exit; returns its status.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate(Duration::from_secs(5));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("refstream-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Starts a process of the workspace with `env`, its output in a log file.
pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> Proc {
    let log = scratch_dir().join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new(bin(name));
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // Test processes run in development mode (the defaults' development hash key); `env` may
    // say otherwise.
    cmd.env("REFSTREAM__DEV_MODE", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    Proc { name: name.to_owned(), child, log }
}

/// The devbroker, with its bootstrap address.
pub struct Broker {
    pub bootstrap: String,
    pub proc: Proc,
}

impl Broker {
    pub fn start() -> Self {
        let file = scratch_dir().join("broker.addr");
        let proc = spawn("devbroker", &["--bootstrap-file", file.to_str().expect("utf-8 path")], &[]);
        let started = Instant::now();
        loop {
            if let Ok(addr) = std::fs::read_to_string(&file) {
                if !addr.trim().is_empty() {
                    return Self { bootstrap: addr.trim().to_owned(), proc };
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "devbroker did not write its address: {}", proc.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Settings for workers driven inside a test process: the defaults, except that rewards
/// settle at once (the settlement delay has its own tests).
pub fn test_settings() -> refstream_runtime::Settings {
    refstream_runtime::Settings::load_dev(vec![("REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS".into(), "0".into())]).expect("settings")
}

/// The environment a worker gets: the three contract variables, a short session timeout
/// (the mock cluster's rebalances wait for it) and a 2-second settlement delay.
pub fn worker_env(db_url: &str, bootstrap: &str, metrics_port: u16) -> Vec<(String, String)> {
    vec![
        ("REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS".into(), "2".into()),
        ("REFSTREAM__DATABASE__URL".into(), db_url.into()),
        ("REFSTREAM__KAFKA__BROKERS".into(), bootstrap.into()),
        ("REFSTREAM__METRICS__LISTEN".into(), format!("127.0.0.1:{metrics_port}")),
        ("REFSTREAM__KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
        ("RUST_LOG".into(), "info".into()),
    ]
}

/// Runs `refstream audit` against a database and broker: whether it passed, and what it printed
/// (stdout, then stderr).
pub fn audit(db_url: &str, bootstrap: &str) -> (bool, String) {
    let out = Command::new(bin("refstream"))
        .arg("audit")
        .env("REFSTREAM__DEV_MODE", "true")
        .env("REFSTREAM__DATABASE__URL", db_url)
        .env("REFSTREAM__KAFKA__BROKERS", bootstrap)
        .output()
        .expect("run refstream audit");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A free TCP port on loopback, never one this process handed out before: the port is released
/// before the process that will listen on it starts, so the kernel may offer it again meanwhile,
/// and two workers of concurrent tests given one port would have one of them fail to listen
/// while the other answers its health checks.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        if HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// The four workers, each its own process.
pub struct Fleet {
    pub procs: Vec<Proc>,
    pub ports: Vec<u16>,
}

pub const WORKERS: [&str; 4] = ["attribution", "fraud-scorer", "reward-engine", "outbox-relay"];

impl Fleet {
    pub fn start(db_url: &str, bootstrap: &str) -> Self {
        let mut procs = Vec::new();
        let mut ports = Vec::new();
        for w in WORKERS {
            let port = free_port();
            procs.push(spawn(w, &[], &worker_env(db_url, bootstrap, port)));
            ports.push(port);
        }
        let fleet = Self { procs, ports };
        fleet.wait_ready(Duration::from_secs(60));
        fleet
    }

    pub fn wait_ready(&self, deadline: Duration) {
        let started = Instant::now();
        for (p, port) in self.procs.iter().zip(&self.ports) {
            while !healthy(*port) {
                assert!(started.elapsed() < deadline, "{} not ready: {}", p.name, p.log_text());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// True when `/healthz` on `port` answers 200.
pub fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// A producer to the test broker.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", bootstrap).set("enable.idempotence", "true").create().expect("producer")
}

pub async fn produce(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(20)).await.expect("produce");
}

/// Reads every record of `topic` from offset zero on every partition, until `want` records
/// arrived or `timeout` passed.
pub fn read_topic(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && started.elapsed() < timeout {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    // Whatever else is already there (a duplicate would show here).
    let grace = Instant::now();
    while grace.elapsed() < Duration::from_millis(1500) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// The header value of `name`, as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let h = m.headers()?;
    h.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Polls `probe` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !probe().await {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A USD deposit made now, paid with a card of its own (`card-<deposit id>`).
pub fn deposit(user: &str, id: &str, amount: &str) -> refstream_core::events::DepositCompleted {
    refstream_core::events::DepositCompleted {
        event_id: Uuid::new_v4(),
        deposit_id: id.into(),
        user_id: refstream_core::UserId::parse(user).expect("user id"),
        amount: refstream_core::Money::new(amount.parse().expect("amount"), refstream_core::Currency::USD),
        payment_fingerprint: Some(format!("card-{id}")),
        occurred_at: chrono::Utc::now(),
    }
}

/// A record as a consumer would receive it, for driving a worker without Kafka.
pub fn record(topic: &str, key: &[u8], partition: i32, offset: i64, payload: Vec<u8>) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload),
        Some(key.to_vec()),
        topic.to_owned(),
        rdkafka::message::Timestamp::NotAvailable,
        partition,
        offset,
        None,
    )
}

/// An HTTP/1.1 answer as [`http`] read it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Every header line in order, names lower-cased (a name may repeat, e.g. `set-cookie`).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).into_iter().next()
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// Sends one request to `127.0.0.1:port` over a fresh connection (`Connection: close`) and
/// reads the whole answer: a minimal HTTP/1.1 client of the tests' own, so the services are
/// checked over real sockets by code they do not share. `headers` come after `Host`; a body
/// gets its `Content-Length`.
pub fn http(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // A server may answer (413) and close before reading all of a large body: what it sent still counts.
    let _ = stream.write_all(&request);
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                // A server that keeps the connection open (chromedriver) is done once the
                // response its headers frame is complete.
                if framed(&raw) && parse_response(&raw).is_some() {
                    break;
                }
            }
            Err(e) if raw.is_empty() => panic!("{method} {target}: no answer: {e}"),
            Err(_) => break,
        }
    }
    parse_response(&raw).unwrap_or_else(|| panic!("{method} {target}: not an HTTP/1.1 answer: {:?}", String::from_utf8_lossy(&raw)))
}

/// True when the response head is complete and says how long its body is.
fn framed(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    head.contains("\r\ncontent-length:") || head.contains("\r\ntransfer-encoding: chunked")
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let value = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let body = if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[..end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        out
    } else if let Some(len) = value("content-length") {
        rest.get(..len.parse::<usize>().ok()?)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_repeated_headers_and_chunked_bodies() {
        let raw = b"HTTP/1.1 302 Found\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nLocation: /x\r\nContent-Length: 2\r\n\r\nokEXTRA";
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status, r.body.as_str(), r.header("location")), (302, "ok", Some("/x")));
        assert_eq!(r.headers_named("Set-Cookie"), ["a=1", "b=2"]);
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().body, "abcde");
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_none());
    }
}
