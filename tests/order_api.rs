//! The order API against the real broker, with `milestones run` as processes: every order
//! answered by every instance (forwarded to the owner) and equal to `simulate`, through an
//! instance stopping; the event stream of an order; every access-control rule; bad
//! requests; `openapi.yaml` kept true.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::pipeline::{produce, read_until, simulated, test_config};
use common::service::{client, generated, get, get_until, token, Service, SseReader};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use order_milestones::api::auth::Claims;
use order_milestones::config::Config;
use order_milestones::engine::OrderEvent;
use order_milestones::topics;
use serde_json::Value;

const PUBLIC_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/test-rs256-public.pem"
);
const PRIVATE_KEY: &str = include_str!("fixtures/test-rs256-private.pem");

/// A test configuration whose topics exist, with fast group failure detection.
fn config(test: &str, dir: &std::path::Path) -> Config {
    let mut config = test_config(test, &dir.join("unused"));
    config.topics.partitions = 6;
    config.auth.rs256_public_key_file = Some(PUBLIC_KEY.into());
    for (key, value) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        config.kafka.consumer.insert(key.into(), value.into());
    }
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(topics::apply(&config))
        .expect("topics");
    config
}

fn customer_of(events: &[OrderEvent], order: &str) -> String {
    events
        .iter()
        .find(|e| e.order_id == order && e.customer_id.is_some())
        .and_then(|e| e.customer_id.clone())
        .expect("a customer")
        .to_string()
}

/// Every order's view, GET from `service` with an operator token until all equal
/// `expected` (503 is retried); the longest run of 503 seen for one order.
fn all_views_equal(service: &Service, expected: &BTreeMap<String, Value>) -> Duration {
    let operator = token("ops", true);
    let client = client();
    let mut longest = Duration::ZERO;
    for (order, view) in expected {
        let url = service.url(&format!("/orders/{order}"));
        let started = Instant::now();
        let mut unavailable_since: Option<Instant> = None;
        loop {
            let (status, body) = get(&client, &url, Some(&operator));
            if status == 200 && body == *view {
                break;
            }
            if status == 503 {
                let since = *unavailable_since.get_or_insert_with(Instant::now);
                longest = longest.max(since.elapsed());
            } else {
                unavailable_since = None;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{url}: got {status} {body}, expected {view}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    longest
}

/// The status of `GET /orders/{order}` on `service` for a request marked as already
/// forwarded, which is never forwarded again: 200 when `service` holds the order, 503 when
/// another instance does.
fn status_unforwarded(service: &Service, order: &str, token: &str) -> u16 {
    client()
        .get(service.url(&format!("/orders/{order}")))
        .bearer_auth(token)
        .header("x-milestones-forwarded-by", "http://test")
        .send()
        .expect("GET")
        .status()
        .as_u16()
}

/// Two instances answer for every order, whichever holds it (the other forwards), equal to
/// `simulate`; when one stops, its partitions move and every order is still answered,
/// after a short 503 at most.
#[test]
fn two_instances_answer_every_order_and_keep_answering_while_one_stops() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let config = config("api_two", dir.path());
    let events = generated(120, "A");
    let (records, expected) = simulated(&events);
    produce(&config, &events);

    let a = Service::start(&config, dir.path(), "a");
    let b = Service::start(&config, dir.path(), "b");
    all_views_equal(&a, &expected);
    all_views_equal(&b, &expected);

    // Each instance holds only some orders: a request marked as already forwarded is not
    // forwarded again, so for the other instance's orders it gets 503.
    let operator = token("ops", true);
    let statuses: BTreeSet<u16> = expected
        .keys()
        .map(|order| status_unforwarded(&a, order, &operator))
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from([200, 503]),
        "a holds some orders and forwards the rest"
    );

    // An event stream opened on the instance that does not hold the order is relayed
    // from the one that does, record for record.
    let remote = expected
        .keys()
        .find(|order| status_unforwarded(&a, order, &operator) == 503)
        .expect("an order b holds");
    let wanted: Vec<Value> = records
        .iter()
        .filter(|r| r["order_id"] == remote.as_str())
        .cloned()
        .collect();
    let relayed = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let response = reqwest::Client::new()
                .get(a.url(&format!("/orders/{remote}/events")))
                .bearer_auth(&operator)
                .send()
                .await
                .expect("stream");
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            SseReader::new(response)
                .records(wanted.len(), Duration::from_secs(10), "relayed records")
                .await
        });
    assert_eq!(relayed, wanted, "the order's records, relayed through a");

    b.stop();
    let longest_503 = all_views_equal(&a, &expected);
    assert!(
        longest_503 < Duration::from_secs(30),
        "orders unavailable for {longest_503:?} while partitions moved"
    );
    a.stop();
}

/// The event stream sends each committed change of the order once, in sequence order,
/// each only once a `read_committed` reader can see it; a reconnect with `Last-Event-ID`
/// gets exactly what came after.
#[test]
fn the_event_stream_delivers_each_committed_change_once_in_order_and_resumes() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let config = config("api_sse", dir.path());
    let events = generated(3, "S");
    let order = events[0].order_id.to_string();
    let (records, _) = simulated(&events);
    let expected: Vec<Value> = records
        .into_iter()
        .filter(|r| r["order_id"] == order.as_str())
        .collect();
    assert!(expected.len() >= 4, "the order has several changes");
    // The first event of the order before the stream opens, the rest after.
    let of_order: Vec<OrderEvent> = events
        .iter()
        .filter(|e| e.order_id == order)
        .cloned()
        .collect();
    let others: Vec<OrderEvent> = events
        .iter()
        .filter(|e| e.order_id != order)
        .cloned()
        .collect();
    produce(&config, &of_order[..1]);
    produce(&config, &others);

    let service = Service::start(&config, dir.path(), "s");
    let operator = token("ops", true);
    let url = service.url(&format!("/orders/{order}/events"));
    get_until(
        &service.url(&format!("/orders/{order}")),
        Some(&operator),
        Duration::from_secs(60),
        |s, _| s == 200,
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let response = client
            .get(&url)
            .bearer_auth(&operator)
            .send()
            .await
            .expect("stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut stream = SseReader::new(response);
        let mut received: Vec<Value> = Vec::new();
        let mut produced_rest = false;
        while received.len() < expected.len() {
            let Some(event) = stream.next(Duration::from_secs(30)).await else {
                panic!(
                    "stream ended or stalled after {} of {} records",
                    received.len(),
                    expected.len()
                );
            };
            assert_eq!(event.event.as_deref(), Some("milestone"));
            let record: Value = serde_json::from_str(&event.data).expect("JSON data");
            assert_eq!(
                event.id,
                Some(record["sequence"].to_string()),
                "id is the sequence"
            );
            // Committed: a read_committed reader of the changes topic already sees it.
            let sequence = record["sequence"].clone();
            read_until(&config.topics.changes, Duration::from_secs(10), |r| {
                r.iter()
                    .any(|(k, v)| *k == order && v["sequence"] == sequence)
            });
            received.push(record);
            if !produced_rest {
                produce(&config, &of_order[1..]);
                produced_rest = true;
            }
        }
        assert_eq!(received, expected, "each change once, in sequence order");
        // Nothing more: no repeat of what was sent.
        assert!(stream.next(Duration::from_secs(2)).await.is_none());

        // A reconnect after the second record gets the third on, and nothing before.
        let response = client
            .get(&url)
            .bearer_auth(&operator)
            .header("Last-Event-ID", "2")
            .send()
            .await
            .expect("stream");
        let mut stream = SseReader::new(response);
        let resumed = stream
            .records(
                expected.len() - 2,
                Duration::from_secs(10),
                "missed records",
            )
            .await;
        assert_eq!(resumed, expected[2..]);
        assert!(stream.next(Duration::from_secs(1)).await.is_none());
    });
    service.stop();
}

fn rs256_token(sub: &str, operator: bool) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600,
        roles: if operator {
            vec!["operator".into()]
        } else {
            vec![]
        },
        role: None,
    };
    let key = EncodingKey::from_rsa_pem(PRIVATE_KEY.as_bytes()).expect("test key");
    encode(&Header::new(Algorithm::RS256), &claims, &key).expect("sign")
}

/// Every access-control rule, on every route; bad ids, unknown routes and a bad
/// Last-Event-ID get clear 4xx answers.
#[test]
fn access_control_and_bad_requests() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let config = config("api_auth", dir.path());
    let events = generated(4, "Z");
    let order = events[0].order_id.to_string();
    let customer = customer_of(&events, &order);
    let other_order = events
        .iter()
        .find(|e| e.customer_id.as_deref().is_some_and(|c| c != customer))
        .map(|e| e.order_id.to_string())
        .expect("an order of another customer");
    produce(&config, &events);
    let service = Service::start(&config, dir.path(), "z");
    let client = client();
    let operator = token("ops", true);
    get_until(
        &service.url(&format!("/orders/{other_order}")),
        Some(&operator),
        Duration::from_secs(60),
        |s, _| s == 200,
    );
    get_until(
        &service.url(&format!("/orders/{order}")),
        Some(&operator),
        Duration::from_secs(60),
        |s, _| s == 200,
    );

    let status = |path: &str, token: Option<&str>| {
        let mut request = client.get(service.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().expect("GET");
        (
            response.status().as_u16(),
            response.headers().get("www-authenticate").is_some(),
        )
    };
    let mine = token(&customer, false);
    let someone_else = token("C-nobody", false);
    let forged = {
        let other = order_milestones::config::AuthConfig {
            hs256_secret: Some("not the service's secret, but long enough".into()),
            ..Default::default()
        };
        order_milestones::api::auth::hs256_token(&other, &customer, true, 600).unwrap()
    };
    for route in ["/orders/{}", "/orders/{}/events", "/track/{}"] {
        let path = route.replace("{}", &order);
        let unknown = route.replace("{}", "no-such-order");
        let others = route.replace("{}", &other_order);
        assert_eq!(
            status(&path, Some(&mine)).0,
            200,
            "{path}: the customer's own order"
        );
        assert_eq!(status(&path, Some(&operator)).0, 200, "{path}: operator");
        assert_eq!(
            status(&path, Some(&rs256_token("ops", true))).0,
            200,
            "{path}: RS256 operator"
        );
        assert_eq!(
            status(&path, Some(&rs256_token(&customer, false))).0,
            200,
            "{path}: RS256 customer"
        );
        assert_eq!(
            status(&others, Some(&operator)).0,
            200,
            "{others}: operator sees all"
        );
        // Another customer's order looks exactly like one that does not exist.
        let (s1, b1) = get(&client, &service.url(&others), Some(&mine));
        let (s2, b2) = get(&client, &service.url(&unknown), Some(&mine));
        assert_eq!((s1, s2), (404, 404), "{others}: not the caller's");
        assert_eq!(
            b1["error"].as_str().map(|e| e.replace(&other_order, "X")),
            b2["error"]
                .as_str()
                .map(|e| e.replace("no-such-order", "X")),
            "the same answer as for an unknown order"
        );
        assert_eq!(
            status(&path, Some(&someone_else)).0,
            404,
            "{path}: another customer"
        );
        assert_eq!(status(&path, None), (401, true), "{path}: no token");
        assert_eq!(
            status(&path, Some("garbage")),
            (401, true),
            "{path}: garbled token"
        );
        assert_eq!(
            status(&path, Some(&forged)),
            (401, true),
            "{path}: wrong key"
        );
        // The token in the query string (EventSource, the page).
        assert_eq!(
            status(&format!("{path}?access_token={mine}"), None).0,
            200,
            "{path}: query token"
        );
        assert_eq!(
            status(&format!("{path}?access_token=garbage"), None).0,
            401,
            "{path}: bad query token"
        );
        // Bad ids.
        assert_eq!(
            status(&route.replace("{}", &"x".repeat(129)), Some(&operator)).0,
            400,
            "{route}: over-long id"
        );
        assert_eq!(
            status(&route.replace("{}", "a%20b"), Some(&operator)).0,
            400,
            "{route}: a space"
        );
        assert_eq!(
            status(&route.replace("{}", "%3Cscript%3E"), Some(&operator)).0,
            400,
            "{route}: markup"
        );
    }
    let (code, body) = get(&client, &service.url("/nothing/here"), Some(&operator));
    assert_eq!(code, 404);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nothing/here")),
        "{body}"
    );
    let bad_resume = client
        .get(service.url(&format!("/orders/{order}/events")))
        .bearer_auth(&operator)
        .header("Last-Event-ID", "seven")
        .send()
        .expect("GET");
    assert_eq!(bad_resume.status(), 400);
    service.stop();
}

/// `openapi.yaml` describes what the service does: each documented route answers with a
/// documented status, unknown routes are 404, and the order view and change record have
/// exactly the documented fields.
#[test]
fn openapi_yaml_matches_the_service() {
    common::require_kafka();
    let spec: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
            .expect("openapi.yaml"),
    )
    .expect("openapi.yaml is YAML");
    let dir = tempfile::tempdir().expect("dir");
    let config = config("api_openapi", dir.path());
    let events = generated(1, "P");
    let order = events[0].order_id.to_string();
    produce(&config, &events);
    let service = Service::start(&config, dir.path(), "p");
    let operator = token("ops", true);
    let (_, view) = get_until(
        &service.url(&format!("/orders/{order}")),
        Some(&operator),
        Duration::from_secs(60),
        |s, _| s == 200,
    );

    let paths = spec["paths"].as_mapping().expect("paths");
    let documented: BTreeSet<String> = paths
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        documented,
        BTreeSet::from([
            "/orders/{order_id}".to_string(),
            "/orders/{order_id}/events".into(),
            "/track/{order_id}".into()
        ])
    );
    let client = client();
    for (path, item) in paths {
        let path = path.as_str().unwrap();
        let responses: BTreeSet<String> = item["get"]["responses"]
            .as_mapping()
            .expect("responses")
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        for (id, token) in [
            (order.as_str(), Some(operator.as_str())),
            ("unknown", Some(operator.as_str())),
            ("bad id", Some(operator.as_str())),
            (order.as_str(), None),
        ] {
            let url = service.url(&path.replace("{order_id}", &id.replace(' ', "%20")));
            let mut request = client.get(&url).timeout(Duration::from_secs(3));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().expect("GET");
            let status = response.status().as_u16().to_string();
            assert!(
                responses.contains(&status),
                "{url} answered {status}, not documented for {path}"
            );
        }
    }
    let fields = |schema: &str| -> (BTreeSet<String>, BTreeSet<String>) {
        let schema = &spec["components"]["schemas"][schema];
        let properties = schema["properties"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        let required = schema["required"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        (properties, required)
    };
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let (properties, required) = fields("OrderView");
    assert_eq!(keys(&view), properties, "order view fields");
    assert!(required.is_subset(&properties));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let record: Value = runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(service.url(&format!("/orders/{order}/events")))
            .bearer_auth(&operator)
            .send()
            .await
            .expect("stream");
        let event = SseReader::new(response)
            .next(Duration::from_secs(10))
            .await
            .expect("an event");
        serde_json::from_str(&event.data).expect("JSON")
    });
    let (properties, required) = fields("MilestoneChange");
    assert_eq!(keys(&record), properties, "change record fields");
    assert!(required.is_subset(&properties));
    service.stop();
}

/// Opens an event stream on a raw socket and never reads from it: the slowest client.
fn silent_stream(service: &Service, order: &str, token: &str) -> std::net::TcpStream {
    use std::io::Write;
    let address = service.base.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(address).expect("connect");
    write!(
        socket,
        "GET /orders/{order}/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("request");
    socket
}

/// Slow clients: event streams whose clients never read cost the processing nothing
/// (every order still reaches its view while they are open), and past
/// `http.max_event_streams` a new stream gets 503 with `Retry-After` while plain requests
/// are still answered; a stream whose client went away frees its place.
#[test]
fn silent_stream_clients_do_not_hold_up_processing_and_streams_are_capped() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config("api_slow", dir.path());
    config.http.max_event_streams = 6;
    let events = generated(150, "W");
    let (_, expected) = simulated(&events);
    let watched: Vec<String> = expected.keys().take(6).cloned().collect();
    // The watched orders' first events before the streams open, everything else after, so
    // the silent streams have records to be sent while the stream is processed.
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for event in &events {
        let order = event.order_id.to_string();
        if watched.contains(&order) && !first.iter().any(|e: &OrderEvent| e.order_id == order) {
            first.push(event.clone());
        } else {
            rest.push(event.clone());
        }
    }
    produce(&config, &first[..]);
    let service = Service::start(&config, dir.path(), "w");
    let operator = token("ops", true);
    for order in &watched {
        get_until(
            &service.url(&format!("/orders/{order}")),
            Some(&operator),
            Duration::from_secs(60),
            |s, _| s == 200,
        );
    }
    let silent: Vec<_> = watched
        .iter()
        .map(|order| silent_stream(&service, order, &operator))
        .collect();

    // Six open: the seventh stream is refused, the order itself still answered.
    let client = client();
    let seventh = service.url(&format!("/orders/{}/events", watched[0]));
    let refused = get_until(
        &seventh,
        Some(&operator),
        Duration::from_secs(10),
        |s, _| s == 503,
    );
    assert!(
        refused.1["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_event_streams")),
        "{refused:?}"
    );
    let response = client
        .get(&seventh)
        .bearer_auth(&operator)
        .send()
        .expect("GET");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");

    // The rest of the stream, the silent clients still connected: processed in full.
    produce(&config, &rest);
    all_views_equal(&service, &expected);

    // Clients gone: their streams end at the next write, and streams open again.
    drop(silent);
    let started = Instant::now();
    loop {
        let response = client
            .get(&seventh)
            .bearer_auth(&operator)
            .timeout(Duration::from_secs(2))
            .send()
            .expect("GET");
        if response.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "streams still refused {:?} after their clients left",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    service.stop();
}
