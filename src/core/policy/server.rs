//! policyd: the policy engine as a server speaking the part of OPA's REST API a gateway uses
//! (`python -m sark_native.policyd`). One tokio runtime with hyper; evaluations run inline on its
//! workers (they take microseconds, bounded by the engine's time budget).
//!
//! * `POST /v1/data/{path}` `{"input": ...}` -> `{"result": ...}` (no `result` when undefined);
//!   `GET /v1/data/{path}` without input; `?strict-builtin-errors=true|false` per request
//!   (default: the server's `--strict`/`--no-strict` setting).
//! * `PUT`/`DELETE`/`GET /v1/policies/{id}`, `GET /v1/policies[/]`, `PUT /v1/data`.
//! * `GET /health`, `GET /metrics` (Prometheus text).
//! * Writes need `Authorization: Bearer <token>` when a token digest is configured; over TCP they
//!   are refused unless one is. Bodies are capped. The Unix socket is mode 0600.
//! * The policy directory is polled: changed, added and removed `*.rego` files (and the data
//!   file) are applied as one snapshot; a change that does not compile is logged and the running
//!   snapshot keeps serving.
//! * SIGTERM/SIGINT: stop accepting, let in-flight requests finish (bounded), exit.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};

use super::{Changes, Config, PolicyEngine, Value, check_policy_name, metrics};
use crate::core::error::{Error, Result};

/// Where policyd listens.
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// policyd's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Listen,
    /// `*.rego` files under this directory are loaded (ids: their paths relative to it) and
    /// watched.
    pub policies_dir: Option<PathBuf>,
    /// A JSON object loaded as `data` and watched.
    pub data_file: Option<PathBuf>,
    /// SHA-256 of the bearer token that write endpoints require.
    pub token_sha256: Option<[u8; 32]>,
    pub watch_interval: Duration,
    pub max_policy_bytes: usize,
    pub max_data_bytes: usize,
    pub shutdown_grace: Duration,
    pub workers: usize,
    pub engine: Config,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8181))),
            policies_dir: None,
            data_file: None,
            token_sha256: None,
            watch_interval: Duration::from_secs(1),
            max_policy_bytes: 1 << 20,
            max_data_bytes: 8 << 20,
            shutdown_grace: Duration::from_secs(10),
            workers: 2,
            engine: Config::default(),
        }
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("policyd: {}", msg.as_ref());
}

/// Files last seen in the policy directory: id -> (modified, length, content hash).
type Seen = BTreeMap<String, (SystemTime, u64, [u8; 32])>;

struct State {
    engine: PolicyEngine,
    config: ServerConfig,
    over_tcp: bool,
    requests: [AtomicU64; 5],
    started: Instant,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

/// Runs policyd until SIGTERM or SIGINT. Blocks; call it with the GIL released.
pub fn run(config: ServerConfig) -> Result<()> {
    // One worker: a current-thread runtime, where a request never waits for a wake-up of another
    // thread (on small VMs each wake-up costs tens of microseconds).
    let mut builder = if config.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.workers);
        b
    };
    let runtime = builder
        .thread_name("policyd")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(config))
}

async fn serve(config: ServerConfig) -> Result<()> {
    let engine = PolicyEngine::new(config.engine.clone())?;
    let mut seen = Seen::new();
    let mut data_seen = None;
    if let Some(dir) = &config.policies_dir {
        let (changes, now) = scan(dir, &seen)?;
        engine.apply(changes)?;
        seen = now;
    }
    if let Some(file) = &config.data_file {
        let (data, stamp) = read_data(file, config.max_data_bytes)?;
        engine.set_data(data)?;
        data_seen = Some(stamp);
    }
    let state = Arc::new(State {
        engine,
        over_tcp: matches!(config.listen, Listen::Tcp(_)),
        config: config.clone(),
        requests: Default::default(),
        started: Instant::now(),
        reloads: AtomicU64::new(0),
        reload_failures: AtomicU64::new(0),
    });
    let listener = Listener::bind(&config.listen).await?;
    log(format!(
        "listening on {} with {} policies (version {})",
        listener.describe(),
        state.engine.policies().len(),
        &state.engine.version()[..12]
    ));
    if config.policies_dir.is_some() || config.data_file.is_some() {
        tokio::spawn(watch(state.clone(), seen, data_seen));
    }
    let graceful = GracefulShutdown::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("cannot watch SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Internal(format!("cannot watch SIGINT: {e}")))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(io) => {
                    let st = state.clone();
                    let service = service_fn(move |req| handle(st.clone(), req));
                    let conn = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(io, service);
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = watched.await;
                    });
                }
                Err(e) => {
                    log(format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = term.recv() => { log("SIGTERM: finishing in-flight requests"); break; }
            _ = int.recv() => { log("SIGINT: finishing in-flight requests"); break; }
        }
    }
    drop(listener);
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        log("grace period over: closing the remaining connections");
    }
    if let Listen::Unix(path) = &config.listen {
        let _ = std::fs::remove_file(path);
    }
    log("stopped");
    Ok(())
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    async fn bind(listen: &Listen) -> Result<Listener> {
        match listen {
            Listen::Tcp(addr) => TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}"))),
            Listen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(Error::InvalidArgument(format!(
                            "{} exists and is not a socket",
                            path.display()
                        )));
                    }
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(|e| {
                    Error::InvalidArgument(format!("cannot listen on {}: {e}", path.display()))
                })?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::Internal(format!("cannot chmod the socket: {e}")))?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_, p) => format!("unix://{}", p.display()),
        }
    }

    async fn accept(&self) -> std::io::Result<TokioIo<Box<dyn Io>>> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                TokioIo::new(Box::new(s) as Box<dyn Io>)
            }
            Listener::Unix(l, _) => TokioIo::new(Box::new(l.accept().await?.0) as Box<dyn Io>),
        })
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

// ----- reload -----------------------------------------------------------------------------------

fn scan(dir: &Path, seen: &Seen) -> Result<(Changes, Seen)> {
    let mut now = Seen::new();
    let mut changes = Changes::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", d.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rego") {
                continue;
            }
            let Some(id) = path
                .strip_prefix(dir)
                .ok()
                .and_then(|p| p.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if check_policy_name(&id).is_err() {
                log(format!("skipping {id:?}: not a valid policy id"));
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if let Some(prev) = seen.get(&id)
                && prev.0 == modified
                && prev.1 == meta.len()
            {
                now.insert(id, *prev);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                log(format!("skipping {id}: not readable as UTF-8"));
                continue;
            };
            let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            if seen.get(&id).is_none_or(|prev| prev.2 != hash) {
                changes.upsert.push((id.clone(), text));
            }
            now.insert(id, (modified, meta.len(), hash));
        }
    }
    changes.remove = seen
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    Ok((changes, now))
}

fn read_data(file: &Path, cap: usize) -> Result<(Value, (SystemTime, u64))> {
    let meta = std::fs::metadata(file)
        .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", file.display())))?;
    if meta.len() > cap as u64 {
        return Err(Error::InvalidArgument(format!(
            "{} is larger than {cap} bytes",
            file.display()
        )));
    }
    let bytes = std::fs::read(file)
        .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", file.display())))?;
    let data: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidArgument(format!("{} is not JSON: {e}", file.display())))?;
    Ok((
        data,
        (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        ),
    ))
}

async fn watch(state: Arc<State>, mut seen: Seen, mut data_seen: Option<(SystemTime, u64)>) {
    let mut tick = tokio::time::interval(state.config.watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut changes = Changes::default();
        let mut next_seen = None;
        if let Some(dir) = &state.config.policies_dir {
            match scan(dir, &seen) {
                Ok((c, now)) => {
                    changes = c;
                    next_seen = Some(now);
                }
                Err(e) => log(format!("reload: {e}")),
            }
        }
        let mut next_data_seen = None;
        if let Some(file) = &state.config.data_file {
            let stamp = std::fs::metadata(file)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            if stamp.is_some() && stamp != data_seen {
                match read_data(file, state.config.max_data_bytes) {
                    Ok((data, stamp)) => {
                        changes.data = Some(data);
                        next_data_seen = Some(stamp);
                    }
                    Err(e) => log(format!("reload of data: {e}")),
                }
            }
        }
        if changes.upsert.is_empty() && changes.remove.is_empty() && changes.data.is_none() {
            if let Some(now) = next_seen {
                seen = now;
            }
            continue;
        }
        let summary = format!(
            "{} changed, {} removed{}",
            changes.upsert.len(),
            changes.remove.len(),
            if changes.data.is_some() { ", data" } else { "" }
        );
        match state.engine.apply(changes) {
            Ok(()) => {
                state.reloads.fetch_add(1, Ordering::Relaxed);
                log(format!(
                    "reloaded ({summary}): version {}",
                    &state.engine.version()[..12]
                ));
                if let Some(now) = next_seen {
                    seen = now;
                }
                if next_data_seen.is_some() {
                    data_seen = next_data_seen;
                }
            }
            Err(e) => {
                state.reload_failures.fetch_add(1, Ordering::Relaxed);
                // Keep the old stamps: the files are retried when they change again.
                if let Some(now) = next_seen {
                    seen = now;
                }
                if next_data_seen.is_some() {
                    data_seen = next_data_seen;
                }
                log(format!(
                    "reload rejected ({summary}), still serving the previous policies: {e}"
                ));
            }
        }
    }
}

// ----- requests ---------------------------------------------------------------------------------

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_reply(status: StatusCode, code: &str, message: &str) -> Reply {
    let body = serde_json::to_vec(&serde_json::json!({"code": code, "message": message}))
        .unwrap_or_default();
    json_reply(status, body)
}

fn compile_error_reply(e: &crate::core::error::PolicyCompileError, id: &str) -> Reply {
    let mut error = serde_json::json!({"code": "rego_parse_error", "message": e.message});
    if let (Some(row), Some(col)) = (e.line, e.column) {
        error["location"] = serde_json::json!({
            "file": e.policy.as_deref().unwrap_or(id), "row": row, "col": col
        });
    }
    let body = serde_json::json!({
        "code": "invalid_parameter",
        "message": "error(s) occurred while compiling module(s)",
        "errors": [error],
    });
    json_reply(
        StatusCode::BAD_REQUEST,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

fn core_error_reply(e: &Error) -> Reply {
    match e {
        Error::PolicyCompile(c) => compile_error_reply(c, ""),
        Error::PolicyNotFound(m) => error_reply(StatusCode::NOT_FOUND, "resource_not_found", m),
        Error::InvalidArgument(m) => error_reply(StatusCode::BAD_REQUEST, "invalid_parameter", m),
        Error::PolicyEvaluation(m) => {
            error_reply(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", m)
        }
        other => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &other.to_string(),
        ),
    }
}

async fn body_bytes(body: Incoming, cap: usize) -> std::result::Result<Bytes, Reply> {
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_parameter",
            &format!("request body larger than {cap} bytes"),
        )),
        Err(e) => Err(error_reply(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            &format!("cannot read the request body: {e}"),
        )),
    }
}

/// `None` when the request may write; else the refusal.
fn refuse_write(state: &State, req: &Request<Incoming>) -> Option<Reply> {
    let Some(expected) = &state.config.token_sha256 else {
        return state.over_tcp.then(|| {
            error_reply(
                StatusCode::FORBIDDEN,
                "unauthorized",
                "writes over TCP need a token (start policyd with --token-sha256)",
            )
        });
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    match presented {
        Some(digest) if bool::from(digest.as_slice().ct_eq(expected)) => None,
        _ => Some(error_reply(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )),
    }
}

fn count(state: &State, status: StatusCode) {
    let slot = match status.as_u16() {
        200..=299 => 0,
        400 | 404 | 405 | 413 => 1,
        401 | 403 => 2,
        500..=599 => 3,
        _ => 4,
    };
    state.requests[slot].fetch_add(1, Ordering::Relaxed);
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> std::result::Result<Reply, Infallible> {
    let reply = route(&state, req).await;
    count(&state, reply.status());
    Ok(reply)
}

async fn route(state: &State, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/health") => json_reply(StatusCode::OK, b"{}".to_vec()),
        (Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(metrics_text(state))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Method::GET, "/v1/policies" | "/v1/policies/") => {
            let snap = state.engine.snapshot();
            let result: Vec<serde_json::Value> = snap
                .policy_versions()
                .into_iter()
                .map(|(id, _)| {
                    serde_json::json!({"id": id, "raw": snap.source(&id).unwrap_or_default()})
                })
                .collect();
            json_reply(
                StatusCode::OK,
                serde_json::to_vec(&serde_json::json!({ "result": result })).unwrap_or_default(),
            )
        }
        (m, p) if p.starts_with("/v1/policies/") => {
            let id = percent_decode(&p["/v1/policies/".len()..]);
            policy_route(state, m, &id, req).await
        }
        (Method::PUT, "/v1/data" | "/v1/data/") => {
            let refusal = refuse_write(state, &req);
            let bytes = match body_bytes(req.into_body(), state.config.max_data_bytes).await {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            if let Some(refusal) = refusal {
                return refusal;
            }
            let data: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return error_reply(
                        StatusCode::BAD_REQUEST,
                        "invalid_parameter",
                        &format!("body is not JSON: {e}"),
                    );
                }
            };
            match state.engine.set_data(data) {
                Ok(()) => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Err(e) => core_error_reply(&e),
            }
        }
        (m @ (Method::POST | Method::GET), p) if p == "/v1/data" || p.starts_with("/v1/data/") => {
            let doc = p
                .trim_start_matches("/v1/")
                .trim_end_matches('/')
                .replace('/', ".");
            let strict = match query_param(req.uri().query(), "strict-builtin-errors") {
                Some("true" | "") => true,
                Some("false") => false,
                _ => state.engine.config().strict,
            };
            data_route(state, m, &doc, strict, req).await
        }
        (_, "/health" | "/metrics" | "/v1/data" | "/v1/policies") => error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
        _ => error_reply(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            &format!("no such endpoint: {path}"),
        ),
    }
}

async fn policy_route(state: &State, method: Method, id: &str, req: Request<Incoming>) -> Reply {
    // Read the body before any refusal: answering while a client still writes it makes the
    // connection close under the client (a broken pipe instead of our error).
    let refusal = (method != Method::GET)
        .then(|| refuse_write(state, &req))
        .flatten();
    let bytes = match body_bytes(req.into_body(), state.config.max_policy_bytes).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    if let Err(e) = check_policy_name(id) {
        return core_error_reply(&e);
    }
    if let Some(refusal) = refusal {
        return refusal;
    }
    match method {
        Method::GET => {
            let snap = state.engine.snapshot();
            match snap.source(id) {
                Some(raw) => json_reply(
                    StatusCode::OK,
                    serde_json::to_vec(&serde_json::json!({"result": {"id": id, "raw": raw}}))
                        .unwrap_or_default(),
                ),
                None => error_reply(
                    StatusCode::NOT_FOUND,
                    "resource_not_found",
                    &format!("storage_not_found_error: policy id {id:?}"),
                ),
            }
        }
        Method::PUT => {
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "policy is not UTF-8",
                );
            };
            match state.engine.load_policy(id, text) {
                Ok(_) => json_reply(StatusCode::OK, b"{}".to_vec()),
                Err(Error::PolicyCompile(c)) => compile_error_reply(&c, id),
                Err(e) => core_error_reply(&e),
            }
        }
        Method::DELETE => match state.engine.remove_policy(id) {
            Ok(()) => json_reply(StatusCode::OK, b"{}".to_vec()),
            Err(Error::PolicyNotFound(_)) => error_reply(
                StatusCode::NOT_FOUND,
                "resource_not_found",
                &format!("storage_not_found_error: policy id {id:?}"),
            ),
            Err(e) => core_error_reply(&e),
        },
        _ => error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

async fn data_route(
    state: &State,
    method: Method,
    doc: &str,
    strict: bool,
    req: Request<Incoming>,
) -> Reply {
    let input = if method == Method::POST {
        let bytes = match body_bytes(req.into_body(), state.config.max_data_bytes).await {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            let body: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return error_reply(
                        StatusCode::BAD_REQUEST,
                        "invalid_parameter",
                        &format!("body is not JSON: {e}"),
                    );
                }
            };
            let Value::Object(fields) = &body else {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "body must be a JSON object like {\"input\": ...}",
                );
            };
            fields.get(&Value::from("input")).cloned()
        }
    } else {
        None
    };
    if let Some(i) = &input
        && let Err(e) = state.engine.check_input(i)
    {
        return error_reply(StatusCode::BAD_REQUEST, "invalid_parameter", &e.to_string());
    }
    match state.engine.evaluate_with(doc, input, strict) {
        Ok(Some(value)) => {
            let mut body = b"{\"result\":".to_vec();
            if let Err(e) = serde_json::to_writer(&mut body, &value) {
                return error_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    &format!("cannot serialize the result: {e}"),
                );
            }
            body.push(b'}');
            json_reply(StatusCode::OK, body)
        }
        Ok(None) => json_reply(StatusCode::OK, b"{}".to_vec()),
        Err(e) => core_error_reply(&e),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn metrics_text(state: &State) -> String {
    use std::fmt::Write as _;
    let m = metrics::snapshot();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP opa_evaluation_duration_seconds Policy evaluation time\n\
         # TYPE opa_evaluation_duration_seconds histogram"
    );
    let mut cumulative = 0u64;
    for (bound, n) in metrics::BUCKETS.iter().zip(&m.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "opa_evaluation_duration_seconds_bucket{{implementation=\"rust\",le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += m.buckets.last().copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "opa_evaluation_duration_seconds_bucket{{implementation=\"rust\",le=\"+Inf\"}} {cumulative}\n\
         opa_evaluation_duration_seconds_sum{{implementation=\"rust\"}} {}\n\
         opa_evaluation_duration_seconds_count{{implementation=\"rust\"}} {cumulative}",
        m.sum_seconds
    );
    let _ = writeln!(
        out,
        "# HELP opa_evaluations_total Policy evaluations\n# TYPE opa_evaluations_total counter\n\
         opa_evaluations_total{{implementation=\"rust\"}} {}",
        m.evaluations
    );
    let _ = writeln!(
        out,
        "# HELP opa_rust_errors_total Failed evaluations by type\n# TYPE opa_rust_errors_total counter"
    );
    for (kind, n) in &m.errors {
        let _ = writeln!(out, "opa_rust_errors_total{{error_type=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP rust_opa_policies_loaded Policies loaded\n# TYPE rust_opa_policies_loaded gauge\n\
         rust_opa_policies_loaded {}",
        state.engine.policies().len()
    );
    let codes = ["2xx", "4xx", "401_403", "5xx", "other"];
    let _ = writeln!(
        out,
        "# HELP policyd_requests_total HTTP requests by status class\n# TYPE policyd_requests_total counter"
    );
    for (code, n) in codes.iter().zip(&state.requests) {
        let _ = writeln!(
            out,
            "policyd_requests_total{{code=\"{code}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP policyd_reloads_total Policy directory reloads\n# TYPE policyd_reloads_total counter\n\
         policyd_reloads_total{{result=\"ok\"}} {}\npolicyd_reloads_total{{result=\"rejected\"}} {}",
        state.reloads.load(Ordering::Relaxed),
        state.reload_failures.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP policyd_uptime_seconds Seconds since start\n# TYPE policyd_uptime_seconds gauge\n\
         policyd_uptime_seconds {:.3}",
        state.started.elapsed().as_secs_f64()
    );
    if let Some(rss) = rss_bytes() {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
        );
    }
    out
}
