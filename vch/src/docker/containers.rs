//! `/containers/...`: create (docker's config mapped onto a containerVM), start, attach, wait,
//! resize, kill, stop, restart, rename, remove, inspect, list, logs and top.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bollard_stubs::models::{
    ContainerConfig, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    ContainerSummary, ContainerWaitResponse, HostConfig, MountTypeEnum, NetworkingConfig, Port,
    PortTypeEnum,
};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::{body_json, empty, event, json, stream, Api, ApiError, ApiResult, Query};
use crate::container::{Container, RunSpec};
use crate::manage::{self, NewContainer, StartError};
use crate::network::{NetMode, PortSpec};
use crate::volume::VolumeArg;

/// The body of `POST /containers/create`: the container's config with its host and networking
/// configs beside it.
#[derive(Debug, Default, Deserialize)]
pub struct CreateBody {
    #[serde(flatten)]
    pub config: ContainerConfig,
    #[serde(rename = "HostConfig")]
    pub host_config: Option<HostConfig>,
    #[serde(rename = "NetworkingConfig")]
    pub networking_config: Option<NetworkingConfig>,
}

/// A container's exits as this server has seen them: how many, and the last status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exits {
    pub count: u64,
    pub status: i32,
}

/// The docker config a container was created with, beside its state (`docker.json`).
#[derive(Debug, Default, serde::Serialize, Deserialize)]
pub struct Recorded {
    pub config: ContainerConfig,
    pub host_config: HostConfig,
}

fn recorded(c: &Container) -> Recorded {
    std::fs::read(c.dir.join("docker.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn find(api: &Api, id: &str) -> Result<Container, ApiError> {
    Ok(Container::find(&api.root, id.trim_start_matches('/'))?)
}

/// `POST /containers/create?name=`.
pub async fn create(api: &Arc<Api>, req: Request<Incoming>) -> ApiResult {
    let q = Query::of(&req);
    let body: CreateBody = body_json(req).await?;
    let name = q.get("name").filter(|n| !n.is_empty()).map(str::to_string);
    if let Some(n) = &name {
        let ok = n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(ApiError::bad_request(format!(
                "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if let Ok(other) = Container::find(&api.root, n) {
            if other.meta.name == *n {
                return Err(ApiError::conflict(format!(
                    "Conflict. The container name \"/{n}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.meta.id
                )));
            }
        }
    }
    let image_name = body.config.image.clone().unwrap_or_default();
    let image = super::images::Image::resolve(&api.root, &image_name)
        .map_err(|_| ApiError::not_found(format!("No such image: {image_name}")))?;
    let new = new_container(api, &body, &image, name)?;
    let root = api.root.clone();
    let c = tokio::task::spawn_blocking(move || manage::create(&root, new))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let rec = Recorded {
        config: ContainerConfig {
            image: Some(image_name),
            ..body.config
        },
        host_config: body.host_config.unwrap_or_default(),
    };
    if let Ok(b) = serde_json::to_vec(&rec) {
        let _ = std::fs::write(c.dir.join("docker.json"), b);
    }
    event(api, "container", "create", &c.meta.id, attrs(&c));
    json(
        StatusCode::CREATED,
        &serde_json::json!({ "Id": c.meta.id, "Warnings": [] }),
    )
}

/// Docker's config and the image's, as a containerVM: the command (entrypoint + cmd), the
/// environment (the image's, then the request's), networks, ports and volumes.
fn new_container(
    api: &Api,
    body: &CreateBody,
    image: &super::images::Image,
    name: Option<String>,
) -> Result<NewContainer, ApiError> {
    let cfg = &body.config;
    let img = &image.config;
    let (entrypoint, cmd) = match &cfg.entrypoint {
        Some(e) if !e.is_empty() => (e.clone(), cfg.cmd.clone().unwrap_or_default()),
        _ => (
            img.entrypoint.clone().unwrap_or_default(),
            cfg.cmd
                .clone()
                .filter(|c| !c.is_empty())
                .or_else(|| img.cmd.clone())
                .unwrap_or_default(),
        ),
    };
    let command: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if command.is_empty() {
        return Err(ApiError::bad_request("No command specified"));
    }
    let mut env = img.env.clone().unwrap_or_default();
    env.extend(cfg.env.clone().unwrap_or_default());
    let some = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let attached = cfg.attach_stdout.unwrap_or(false)
        || cfg.attach_stderr.unwrap_or(false)
        || cfg.attach_stdin.unwrap_or(false);
    let spec = RunSpec {
        name,
        command,
        env,
        workdir: some(&cfg.working_dir).or_else(|| some(&img.working_dir)),
        user: some(&cfg.user).or_else(|| some(&img.user)),
        tty: cfg.tty.unwrap_or(false),
        interactive: cfg.open_stdin.unwrap_or(false),
        attached,
        debug: 0,
        debug_shell: false,
    };
    let mut new = NewContainer::new(image.disk(&api.root), spec);
    new.image_ref = image
        .tags
        .first()
        .cloned()
        .unwrap_or_else(|| image.id.clone());
    new.stop_signal = some(&cfg.stop_signal).or_else(|| some(&img.stop_signal));
    new.stop_timeout = cfg.stop_timeout.map(|t| t.max(0) as u64);
    new.labels = img
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(cfg.labels.clone().unwrap_or_default())
        .collect::<BTreeMap<_, _>>();
    let hc = body.host_config.clone().unwrap_or_default();
    new.auto_remove = hc.auto_remove.unwrap_or(false);
    // Networks: docker's default bridge is the user network (or VCH_NET's choice); a named one
    // is a vch bridge network.
    let mode = hc.network_mode.clone().unwrap_or_default();
    match mode.as_str() {
        "" | "default" | "bridge" => {
            new.net = Some(default_net()?);
        }
        "none" => new.net = Some(NetMode::None),
        "host" => {
            return Err(ApiError::bad_request(
                "network mode host: a containerVM has a network stack of its own",
            ))
        }
        other if other.starts_with("container:") => {
            return Err(ApiError::bad_request(
                "network mode container:...: a containerVM cannot share another's network",
            ))
        }
        other => {
            new.networks.push(other.to_string());
            new.net = Some(NetMode::None);
        }
    }
    if let Some(endpoints) = body
        .networking_config
        .as_ref()
        .and_then(|n| n.endpoints_config.as_ref())
    {
        for (net, e) in endpoints {
            if !new.networks.contains(net) && !["bridge", "default", "none"].contains(&net.as_str())
            {
                new.networks.push(net.clone());
            }
            if let Some(a) = &e.aliases {
                new.aliases.extend(a.iter().cloned());
            }
            let ip = e
                .ipam_config
                .as_ref()
                .and_then(|i| i.ipv4_address.clone())
                .filter(|s| !s.is_empty());
            if let Some(ip) = ip {
                new.ip = Some(
                    ip.parse()
                        .map_err(|_| ApiError::bad_request(format!("bad IPv4 address {ip:?}")))?,
                );
            }
        }
    }
    // Published ports.
    for (port, bindings) in hc.port_bindings.clone().unwrap_or_default() {
        let (container_port, udp) = container_port(&port)
            .ok_or_else(|| ApiError::bad_request(format!("bad port {port:?}")))?;
        for b in bindings.unwrap_or_default() {
            let host_port = match b.host_port.as_deref().filter(|p| !p.is_empty()) {
                Some(p) => p
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("bad host port {p:?}")))?,
                None => free_port()?,
            };
            let host_ip = match b.host_ip.as_deref().filter(|i| !i.is_empty()) {
                Some(i) => i
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("bad host IP {i:?}")))?,
                None => std::net::Ipv4Addr::LOCALHOST.into(),
            };
            new.publish.push(PortSpec {
                host_ip,
                host_port,
                container_port,
                udp,
            });
        }
    }
    // -P: every exposed port (the image's and the request's) not bound above, on a free port.
    if hc.publish_all_ports.unwrap_or(false) {
        for port in keys_of_both(&cfg.exposed_ports, &img.exposed_ports) {
            let Some((container_port, udp)) = container_port(&port) else {
                continue;
            };
            if new
                .publish
                .iter()
                .any(|p| p.container_port == container_port && p.udp == udp)
            {
                continue;
            }
            new.publish.push(PortSpec {
                host_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                host_port: free_port()?,
                container_port,
                udp,
            });
        }
    }
    // Volumes: named ones by `-v NAME:/p` (Binds) or Mounts, anonymous ones by `-v /p`
    // (Config.Volumes) and the image's declared volumes.
    for b in hc.binds.clone().unwrap_or_default() {
        if b.starts_with('/') && b.contains(':') {
            return Err(ApiError::bad_request(format!(
                "{b}: a host directory cannot be bound into a containerVM (it has no shared filesystem); use a volume"
            )));
        }
        new.volumes
            .push(b.parse::<VolumeArg>().map_err(ApiError::bad_request)?);
    }
    for m in hc.mounts.clone().unwrap_or_default() {
        let target = m.target.clone().unwrap_or_default();
        let read_only = m.read_only.unwrap_or(false);
        match (m.typ, m.source.filter(|s| !s.is_empty())) {
            (Some(MountTypeEnum::VOLUME) | None, Some(name)) => {
                new.volumes.push(VolumeArg::Named {
                    name,
                    target,
                    read_only,
                })
            }
            (Some(MountTypeEnum::VOLUME) | None, None) => {
                new.volumes.push(VolumeArg::Anonymous { target })
            }
            (t, _) => {
                return Err(ApiError::bad_request(format!(
                    "mount type {t:?} at {target}: a containerVM takes volumes only"
                )))
            }
        }
    }
    let named: Vec<String> = new
        .volumes
        .iter()
        .map(|v| match v {
            VolumeArg::Named { target, .. }
            | VolumeArg::Anonymous { target }
            | VolumeArg::Nfs { target, .. } => target.clone(),
        })
        .collect();
    for target in keys_of_both(&cfg.volumes, &img.volumes) {
        if !named.contains(&target) {
            new.volumes.push(VolumeArg::Anonymous { target });
        }
    }
    Ok(new)
}

/// The keys of the request's map and the image's (exposed ports, declared volumes), once each.
fn keys_of_both<V>(
    request: &Option<HashMap<String, V>>,
    image: &Option<HashMap<String, V>>,
) -> std::collections::BTreeSet<String> {
    request
        .iter()
        .chain(image.iter())
        .flat_map(|m| m.keys().cloned())
        .collect()
}

/// A container port as docker names it, `80/tcp`, `53/udp` or `80`: the number, and whether UDP.
fn container_port(port: &str) -> Option<(u16, bool)> {
    let (num, proto) = port.split_once('/').unwrap_or((port, "tcp"));
    Some((num.parse().ok()?, proto == "udp"))
}

/// The network mode of docker's default bridge: `VCH_NET` (user, isolated or none), else user.
fn default_net() -> Result<NetMode, ApiError> {
    match std::env::var("VCH_NET").ok().as_deref() {
        None | Some("") => Ok(NetMode::User),
        Some(v) => <NetMode as clap::ValueEnum>::from_str(v, true)
            .map_err(|e| ApiError::bad_request(format!("VCH_NET: {e}"))),
    }
}

/// A free TCP port on the host for a binding without one (as docker picks an ephemeral port).
fn free_port() -> Result<u16, ApiError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The attributes of a container's events (its name and image, its labels).
fn attrs(c: &Container) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = c.meta.labels.clone().into_iter().collect();
    a.insert("name".into(), c.meta.name.clone());
    a.insert("image".into(), image_name(c));
    a
}

fn image_name(c: &Container) -> String {
    if c.meta.image_ref.is_empty() {
        c.meta
            .image
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    } else {
        c.meta.image_ref.clone()
    }
}

/// `POST /containers/{id}/start`: boots the VM (its process waiting for an attach that is
/// already waiting for it) and returns once the process has started, or with why it could not
/// (docker's message words, from which the CLI takes 126 or 127).
pub async fn start(api: &Arc<Api>, id: &str) -> ApiResult {
    let c = find(api, id)?;
    if c.vm_running() {
        return empty(StatusCode::NOT_MODIFIED);
    }
    if c.running() {
        // The supervisor of the last run still hands its clients their output.
        crate::commands::wait_for(Duration::from_secs(70), || !c.running()).await;
    }
    let attached = api
        .pending_attach
        .lock()
        .expect("pending")
        .get(&c.meta.id)
        .is_some_and(|n| *n > 0);
    let result = match manage::boot(&c, attached).await {
        Ok(()) => {
            watch_exit(api, &c);
            event(api, "container", "start", &c.meta.id, attrs(&c));
            manage::launched(&c).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(StartError::Launch { why, status }) => {
            // As runc's errors read, so the CLI's exit status is docker's.
            let words = match status {
                127 if !why.contains("no such file or directory") => {
                    format!("{why}: executable file not found in $PATH")
                }
                _ => why,
            };
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("failed to start the containerVM's process: exec: {words}"),
            ))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

/// The exits of a container, created on first use.
fn exits(api: &Api, id: &str) -> tokio::sync::watch::Receiver<Exits> {
    api.exits
        .lock()
        .expect("exits")
        .entry(id.to_string())
        .or_insert_with(|| tokio::sync::watch::channel(Exits::default()).0)
        .subscribe()
}

/// Watches a started container to its end: records the exit for `wait`, sends `die`, and
/// removes it when it asked for that (`--rm`), sending `destroy`.
pub fn watch_exit(api: &Arc<Api>, c: &Container) {
    let _ = exits(api, &c.meta.id);
    let (api, dir) = (api.clone(), c.dir.clone());
    tokio::spawn(async move {
        let Ok(c) = Container::open(&dir) else {
            return;
        };
        while c.vm_running() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = c.exit_status().unwrap_or(137);
        if let Some(tx) = api.exits.lock().expect("exits").get(&c.meta.id) {
            tx.send_modify(|e| {
                e.count += 1;
                e.status = status;
            });
        }
        let mut a = attrs(&c);
        a.insert("exitCode".into(), status.to_string());
        event(&api, "container", "die", &c.meta.id, a);
        if c.meta.auto_remove {
            let root = api.root.clone();
            let id = c.meta.id.clone();
            let a = attrs(&c);
            let gone =
                tokio::task::spawn_blocking(move || manage::remove(&root, &c, true, true)).await;
            match gone {
                Ok(Ok(())) => {
                    api.forget_container(&id);
                    event(&api, "container", "destroy", &id, a)
                }
                Ok(Err(e)) => tracing::warn!("removing {id}: {e:#}"),
                Err(e) => tracing::warn!("removing {id}: {e}"),
            }
            if let Some(tx) = api.exits.lock().expect("exits").get(&id) {
                tx.send_modify(|_| {});
            }
        }
    });
}

/// `POST /containers/{id}/attach?stream=1&stdin=&stdout=&stderr=&detachKeys=`: the hijacked
/// connection, relayed once the container runs (the CLI attaches before it starts).
pub fn attach(api: &Arc<Api>, id: &str, req: Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    let q = Query::of(&req);
    let rec = recorded(&c);
    let r = stream::Relay {
        tty: c.meta.tty,
        stdin: q.flag("stdin"),
        stdout: q.flag("stdout"),
        stderr: q.flag("stderr"),
        detach_keys: stream::detach_keys(q.get("detachKeys"))?,
        close_stdin: rec.config.stdin_once.unwrap_or(false),
    };
    let key = c.meta.id.clone();
    *api.pending_attach
        .lock()
        .expect("pending")
        .entry(key.clone())
        .or_default() += 1;
    let api = api.clone();
    stream::hijack(req, c.meta.tty, move |io| async move {
        let done = |api: &Api| {
            if let Some(n) = api.pending_attach.lock().expect("pending").get_mut(&key) {
                *n = n.saturating_sub(1);
            }
        };
        // Until the container runs (an hour at most: `docker create` and `attach` may come
        // long before `start`), then its tether.
        let ready = crate::commands::wait_for(Duration::from_secs(3600), || {
            c.ctl_socket().exists() || !c.dir.exists()
        })
        .await;
        let h = match ready && c.ctl_socket().exists() {
            true => crate::front::connect(&c.ctl_socket()).await.ok(),
            false => None,
        };
        done(&api);
        let Some(h) = h else {
            return;
        };
        if let Err(e) = stream::relay(&api, &key, io, &h, &key, r).await {
            tracing::info!("attach to {key}: {e:#}");
        }
        h.disconnect("done").await;
    })
}

/// `POST /containers/{id}/wait?condition=not-running|next-exit|removed`: the headers at once
/// (the CLI waits for them before it starts the container), the status when it comes.
pub async fn wait(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    let condition = Query::of(req).get("condition").unwrap_or("").to_string();
    if !["", "not-running", "next-exit", "removed"].contains(&condition.as_str()) {
        return Err(ApiError::bad_request(format!(
            "invalid condition: {condition:?}"
        )));
    }
    let mut rx = exits(api, &c.meta.id);
    let seen = rx.borrow().count;
    if c.vm_running() {
        ensure_watched(api, &c);
    }
    let (resp, tx) = super::streaming("application/json");
    tokio::spawn(async move {
        let status = if condition == "next-exit"
            || condition == "removed" && (c.vm_running() || !c.started_at_file().exists())
        {
            match rx.wait_for(|e| e.count > seen).await {
                Ok(e) => e.status,
                Err(_) => return,
            }
        } else {
            // Not running: the exit the watcher records (no polling while a long wait waits).
            if c.vm_running() && rx.wait_for(|e| e.count > seen).await.is_err() {
                return;
            }
            c.exit_status().unwrap_or(0)
        };
        if condition == "removed" {
            crate::commands::wait_for(Duration::from_secs(120), || !c.dir.exists()).await;
        }
        let body = ContainerWaitResponse {
            status_code: i64::from(status),
            error: None,
        };
        if let Ok(b) = serde_json::to_vec(&body) {
            let _ = tx.send(Bytes::from(b)).await;
        }
    });
    Ok(resp)
}

/// Waits (briefly) for the watcher to have recorded an exit after `seen`: so that `die` comes
/// before `stop` or `destroy`, as docker sends them.
async fn exit_recorded(api: &Arc<Api>, c: &Container, seen: u64) {
    let mut rx = exits(api, &c.meta.id);
    let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|e| e.count > seen)).await;
}

/// A container running without this server's watcher (started by `vch run`) gets one.
fn ensure_watched(api: &Arc<Api>, c: &Container) {
    let watched = api.exits.lock().expect("exits").contains_key(&c.meta.id);
    if !watched {
        watch_exit(api, c);
    }
}

/// `POST /containers/{id}/resize?h=&w=`.
pub async fn resize(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    let q = Query::of(req);
    let (Some(w), Some(h)) = (q.num::<u32>("w")?, q.num::<u32>("h")?) else {
        return Err(ApiError::bad_request("resize needs h and w"));
    };
    stream::resize(api, &c.meta.id, w, h).await;
    empty(StatusCode::OK)
}

/// `POST /containers/{id}/kill?signal=`: to the container's own process (SIGKILL: back once
/// it is gone).
pub async fn kill(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    if !c.vm_running() {
        return Err(ApiError::conflict(format!(
            "Container {} is not running",
            c.meta.id
        )));
    }
    let sig = Query::of(req)
        .get("signal")
        .filter(|s| !s.is_empty())
        .unwrap_or("KILL")
        .to_string();
    let num = tether_proto::signal::parse(&sig)
        .map_err(|e| ApiError::bad_request(format!("Invalid signal: {sig} ({e})")))?;
    crate::commands::signal_container(&c, &c.meta.id, &sig, false).await?;
    event(api, "container", "kill", &c.meta.id, {
        let mut a = attrs(&c);
        a.insert("signal".into(), num.to_string());
        a
    });
    if num == libc::SIGKILL {
        crate::commands::vm_ended(&c, Duration::from_secs(15)).await;
    }
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/stop?t=`: the stop signal, SIGKILL after `t` (the container's
/// StopTimeout, else 10 s); back as soon as it is gone.
pub async fn stop(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    if !c.vm_running() {
        return empty(StatusCode::NOT_MODIFIED);
    }
    let t = Query::of(req)
        .num::<i64>("t")?
        .map(|t| t.max(0) as u64)
        .or(c.meta.stop_timeout)
        .unwrap_or(10);
    ensure_watched(api, &c);
    let seen = exits(api, &c.meta.id).borrow().count;
    manage::stop(&c, Duration::from_secs(t)).await?;
    exit_recorded(api, &c, seen).await;
    event(api, "container", "stop", &c.meta.id, attrs(&c));
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/restart?t=`: stop, then start again.
pub async fn restart(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    if c.vm_running() {
        stop(api, id, req).await?;
    }
    let r = start(api, &c.meta.id).await?;
    if r.status() == StatusCode::NO_CONTENT {
        event(api, "container", "restart", &c.meta.id, attrs(&c));
    }
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/rename?name=`.
pub fn rename(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let mut c = find(api, id)?;
    let name = Query::of(req)
        .get("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("rename needs a name"))?
        .trim_start_matches('/')
        .to_string();
    if Container::all(&api.root)?
        .iter()
        .any(|o| o.meta.name == name && o.meta.id != c.meta.id)
    {
        return Err(ApiError::conflict(format!(
            "Conflict. The container name \"/{name}\" is already in use"
        )));
    }
    let old = std::mem::replace(&mut c.meta.name, name);
    let meta = serde_json::to_vec_pretty(&c.meta).map_err(anyhow::Error::from)?;
    std::fs::write(c.dir.join("meta.json"), meta).map_err(anyhow::Error::from)?;
    let mut a = attrs(&c);
    a.insert("oldName".into(), format!("/{old}"));
    event(api, "container", "rename", &c.meta.id, a);
    empty(StatusCode::NO_CONTENT)
}

/// `DELETE /containers/{id}?force=&v=`.
pub async fn remove(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    let q = Query::of(req);
    let (force, volumes) = (q.flag("force"), q.flag("v"));
    if c.vm_running() && !force {
        return Err(ApiError::conflict(format!(
            "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
            c.meta.id
        )));
    }
    let was_running = c.vm_running();
    let seen = exits(api, &c.meta.id).borrow().count;
    if was_running {
        ensure_watched(api, &c);
    }
    let root = api.root.clone();
    let id = c.meta.id.clone();
    let a = attrs(&c);
    let dir = c.dir.clone();
    if was_running {
        // The VM goes first (its `die`), then the state.
        if let Some(pid) = c.supervisor() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        crate::commands::vm_ended(&c, Duration::from_secs(15)).await;
        exit_recorded(api, &c, seen).await;
    }
    let c = Container::open(&dir)?;
    tokio::task::spawn_blocking(move || manage::remove(&root, &c, force, volumes))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    api.forget_container(&id);
    event(api, "container", "destroy", &id, a);
    if let Some(tx) = api.exits.lock().expect("exits").get(&id) {
        tx.send_modify(|_| {});
    }
    empty(StatusCode::NO_CONTENT)
}

/// The state docker reports: created (never booted), running, or exited with its status.
fn state_of(c: &Container) -> (ContainerStateStatusEnum, Option<i32>) {
    if c.vm_running() {
        (ContainerStateStatusEnum::RUNNING, None)
    } else if c.started_at_file().exists() {
        (
            ContainerStateStatusEnum::EXITED,
            Some(c.exit_status().unwrap_or(137)),
        )
    } else {
        (ContainerStateStatusEnum::CREATED, None)
    }
}

fn file_time(p: &std::path::Path) -> Option<String> {
    let t = std::fs::metadata(p).ok()?.modified().ok()?;
    let n = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as u64;
    Some(tether_proto::iolog::rfc3339_nanos(n))
}

/// `GET /containers/{id}/json`.
pub fn inspect(api: &Arc<Api>, id: &str) -> ApiResult {
    let c = find(api, id)?;
    let rec = recorded(&c);
    let (status, code) = state_of(&c);
    let running = status == ContainerStateStatusEnum::RUNNING;
    let started = c.started().unwrap_or_default();
    let zero = "0001-01-01T00:00:00Z".to_string();
    let started_at = std::fs::read_to_string(c.started_at_file()).unwrap_or(zero.clone());
    let finished_at = if running {
        zero.clone()
    } else {
        file_time(&c.ended_marker()).unwrap_or(zero)
    };
    let state = ContainerState {
        status: Some(status),
        running: Some(running),
        paused: Some(false),
        restarting: Some(false),
        oom_killed: Some(false),
        dead: Some(false),
        pid: Some(if running {
            c.supervisor().map_or(0, i64::from)
        } else {
            0
        }),
        exit_code: Some(i64::from(code.unwrap_or(0))),
        error: Some(if started.is_empty() || started == "true" {
            String::new()
        } else {
            started
        }),
        started_at: Some(started_at),
        finished_at: Some(finished_at),
        health: None,
    };
    let networks = network_settings(&c);
    let mut config = rec.config.clone();
    config.hostname = Some(c.config().map(|x| x.hostname).unwrap_or_default());
    config.tty = Some(c.meta.tty);
    config.labels = Some(c.meta.labels.clone().into_iter().collect());
    let v = ContainerInspectResponse {
        id: Some(c.meta.id.clone()),
        created: Some(c.meta.created.clone()),
        path: c.meta.command.first().cloned(),
        args: Some(c.meta.command.iter().skip(1).cloned().collect()),
        state: Some(state),
        image: Some(image_name(&c)),
        name: Some(format!("/{}", c.meta.name)),
        restart_count: Some(0),
        driver: Some("containervm".into()),
        platform: Some("linux".into()),
        config: Some(config),
        host_config: Some(rec.host_config),
        network_settings: Some(networks),
        mounts: Some(
            c.meta
                .volumes
                .iter()
                .map(|u| bollard_stubs::models::MountPoint {
                    typ: Some(bollard_stubs::models::MountPointTypeEnum::VOLUME),
                    name: Some(u.name.clone()),
                    destination: Some(u.target.clone()),
                    driver: Some("vmdk".into()),
                    rw: Some(!u.read_only),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    };
    json(StatusCode::OK, &v)
}

/// Docker's `NetworkSettings` from the keys the tether wrote back (`vch inspect`'s networks).
fn network_settings(c: &Container) -> bollard_stubs::models::NetworkSettings {
    use bollard_stubs::models::{EndpointSettings, NetworkSettings};
    let Ok(cfg) = c.config() else {
        return NetworkSettings::default();
    };
    let nics = c.meta.nics();
    let mut networks = HashMap::new();
    let mut first: Option<EndpointSettings> = None;
    for (name, e) in &cfg.networks {
        let mac = nics
            .iter()
            .find(|n| n.slot.to_string() == e.common.id)
            .map(|n| n.mac.clone());
        let s = EndpointSettings {
            ip_address: Some(e.assigned.ip.map(|i| i.to_string()).unwrap_or_default()),
            ip_prefix_len: Some(i64::from(e.assigned.prefix().unwrap_or(0))),
            gateway: Some(
                e.network
                    .assigned
                    .gateway
                    .ip
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
            ),
            mac_address: mac,
            network_id: Some(name.clone()),
            ..Default::default()
        };
        if first.is_none() {
            first = Some(s.clone());
        }
        networks.insert(name.clone(), s);
    }
    let mut ports: HashMap<String, Option<Vec<bollard_stubs::models::PortBinding>>> =
        HashMap::new();
    for p in &c.meta.publish {
        let key = format!("{}/{}", p.container_port, if p.udp { "udp" } else { "tcp" });
        ports
            .entry(key)
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(bollard_stubs::models::PortBinding {
                host_ip: Some(p.host_ip.to_string()),
                host_port: Some(p.host_port.to_string()),
            });
    }
    let first = first.unwrap_or_default();
    NetworkSettings {
        networks: Some(networks),
        ip_address: first.ip_address,
        ip_prefix_len: first.ip_prefix_len,
        gateway: first.gateway,
        mac_address: first.mac_address,
        ports: Some(ports),
        ..Default::default()
    }
}

/// "Up 5 seconds", "Exited (0) 3 minutes ago", "Created": docker's status words.
fn status_words(c: &Container) -> String {
    let ago = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .map(human)
            .unwrap_or_else(|| "a moment".into())
    };
    match state_of(c) {
        (ContainerStateStatusEnum::RUNNING, _) => format!("Up {}", ago(&c.started_at_file())),
        (ContainerStateStatusEnum::EXITED, code) => format!(
            "Exited ({}) {} ago",
            code.unwrap_or(0),
            ago(&c.ended_marker())
        ),
        _ => "Created".into(),
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".into(),
        1..=59 => format!("{s} seconds"),
        60..=3599 => format!("{} minutes", s / 60),
        3600..=86_399 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// `GET /containers/json?all=&filters=`: running ones, or all; filtered by status, name, id,
/// label.
pub fn list(api: &Arc<Api>, req: &Request<Incoming>) -> ApiResult {
    let q = Query::of(req);
    let all = q.flag("all");
    let filters = q.filters()?;
    let mut out = Vec::new();
    let mut containers = Container::all(&api.root)?;
    containers.sort_by(|a, b| b.meta.created.cmp(&a.meta.created));
    for c in containers {
        let (status, _) = state_of(&c);
        let status_name = status.to_string();
        if !all && status != ContainerStateStatusEnum::RUNNING && !filters.contains_key("status") {
            continue;
        }
        if !matches_filters(&c, &status_name, &filters) {
            continue;
        }
        let ports = c
            .meta
            .publish
            .iter()
            .map(|p| Port {
                ip: Some(p.host_ip.to_string()),
                private_port: p.container_port,
                public_port: Some(p.host_port),
                typ: Some(if p.udp {
                    PortTypeEnum::UDP
                } else {
                    PortTypeEnum::TCP
                }),
            })
            .collect();
        let created = std::fs::metadata(c.dir.join("meta.json"))
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        out.push(ContainerSummary {
            id: Some(c.meta.id.clone()),
            names: Some(vec![format!("/{}", c.meta.name)]),
            image: Some(image_name(&c)),
            command: Some(c.meta.command.join(" ")),
            created: Some(created),
            state: Some(status_name),
            status: Some(status_words(&c)),
            ports: Some(ports),
            labels: Some(c.meta.labels.clone().into_iter().collect()),
            ..Default::default()
        });
    }
    json(StatusCode::OK, &out)
}

fn matches_filters(c: &Container, status: &str, f: &HashMap<String, Vec<String>>) -> bool {
    let any = |k: &str, pred: &dyn Fn(&str) -> bool| {
        f.get(k)
            .is_none_or(|vals| vals.is_empty() || vals.iter().any(|v| pred(v)))
    };
    any("status", &|v| v == status)
        && any("name", &|v| c.meta.name.contains(v.trim_start_matches('/')))
        && any("id", &|v| c.meta.id.starts_with(v))
        && any("label", &|v| match v.split_once('=') {
            Some((k, val)) => c.meta.labels.get(k).is_some_and(|x| x == val),
            None => c.meta.labels.contains_key(v),
        })
        && any("ancestor", &|v| image_name(c) == v || c.meta.image_ref == v)
}

/// `GET /containers/{id}/logs?stdout=&stderr=&follow=&timestamps=&tail=&since=`: the output
/// log in docker's stream format (raw with a tty); with `follow`, as it grows until the
/// container ends.
pub fn logs(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    let q = Query::of(req);
    let (want_out, want_err) = (q.flag("stdout"), q.flag("stderr"));
    if !want_out && !want_err {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let opts = LogView {
        tty: c.meta.tty,
        stdout: want_out,
        stderr: want_err,
        timestamps: q.flag("timestamps"),
        since_nanos: parse_since(q.get("since"))?,
        until_nanos: parse_since(q.get("until"))?.filter(|u| *u > 0),
    };
    let tail = match q.get("tail") {
        None | Some("" | "all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("bad tail {n:?}")))?,
        ),
    };
    let follow = q.flag("follow");
    let kind = if c.meta.tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let (resp, tx) = super::streaming(kind);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        // One handle on the log, read on from where it was: QEMU appends to it.
        let Ok(mut file) = tokio::fs::File::open(c.output_log()).await else {
            return;
        };
        let mut pending = Vec::new();
        let _ = file.read_to_end(&mut pending).await;
        let (entries, used) = tether_proto::iolog::decode_complete(&pending);
        pending.drain(..used);
        let mut lines = opts.lines(&entries);
        if let Some(n) = tail {
            lines.drain(..lines.len().saturating_sub(n));
        }
        for l in lines {
            if tx.send(Bytes::from(l)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut partial = PartialLines::default();
        loop {
            let ended = !c.vm_running();
            let _ = file.read_to_end(&mut pending).await;
            let (entries, used) = tether_proto::iolog::decode_complete(&pending);
            pending.drain(..used);
            // At the end, a last line without its newline goes too.
            for l in partial.push_all(&opts, &entries, ended) {
                if tx.send(Bytes::from(l)).await.is_err() {
                    return;
                }
            }
            if ended {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(resp)
}

/// `since`/`until`: seconds since the epoch, with an optional fraction.
fn parse_since(v: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, "0"));
    let s: u64 = secs
        .parse()
        .map_err(|_| ApiError::bad_request(format!("bad time {v:?}")))?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: u64 = format!("{digits:0<9}").parse().unwrap_or(0);
    Ok(Some(s * 1_000_000_000 + nanos))
}

/// How the log is shown.
#[derive(Clone, Copy, Debug)]
pub struct LogView {
    pub tty: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub timestamps: bool,
    pub since_nanos: Option<u64>,
    pub until_nanos: Option<u64>,
}

impl LogView {
    /// The container's own entries (not its execs') as docker's log lines, each framed.
    pub fn lines(&self, entries: &[tether_proto::iolog::Entry]) -> Vec<Vec<u8>> {
        PartialLines::default().push_all(self, entries, true)
    }

    fn render(&self, stream: u8, time: u64, line: &[u8]) -> Vec<u8> {
        let mut text = Vec::with_capacity(line.len() + 32);
        if self.timestamps {
            text.extend_from_slice(tether_proto::iolog::rfc3339_nanos(time).as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(line);
        if self.tty {
            text
        } else {
            stream::frame(stream, &text)
        }
    }
}

/// Entries joined into whole lines per stream (an entry may carry part of a line).
#[derive(Default)]
struct PartialLines {
    pending: [(u64, Vec<u8>); 2],
}

impl PartialLines {
    fn push_all(
        &mut self,
        v: &LogView,
        entries: &[tether_proto::iolog::Entry],
        flush: bool,
    ) -> Vec<Vec<u8>> {
        use tether_proto::iolog::Stream;
        let mut out = Vec::new();
        for e in entries.iter().filter(|e| !e.exec) {
            let (idx, num, wanted) = match e.stream {
                Stream::Stdout => (0, stream::STDOUT, v.stdout),
                Stream::Stderr => (1, stream::STDERR, v.stderr),
            };
            let in_range = v.since_nanos.is_none_or(|s| e.time_nanos >= s)
                && v.until_nanos.is_none_or(|u| e.time_nanos < u);
            if !wanted || !in_range {
                continue;
            }
            let p = &mut self.pending[idx];
            if p.1.is_empty() {
                p.0 = e.time_nanos;
            }
            p.1.extend_from_slice(&e.data);
            while let Some(i) = p.1.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = p.1.drain(..=i).collect();
                out.push(v.render(num, p.0, &line));
                p.0 = e.time_nanos;
            }
        }
        if flush {
            for (idx, num) in [(0, stream::STDOUT), (1, stream::STDERR)] {
                let p = &mut self.pending[idx];
                if !p.1.is_empty() {
                    out.push(v.render(num, p.0, &std::mem::take(&mut p.1)));
                }
            }
        }
        out
    }
}

/// `GET /containers/{id}/top?ps_args=`: `ps` run in the VM as an exec (the VM's processes
/// are not the host's), its table split into titles and rows.
pub async fn top(api: &Arc<Api>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = find(api, id)?;
    if !c.vm_running() {
        return Err(ApiError::conflict(format!(
            "Container {} is not running",
            c.meta.id
        )));
    }
    let args = Query::of(req).get("ps_args").unwrap_or("").to_string();
    let mut cmd = vec!["ps".to_string()];
    cmd.extend(args.split_whitespace().map(str::to_string));
    let (status, out) = super::exec::capture(api, &c, cmd).await?;
    if status != 0 {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "ps in the containerVM exited with {status}: {}",
                String::from_utf8_lossy(&out).trim()
            ),
        ));
    }
    let (titles, rows) = ps_table(&String::from_utf8_lossy(&out));
    json(
        StatusCode::OK,
        &serde_json::json!({ "Titles": titles, "Processes": rows }),
    )
}

/// `ps` output as titles and rows: the last column takes the rest of each line (a command
/// with spaces).
pub fn ps_table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let titles: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let n = titles.len().max(1);
    let rows = lines
        .map(|l| {
            let mut cols = Vec::with_capacity(n);
            let mut rest = l.trim_start();
            while cols.len() + 1 < n {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                cols.push(rest[..end].to_string());
                rest = rest[end..].trim_start();
            }
            cols.push(rest.to_string());
            cols
        })
        .collect();
    (titles, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::iolog::{Entry, Stream};

    fn entry(t: u64, stream: Stream, exec: bool, data: &[u8]) -> Entry {
        Entry {
            time_nanos: t,
            stream,
            exec,
            data: data.to_vec(),
        }
    }

    #[test]
    fn log_lines_are_whole_framed_and_skip_execs() {
        let v = LogView {
            tty: false,
            stdout: true,
            stderr: true,
            timestamps: false,
            since_nanos: None,
            until_nanos: None,
        };
        let entries = [
            entry(1, Stream::Stdout, false, b"par"),
            entry(2, Stream::Stderr, false, b"err\n"),
            entry(3, Stream::Stdout, false, b"tial\nnext"),
            entry(4, Stream::Stdout, true, b"exec\n"),
        ];
        let lines = v.lines(&entries);
        assert_eq!(
            lines,
            [
                stream::frame(stream::STDERR, b"err\n"),
                stream::frame(stream::STDOUT, b"partial\n"),
                stream::frame(stream::STDOUT, b"next"),
            ]
        );
    }

    fn image(cfg: serde_json::Value) -> crate::docker::images::Image {
        crate::docker::images::Image {
            id: "sha256:ab".into(),
            tags: vec!["img:latest".into()],
            created: String::new(),
            config: serde_json::from_value(cfg).unwrap(),
            size: 0,
        }
    }

    fn body(v: serde_json::Value) -> CreateBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn docker_config_over_the_image_config() {
        let api = Api::new("/state".into());
        let img = image(serde_json::json!({
            "Entrypoint": ["/ep"], "Cmd": ["a"], "Env": ["A=1", "B=1"], "WorkingDir": "/w",
            "ExposedPorts": { "80/tcp": {} }, "Volumes": { "/data": {} }, "StopSignal": "SIGQUIT",
        }));
        // The image's entrypoint with the request's cmd; env merged, the request's last.
        let b = body(serde_json::json!({
            "Image": "img", "Cmd": ["b", "c"], "Env": ["B=2"], "Tty": true, "OpenStdin": true,
            "AttachStdout": true, "HostConfig": { "PublishAllPorts": true, "AutoRemove": true },
        }));
        let n = new_container(&api, &b, &img, Some("x".into())).unwrap();
        assert_eq!(n.spec.command, ["/ep", "b", "c"]);
        assert_eq!(n.spec.env, ["A=1", "B=1", "B=2"]);
        assert_eq!(n.spec.workdir.as_deref(), Some("/w"));
        assert!(n.spec.tty && n.spec.interactive && n.spec.attached && n.auto_remove);
        assert_eq!(n.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(
            n.image,
            std::path::Path::new("/state/image-store/ab/disk.vmdk")
        );
        assert_eq!(n.publish.len(), 1);
        assert_eq!(n.publish[0].container_port, 80);
        assert_eq!(
            n.volumes,
            [VolumeArg::Anonymous {
                target: "/data".into()
            }]
        );
        // A request's entrypoint drops the image's cmd.
        let b = body(serde_json::json!({ "Image": "img", "Entrypoint": ["/other"] }));
        assert_eq!(
            new_container(&api, &b, &img, None).unwrap().spec.command,
            ["/other"]
        );
    }

    #[test]
    fn networks_ports_and_volumes_as_a_containervm_takes_them() {
        let api = Api::new("/state".into());
        let img = image(serde_json::json!({ "Cmd": ["/hello"] }));
        let b = body(serde_json::json!({
            "Image": "img",
            "HostConfig": {
                "NetworkMode": "front",
                "PortBindings": { "80/tcp": [{ "HostIp": "", "HostPort": "8080" }] },
                "Binds": ["vol:/d:ro"],
                "Mounts": [{ "Type": "volume", "Source": "v2", "Target": "/e" }],
            },
            "NetworkingConfig": { "EndpointsConfig": { "front": {
                "Aliases": ["svc"], "IPAMConfig": { "IPv4Address": "10.89.1.9" } } } },
        }));
        let n = new_container(&api, &b, &img, None).unwrap();
        assert_eq!(n.networks, ["front"]);
        assert_eq!(n.net, Some(NetMode::None));
        assert_eq!(n.aliases, ["svc"]);
        assert_eq!(n.ip, Some("10.89.1.9".parse().unwrap()));
        assert_eq!(n.publish[0].host_port, 8080);
        assert_eq!(n.publish[0].host_ip.to_string(), "127.0.0.1");
        assert_eq!(n.volumes.len(), 2);
        let refused = |hc: serde_json::Value| {
            let b = body(serde_json::json!({ "Image": "img", "HostConfig": hc }));
            new_container(&api, &b, &img, None).unwrap_err().message
        };
        assert!(refused(serde_json::json!({ "NetworkMode": "host" })).contains("network stack"));
        assert!(refused(serde_json::json!({ "Binds": ["/etc:/e"] })).contains("host directory"));
        let none =
            body(serde_json::json!({ "Image": "img", "HostConfig": { "NetworkMode": "none" } }));
        assert_eq!(
            new_container(&api, &none, &img, None).unwrap().net,
            Some(NetMode::None)
        );
        let nocmd = image(serde_json::json!({}));
        let b = body(serde_json::json!({ "Image": "img" }));
        assert!(new_container(&api, &b, &nocmd, None).is_err());
    }

    #[test]
    fn ps_output_as_a_table() {
        let (t, rows) =
            ps_table("PID   USER     TIME  COMMAND\n    1 root      0:00 /bin/sh -c sleep 9\n");
        assert_eq!(t, ["PID", "USER", "TIME", "COMMAND"]);
        assert_eq!(rows, [["1", "root", "0:00", "/bin/sh -c sleep 9"]]);
    }

    #[test]
    fn log_since_and_timestamps() {
        let v = LogView {
            tty: true,
            stdout: true,
            stderr: false,
            timestamps: true,
            since_nanos: Some(2_000_000_000),
            until_nanos: None,
        };
        let entries = [
            entry(1_000_000_000, Stream::Stdout, false, b"old\n"),
            entry(2_000_000_000, Stream::Stdout, false, b"new\n"),
        ];
        assert_eq!(
            v.lines(&entries),
            [b"1970-01-01T00:00:02.000000000Z new\n".to_vec()]
        );
        assert_eq!(parse_since(Some("2.5")).unwrap(), Some(2_500_000_000));
        assert!(parse_since(Some("x")).is_err());
    }
}
