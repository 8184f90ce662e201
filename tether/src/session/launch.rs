//! Turning a session's `cmd` into something to exec, exactly as VIC resolves it, and launch
//! failures into VIC's `started` text and docker's exit codes (125 setup, 126 cannot invoke,
//! 127 not found).

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use tether_proto::config::Cmd;

use super::users;
use crate::sys::spawn::{SpawnError, Stage};

/// Docker's codes for a failed launch.
pub const EXIT_SETUP: i32 = 125;
pub const EXIT_CANNOT_INVOKE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// A launch that failed: the text VIC writes to `started`, and the exit status to report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    pub message: String,
    pub exit_code: i32,
}

impl LaunchError {
    pub fn new(exit_code: i32, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code,
        }
    }
}

/// Everything about the process but its stdio.
#[derive(Debug)]
pub struct Prepared {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub dir: CString,
    pub user: Option<(u32, u32, Vec<u32>)>,
}

/// Go's lower-case errno text: "no such file or directory".
fn errno_text(e: Errno) -> String {
    let d = e.desc();
    let mut chars = d.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

fn c(what: &str, s: &str) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::new(EXIT_SETUP, format!("{what} contains a NUL byte")))
}

/// Resolves the executable: `./x` and `../x` relative to `dir`; a path with `/` must exist, not be a
/// directory and have an execute bit; a bare name is looked up in PATH taken from `env` only
/// (an empty PATH element is the working directory).
pub fn resolve_path(path: &str, dir: &str, env: &[String]) -> Result<PathBuf, LaunchError> {
    if path.is_empty() {
        return Err(LaunchError::new(EXIT_NOT_FOUND, "no command given"));
    }
    if path.contains('/') {
        let full = if path.starts_with("./") || path.starts_with("../") {
            Path::new(dir).join(path)
        } else {
            PathBuf::from(path)
        };
        return check_executable(&full, path).map(|()| PathBuf::from(path));
    }
    let search = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("");
    for element in search.split(':') {
        let base = if element.is_empty() {
            Path::new(dir)
        } else {
            Path::new(element)
        };
        let candidate = base.join(path);
        if check_executable(&candidate, path).is_ok() {
            return Ok(if element.is_empty() {
                Path::new(".").join(path)
            } else {
                candidate
            });
        }
    }
    Err(LaunchError::new(
        EXIT_NOT_FOUND,
        format!("{path}: no such executable in PATH"),
    ))
}

fn check_executable(full: &Path, shown: &str) -> Result<(), LaunchError> {
    let meta = std::fs::metadata(full).map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
        let code = if errno == Errno::ENOENT || errno == Errno::ENOTDIR {
            EXIT_NOT_FOUND
        } else {
            EXIT_CANNOT_INVOKE
        };
        LaunchError::new(code, format!("stat {shown}: {}", errno_text(errno)))
    })?;
    if meta.is_dir() {
        return Err(LaunchError::new(
            EXIT_CANNOT_INVOKE,
            format!("{shown}: is a directory: permission denied"),
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(LaunchError::new(
            EXIT_CANNOT_INVOKE,
            format!("{shown}: permission denied"),
        ));
    }
    Ok(())
}

/// Prepares `cmd` to run as `user`/`group` (looked up under `root`).
pub fn prepare(root: &Path, cmd: &Cmd, user: &str, group: &str) -> Result<Prepared, LaunchError> {
    let dir = if cmd.dir.is_empty() {
        "/"
    } else {
        cmd.dir.as_str()
    };
    let (ids, home) = if user.is_empty() && group.is_empty() {
        (None, users::home_of(root, nix::unistd::geteuid().as_raw()))
    } else {
        let r = users::resolve(root, user, group)
            .map_err(|e| LaunchError::new(EXIT_SETUP, e.to_string()))?;
        (Some((r.uid, r.gid, r.groups)), r.home)
    };
    let mut env = cmd.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    let path = resolve_path(&cmd.path, dir, &env)?;
    let path_text = path.to_string_lossy().into_owned();
    let args = if cmd.args.is_empty() {
        vec![cmd.path.clone()]
    } else {
        cmd.args.clone()
    };
    Ok(Prepared {
        path: c("the command path", &path_text)?,
        argv: args
            .iter()
            .map(|a| c("an argument", a))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|e| c("an environment entry", e))
            .collect::<Result<_, _>>()?,
        dir: c("the working directory", dir)?,
        user: ids,
    })
}

/// What a failure inside the forked child means to the user.
pub fn spawn_error(err: &SpawnError, p: &Prepared) -> LaunchError {
    let path = p.path.to_string_lossy();
    match err {
        SpawnError::Fork(e) => LaunchError::new(EXIT_SETUP, format!("fork: {}", errno_text(*e))),
        SpawnError::Child {
            stage: Stage::Exec,
            errno,
        } => {
            let code = match *errno {
                Errno::ENOENT | Errno::ENOTDIR => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_INVOKE,
            };
            LaunchError::new(code, format!("{path}: {}", errno_text(*errno)))
        }
        SpawnError::Child {
            stage: Stage::Chdir,
            errno,
        } => LaunchError::new(
            EXIT_SETUP,
            format!("chdir {}: {}", p.dir.to_string_lossy(), errno_text(*errno)),
        ),
        SpawnError::Child { stage, errno } => LaunchError::new(
            EXIT_SETUP,
            format!("{stage:?}: {}", errno_text(*errno)).to_lowercase(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(path: &str) -> Vec<String> {
        vec![format!("PATH={path}")]
    }

    #[test]
    fn vic_error_texts() {
        let e = resolve_path("/not/there", "/", &[]).unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.exit_code),
            ("stat /not/there: no such file or directory", 127)
        );
        let e = resolve_path("notthere", "/", &env("/bin:/usr/bin")).unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.exit_code),
            ("notthere: no such executable in PATH", 127)
        );
        let e = resolve_path("/", "/", &[]).unwrap_err();
        assert_eq!(e.exit_code, 126);
        assert!(e.message.contains("permission denied"));
    }

    #[test]
    fn path_only_from_the_session_env() {
        assert!(
            resolve_path("sh", "/", &[]).is_err(),
            "no PATH in the session env"
        );
        assert_eq!(
            resolve_path("sh", "/", &env("/nonexistent:/bin")).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn relative_paths_and_empty_path_elements_use_dir() {
        let d = tempfile::tempdir().unwrap();
        let x = d.path().join("x");
        std::fs::write(&x, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = d.path().to_str().unwrap();
        assert_eq!(resolve_path("./x", dir, &[]).unwrap(), PathBuf::from("./x"));
        assert!(resolve_path("./x", "/", &[]).is_err());
        assert_eq!(
            resolve_path("x", dir, &env("/nonexistent:")).unwrap(),
            PathBuf::from("./x")
        );
        std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            resolve_path("./x", dir, &[]).unwrap_err().message,
            "./x: permission denied"
        );
    }

    #[test]
    fn prepare_adds_home_and_keeps_args() {
        let cmd = Cmd {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "a|b".into()],
            env: vec!["PATH=/bin".into()],
            dir: String::new(),
        };
        let p = prepare(Path::new("/"), &cmd, "", "").unwrap();
        assert_eq!(p.argv.len(), 3);
        assert!(p.envp.iter().any(|e| e.to_bytes().starts_with(b"HOME=")));
        assert_eq!(p.dir.to_str().unwrap(), "/");
        let nul = Cmd {
            args: vec!["a\0b".into()],
            ..cmd
        };
        assert_eq!(
            prepare(Path::new("/"), &nul, "", "").unwrap_err().exit_code,
            125
        );
    }
}
