//! The order routes: the current view of an order, its live change records, and the
//! tracker page. Any instance answers for any order: the order's partition (its key,
//! murmur2, as the producers partition) is served here, or by another instance the
//! [`Directory`] knows, to which the request is forwarded once (a forwarded request is
//! never forwarded again).
//!
//! | route | answer |
//! |---|---|
//! | `GET /orders/{order_id}` | 200 the order view (contract section 3); 404 unknown or not the caller's; 503 + `Retry-After` while its partition is restored or moves |
//! | `GET /orders/{order_id}/events` | `text/event-stream`: each change record (section 4) of the order as an event `milestone` with `id` = its sequence, committed ones only; `Last-Event-ID` (or `?last_event_id=`) resumes after that sequence |
//! | `GET /track/{order_id}` | the tracker page (HTML), live from the event stream |
//!
//! All three need a bearer token ([`super::auth`]): 401 without a valid one. Ids longer
//! than [`MAX_ID_BYTES`] or with characters outside `A-Z a-z 0-9 . _ - : ~` get 400.
//!
//! The event stream sends what the store holds: the order's records are the engine's
//! [`history`](crate::engine::Engine::history) of the committed graph, and the stream wakes
//! after each commit that changed the order ([`LocalOrders::committed`]). A record of an
//! aborted transaction never reaches the store, so it is never sent; a client that reads
//! slowly holds nothing but its last sent sequence, since each wake-up reads the store
//! afresh. When the order's partition leaves this instance the stream ends; the client's
//! `EventSource` reconnects with `Last-Event-ID` and lands on the new owner.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tracing::{error, warn};

use super::auth::{Authenticator, Caller};
use super::directory::Directory;
use super::local::{LocalOrders, Watch};
use super::{Health, PartitionState};
use crate::engine::{codec, Engine, OrderGraph};
use crate::metrics::{EventStreamGuard, Metrics};
use crate::state::StoreReader;

/// The longest order id accepted.
pub const MAX_ID_BYTES: usize = 128;
/// Marks a forwarded request (its value: the forwarding instance's URL).
const FORWARDED_BY: &str = "x-milestones-forwarded-by";
const LAST_EVENT_ID: &str = "last-event-id";
const TRACKER_PAGE: &str = include_str!("tracker.html");

/// What the order routes share.
pub struct OrderApi {
    pub local: Arc<LocalOrders>,
    pub health: Arc<Health>,
    pub engine: Engine,
    pub auth: Authenticator,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    /// `http.max_event_streams`.
    pub max_event_streams: usize,
    client: reqwest::Client,
}

impl OrderApi {
    /// Errors: only if the HTTP client for forwarding cannot be built (no TLS set-up).
    pub fn new(
        local: Arc<LocalOrders>,
        health: Arc<Health>,
        engine: Engine,
        auth: Authenticator,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        max_event_streams: usize,
    ) -> Result<OrderApi, String> {
        let client = crate::tls::client_builder()?
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(OrderApi {
            local,
            health,
            engine,
            auth,
            directory,
            metrics,
            max_event_streams,
            client,
        })
    }
}

/// The three routes of the table above.
pub fn routes(api: Arc<OrderApi>) -> Router {
    Router::new()
        .route("/orders/{order_id}", get(get_order))
        .route("/orders/{order_id}/events", get(order_events))
        .route("/track/{order_id}", get(track))
        .with_state(api)
}

/// The query parameters the routes read; others are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct OrderQuery {
    access_token: Option<String>,
    last_event_id: Option<String>,
}

/// Where an order is served from.
enum Located {
    Local(i32),
    Remote(String),
}

async fn get_order(
    State(api): State<Arc<OrderApi>>,
    Path(order_id): Path<String>,
    Query(query): Query<OrderQuery>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (token, caller) = admit(&api, &order_id, &headers, &query)?;
    view_response(&api, &order_id, &caller, token, &headers).await
}

/// The view of an order as `GET /orders/{id}` answers it, wherever the order is.
async fn view_response(
    api: &OrderApi,
    order_id: &str,
    caller: &Caller,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    match api.locate(order_id)? {
        Located::Local(partition) => {
            let graph = api.visible_graph(partition, order_id, caller)?;
            Ok(Json(api.engine.view(&graph)).into_response())
        }
        Located::Remote(base) => {
            api.forward(&base, &format!("/orders/{order_id}"), token, headers)
                .await
        }
    }
}

async fn order_events(
    State(api): State<Arc<OrderApi>>,
    Path(order_id): Path<String>,
    Query(query): Query<OrderQuery>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (token, caller) = admit(&api, &order_id, &headers, &query)?;
    let last = last_event_id(&headers, &query)?;
    let partition = match api.locate(&order_id)? {
        Located::Local(partition) => partition,
        Located::Remote(base) => {
            let path = format!("/orders/{order_id}/events?last_event_id={last}");
            return api.forward(&base, &path, token, &headers).await;
        }
    };
    if api.metrics.event_streams_open() >= api.max_event_streams as i64 {
        return Err(Refusal::Unavailable(format!(
            "this instance has {} event streams open, its limit (http.max_event_streams)",
            api.max_event_streams
        )));
    }
    // Watch first, then read: a commit between the two wakes the stream, so none is missed.
    let watch = api.local.watch(&order_id);
    let graph = api.visible_graph(partition, &order_id, &caller)?;
    let mut stream = ChangeStream {
        api: api.clone(),
        partition,
        order_id,
        last,
        pending: VecDeque::new(),
        watch,
        _open: api.metrics.event_stream_opened(),
    };
    stream.take_new(&graph);
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<Event, Infallible>(event), stream))
    });
    Ok(no_store(
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
    ))
}

/// One client's event stream of one order.
struct ChangeStream {
    api: Arc<OrderApi>,
    partition: i32,
    order_id: String,
    /// The sequence of the last record sent.
    last: u64,
    /// Records read from the store, not sent yet: at most the order's history.
    pending: VecDeque<Event>,
    watch: Watch,
    /// Counts the stream as open until it is dropped (the client went away or it ended).
    _open: EventStreamGuard,
}

impl ChangeStream {
    /// The next event to send; None when the stream ends (the partition moved away, or the
    /// store cannot be read).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            tokio::select! {
                changed = self.watch.commits.changed() => {
                    changed.ok()?;
                    // The reader is looked up each time, never kept: a stream must not hold
                    // a store open after its partition left.
                    let graph = self.api.read(self.partition, &self.order_id).ok()??;
                    self.take_new(&graph);
                }
                moved = self.watch.moved.changed() => {
                    moved.ok()?;
                    self.api.local.reader(self.partition)?;
                }
            }
        }
    }

    /// Queues the records of `graph` after the last one sent.
    fn take_new(&mut self, graph: &OrderGraph) {
        if graph.sequence() <= self.last {
            return;
        }
        for change in self.api.engine.history(graph) {
            if change.sequence > self.last {
                let data = serde_json::to_string(&change).unwrap_or_default();
                self.pending.push_back(
                    Event::default()
                        .id(change.sequence.to_string())
                        .event("milestone")
                        .data(data),
                );
                self.last = change.sequence;
            }
        }
    }
}

async fn track(
    State(api): State<Arc<OrderApi>>,
    Path(order_id): Path<String>,
    Query(query): Query<OrderQuery>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (token, caller) = admit(&api, &order_id, &headers, &query)?;
    // The page is served only for an order the caller may see, with its view as of now
    // (from wherever the order is: a forwarded answer is the view's JSON too).
    let response = view_response(&api, &order_id, &caller, token, &headers).await?;
    if response.status() != StatusCode::OK {
        return Ok(response);
    }
    let view = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map_err(|error| Refusal::Unavailable(format!("reading the order view: {error}")))?;
    let page = TRACKER_PAGE
        .replace("__ORDER_ID__", &script_json(&serde_json::json!(order_id)))
        .replace("__TOKEN__", &script_json(&serde_json::json!(token)))
        .replace("__VIEW__", &script_safe(&String::from_utf8_lossy(&view)));
    Ok(no_store(Html(page).into_response()))
}

/// `Cache-Control: no-store`: an order's answers are live and per caller.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl OrderApi {
    /// Where `order_id` is served from; 503 while its partition is restored or moves.
    fn locate(&self, order_id: &str) -> Result<Located, Refusal> {
        let Some(partition) = self.local.partition_of(order_id) else {
            return Err(Refusal::Unavailable(
                "starting: the input partitions are not known yet".into(),
            ));
        };
        if self.local.reader(partition).is_some() {
            return Ok(Located::Local(partition));
        }
        match self.health.partition_state(partition) {
            Some(PartitionState::Assigned | PartitionState::Restoring) => Err(
                Refusal::Unavailable(format!("partition {partition} of this order is being restored")),
            ),
            _ => self.directory.owner(partition).map(Located::Remote).ok_or_else(|| {
                Refusal::Unavailable(format!(
                    "no instance serves partition {partition} of this order right now (it is moving)"
                ))
            }),
        }
    }

    /// The committed graph of `order_id` if the caller may see it; 404 alike for an order
    /// that does not exist and for another customer's.
    fn visible_graph(
        &self,
        partition: i32,
        order_id: &str,
        caller: &Caller,
    ) -> Result<OrderGraph, Refusal> {
        match self.read(partition, order_id)? {
            Some(graph) if caller.may_see(graph.customer_id()) => Ok(graph),
            _ => Err(Refusal::not_found(order_id)),
        }
    }

    /// The committed graph of `order_id` from `partition`'s store, if the partition is still
    /// served here.
    fn read(&self, partition: i32, order_id: &str) -> Result<Option<OrderGraph>, Refusal> {
        let Some(reader) = self.local.reader(partition) else {
            return Err(Refusal::Unavailable(format!(
                "partition {partition} of this order just moved"
            )));
        };
        read_graph(&reader, order_id)
    }

    /// Sends the request on to the instance at `base`, and its answer back as it comes
    /// (event streams included).
    async fn forward(
        &self,
        base: &str,
        path: &str,
        token: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Response, Refusal> {
        if headers.contains_key(FORWARDED_BY) {
            // The instance that forwarded this thought we held the order: its directory
            // is a moment behind. No second hop; the client retries.
            return Err(Refusal::Unavailable(
                "this order's partition is moving".into(),
            ));
        }
        let mut request = self
            .client
            .get(format!("{base}{path}"))
            .header(FORWARDED_BY, self.directory.url());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(last) = headers.get(LAST_EVENT_ID) {
            request = request.header(LAST_EVENT_ID, last);
        }
        let upstream = request.send().await.map_err(|error| {
            warn!(%error, base, "forwarding an order request");
            Refusal::Unavailable(format!(
                "the instance serving this order did not answer: {error}"
            ))
        })?;
        let mut response = Response::builder().status(upstream.status());
        for name in [
            header::CONTENT_TYPE,
            header::RETRY_AFTER,
            header::CACHE_CONTROL,
            header::WWW_AUTHENTICATE,
        ] {
            if let Some(value) = upstream.headers().get(&name) {
                response = response.header(name, value);
            }
        }
        let body = futures::stream::unfold(upstream, |mut upstream| async move {
            match upstream.chunk().await {
                Ok(Some(chunk)) => Some((Ok::<_, reqwest::Error>(chunk), upstream)),
                Ok(None) => None,
                Err(error) => Some((Err(error), upstream)),
            }
        });
        response
            .body(Body::from_stream(body))
            .map_err(|error| Refusal::Internal(format!("relaying a forwarded answer: {error}")))
    }
}

fn read_graph(reader: &StoreReader, order_id: &str) -> Result<Option<OrderGraph>, Refusal> {
    let bytes = match reader.get(order_id.as_bytes()) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(error) => return Err(Refusal::Internal(format!("reading the store: {error}"))),
    };
    codec::decode(&bytes).map(Some).map_err(|error| {
        Refusal::Internal(format!(
            "the stored state of order {order_id} is damaged: {error}"
        ))
    })
}

/// Checks the id and the bearer token: the token (to forward) and its caller.
fn admit<'a>(
    api: &OrderApi,
    order_id: &str,
    headers: &'a HeaderMap,
    query: &'a OrderQuery,
) -> Result<(Option<&'a str>, Caller), Refusal> {
    check_id(order_id)?;
    let token = bearer(headers, query);
    let caller = api.auth.caller(token).ok_or(Refusal::Unauthorized)?;
    Ok((token, caller))
}

/// 400 for an id that cannot be an order id.
pub fn check_id(order_id: &str) -> Result<(), Refusal> {
    if order_id.is_empty() || order_id.len() > MAX_ID_BYTES {
        return Err(Refusal::BadRequest(format!(
            "an order id has 1 to {MAX_ID_BYTES} bytes; this one has {}",
            order_id.len()
        )));
    }
    if let Some(c) = order_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '~')))
    {
        return Err(Refusal::BadRequest(format!(
            "an order id has only letters, digits and . _ - : ~; this one has {c:?}"
        )));
    }
    Ok(())
}

/// The bearer token of the `Authorization` header, else of the `access_token` parameter.
fn bearer<'a>(headers: &'a HeaderMap, query: &'a OrderQuery) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(query.access_token.as_deref())
}

fn last_event_id(headers: &HeaderMap, query: &OrderQuery) -> Result<u64, Refusal> {
    let text = match headers.get(LAST_EVENT_ID) {
        Some(value) => value.to_str().unwrap_or("?"),
        None => match &query.last_event_id {
            Some(text) => text.as_str(),
            None => return Ok(0),
        },
    };
    text.trim().parse::<u64>().map_err(|_| {
        Refusal::BadRequest(format!(
            "Last-Event-ID must be a record sequence (a whole number); got {text:?}"
        ))
    })
}

/// JSON for inside a `<script>`: `</` cannot close the script.
fn script_json(value: &serde_json::Value) -> String {
    script_safe(&value.to_string())
}

/// JSON text for inside a `<script>`: `</` cannot close the script.
fn script_safe(json: &str) -> String {
    json.replace("</", "<\\/")
}

/// An answer other than the one asked for, with its reason; as a response, a JSON body
/// `{"error": reason}` and the status (and headers) that go with it.
#[derive(Debug)]
pub enum Refusal {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    /// 503 with `Retry-After: 1`: the order's partition is restored or moves.
    Unavailable(String),
    /// 500, logged: the store failed or holds damaged state.
    Internal(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed (Authorization: Bearer ..., or ?access_token=)"
                    .into(),
            ),
            Refusal::NotFound(message) => (StatusCode::NOT_FOUND, message),
            Refusal::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, message),
            Refusal::Internal(message) => {
                error!(%message, "order API");
                (StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        };
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl Refusal {
    fn not_found(order_id: &str) -> Refusal {
        Refusal::NotFound(format!("no order {order_id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_for_length_and_characters() {
        assert!(check_id("T10368-0000395").is_ok());
        assert!(check_id("a.b_c-d:e~f").is_ok());
        for bad in ["", "a b", "a/b", "ü", "<script>"] {
            let response = check_id(bad).unwrap_err().into_response();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(check_id(&"x".repeat(MAX_ID_BYTES)).is_ok());
        assert!(check_id(&"x".repeat(MAX_ID_BYTES + 1)).is_err());
    }
}
