//! Helpers for the tests that run `milestones run` as a process and talk to its HTTP API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use order_milestones::api::auth::hs256_token;
use order_milestones::config::{AuthConfig, Config};
use order_milestones::engine::OrderEvent;
use order_milestones::generate::{GenerateConfig, Generator};
use serde_json::Value;

use super::pipeline::write_config;

/// The HS256 secret of the test configurations.
pub const TEST_SECRET: &str = "order-milestones test secret, long enough for HS256";

/// An HS256 token of the test secret: a customer's, or an operator's.
pub fn token(sub: &str, operator: bool) -> String {
    let config = AuthConfig {
        hs256_secret: Some(TEST_SECRET.into()),
        ..AuthConfig::default()
    };
    hs256_token(&config, sub, operator, 600).expect("token")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `orders` generated orders whose ids start with `prefix` and this process's id.
pub fn generated(orders: u64, prefix: &str) -> Vec<OrderEvent> {
    Generator::new(GenerateConfig {
        orders,
        order_prefix: format!("{prefix}{}-", std::process::id()),
        ..GenerateConfig::default()
    })
    .collect()
}

/// `milestones run` as a child process, listening on a port of its own.
pub struct Service {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Service {
    /// Starts an instance of `config` named `instance`, with its state under `dir`.
    pub fn start(config: &Config, dir: &Path, instance: &str) -> Service {
        let mut config = config.clone();
        config.application.instance_id = instance.into();
        config.state.dir = dir.join(format!("state-{instance}"));
        config.http.listen = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let file = dir.join(format!("{instance}.toml"));
        write_config(&config, &file);
        let child = Command::new(env!("CARGO_BIN_EXE_milestones"))
            .args(["run", "--config", file.to_str().expect("utf-8 path")])
            // SERVICE_LOG=info (or debug) shows what the instances do when a test fails.
            .env(
                "RUST_LOG",
                std::env::var("SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start milestones run");
        Service {
            child: Some(child),
            base: format!("http://{}", config.http.listen),
        }
    }

    /// The URL of `path` on this instance.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then waits: the service must exit 0.
    pub fn stop(mut self) {
        stop_cleanly(&mut self.child.take().expect("running"));
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM to a `milestones run` process, then waits: it must exit 0.
pub fn stop_cleanly(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exited = child.wait().expect("wait");
    assert!(
        exited.success(),
        "SIGTERM should stop the service cleanly, got {exited}"
    );
}

/// A blocking HTTP client with a bounded timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GETs `url` with `token` until `done` accepts (status, body); panics after `deadline`
/// with the last answer.
pub fn get_until(
    url: &str,
    token: Option<&str>,
    deadline: Duration,
    mut done: impl FnMut(u16, &Value) -> bool,
) -> (u16, Value) {
    let client = client();
    let started = Instant::now();
    loop {
        let last = get(&client, url, token);
        if done(last.0, &last.1) {
            return last;
        }
        assert!(
            started.elapsed() < deadline,
            "{url}: no acceptable answer within {deadline:?}; last {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One GET: status and body (JSON, or the text as a JSON string). A connection error is
/// status 0.
pub fn get(client: &reqwest::blocking::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send() {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, body)
        }
        Err(error) => (0, Value::String(error.to_string())),
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads an event stream as it arrives.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The data of the next `n` events, each a JSON record; panics, naming `what`, when
    /// one does not come within `timeout`.
    pub async fn records(&mut self, n: usize, timeout: Duration, what: &str) -> Vec<Value> {
        let mut records = Vec::with_capacity(n);
        while records.len() < n {
            let event = self.next(timeout).await.unwrap_or_else(|| {
                panic!("{what}: {} of {n} within {timeout:?} each", records.len())
            });
            records.push(serde_json::from_str::<Value>(&event.data).expect("JSON"));
        }
        records
    }

    /// The next event (comments and keep-alives skipped); None when the stream ended or
    /// `timeout` passed first.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.id.is_none() && event.event.is_none() && event.data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}
