//! Makes a `docker save` archive the way docker lays one out (`manifest.json`, the image's
//! config named by its digest, one `layer.tar` per layer), from directory trees: what the tests
//! hand `docker load`.

use std::path::Path;
use std::process::Command;

/// Tars `dir`'s contents (numeric owners, as docker's layers carry them).
pub fn tar_dir(dir: &Path, out: &Path) {
    let ok = Command::new("tar")
        .args(["--numeric-owner", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success(), "tar of {}", dir.display());
}

/// Writes `out`: an image tagged `tag` with `config` (docker's image config object: Cmd, Env,
/// ...) and the layers made from `layers`, bottom first.
pub fn save_tar(layers: &[&Path], config: serde_json::Value, tag: &str, out: &Path) {
    let work = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (i, dir) in layers.iter().enumerate() {
        let name = format!("layer{i}");
        std::fs::create_dir(work.path().join(&name)).unwrap();
        tar_dir(dir, &work.path().join(&name).join("layer.tar"));
        names.push(format!("{name}/layer.tar"));
    }
    let image = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-11-30T00:00:00Z",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let bytes = serde_json::to_vec(&image).unwrap();
    let config_name = format!("{}.json", bytes.len());
    std::fs::write(work.path().join(&config_name), bytes).unwrap();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": names,
    }]);
    std::fs::write(
        work.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    tar_dir(work.path(), out);
}
