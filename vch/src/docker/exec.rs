//! `/containers/{id}/exec` and `/exec/...`: an exec is recorded at create and becomes a VIC exec
//! session at start (added to the config, `reload`), attached over a hijacked connection or left
//! running; its exit status from the attach channel, or from the keys the tether wrote.

use std::sync::Arc;

use bollard_stubs::models::{ExecConfig, ExecInspectResponse, ProcessConfig};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::containers::find;
use super::{body_json, empty, json, stream, Api, ApiError, ApiResult, Query};
use crate::container::{Container, RunSpec};

/// An exec as this server knows it.
#[derive(Clone, Debug)]
pub struct ExecRecord {
    pub container: String,
    pub config: ExecConfig,
    /// Started (its session is in the config).
    pub started: bool,
    /// Its exit status, once an attached client has seen it.
    pub exit_code: Option<i32>,
}

/// `POST /containers/{id}/exec`.
pub async fn create(api: &Arc<Api>, id: &str, req: Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    let config: ExecConfig = body_json(req).await?;
    if !c.vm_running() {
        return Err(ApiError::conflict(format!(
            "Container {} is not running",
            c.meta.id
        )));
    }
    if config.cmd.as_ref().is_none_or(|c| c.is_empty()) {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let exec_id = crate::container::new_id();
    api.execs.lock().expect("execs").insert(
        exec_id.clone(),
        ExecRecord {
            container: c.meta.id.clone(),
            config,
            started: false,
            exit_code: None,
        },
    );
    json(StatusCode::CREATED, &serde_json::json!({ "Id": exec_id }))
}

fn record(api: &Api, id: &str) -> Result<ExecRecord, ApiError> {
    api.execs
        .lock()
        .expect("execs")
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
}

#[derive(Debug, Default, Deserialize)]
struct StartBody {
    #[serde(rename = "Detach", default)]
    detach: bool,
    #[serde(rename = "Tty", default)]
    tty: Option<bool>,
}

/// The exec's session as VIC's VCH writes one.
fn session(cfg: &ExecConfig, attached: bool) -> RunSpec {
    RunSpec {
        name: None,
        command: cfg.cmd.clone().unwrap_or_default(),
        env: cfg.env.clone().unwrap_or_default(),
        workdir: cfg.working_dir.clone().filter(|w| !w.is_empty()),
        user: cfg.user.clone().filter(|u| !u.is_empty()),
        tty: cfg.tty.unwrap_or(false),
        interactive: cfg.attach_stdin.unwrap_or(false),
        attached,
        debug: 0,
        debug_shell: false,
    }
}

/// `POST /exec/{id}/start`: detached (back once it runs) or attached over a hijacked connection
/// (its exit status recorded before the connection closes, for the CLI's inspect after it).
pub async fn start(api: &Arc<Api>, id: &str, req: Request<Incoming>) -> ApiResult {
    let rec = record(api, id)?;
    if rec.started {
        return Err(ApiError::conflict(format!(
            "Error: Exec command {id} has already run"
        )));
    }
    let c = find(api, &rec.container)?;
    if !c.vm_running() {
        return Err(ApiError::conflict(format!(
            "Container {} is not running",
            c.meta.id
        )));
    }
    let hijacking = req.headers().contains_key(hyper::header::UPGRADE);
    let q = Query::of(&req);
    let detach_keys =
        stream::detach_keys(q.get("detachKeys").or(rec.config.detach_keys.as_deref()))?;
    // The body is read before the upgrade takes the connection.
    let (parts, body) = req.into_parts();
    let start: StartBody = super::json_body(body, 1 << 20).await?;
    let tty = start.tty.or(rec.config.tty).unwrap_or(false);
    let mut cfg = rec.config.clone();
    cfg.tty = Some(tty);
    let attached = !start.detach;
    let spec = session(&cfg, attached);
    let session = crate::container::session(id, &c.meta.name, &spec);
    let h = crate::commands::connect_container(&c).await?;
    let removed = crate::manage::start_exec(&c, &h, id, &session).await?;
    {
        let mut records = api.execs.lock().expect("execs");
        if let Some(r) = records.get_mut(id) {
            r.started = true;
        }
        // Execs whose keys left the config keep their exit status here, for inspect.
        for (old, state) in removed {
            if let Some(r) = records.get_mut(&old) {
                r.exit_code.get_or_insert(state.exit_status);
            }
        }
    }
    if !attached || !hijacking {
        h.disconnect("done").await;
        return empty(StatusCode::OK);
    }
    let relay = stream::Relay {
        tty,
        stdin: cfg.attach_stdin.unwrap_or(false),
        stdout: cfg.attach_stdout.unwrap_or(true),
        stderr: cfg.attach_stderr.unwrap_or(true),
        detach_keys,
        close_stdin: true,
    };
    let (api, exec_id) = (api.clone(), id.to_string());
    // The body has been read: the request is whole again for the upgrade.
    let req = Request::from_parts(parts, http_body_util::Empty::<hyper::body::Bytes>::new());
    stream::hijack(req, tty, move |io| async move {
        let status = match stream::relay(&api, &exec_id, io, &h, &exec_id, relay).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!("exec {exec_id}: {e:#}");
                None
            }
        };
        if let Some(r) = api.execs.lock().expect("execs").get_mut(&exec_id) {
            r.exit_code = status;
        }
        h.disconnect("done").await;
    })
}

/// `POST /exec/{id}/resize?h=&w=`.
pub async fn resize(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    record(api, id)?;
    let q = Query::of(req);
    let (Some(w), Some(h)) = (q.num::<u32>("w")?, q.num::<u32>("h")?) else {
        return Err(ApiError::bad_request("resize needs h and w"));
    };
    stream::resize(api, id, w, h).await;
    empty(StatusCode::OK)
}

/// `GET /exec/{id}/json`: Running and ExitCode (from the attach, else the tether's keys).
pub fn inspect(api: &Arc<Api>, id: &str) -> ApiResult {
    let rec = record(api, id)?;
    let c = find(api, &rec.container)?;
    let (running, code) = match rec.exit_code {
        Some(code) => (false, Some(code)),
        None => {
            let state = c.config().ok().and_then(|cfg| cfg.execs.get(id).cloned());
            match state {
                Some(s) if s.started == "true" => {
                    let ended = crate::container::session_ended(&s);
                    if ended || !c.vm_running() {
                        (false, Some(if ended { s.exit_status } else { 137 }))
                    } else {
                        (true, None)
                    }
                }
                Some(s) if !s.started.is_empty() => (false, Some(s.exit_status)),
                _ => (false, None),
            }
        }
    };
    let cmd = rec.config.cmd.clone().unwrap_or_default();
    json(
        StatusCode::OK,
        &ExecInspectResponse {
            id: Some(id.to_string()),
            container_id: Some(rec.container.clone()),
            running: Some(running),
            exit_code: code.map(i64::from),
            open_stdin: rec.config.attach_stdin,
            open_stdout: rec.config.attach_stdout,
            open_stderr: rec.config.attach_stderr,
            process_config: Some(ProcessConfig {
                tty: rec.config.tty,
                entrypoint: cmd.first().cloned(),
                arguments: Some(cmd.iter().skip(1).cloned().collect()),
                user: rec.config.user.clone(),
                privileged: Some(false),
            }),
            can_remove: Some(false),
            detach_keys: rec.config.detach_keys.clone(),
            pid: Some(0),
        },
    )
}

/// Runs `cmd` in the container as an exec and takes its output (stdout and stderr together)
/// and exit status: what `top` shows.
pub async fn capture(
    api: &Arc<Api>,
    c: &Container,
    cmd: Vec<String>,
) -> Result<(i32, Vec<u8>), ApiError> {
    let exec_id = crate::container::new_id();
    let spec = RunSpec {
        name: None,
        command: cmd,
        env: Vec::new(),
        workdir: None,
        user: None,
        tty: false,
        interactive: false,
        attached: true,
        debug: 0,
        debug_shell: false,
    };
    let session = crate::container::session(&exec_id, &c.meta.name, &spec);
    let h = crate::commands::connect_container(c).await?;
    crate::manage::start_exec(c, &h, &exec_id, &session).await?;
    let (mine, theirs) = tokio::io::duplex(64 * 1024);
    let relay = stream::Relay {
        tty: true, // raw: stdout and stderr as they come, unframed
        stdin: false,
        stdout: true,
        stderr: true,
        detach_keys: Vec::new(),
        close_stdin: false,
    };
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut mine = mine;
        let mut out = Vec::new();
        let _ = mine.read_to_end(&mut out).await;
        out
    });
    let status = stream::relay(api, &exec_id, theirs, &h, &exec_id, relay).await?;
    h.disconnect("done").await;
    let out = reader
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((status.unwrap_or(125), out))
}
