//! The `--metrics-addr` server, on axum: `GET /metrics` (Prometheus text), `GET /health`,
//! and `POST /snapshot` (re-read tables alongside the stream, see [`crate::request`]); plus
//! the client `cdc snapshot` uses to reach a running connector. axum keeps accepting after
//! an accept error (it waits and goes on), so the endpoint never ends while `cdc` runs.

use crate::config::Config;
use crate::error::{Error, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A re-read asked of the running connector: concrete `db.table` names, and where to say
/// whether it was recorded (the text for the caller) or refused.
pub struct SnapshotRequest {
    /// Tables to read again, as `db.table` / `schema.table`.
    pub tables: Vec<String>,
    /// The run loop's answer.
    pub reply: oneshot::Sender<std::result::Result<String, String>>,
}

/// Body of `POST /snapshot`.
#[derive(Serialize, Deserialize)]
pub struct SnapshotBody {
    /// Patterns as `--tables` takes them (`shop.orders,shop.audit_*`).
    pub tables: String,
}

#[derive(Clone)]
struct Admin {
    config: Arc<Config>,
    requests: mpsc::Sender<SnapshotRequest>,
}

/// How long `POST /snapshot` waits for the run loop (which first lets the open transaction
/// end, as a stop does).
const REPLY_WAIT: Duration = Duration::from_secs(60);

/// Serves the endpoints on `addr` until the process ends; snapshot requests go to `requests`.
pub async fn serve(
    addr: SocketAddr,
    config: Config,
    requests: mpsc::Sender<SnapshotRequest>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /health and POST /snapshot");
    let admin = Admin { config: Arc::new(config), requests };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async { ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render()) }),
        )
        .route("/health", get(health))
        .route("/snapshot", post(snapshot))
        .with_state(admin);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the --metrics-addr server stopped");
        }
    });
    Ok(())
}

async fn health() -> impl IntoResponse {
    match crate::metrics::UP.load(std::sync::atomic::Ordering::Relaxed) {
        1 => (StatusCode::OK, "ok\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not streaming\n"),
    }
}

fn refused(status: StatusCode, error: String) -> (StatusCode, Json<serde_json::Value>) {
    (status, Json(serde_json::json!({ "error": error })))
}

async fn snapshot(State(admin): State<Admin>, Json(body): Json<SnapshotBody>) -> impl IntoResponse {
    let tables = match crate::request::resolve(&admin.config, &body.tables).await {
        Ok(t) => t,
        Err(e) => return refused(StatusCode::UNPROCESSABLE_ENTITY, crate::error::report(&e)),
    };
    let (reply, answer) = oneshot::channel();
    let asked = SnapshotRequest { tables: tables.clone(), reply };
    if admin.requests.send(asked).await.is_err() {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "the run loop has stopped".into());
    }
    match tokio::time::timeout(REPLY_WAIT, answer).await {
        Ok(Ok(Ok(text))) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "tables": tables, "status": text })))
        }
        Ok(Ok(Err(e))) => refused(StatusCode::CONFLICT, e),
        _ => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no answer from the run loop within {REPLY_WAIT:?}"),
        ),
    }
}

/// `POST /snapshot` to the connector listening on `addr`: its status code and body.
pub async fn post_snapshot(addr: SocketAddr, patterns: &str) -> Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let unreachable = |e: &dyn std::fmt::Display| {
        Error::unavailable(format!(
            "cannot reach the running cdc on --metrics-addr {addr} ({e}): is it the address that cdc listens on?"
        ))
    };
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(&SnapshotBody { tables: patterns.to_owned() }).expect("serialisable");
    let request = hyper::Request::post("/snapshot")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| Error::internal("cannot build the request").with_source(e))?;
    let response = tokio::time::timeout(REPLY_WAIT + Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| unreachable(&"no answer"))?
        .map_err(|e| unreachable(&e))?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.map_err(|e| unreachable(&e))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
