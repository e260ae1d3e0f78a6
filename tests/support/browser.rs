//! A headless Chromium driven through chromedriver's W3C WebDriver protocol (both from Debian's
//! packages `chromium` and `chromium-driver`), over the from-scratch HTTP client: open a page,
//! type, click, read text, wait for a selector, take a screenshot.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::{free_port, http};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.exists()))
        .unwrap_or_else(|| panic!("{name} is not installed: run `make test`, which installs chromium and chromium-driver"))
}

/// A chromedriver process with one headless Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    pub fn start() -> Self {
        let port = free_port();
        let driver = Command::new(on_path("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = std::env::temp_dir().join(format!("refstream-webdriver-{}", uuid::Uuid::new_v4().simple()));
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": on_path("chromium").to_string_lossy(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
                     format!("--user-data-dir={}", profile.display())]
        }}}});
        let mut browser = Self { driver, port, session: String::new() };
        let created = browser.call("POST", "/session", Some(&caps));
        browser.session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Json {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("json")).unwrap_or_default();
        let r = http(self.port, method, path, &[("Content-Type", "application/json")], &bytes);
        let value: Json = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}: {}", r.body));
        assert_eq!(r.status, 200, "chromedriver {method} {path}: {value}");
        value["value"].clone()
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn open(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(&json!({ "url": url })));
    }

    /// The element matching `css` once it exists (within `timeout`).
    pub fn wait_for(&self, css: &str, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            let bytes = serde_json::to_vec(&json!({ "using": "css selector", "value": css })).expect("json");
            let r = http(self.port, "POST", &self.at("/element"), &[("Content-Type", "application/json")], &bytes);
            if r.status == 200 {
                let v: Json = serde_json::from_str(&r.body).expect("json");
                return v["value"][ELEMENT].as_str().expect("an element").to_owned();
            }
            assert!(started.elapsed() < timeout, "no element {css} within {timeout:?}: {}", r.body);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css, Duration::from_secs(10));
        self.call("POST", &self.at(&format!("/element/{e}/value")), Some(&json!({ "text": text })));
    }

    pub fn click(&self, css: &str) {
        let e = self.wait_for(css, Duration::from_secs(10));
        self.call("POST", &self.at(&format!("/element/{e}/click")), Some(&json!({})));
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.wait_for(css, Duration::from_secs(10));
        self.call("GET", &self.at(&format!("/element/{e}/text")), None).as_str().unwrap_or_default().to_owned()
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let data = self.call("GET", &self.at("/screenshot"), None);
        base64::engine::general_purpose::STANDARD.decode(data.as_str().expect("base64")).expect("a PNG in base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(self.port, "DELETE", &self.at(""), &[], b"");
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
