//! The HTTP endpoints, served for real on 127.0.0.1:0 and asked over HTTP/1.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use order_milestones::api::{serve, Health, Server};
use order_milestones::metrics::Metrics;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and what it serves; dropping `stop` would also stop it, `shutdown` waits
/// for it.
struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), order_milestones::api::ApiError>>,
}

impl Running {
    async fn start(health: Health) -> Running {
        let metrics = Arc::new(Metrics::new().unwrap());
        let health = Arc::new(health);
        let server = Server::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics.clone(),
            health.clone(),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            metrics,
            health,
            stop,
            task,
        }
    }

    /// GET `path`: status, content type and body.
    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn metrics_are_served_in_the_text_format() {
    let server = Running::start(Health::default()).await;
    server.metrics.event_in("order-events", "OrderCreated");
    server.metrics.milestone_reached("ordered", false);

    let (status, content_type, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4");
    for line in [
        "# TYPE milestones_events_in_total counter",
        r#"milestones_events_in_total{event_type="OrderCreated",topic="order-events"} 1"#,
        r#"milestones_reached_total{inferred="false",milestone="ordered"} 1"#,
        "# TYPE milestones_transaction_commit_seconds histogram",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn readiness_follows_the_partitions_restores() {
    let server = Running::start(Health::default()).await;
    let health = &server.health;

    // No partition assigned: nothing would be served late.
    let (status, content_type, body) = server.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"ready":true,"restoring":[]}"#)
    );
    assert_eq!(content_type, "application/json");

    health.partition_assigned(0);
    health.partition_assigned(3);
    let (status, _, body) = server.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"ready":false,"restoring":[0,3]}"#)
    );

    health.partition_restoring(0);
    health.partition_ready(3);
    let (status, _, body) = server.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"ready":false,"restoring":[0]}"#)
    );

    health.partition_ready(0);
    let (status, _, body) = server.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"ready":true,"restoring":[]}"#)
    );

    // A rebalance brings a partition to restore, then takes it away before it is ready.
    health.partition_assigned(5);
    assert_eq!(server.get("/readyz").await.0, 503);
    health.partition_revoked(5);
    assert_eq!(server.get("/readyz").await.0, 200);

    server.shutdown().await;
}

#[tokio::test]
async fn healthz_is_ok_while_the_loop_heartbeats() {
    let server = Running::start(Health::new(Duration::from_secs(3600))).await;
    server.health.heartbeat();
    let (status, content_type, body) = server.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    server.shutdown().await;
}

#[tokio::test]
async fn healthz_is_503_once_the_heartbeat_is_stale() {
    // A short bound instead of the default 30 s, so the test waits 50 ms.
    let server = Running::start(Health::new(Duration::from_millis(20))).await;
    server.health.heartbeat();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, body) = server.get("/healthz").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("stale: no heartbeat"), "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let server = Running::start(Health::default()).await;
    for path in ["/", "/metrics/x", "/nope"] {
        assert_eq!(server.get(path).await.0, 404, "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn serve_reports_an_address_it_cannot_bind() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let error = serve(
        addr,
        Arc::new(Metrics::new().unwrap()),
        Arc::new(Health::default()),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot listen on {addr} (http.listen)")),
        "{message}"
    );
}

/// The service's router with the order API, no Kafka behind it (its orders answer 503:
/// no partition is known yet), CORS for `origins`.
async fn order_router(origins: &[&str]) -> (SocketAddr, oneshot::Sender<()>) {
    use order_milestones::api::{
        service_router, AuthConfig, Authenticator, Directory, LocalOrders, OrderApi,
    };
    use order_milestones::engine::{Engine, Rules};
    let metrics = Arc::new(Metrics::new().unwrap());
    let health = Arc::new(Health::default());
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: Some("a secret of at least thirty-two bytes, for the test".into()),
        ..AuthConfig::default()
    })
    .unwrap();
    let orders = OrderApi::new(
        Arc::new(LocalOrders::default()),
        health.clone(),
        Engine::new(Arc::new(Rules::builtin().unwrap())),
        auth,
        Arc::new(Directory::new("me", "http://127.0.0.1:1")),
        metrics.clone(),
        10,
    )
    .unwrap();
    let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
    let router = service_router(metrics, health, Arc::new(orders), &origins);
    let server = Server::bind_router(SocketAddr::from(([127, 0, 0, 1], 0)), router)
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Browsers on an allowed origin may call the order API (preflight with the bearer token
/// header, then the GET); other origins, and every origin by default, get no CORS headers.
#[tokio::test]
async fn cors_lets_only_the_configured_origins_call_the_order_api() {
    let client = reqwest::Client::new();
    let preflight = |addr: SocketAddr, origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{addr}/orders/T1/events"),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header(
                "Access-Control-Request-Headers",
                "authorization, last-event-id",
            )
            .send()
    };
    let get_from_shop = |addr: SocketAddr| {
        client
            .get(format!("http://{addr}/orders/T1"))
            .header("Origin", "https://shop.example.com")
            .send()
    };
    let allow_origin = |response: &reqwest::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };

    let (addr, stop) = order_router(&["https://shop.example.com"]).await;
    let response = preflight(addr, "https://shop.example.com").await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        allow_origin(&response).as_deref(),
        Some("https://shop.example.com")
    );
    let allowed_headers = response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization") && allowed_headers.contains("last-event-id"),
        "{allowed_headers}"
    );
    // The real request: answered (401, no token) with the origin allowed to read it.
    let response = get_from_shop(addr).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        allow_origin(&response).as_deref(),
        Some("https://shop.example.com")
    );
    let response = preflight(addr, "https://evil.example.com").await.unwrap();
    assert_eq!(allow_origin(&response), None, "an origin not on the list");
    let _ = stop.send(());

    let (addr, stop) = order_router(&[]).await;
    let response = get_from_shop(addr).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(allow_origin(&response), None, "no CORS unless configured");
    let _ = stop.send(());
}

/// Every request is counted by its route pattern (not the order id) and status, and timed;
/// unknown routes count as `unmatched`.
#[tokio::test]
async fn requests_are_counted_by_route_and_status() {
    let (addr, stop) = order_router(&[]).await;
    for path in ["/orders/T1", "/orders/T2", "/no/such/route"] {
        reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"milestones_http_requests_total{route="/orders/{order_id}",status="401"} 2"#,
        r#"milestones_http_requests_total{route="unmatched",status="404"} 1"#,
        r#"milestones_http_request_seconds_count{route="/orders/{order_id}"} 2"#,
        "milestones_http_event_streams 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in:\n{metrics}"
        );
    }
    assert!(!metrics.contains("T1"), "no series per order id: {metrics}");
    let _ = stop.send(());
}
