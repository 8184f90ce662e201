//! Serves a containerVM's guestinfo (kept in a `.vmx`-style file) over a byte stream, with the
//! framing of [`tether_proto::guestinfo::stream`].

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use tether_proto::guestinfo::stream::serve_with_tools;
use tether_proto::guestinfo::vmx::VmxFile;

/// Where to listen: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for ListenAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match tether_proto::addr::split(s) {
            Some(("unix", path)) if !path.is_empty() => Ok(ListenAddr::Unix(path.into())),
            Some(("tcp", addr)) if addr.contains(':') => Ok(ListenAddr::Tcp(addr.to_string())),
            _ => bail!("{s:?}: expected HOST:PORT, tcp:HOST:PORT or unix:PATH"),
        }
    }
}

/// Serves `file` to every connection on `addr`, one thread a connection, until the process ends.
pub fn serve_file(file: PathBuf, addr: &ListenAddr) -> anyhow::Result<()> {
    // Fail early on a missing or malformed file rather than at the first request.
    VmxFile::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let serve_one = move |stream: Box<dyn ReadWrite>| serve_connection(file.clone(), stream, None);
    match addr {
        ListenAddr::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener =
                UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
            for stream in listener.incoming() {
                serve_one(Box::new(stream?));
            }
        }
        ListenAddr::Tcp(a) => {
            let listener = TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
            for stream in listener.incoming() {
                serve_one(Box::new(stream?));
            }
        }
    }
    Ok(())
}

/// Serves `file` (and the tools' channels, when given) to one connection on a thread of its own.
pub fn serve_connection(
    file: PathBuf,
    mut stream: Box<dyn ReadWrite>,
    tools: Option<tether_proto::guestinfo::tools::ToolsQueue>,
) {
    std::thread::spawn(move || {
        let mut tools = tools;
        let result = VmxFile::open(&file)
            .map_err(anyhow::Error::from)
            .and_then(|mut store| {
                let host = tools
                    .as_mut()
                    .map(|t| t as &mut dyn tether_proto::guestinfo::tools::ToolsHost);
                Ok(serve_with_tools(&mut stream, &mut store, host)?)
            });
        if let Err(e) = result {
            tracing::warn!("guestinfo connection ended: {e:#}");
        }
    });
}

/// A byte stream that can be moved to a thread.
pub trait ReadWrite: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> ReadWrite for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "unix:/tmp/x".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:5000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:5000".into())
        );
        // What people type for a TCP address.
        assert_eq!(
            "127.0.0.1:2377".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:2377".into())
        );
        for bad in ["", "unix:", "tcp:5000", "serial:/dev/ttyS0", "/tmp/x"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
