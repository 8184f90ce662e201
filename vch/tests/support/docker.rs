//! The stock docker CLI (Debian's docker.io 20.10 client, `/usr/bin/docker`; the machine may
//! have another `docker` earlier on PATH) pointed at a `vch serve`: shared by vch's API tests and
//! the end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const DOCKER: &str = "/usr/bin/docker";

/// Whether the docker CLI is installed; says why not (a skip) when it is not.
pub fn cli_present() -> bool {
    let here = Path::new(DOCKER).exists();
    if !here {
        eprintln!("SKIP: {DOCKER} is missing (package docker.io; scripts/setup installs it)");
    }
    here
}

/// Starts `serve` (a `vch serve ...` command) and waits for it to say where it listens; the
/// rest of its stderr is drained so that it never blocks on a full pipe. The child, and the
/// `DOCKER_HOST` to give the CLI.
pub fn start_serve(mut serve: Command) -> (Child, String) {
    let mut child = serve
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    err.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let host = line
        .trim()
        .strip_prefix("vch: the Docker API on ")
        .unwrap_or_else(|| panic!("vch serve said {line:?}"))
        .to_string();
    (child, host)
}

/// The docker CLI with `args`, against `host`, with a config directory of its own.
pub fn cli(host: &str, config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(DOCKER);
    c.args(args)
        .env("DOCKER_HOST", host)
        .env("DOCKER_CONFIG", config);
    c
}
