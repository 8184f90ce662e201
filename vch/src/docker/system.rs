//! `/_ping`, `/version`, `/info`, `/events`, and the volumes and networks of the state root
//! (the same ones `vch volume` and `vch network` make).

use std::collections::HashMap;
use std::sync::Arc;

use bollard_stubs::models::{
    Ipam, IpamConfig, Network, SystemVersion, Volume, VolumeCreateOptions, VolumeListResponse,
    VolumeScopeEnum,
};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};

use super::{body_json, empty, event, json, Api, ApiError, ApiResult, Query};
use crate::container::Container;

/// Watches the containers already running when the server starts (started by `vch run`, or
/// before a restart of the server) so that their ends are seen (`die`, `--rm`).
pub fn spawn_watcher(api: Arc<Api>) {
    for c in Container::all(&api.root).unwrap_or_default() {
        if c.vm_running() {
            super::containers::watch_exit(&api, &c);
        }
    }
}

/// `GET|HEAD /_ping`.
pub fn ping(m: &Method) -> ApiResult {
    let body = if m == Method::HEAD { "" } else { "OK" };
    Ok(hyper::Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Cache-Control", "no-cache, no-store, must-revalidate")
        .header("Builder-Version", "1")
        .body(super::full(body))
        .expect("a valid response"))
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `GET /version`.
pub fn version() -> ApiResult {
    json(
        StatusCode::OK,
        &SystemVersion {
            version: Some(env!("CARGO_PKG_VERSION").into()),
            api_version: Some(super::API_VERSION.into()),
            min_api_version: Some(super::MIN_API_VERSION.into()),
            os: Some("linux".into()),
            arch: Some("amd64".into()),
            kernel_version: Some(kernel()),
            experimental: Some(false),
            platform: Some(bollard_stubs::models::SystemVersionPlatform {
                name: "vch (containerVMs under QEMU)".into(),
            }),
            ..Default::default()
        },
    )
}

/// `GET /info`: counts, the store, and what runs the containers.
pub fn info(api: &Arc<Api>) -> ApiResult {
    let all = Container::all(&api.root)?;
    let running = all.iter().filter(|c| c.vm_running()).count();
    let images = super::images::Image::all(&api.root).len();
    let v = serde_json::json!({
        "ID": "vch",
        "Containers": all.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": all.len() - running,
        "Images": images,
        "Driver": "containervm",
        "DockerRootDir": api.root.display().to_string(),
        "KernelVersion": kernel(),
        "OperatingSystem": "vch (one QEMU VM per container)",
        "OSType": "linux",
        "Architecture": "x86_64",
        "NCPU": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "Name": nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Plugins": { "Volume": ["vmdk", "nfs"], "Network": ["bridge", "null"] },
        "Runtimes": { "containervm": { "path": "qemu-system-x86_64" } },
        "DefaultRuntime": "containervm",
        "SecurityOptions": [],
        "Swarm": { "LocalNodeState": "inactive" },
        "Warnings": [],
    });
    json(StatusCode::OK, &v)
}

/// `GET /events?filters=`: events as they happen, one JSON object a line.
pub fn events(api: &Arc<Api>, req: &Request<Incoming>) -> ApiResult {
    let filters = Query::of(req).filters()?;
    let mut rx = api.events.subscribe();
    let (resp, tx) = super::streaming("application/json");
    tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            if !event_matches(&ev, &filters) {
                continue;
            }
            let Ok(mut line) = serde_json::to_vec(&ev) else {
                continue;
            };
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}

fn event_matches(
    ev: &bollard_stubs::models::EventMessage,
    f: &HashMap<String, Vec<String>>,
) -> bool {
    let actor = ev.actor.clone().unwrap_or_default();
    let attrs = actor.attributes.clone().unwrap_or_default();
    let id = actor.id.clone().unwrap_or_default();
    let typ = ev.typ.map(|t| t.to_string()).unwrap_or_default();
    let pass = |k: &str, pred: &dyn Fn(&str) -> bool| {
        f.get(k)
            .is_none_or(|v| v.is_empty() || v.iter().any(|x| pred(x)))
    };
    pass("type", &|v| v == typ)
        && pass("event", &|v| Some(v) == ev.action.as_deref())
        && pass("container", &|v| {
            typ == "container" && (id.starts_with(v) || attrs.get("name").is_some_and(|n| n == v))
        })
        && pass("label", &|v| match v.split_once('=') {
            Some((k, val)) => attrs.get(k).is_some_and(|x| x == val),
            None => attrs.contains_key(v),
        })
}

fn volume_json(api: &Api, v: &crate::volume::Volume) -> Volume {
    let mut options = HashMap::new();
    options.insert("size".to_string(), format!("{}M", v.size_mib));
    options.insert("label".to_string(), v.label.clone());
    Volume {
        name: v.name.clone(),
        driver: "vmdk".into(),
        mountpoint: v.dir(&api.root).display().to_string(),
        created_at: None,
        status: None,
        labels: HashMap::new(),
        scope: Some(VolumeScopeEnum::LOCAL),
        cluster_volume: None,
        options,
        usage_data: None,
    }
}

/// `GET /volumes`.
pub fn volumes(api: &Arc<Api>) -> ApiResult {
    let list = crate::volume::Volume::all(&api.root)
        .iter()
        .map(|v| volume_json(api, v))
        .collect();
    json(
        StatusCode::OK,
        &VolumeListResponse {
            volumes: Some(list),
            warnings: Some(Vec::new()),
        },
    )
}

/// `POST /volumes/create` (`DriverOpts`: `size`, `label`).
pub async fn volume_create(api: &Arc<Api>, req: Request<Incoming>) -> ApiResult {
    let o: VolumeCreateOptions = body_json(req).await?;
    let name = o
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(crate::container::new_id);
    if let Some(d) = o
        .driver
        .as_deref()
        .filter(|d| !["", "local", "vmdk", "vsphere"].contains(d))
    {
        return Err(ApiError::bad_request(format!(
            "volume driver {d}: vch makes disk volumes (vmdk)"
        )));
    }
    if let Ok(v) = crate::volume::Volume::load(&api.root, &name) {
        return json(StatusCode::CREATED, &volume_json(api, &v));
    }
    let opts = o.driver_opts.unwrap_or_default();
    let mib = match opts.get("size").or(opts.get("Capacity")) {
        Some(s) => {
            crate::volume::parse_size(s).map_err(|e| ApiError::bad_request(format!("{e:#}")))?
        }
        None => crate::volume::DEFAULT_MIB,
    };
    let label = opts.get("label").cloned();
    let root = api.root.clone();
    let n = name.clone();
    let v = tokio::task::spawn_blocking(move || {
        crate::volume::Volume::create(&root, &n, mib, label.as_deref(), false)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    event(api, "volume", "create", &name, HashMap::new());
    json(StatusCode::CREATED, &volume_json(api, &v))
}

/// `GET /volumes/{name}`.
pub fn volume_inspect(api: &Arc<Api>, name: &str) -> ApiResult {
    let v = crate::volume::Volume::load(&api.root, name)
        .map_err(|_| ApiError::not_found(format!("get {name}: no such volume")))?;
    json(StatusCode::OK, &volume_json(api, &v))
}

/// `DELETE /volumes/{name}`: refused (409) while a container names it.
pub fn volume_remove(api: &Arc<Api>, name: &str) -> ApiResult {
    let v = crate::volume::Volume::load(&api.root, name)
        .map_err(|_| ApiError::not_found(format!("get {name}: no such volume")))?;
    let users = v.users(&api.root, false);
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "remove {name}: volume is in use - [{}]",
            users.join(", ")
        )));
    }
    crate::volume::Volume::remove(&api.root, name)?;
    event(api, "volume", "destroy", name, HashMap::new());
    empty(StatusCode::NO_CONTENT)
}

fn network_json(n: &crate::bridge::Network) -> Network {
    Network {
        name: Some(n.name.clone()),
        id: Some(n.name.clone()),
        scope: Some("local".into()),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(format!("{}/{}", n.subnet, n.prefix)),
                gateway: Some(n.gateway.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        internal: Some(false),
        attachable: Some(true),
        ..Default::default()
    }
}

/// The networks every docker host has: `bridge` (here the user network, or VCH_NET's) and
/// `none`.
fn builtin_networks() -> Vec<Network> {
    ["bridge", "none"]
        .iter()
        .map(|n| Network {
            name: Some(n.to_string()),
            id: Some(n.to_string()),
            scope: Some("local".into()),
            driver: Some(if *n == "none" { "null" } else { "user" }.into()),
            ..Default::default()
        })
        .collect()
}

/// `GET /networks`.
pub fn networks(api: &Arc<Api>) -> ApiResult {
    let mut list = builtin_networks();
    list.extend(
        crate::bridge::Network::all(&api.root)
            .iter()
            .map(network_json),
    );
    json(StatusCode::OK, &list)
}

#[derive(Debug, Default, serde::Deserialize)]
struct NetworkCreate {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Driver", default)]
    driver: Option<String>,
    #[serde(rename = "IPAM", default)]
    ipam: Option<Ipam>,
}

/// `POST /networks/create` (bridge networks; `IPAM.Config[0].Subnet` for the subnet).
pub async fn network_create(api: &Arc<Api>, req: Request<Incoming>) -> ApiResult {
    let body: NetworkCreate = body_json(req).await?;
    if body.name.is_empty() {
        return Err(ApiError::bad_request("a network needs a name"));
    }
    if ["bridge", "none", "host", "default"].contains(&body.name.as_str()) {
        return Err(ApiError::conflict(format!(
            "network with name {} already exists",
            body.name
        )));
    }
    if let Some(d) = body
        .driver
        .as_deref()
        .filter(|d| !["", "bridge"].contains(d))
    {
        return Err(ApiError::bad_request(format!(
            "network driver {d}: vch makes bridge networks"
        )));
    }
    if crate::bridge::Network::load(&api.root, &body.name).is_ok() {
        return Err(ApiError::conflict(format!(
            "network with name {} already exists",
            body.name
        )));
    }
    let subnet = body
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.subnet);
    let root = api.root.clone();
    let name = body.name.clone();
    let n = tokio::task::spawn_blocking(move || {
        crate::bridge::Network::create(&root, &name, subnet.as_deref())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    event(api, "network", "create", &n.name, HashMap::new());
    json(
        StatusCode::CREATED,
        &serde_json::json!({ "Id": n.name, "Warning": "" }),
    )
}

/// `GET /networks/{name}`.
pub fn network_inspect(api: &Arc<Api>, name: &str) -> ApiResult {
    if let Some(n) = builtin_networks()
        .into_iter()
        .find(|n| n.name.as_deref() == Some(name))
    {
        return json(StatusCode::OK, &n);
    }
    let n = crate::bridge::Network::load(&api.root, name)
        .map_err(|_| ApiError::not_found(format!("network {name} not found")))?;
    json(StatusCode::OK, &network_json(&n))
}

/// `DELETE /networks/{name}`: refused (409) while a running container is on it.
pub fn network_remove(api: &Arc<Api>, name: &str) -> ApiResult {
    crate::bridge::Network::load(&api.root, name)
        .map_err(|_| ApiError::not_found(format!("network {name} not found")))?;
    crate::bridge::Network::remove(&api.root, name)
        .map_err(|e| ApiError::conflict(format!("error while removing network: {e:#}")))?;
    event(api, "network", "destroy", name, HashMap::new());
    empty(StatusCode::NO_CONTENT)
}
