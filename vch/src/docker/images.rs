//! The containerVMs' image store, as VIC's: each image one ext4 disk (labelled `containerfs`,
//! a VMDK) with its config beside it, under `<state root>/image-store/<id>/`. `docker load` (a
//! `docker save` tar: its layers applied in order, whiteouts honoured), `docker import` (a
//! rootfs tar), list, inspect, remove. There is no registry: `docker pull` says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bollard_stubs::models::{ContainerConfig, ImageInspect, ImageInspectRootFs, ImageSummary};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{event, json, Api, ApiError, ApiResult, Query};

/// An image in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>`: the digest of its config, as docker's image IDs are.
    pub id: String,
    pub tags: Vec<String>,
    /// RFC 3339.
    pub created: String,
    pub config: ContainerConfig,
    /// The bytes of its files.
    pub size: u64,
}

fn store(root: &Path) -> PathBuf {
    root.join("image-store")
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

/// A reference as docker means it: `busybox` is `busybox:latest`, `docker.io/library/x` is
/// `x`.
pub fn normalize(name: &str) -> String {
    let n = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .or_else(|| name.strip_prefix("library/"))
        .unwrap_or(name);
    let last = n.rsplit('/').next().unwrap_or(n);
    if last.contains(':') || n.contains('@') {
        n.to_string()
    } else {
        format!("{n}:latest")
    }
}

impl Image {
    pub fn dir(&self, root: &Path) -> PathBuf {
        store(root).join(hex(&self.id))
    }

    pub fn disk(&self, root: &Path) -> PathBuf {
        self.dir(root).join("disk.vmdk")
    }

    pub fn all(root: &Path) -> Vec<Self> {
        crate::container::load_each(
            &store(root),
            |n| crate::container::load_record(&store(root), n, "image.json", "image"),
            |i: &Image| std::cmp::Reverse(i.created.clone()),
        )
    }

    /// By tag, ID or an unambiguous ID prefix.
    pub fn resolve(root: &Path, name: &str) -> anyhow::Result<Self> {
        if name.is_empty() {
            bail!("no such image: (no name)");
        }
        let all = Self::all(root);
        let tag = normalize(name);
        if let Some(i) = all.iter().find(|i| i.tags.contains(&tag)) {
            return Ok(i.clone());
        }
        let want = hex(name);
        let hits: Vec<&Image> = all
            .iter()
            .filter(|i| want.len() >= 4 && hex(&i.id).starts_with(want))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no such image: {name}"),
            _ => bail!("{name:?} names more than one image"),
        }
    }

    fn save(&self, root: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.dir(root))?;
        let tmp = self.dir(root).join("image.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, self.dir(root).join("image.json"))?;
        Ok(())
    }

    /// The containers made from it (whose disks are overlays on its disk).
    fn users(&self, root: &Path) -> Vec<String> {
        let disk = self.disk(root);
        crate::container::Container::all(root)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.meta.image == disk)
            .map(|c| c.meta.id[..12].to_string())
            .collect()
    }
}

/// Adds a built image: its tags taken from any image that had them; an existing image of the
/// same ID gains the tags.
fn register(root: &Path, mut img: Image, rootfs: &Path) -> anyhow::Result<Image> {
    for mut other in Image::all(root) {
        if other.id == img.id {
            for t in &img.tags {
                if !other.tags.contains(t) {
                    other.tags.push(t.clone());
                }
            }
            img = other;
            continue;
        }
        let before = other.tags.len();
        other.tags.retain(|t| !img.tags.contains(t));
        if other.tags.len() != before {
            other.save(root)?;
        }
    }
    if !img.disk(root).exists() {
        add_mount_points(rootfs)?;
        img.size = crate::image::tree_bytes(rootfs, 0);
        std::fs::create_dir_all(img.dir(root))?;
        crate::image::build(rootfs, &img.disk(root), crate::image::LABEL)?;
    }
    img.save(root)?;
    Ok(img)
}

/// What the tether mounts over, for a rootfs tar that lacks them.
fn add_mount_points(rootfs: &Path) -> anyhow::Result<()> {
    for d in ["dev", "proc", "sys", "tmp", "etc"] {
        let p = rootfs.join(d);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::create_dir_all(&p)?;
        }
    }
    Ok(())
}

/// A layer's path inside the rootfs, refusing names that climb out of it.
fn inside(rootfs: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let mut out = rootfs.to_path_buf();
    for c in Path::new(name.trim_start_matches('/')).components() {
        match c {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::CurDir => {}
            _ => bail!("a layer names {name:?}, outside the image"),
        }
    }
    Ok(out)
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one layer (a tar, compressed or not) onto `rootfs`: first its whiteouts (`.wh.NAME`
/// removes NAME from the layers below, `.wh..wh..opq` empties its directory), then its files.
pub fn apply_layer(rootfs: &Path, layer: &Path) -> anyhow::Result<()> {
    let list = Command::new("tar")
        .arg("-tf")
        .arg(layer)
        .output()
        .context("running tar")?;
    if !list.status.success() {
        bail!(
            "reading the layer {}: {}",
            layer.display(),
            String::from_utf8_lossy(&list.stderr).trim()
        );
    }
    for name in String::from_utf8_lossy(&list.stdout).lines() {
        let path = inside(rootfs, name.trim_end_matches('/'))?;
        if path == rootfs {
            continue;
        }
        let Some(base) = path.file_name().and_then(|b| b.to_str()) else {
            continue;
        };
        let Some(hidden) = base.strip_prefix(".wh.") else {
            continue;
        };
        let parent = path.parent().unwrap_or(rootfs);
        if hidden == ".wh..opq" {
            for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                remove_any(&e.path())?;
            }
        } else {
            remove_any(&parent.join(hidden))?;
        }
    }
    crate::image::run(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(layer)
            .args(["--exclude=.wh.*", "-C"])
            .arg(rootfs),
        &format!("tar (applying {})", layer.display()),
    )
}

/// An entry of a `docker save` tar's `manifest.json`.
#[derive(Debug, Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The parts of an image config file that a container takes.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    created: Option<String>,
}

/// Loads a `docker save` tar: every image in its manifest, layers applied in order.
pub fn load_tar(root: &Path, tar: &Path) -> anyhow::Result<Vec<Image>> {
    let work = tempfile::Builder::new()
        .prefix("vch-load")
        .tempdir_in(ensure_store(root)?)?;
    let unpacked = work.path().join("tar");
    std::fs::create_dir(&unpacked)?;
    crate::image::run(
        Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(&unpacked),
        "tar (unpacking the image archive)",
    )?;
    let manifest: Vec<ManifestEntry> = serde_json::from_slice(
        &std::fs::read(unpacked.join("manifest.json"))
            .context("the archive has no manifest.json (is it a `docker save` tar?)")?,
    )
    .context("manifest.json")?;
    let mut out = Vec::new();
    for (n, m) in manifest.into_iter().enumerate() {
        let config_bytes = std::fs::read(inside(&unpacked, &m.config)?)
            .with_context(|| format!("the image config {}", m.config))?;
        let cf: ConfigFile = serde_json::from_slice(&config_bytes).context("the image config")?;
        let id = format!("sha256:{}", hex_of(&sha2::Sha256::digest(&config_bytes)));
        let rootfs = work.path().join(format!("rootfs{n}"));
        std::fs::create_dir(&rootfs)?;
        let existing = Image::all(root).into_iter().any(|i| i.id == id);
        if !existing {
            for l in &m.layers {
                apply_layer(&rootfs, &inside(&unpacked, l)?)?;
            }
        }
        let img = Image {
            id,
            tags: m
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| normalize(t))
                .collect(),
            created: cf.created.unwrap_or_else(crate::manage::now_rfc3339),
            config: cf.config.unwrap_or_default(),
            size: 0,
        };
        out.push(register(root, img, &rootfs)?);
    }
    Ok(out)
}

fn ensure_store(root: &Path) -> anyhow::Result<PathBuf> {
    let s = store(root);
    std::fs::create_dir_all(&s)?;
    Ok(s)
}

/// Imports a rootfs tar as an image (`docker import`), with `changes` (Dockerfile lines: CMD,
/// ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL, STOPSIGNAL) applied to its config.
pub fn import_tar(
    root: &Path,
    tar: &Path,
    tag: Option<String>,
    changes: &[String],
) -> anyhow::Result<Image> {
    let work = tempfile::Builder::new()
        .prefix("vch-import")
        .tempdir_in(ensure_store(root)?)?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs)?;
    apply_layer(&rootfs, tar)?;
    let mut config = ContainerConfig::default();
    for c in changes {
        apply_change(&mut config, c)?;
    }
    let created = crate::manage::now_rfc3339();
    let file = serde_json::json!({ "config": config, "created": created, "os": "linux" });
    let bytes = serde_json::to_vec(&file)?;
    let mut h = sha2::Sha256::new();
    h.update(&bytes);
    h.update(std::fs::read(tar).map(|b| sha2::Sha256::digest(b).to_vec())?);
    let img = Image {
        id: format!("sha256:{}", hex_of(&h.finalize())),
        tags: tag.into_iter().collect(),
        created,
        config,
        size: 0,
    };
    register(root, img, &rootfs)
}

/// A JSON array (`["a","b"]`) or a shell form (`/bin/sh -c ...`).
fn exec_form(arg: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(arg)
        .unwrap_or_else(|_| vec!["/bin/sh".into(), "-c".into(), arg.to_string()])
}

fn apply_change(c: &mut ContainerConfig, line: &str) -> anyhow::Result<()> {
    let (op, arg) = line
        .trim()
        .split_once(char::is_whitespace)
        .unwrap_or((line, ""));
    let arg = arg.trim();
    match op.to_ascii_uppercase().as_str() {
        "CMD" => c.cmd = Some(exec_form(arg)),
        "ENTRYPOINT" => c.entrypoint = Some(exec_form(arg)),
        "ENV" => {
            let kv = match arg.split_once('=') {
                Some(_) => arg.to_string(),
                None => arg.replacen(char::is_whitespace, "=", 1),
            };
            c.env.get_or_insert_with(Vec::new).push(kv);
        }
        "WORKDIR" => c.working_dir = Some(arg.to_string()),
        "USER" => c.user = Some(arg.to_string()),
        "STOPSIGNAL" => c.stop_signal = Some(arg.to_string()),
        "EXPOSE" => {
            for p in arg.split_whitespace() {
                let key = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                c.exposed_ports
                    .get_or_insert_with(HashMap::new)
                    .insert(key, HashMap::new());
            }
        }
        "LABEL" => {
            let (k, v) = arg.split_once('=').unwrap_or((arg, ""));
            c.labels
                .get_or_insert_with(HashMap::new)
                .insert(k.to_string(), v.trim_matches('"').to_string());
        }
        other => bail!("{other}: not a change docker import takes here"),
    }
    Ok(())
}

/// The request body into a file of the store's filesystem (an image tar may be large).
async fn body_to_file(
    root: &Path,
    req: Request<Incoming>,
) -> Result<tempfile::NamedTempFile, ApiError> {
    use http_body_util::BodyExt as _;
    use std::io::Write as _;
    let dir = ensure_store(root)?;
    let mut f = tempfile::Builder::new()
        .prefix("upload")
        .tempfile_in(dir)
        .map_err(anyhow::Error::from)?;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        if let Some(d) = frame.data_ref() {
            f.write_all(d).map_err(anyhow::Error::from)?;
        }
    }
    f.flush().map_err(anyhow::Error::from)?;
    Ok(f)
}

/// A JSON-message stream's one line.
fn message(v: serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// `POST /images/load`.
pub async fn load(api: &Arc<Api>, req: Request<Incoming>) -> ApiResult {
    let file = body_to_file(&api.root, req).await?;
    let root = api.root.clone();
    let loaded = tokio::task::spawn_blocking(move || load_tar(&root, file.path()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let mut text = Vec::new();
    for img in &loaded {
        event(api, "image", "load", &img.id, HashMap::new());
        let names = if img.tags.is_empty() {
            vec![format!("Loaded image ID: {}", img.id)]
        } else {
            img.tags
                .iter()
                .map(|t| format!("Loaded image: {t}"))
                .collect()
        };
        for n in names {
            text.extend_from_slice(&message(serde_json::json!({ "stream": format!("{n}\n") })));
        }
    }
    Ok(hyper::Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(super::full(text))
        .expect("a valid response"))
}

/// `POST /images/create`: `fromSrc=-` imports the body; `fromImage` would pull, and there is
/// no registry here.
pub async fn create(api: &Arc<Api>, req: Request<Incoming>) -> ApiResult {
    let q = Query::of(&req);
    if let Some(image) = q.get("fromImage") {
        let tag = q.get("tag").filter(|t| !t.is_empty()).unwrap_or("latest");
        let name =
            if image.contains('@') || image.rsplit('/').next().is_some_and(|l| l.contains(':')) {
                image.to_string()
            } else {
                format!("{image}:{tag}")
            };
        return Err(ApiError::not_found(format!(
            "pull access denied for {name}: vch has no registry configured on this machine; load the image with `docker load` or `docker import`"
        )));
    }
    match q.get("fromSrc") {
        Some("-") => {}
        Some(url) => {
            return Err(ApiError::bad_request(format!(
                "import from {url}: vch imports from the request body only (docker import FILE)"
            )))
        }
        None => {
            return Err(ApiError::bad_request(
                "images/create needs fromImage or fromSrc",
            ))
        }
    }
    let tag = q.get("repo").filter(|r| !r.is_empty()).map(|repo| {
        match q.get("tag").filter(|t| !t.is_empty()) {
            Some(t) => normalize(&format!("{repo}:{t}")),
            None => normalize(repo),
        }
    });
    let changes: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "changes")
        .map(|(_, v)| v.into_owned())
        .collect();
    let file = body_to_file(&api.root, req).await?;
    let root = api.root.clone();
    let img = tokio::task::spawn_blocking(move || import_tar(&root, file.path(), tag, &changes))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    event(api, "image", "import", &img.id, HashMap::new());
    Ok(hyper::Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(super::full(message(
            serde_json::json!({ "status": img.id }),
        )))
        .expect("a valid response"))
}

fn unix_secs(rfc3339: &str) -> i64 {
    // YYYY-MM-DDTHH:MM:SS...: days from the civil date (Howard Hinnant's algorithm).
    let p = |a: usize, b: usize| rfc3339.get(a..b).and_then(|s| s.parse::<i64>().ok());
    let (Some(y), Some(m), Some(d), Some(hh), Some(mm), Some(ss)) =
        (p(0, 4), p(5, 7), p(8, 10), p(11, 13), p(14, 16), p(17, 19))
    else {
        return 0;
    };
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

/// `GET /images/json`.
pub fn list(api: &Arc<Api>, req: &Request<Incoming>) -> ApiResult {
    let filters = Query::of(req).filters()?;
    let refs = filters.get("reference").cloned().unwrap_or_default();
    let out: Vec<ImageSummary> = Image::all(&api.root)
        .into_iter()
        .filter(|i| {
            refs.is_empty()
                || refs.iter().any(|r| {
                    i.tags
                        .iter()
                        .any(|t| t == &normalize(r) || t.starts_with(&format!("{r}:")))
                })
        })
        .map(|i| ImageSummary {
            id: i.id.clone(),
            parent_id: String::new(),
            repo_tags: i.tags.clone(),
            repo_digests: Vec::new(),
            created: unix_secs(&i.created),
            size: i.size as i64,
            shared_size: -1,
            virtual_size: Some(i.size as i64),
            labels: i.config.labels.clone().unwrap_or_default(),
            containers: -1,
            manifests: None,
        })
        .collect();
    json(StatusCode::OK, &out)
}

/// `GET /images/{name}/json`.
pub fn inspect(api: &Arc<Api>, name: &str) -> ApiResult {
    let i = Image::resolve(&api.root, name)
        .map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    let config: bollard_stubs::models::ImageConfig =
        serde_json::from_value(serde_json::to_value(&i.config).map_err(anyhow::Error::from)?)
            .unwrap_or_default();
    json(
        StatusCode::OK,
        &ImageInspect {
            id: Some(i.id.clone()),
            repo_tags: Some(i.tags.clone()),
            repo_digests: Some(Vec::new()),
            created: Some(i.created.clone()),
            config: Some(config),
            architecture: Some("amd64".into()),
            os: Some("linux".into()),
            size: Some(i.size as i64),
            root_fs: Some(ImageInspectRootFs {
                typ: "containerfs".into(),
                layers: None,
            }),
            ..Default::default()
        },
    )
}

/// `DELETE /images/{name}?force=`: a tag is untagged; the image goes with its last tag, unless
/// a container is made from it.
pub fn remove(api: &Arc<Api>, name: &str, req: &Request<Incoming>) -> ApiResult {
    let force = Query::of(req).flag("force");
    let mut img = Image::resolve(&api.root, name)
        .map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    let tag = normalize(name);
    let mut out = Vec::new();
    let by_tag = img.tags.contains(&tag);
    if by_tag && img.tags.len() > 1 {
        img.tags.retain(|t| *t != tag);
        img.save(&api.root)?;
        event(api, "image", "untag", &img.id, HashMap::new());
        return json(StatusCode::OK, &[serde_json::json!({ "Untagged": tag })]);
    }
    if !by_tag && img.tags.len() > 1 && !force {
        return Err(ApiError::conflict(format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            &hex(&img.id)[..12]
        )));
    }
    let users = img.users(&api.root);
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
            users.join(", "),
            &hex(&img.id)[..12]
        )));
    }
    for t in &img.tags {
        out.push(serde_json::json!({ "Untagged": t }));
    }
    std::fs::remove_dir_all(img.dir(&api.root)).map_err(anyhow::Error::from)?;
    out.push(serde_json::json!({ "Deleted": img.id }));
    event(api, "image", "delete", &img.id, HashMap::new());
    json(StatusCode::OK, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_docker_normalizes_them() {
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(normalize("me/app:v2"), "me/app:v2");
    }

    #[test]
    fn layer_names_stay_inside_the_image() {
        let r = Path::new("/r");
        assert_eq!(inside(r, "./a/b").unwrap(), Path::new("/r/a/b"));
        assert_eq!(inside(r, ".").unwrap(), Path::new("/r"));
        assert!(inside(r, "a/../../etc").is_err());
    }

    #[test]
    fn dockerfile_changes_for_import() {
        let mut c = ContainerConfig::default();
        apply_change(&mut c, r#"CMD ["/bin/sh", "-c", "echo hi"]"#).unwrap();
        apply_change(&mut c, "ENV A=1").unwrap();
        apply_change(&mut c, "ENV B 2").unwrap();
        apply_change(&mut c, "WORKDIR /srv").unwrap();
        apply_change(&mut c, "EXPOSE 80").unwrap();
        assert_eq!(c.cmd.unwrap(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.env.unwrap(), ["A=1", "B=2"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert!(c.exposed_ports.unwrap().contains_key("80/tcp"));
        assert!(apply_change(&mut ContainerConfig::default(), "RUN x").is_err());
    }

    #[test]
    fn created_times_as_unix_seconds() {
        assert_eq!(unix_secs("1970-01-02T00:00:01Z"), 86_401);
        assert_eq!(unix_secs("2024-02-29T12:00:00.5Z"), 1_709_208_000);
        assert_eq!(unix_secs("junk"), 0);
    }

    /// Layers applied in order: a whiteout removes a file of a lower layer, an opaque
    /// directory hides everything below it, and the layer's own files land.
    #[test]
    fn layers_with_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let make = |name: &str, files: &[(&str, &str)]| {
            let src = t.path().join(format!("src-{name}"));
            for (p, body) in files {
                let p = src.join(p);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, body).unwrap();
            }
            let tar = t.path().join(format!("{name}.tar"));
            let ok = Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg(".")
                .status()
                .unwrap();
            assert!(ok.success());
            tar
        };
        let one = make(
            "one",
            &[
                ("keep", "k"),
                ("gone", "g"),
                ("d/old", "o"),
                ("e/stays", "s"),
            ],
        );
        let two = make(
            "two",
            &[
                (".wh.gone", ""),
                ("d/.wh..wh..opq", ""),
                ("d/new", "n"),
                ("e/more", "m"),
            ],
        );
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        apply_layer(&rootfs, &one).unwrap();
        apply_layer(&rootfs, &two).unwrap();
        assert!(rootfs.join("keep").exists());
        assert!(!rootfs.join("gone").exists());
        assert!(!rootfs.join("d/old").exists());
        assert_eq!(std::fs::read_to_string(rootfs.join("d/new")).unwrap(), "n");
        assert!(rootfs.join("e/stays").exists() && rootfs.join("e/more").exists());
        assert!(!rootfs.join(".wh.gone").exists() && !rootfs.join("d/.wh..wh..opq").exists());
    }
}
