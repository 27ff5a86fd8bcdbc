//! The tracker page in a real headless browser (Debian's `chromium`, driven through
//! `chromedriver`'s WebDriver API): the page shows the order's steps, and a step appears
//! when its event is produced to Kafka, without a reload. A screenshot is written for
//! people to look at.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::pipeline::{produce, test_config};
use common::service::{free_port, get_until, token, Service};
use order_milestones::engine::OrderEvent;
use order_milestones::topics;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn event(order: &str, id: &str, kind: &str, at: i64, items: Value) -> OrderEvent {
    serde_json::from_value(json!({
        "event_id": id, "order_id": order, "event_type": kind, "source": "test",
        "occurred_at": at, "customer_id": "C-page", "items": items,
    }))
    .expect("event")
}

/// chromedriver on a port of its own; killed on drop.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
}

impl Driver {
    fn start() -> Driver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver \
                 (deploy/local/install-deps does)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        let started = Instant::now();
        while driver
            .http
            .get(format!("{}/status", driver.base))
            .send()
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request
            .send()
            .expect("WebDriver call")
            .json()
            .expect("JSON");
        assert!(
            response["value"]["error"].is_null(),
            "WebDriver {path}: {}",
            response["value"]
        );
        response["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_tracker_page_shows_a_step_appear_when_its_event_is_produced() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let config = test_config("tracker", &dir.path().join("unused"));
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(topics::apply(&config))
        .expect("topics");
    let order = format!("PAGE-{}", std::process::id());
    let t0 = 1_700_000_000_000;
    let items = json!([{"asin": "B-MILK", "qty": 2}, {"asin": "B-BREAD", "qty": 1}, {"asin": "B-EGGS", "qty": 1}]);
    produce(
        &config,
        &[
            event(&order, "created", "OrderCreated", t0, items),
            event(
                &order,
                "picked",
                "ItemPicked",
                t0 + 600_000,
                json!([{"asin": "B-MILK", "qty": 2}]),
            ),
            event(
                &order,
                "shorted",
                "ItemShorted",
                t0 + 660_000,
                json!([{"asin": "B-EGGS", "qty": 1}]),
            ),
            // Out for delivery before ready: `ready` is drawn as inferred until OrderPacked.
            event(&order, "ofd", "OutForDelivery", t0 + 1_800_000, json!([])),
        ],
    );
    let service = Service::start(&config, dir.path(), "page");
    let customer = token("C-page", false);
    get_until(
        &service.url(&format!("/orders/{order}")),
        Some(&customer),
        Duration::from_secs(60),
        |status, _| status == 200,
    );

    let driver = Driver::start();
    let session = driver.call(
        reqwest::Method::POST,
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--window-size=900,1000"],
            },
        }}})),
    );
    let session = session["sessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    let page = service.url(&format!("/track/{order}?access_token={customer}"));
    driver.call(
        reqwest::Method::POST,
        &format!("/session/{session}/url"),
        Some(json!({ "url": page })),
    );
    let classes = || -> Value {
        driver.call(
            reqwest::Method::POST,
            &format!("/session/{session}/execute/sync"),
            Some(json!({
                "script": "const out = {}; for (const li of document.querySelectorAll('#steps li')) \
                           out[li.dataset.step] = li.className; \
                           out.live = document.getElementById('live').textContent; \
                           out.short = document.querySelector('#items td.short') ? 1 : 0; \
                           return out;",
                "args": [],
            })),
        )
    };
    let wait_for = |what: &str, done: &dyn Fn(&Value) -> bool| {
        let started = Instant::now();
        loop {
            let now = classes();
            if done(&now) {
                return now;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: the page shows {now}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let before = wait_for("the page live with its steps", &|c| c["live"] == "live");
    assert_eq!(before["ordered"], "confirmed");
    assert_eq!(before["preparing"], "confirmed");
    assert_eq!(before["ready"], "inferred", "ready is only inferred so far");
    assert_eq!(before["out_for_delivery"], "confirmed");
    assert_eq!(before["delivered"], "pending");
    assert_eq!(before["short"], 1, "the shorted item is marked");

    // Produced to Kafka now; the page must show it without a reload.
    produce(
        &config,
        &[event(
            &order,
            "packed",
            "OrderPacked",
            t0 + 1_200_000,
            json!([]),
        )],
    );
    wait_for("ready confirmed", &|c| c["ready"] == "confirmed");
    produce(
        &config,
        &[event(
            &order,
            "delivered",
            "Delivered",
            t0 + 3_000_000,
            json!([]),
        )],
    );
    let after = wait_for("delivered appears", &|c| c["delivered"] == "confirmed");
    assert_eq!(after["live"], "live", "still the same page, never reloaded");

    let png = driver.call(
        reqwest::Method::GET,
        &format!("/session/{session}/screenshot"),
        None,
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().expect("base64"))
        .expect("PNG");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 2_000,
        "a real screenshot"
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tracker.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("tracker page screenshot: {}", path.display());
    driver.call(
        reqwest::Method::DELETE,
        &format!("/session/{session}"),
        None,
    );
    service.stop();
}
