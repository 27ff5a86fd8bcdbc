//! The HTTP endpoints of `milestones run`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | 200, every metric in the Prometheus text format (`text/plain; version=0.0.4`) |
//! | `GET /healthz` | 200 `ok` while the processing loop heartbeats within the bound ([`Health`]); 503 `stale: ...` otherwise |
//! | `GET /readyz` | 200 `{"ready":true,"restoring":[]}` when no assigned partition is still to restore; 503 `{"ready":false,"restoring":[0,3]}` otherwise |
//! | `GET /orders/{id}`, `/orders/{id}/events`, `/track/{id}` | the order API ([`orders`]), behind bearer tokens ([`auth`]); described in `openapi.yaml` |
//! | anything else | 404 `{"error": ...}` |
//!
//! Every request is counted and timed by route (`milestones_http_requests_total`,
//! `milestones_http_request_seconds`).
//!
//! Wiring, with the bound address known before serving (tests listen on port 0):
//!
//! ```no_run
//! # async fn wire(
//! #     config: order_milestones::config::HttpConfig,
//! #     shutdown: impl std::future::Future<Output = ()> + Send + 'static,
//! # ) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use order_milestones::api::{Health, Server};
//! use order_milestones::metrics::Metrics;
//!
//! let metrics = Arc::new(Metrics::new()?);
//! let health = Arc::new(Health::default());
//! let server = Server::bind(config.listen, metrics.clone(), health.clone()).await?;
//! tracing::info!(addr = %server.local_addr(), "serving /metrics, /healthz, /readyz");
//! // The processing loop gets `metrics` and `health`; the server runs beside it.
//! server.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`serve`] does both in one call when the address does not matter.

pub mod auth;
pub mod directory;
mod health;
mod local;
pub mod orders;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

pub use auth::{AuthConfig, Authenticator, Caller};
pub use directory::Directory;
pub use health::{Health, PartitionState, Readiness, DEFAULT_STALE_AFTER};
pub use local::{LocalOrders, Watch};
pub use orders::OrderApi;

use crate::metrics::Metrics;

/// Why the HTTP server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes of the table above, to serve as is or to merge more routes into (the order
/// API).
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
        .fallback(no_route)
}

/// [`router`] and the order routes together: everything `milestones run` serves, each
/// request counted and timed in the metrics by its route; with `cors_allowed_origins`
/// (`http.cors_allowed_origins`), browsers on those origins may call it ([`cors`]).
pub fn service_router(
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    orders: Arc<OrderApi>,
    cors_allowed_origins: &[String],
) -> Router {
    let router = router(metrics.clone(), health)
        .merge(orders::routes(orders))
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(metrics, observe));
    match cors(cors_allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for pages on `origins` (`*`: any): `GET` with the `Authorization` and
/// `Last-Event-ID` headers, preflights cached 10 minutes. None for no origins.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Config::check refused anything that is not an origin.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Counts and times a request under its route pattern (`/orders/{order_id}`, not the id:
/// one series per route), or `unmatched`.
async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics.http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("no route {method} {}", uri.path()) })),
    )
        .into_response()
}

/// A bound, not yet serving, HTTP server: [`local_addr`](Server::local_addr) is the address
/// it listens on (the port the OS chose when `listen` had port 0).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl Server {
    /// Binds `listen` for the routes of [`router`].
    ///
    /// Errors: [`ApiError::Bind`] when the address cannot be bound (in use, not local, no
    /// permission).
    pub async fn bind(
        listen: SocketAddr,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Server, ApiError> {
        Server::bind_router(listen, router(metrics, health)).await
    }

    /// Binds `listen` for any router, e.g. [`router`] merged with more routes.
    ///
    /// Errors: [`ApiError::Bind`], as [`bind`](Server::bind).
    pub async fn bind_router(listen: SocketAddr, router: Router) -> Result<Server, ApiError> {
        let bind_error = |source| ApiError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Server {
            listener,
            local_addr,
            router,
        })
    }

    /// Serves `router` instead: for routes that need the bound address to be built.
    pub fn with_router(self, router: Router) -> Server {
        Server { router, ..self }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and returns once the requests
    /// in flight are answered.
    ///
    /// Errors: [`ApiError::Serve`] when the server fails (axum retries failed accepts itself,
    /// so in practice this does not happen).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ApiError::Serve)
    }
}

/// Binds `listen` and serves until `shutdown` completes: [`Server::bind`] then
/// [`Server::run`].
///
/// Errors: [`ApiError::Bind`] when `listen` cannot be bound, [`ApiError::Serve`] when the
/// server fails.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    Server::bind(listen, metrics, health)
        .await?
        .run(shutdown)
        .await
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.encode_text(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let health = &state.health;
    if health.is_alive() {
        (StatusCode::OK, "ok").into_response()
    } else {
        let since = health.since_heartbeat(std::time::Instant::now());
        let body = format!(
            "stale: no heartbeat from the processing loop for {:.1} s (bound {} s)",
            since.as_secs_f64(),
            health.stale_after().as_secs_f64()
        );
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.health.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}
