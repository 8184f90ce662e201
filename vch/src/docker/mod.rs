//! `vch serve`: the Docker Engine API (version 1.41, what docker 20.10 speaks) over a unix
//! socket or TCP, on the same state root and supervisors as the `vch` commands, so that the
//! stock docker CLI runs containerVMs. HTTP and the connection upgrade of attach and exec are
//! hyper's; the request and response types are bollard's models.
//!
//! [`containers`] creates, starts, waits for, stops and lists containers; [`stream`] relays a
//! hijacked connection to a session's attach channel in docker's stream format; [`exec`] runs
//! execs; [`images`] is the image store (`docker load`, `docker import`); [`system`] answers
//! ping, version, info and events, and the volumes and networks.

pub mod containers;
pub mod exec;
pub mod images;
pub mod stream;
pub mod system;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bollard_stubs::models::EventMessage;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{broadcast, mpsc, watch};

/// The API version served (docker 20.10's), and the oldest a client may ask for.
pub const API_VERSION: &str = "1.41";
pub const MIN_API_VERSION: &str = "1.12";

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Where `vch serve` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    /// `unix:PATH`, `unix://PATH`, `tcp:HOST:PORT` or `tcp://HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            return Ok(Self::Unix(p.into()));
        }
        if let Some(a) = s.strip_prefix("tcp://").or_else(|| s.strip_prefix("tcp:")) {
            return a
                .parse()
                .map(Self::Tcp)
                .map_err(|e| format!("bad address {a:?}: {e} (want tcp:IP:PORT)"));
        }
        Err(format!("bad endpoint {s:?}: want unix:PATH or tcp:IP:PORT"))
    }
}

/// An API error: docker's status codes and `{"message": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<anyhow::Error> for ApiError {
    /// What the shared code says, with docker's status: a missing object is a 404 with docker's
    /// wording, a name in use a 409, anything else a 500.
    fn from(e: anyhow::Error) -> Self {
        let text = format!("{e:#}");
        if let Some(what) = text.strip_prefix("no such container: ") {
            return Self::not_found(format!("No such container: {what}"));
        }
        if text.starts_with("no such ") {
            return Self::not_found(text);
        }
        if text.contains("is in use") {
            return Self::conflict(text);
        }
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, text)
    }
}

pub type ApiResult = Result<Response<Body>, ApiError>;

/// What every handler shares: the state root, the event stream, and what this server tracks in
/// memory (containers whose exit it watches, attaches waiting for a start, execs, live attach
/// channels for resizes).
pub struct Api {
    pub root: PathBuf,
    pub events: broadcast::Sender<EventMessage>,
    /// Per container: its exits so far and the last exit status (for `wait`).
    pub exits: Mutex<HashMap<String, watch::Sender<containers::Exits>>>,
    /// Per container: attaches waiting for it to start (its process then waits for them).
    pub pending_attach: Mutex<HashMap<String, usize>>,
    pub execs: Mutex<HashMap<String, exec::ExecRecord>>,
    /// Live attach channels by container or exec ID, for `resize`.
    pub channels: Mutex<HashMap<String, Vec<(ssh::Handle, ssh::ChannelId)>>>,
    /// The last size asked for, by container or exec ID (sent when an attach opens).
    pub sizes: Mutex<HashMap<String, (u32, u32)>>,
}

impl Api {
    pub fn new(root: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            root,
            events: broadcast::channel(1024).0,
            exits: Mutex::default(),
            pending_attach: Mutex::default(),
            execs: Mutex::default(),
            channels: Mutex::default(),
            sizes: Mutex::default(),
        })
    }

    /// Forgets what this server tracks for a container that is removed: its execs (docker keeps
    /// an exec's record until its container goes), their sizes and attach channels, and the
    /// container's own. Its exits stay: a `wait --condition=removed` may still be listening.
    pub fn forget_container(&self, id: &str) {
        let gone: Vec<String> = self
            .execs
            .lock()
            .expect("execs")
            .extract_if(|_, r| r.container == id)
            .map(|(exec, _)| exec)
            .collect();
        let mut sizes = self.sizes.lock().expect("sizes");
        let mut channels = self.channels.lock().expect("channels");
        for key in gone.iter().map(String::as_str).chain([id]) {
            sizes.remove(key);
            channels.remove(key);
        }
        self.pending_attach
            .lock()
            .expect("pending attaches")
            .remove(id);
    }
}

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> ApiResult {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(full(bytes))
        .expect("a valid response"))
}

/// A response with no body.
pub fn empty(status: StatusCode) -> ApiResult {
    Ok(Response::builder()
        .status(status)
        .body(full(Vec::new()))
        .expect("a valid response"))
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body fed through a channel (logs and events as they come).
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A streamed response and the sender that feeds it.
pub fn streaming(content_type: &str) -> (Response<Body>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(64);
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", content_type)
        .body(ChannelBody(rx).boxed())
        .expect("a valid response");
    (resp, tx)
}

/// A request's query parameters.
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn of(req: &Request<Incoming>) -> Self {
        Self(
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// Docker's booleans: `1`, `true`, `True`; absent or anything else is false.
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True" | "TRUE"))
    }
    pub fn num<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, ApiError> {
        match self.get(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("bad value for {k}: {v:?}"))),
        }
    }
    /// The `filters` parameter: `{"name": ["a"], ...}` (or the older `{"name": {"a": true}}`).
    pub fn filters(&self) -> Result<HashMap<String, Vec<String>>, ApiError> {
        let Some(text) = self.get("filters").filter(|t| !t.is_empty()) else {
            return Ok(HashMap::new());
        };
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("bad filters: {e}")))?;
        let mut out = HashMap::new();
        if let serde_json::Value::Object(m) = v {
            for (k, vals) in m {
                let list = match vals {
                    serde_json::Value::Array(a) => a
                        .into_iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    serde_json::Value::Object(o) => o.keys().cloned().collect(),
                    _ => Vec::new(),
                };
                out.insert(k, list);
            }
        }
        Ok(out)
    }
}

/// How much a JSON request body may hold (a container's create is the largest).
pub const JSON_LIMIT: usize = 16 << 20;

/// The body as JSON of `T`, at most `limit` bytes (an empty body is `T::default()`).
pub async fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: Incoming,
    limit: usize,
) -> Result<T, ApiError> {
    let b = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request: {e}")))?
        .to_bytes();
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&b).map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))
}

/// A request's body as JSON of `T` (see [`json_body`]).
pub async fn body_json<T: serde::de::DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    json_body(req.into_body(), JSON_LIMIT).await
}

/// Serves the API on `at` until the process ends.
pub async fn serve(root: PathBuf, at: Endpoint) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let api = Api::new(root);
    system::spawn_watcher(api.clone());
    match at {
        Endpoint::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("listening on {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
            eprintln!("vch: the Docker API on unix://{}", path.display());
            loop {
                let (s, _) = l.accept().await?;
                spawn_connection(api.clone(), s);
            }
        }
        Endpoint::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            eprintln!("vch: the Docker API on tcp://{}", l.local_addr()?);
            loop {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                spawn_connection(api.clone(), s);
            }
        }
    }
}

fn spawn_connection<S>(api: Arc<Api>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(handle(api, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!("API connection: {e}");
        }
    });
}

/// One request: routed, answered, with docker's headers on every response.
async fn handle(api: Arc<Api>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    tracing::debug!("{method} {}", req.uri());
    let mut resp = match route(api, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!("{method} {path}: {}", e.message);
            }
            let body = serde_json::json!({ "message": e.message });
            Response::builder()
                .status(e.status)
                .header("Content-Type", "application/json")
                .body(full(body.to_string()))
                .expect("a valid response")
        }
    };
    let h = resp.headers_mut();
    h.insert("Api-Version", API_VERSION.parse().expect("a header value"));
    h.insert(
        "Docker-Experimental",
        "false".parse().expect("a header value"),
    );
    h.insert("Ostype", "linux".parse().expect("a header value"));
    h.insert(
        "Server",
        concat!("vch/", env!("CARGO_PKG_VERSION"))
            .parse()
            .expect("a header value"),
    );
    resp
}

/// The path without its `/v1.NN` prefix, split into segments.
fn segments(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map_or_else(|| s.to_string(), |(_, v)| v.into_owned())
        })
        .collect();
    if parts
        .first()
        .is_some_and(|p| p.starts_with('v') && p[1..].parse::<f32>().is_ok())
    {
        parts.remove(0);
    }
    parts
}

async fn route(api: Arc<Api>, req: Request<Incoming>) -> ApiResult {
    let segs = segments(req.uri().path());
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method().clone();
    match (&m, s.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => system::ping(&m),
        (&Method::GET, ["version"]) => system::version(),
        (&Method::GET, ["info"]) => system::info(&api),
        (&Method::GET, ["events"]) => system::events(&api, &req),
        (&Method::POST, ["containers", "create"]) => containers::create(&api, req).await,
        (&Method::GET, ["containers", "json"]) => containers::list(&api, &req),
        (&Method::GET, ["containers", id, "json"]) => containers::inspect(&api, id),
        (&Method::POST, ["containers", id, "start"]) => containers::start(&api, id).await,
        (&Method::POST, ["containers", id, "attach"]) => containers::attach(&api, id, req),
        (&Method::POST, ["containers", id, "wait"]) => containers::wait(&api, id, &req).await,
        (&Method::POST, ["containers", id, "resize"]) => containers::resize(&api, id, &req).await,
        (&Method::POST, ["containers", id, "kill"]) => containers::kill(&api, id, &req).await,
        (&Method::POST, ["containers", id, "stop"]) => containers::stop(&api, id, &req).await,
        (&Method::POST, ["containers", id, "restart"]) => containers::restart(&api, id, &req).await,
        (&Method::POST, ["containers", id, "rename"]) => containers::rename(&api, id, &req),
        (&Method::DELETE, ["containers", id]) => containers::remove(&api, id, &req).await,
        (&Method::GET, ["containers", id, "logs"]) => containers::logs(&api, id, &req),
        (&Method::GET, ["containers", id, "top"]) => containers::top(&api, id, &req).await,
        (&Method::POST, ["containers", id, "exec"]) => exec::create(&api, id, req).await,
        (&Method::POST, ["exec", id, "start"]) => exec::start(&api, id, req).await,
        (&Method::POST, ["exec", id, "resize"]) => exec::resize(&api, id, &req).await,
        (&Method::GET, ["exec", id, "json"]) => exec::inspect(&api, id),
        (&Method::GET, ["images", "json"]) => images::list(&api, &req),
        (&Method::POST, ["images", "load"]) => images::load(&api, req).await,
        (&Method::POST, ["images", "create"]) => images::create(&api, req).await,
        (&Method::GET, ["images", rest @ .., "json"]) => images::inspect(&api, &rest.join("/")),
        (&Method::DELETE, ["images", rest @ ..]) if !rest.is_empty() => {
            images::remove(&api, &rest.join("/"), &req)
        }
        (&Method::GET, ["volumes"]) => system::volumes(&api),
        (&Method::POST, ["volumes", "create"]) => system::volume_create(&api, req).await,
        (&Method::GET, ["volumes", name]) => system::volume_inspect(&api, name),
        (&Method::DELETE, ["volumes", name]) => system::volume_remove(&api, name),
        (&Method::GET, ["networks"]) => system::networks(&api),
        (&Method::POST, ["networks", "create"]) => system::network_create(&api, req).await,
        (&Method::GET, ["networks", name]) => system::network_inspect(&api, name),
        (&Method::DELETE, ["networks", name]) => system::network_remove(&api, name),
        _ => Err(ApiError::not_found(format!(
            "page not found: {m} {} (not served by vch)",
            req.uri().path()
        ))),
    }
}

/// Sends an event to `/events` subscribers.
pub fn event(api: &Api, kind: &str, action: &str, id: &str, attributes: HashMap<String, String>) {
    use bollard_stubs::models::{EventActor, EventMessageTypeEnum};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let typ = match kind {
        "container" => EventMessageTypeEnum::CONTAINER,
        "image" => EventMessageTypeEnum::IMAGE,
        "volume" => EventMessageTypeEnum::VOLUME,
        _ => EventMessageTypeEnum::NETWORK,
    };
    let _ = api.events.send(EventMessage {
        typ: Some(typ),
        action: Some(action.to_string()),
        actor: Some(EventActor {
            id: Some(id.to_string()),
            attributes: Some(attributes),
        }),
        scope: Some(bollard_stubs::models::EventMessageScopeEnum::LOCAL),
        time: Some(now.as_secs() as i64),
        time_nano: Some(now.as_nanos() as i64),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lose_their_version_and_are_decoded() {
        assert_eq!(
            segments("/v1.41/containers/abc/json"),
            ["containers", "abc", "json"]
        );
        assert_eq!(segments("/_ping"), ["_ping"]);
        assert_eq!(
            segments("/images/localhost%3A5000%2Fbusy/json"),
            ["images", "localhost:5000/busy", "json"]
        );
    }

    #[test]
    fn endpoints_as_docker_hosts_are_written() {
        assert_eq!(
            "unix:///run/vch.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/vch.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:2376".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:2376".parse().unwrap())
        );
        assert!("http://x".parse::<Endpoint>().is_err());
    }

    #[test]
    fn a_removed_containers_execs_are_forgotten_and_no_others() {
        let api = Api::new(PathBuf::from("/nonexistent"));
        let record = |container: &str| exec::ExecRecord {
            container: container.into(),
            config: Default::default(),
            started: true,
            exit_code: Some(0),
        };
        for (exec, container) in [("e1", "a"), ("e2", "a"), ("e3", "b")] {
            api.execs
                .lock()
                .unwrap()
                .insert(exec.into(), record(container));
            api.sizes.lock().unwrap().insert(exec.into(), (24, 80));
        }
        api.sizes.lock().unwrap().insert("a".into(), (30, 100));
        api.sizes.lock().unwrap().insert("b".into(), (30, 100));
        api.pending_attach.lock().unwrap().insert("a".into(), 1);
        api.forget_container("a");
        let mut execs: Vec<String> = api.execs.lock().unwrap().keys().cloned().collect();
        execs.sort();
        assert_eq!(execs, ["e3"]);
        let mut sized: Vec<String> = api.sizes.lock().unwrap().keys().cloned().collect();
        sized.sort();
        assert_eq!(sized, ["b", "e3"]);
        assert!(api.pending_attach.lock().unwrap().is_empty());
    }

    #[test]
    fn shared_errors_get_docker_status_codes() {
        let e = ApiError::from(anyhow::anyhow!("no such container: web"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.message, "No such container: web");
        assert_eq!(
            ApiError::from(anyhow::anyhow!("the name \"a\" is in use")).status,
            StatusCode::CONFLICT
        );
    }
}
