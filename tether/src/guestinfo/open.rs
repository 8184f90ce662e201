//! Where guestinfo comes from: a transport chosen from its spec (`backdoor`, `auto`, `virtio:`,
//! `serial:`, `unix:`, `tcp:`/HOST:PORT, `file:` or a `.vmx` file).

use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use tether_proto::guestinfo::stream::StreamGuestInfo;
use tether_proto::guestinfo::vmx::VmxFile;
use tether_proto::guestinfo::GuestInfo;
use tether_proto::vm::GUESTINFO_SERIAL;

use super::backdoor::Backdoor;

/// Opens the guestinfo transport. Runs before any other thread exists (the backdoor's I/O
/// permission is inherited only by threads created afterwards).
pub fn open_guestinfo(spec: &str) -> anyhow::Result<Box<dyn GuestInfo>> {
    Ok(match tether_proto::addr::split(spec) {
        _ if spec == "backdoor" || spec == "backdoor!" => {
            Box::new(Backdoor::open(spec.ends_with('!'))?)
        }
        // VMware's backdoor when it is there; otherwise the UART a QEMU host serves guestinfo on.
        _ if spec == "auto" => match Backdoor::open(false) {
            Ok(b) => Box::new(b),
            Err(backdoor) => {
                let com4 = Path::new(GUESTINFO_SERIAL);
                let name = com4
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if !crate::sys::serial::uart_present(Path::new("/sys"), name) {
                    bail!("no guestinfo: not on VMware ({backdoor}), and no UART at {GUESTINFO_SERIAL}");
                }
                open_guestinfo(&format!("serial:{GUESTINFO_SERIAL}"))?
            }
        },
        Some(("virtio", name)) => {
            let path = virtio_port(Path::new("/sys"), name)
                .with_context(|| format!("no virtio port named {name:?}"))?;
            open_port(&path)?
        }
        Some(("unix", path)) => Box::new(StreamGuestInfo::new(
            UnixStream::connect(path).with_context(|| format!("connecting to {path}"))?,
        )),
        Some(("tcp", addr)) => Box::new(StreamGuestInfo::new(
            std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?,
        )),
        Some(("serial", path)) => Box::new(StreamGuestInfo::new(
            crate::sys::serial::open_raw(std::path::Path::new(path), false)
                .with_context(|| format!("opening {path}"))?,
        )),
        Some(("file", path)) => Box::new(VmxFile::open(path)?),
        Some((scheme, _)) if !spec.starts_with('/') && !spec.starts_with('.') => {
            bail!("{spec:?}: unknown guestinfo source {scheme:?} (a file, unix:, tcp:, serial:, virtio:, backdoor, auto)")
        }
        _ => Box::new(VmxFile::open(spec)?),
    })
}

/// The device of the virtio-serial port called `name` (`/dev/vportNpM`, found through sysfs).
pub fn virtio_port(sys: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = sys.join("class/virtio-ports");
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name) {
            return Ok(Path::new("/dev").join(e.file_name()));
        }
    }
    bail!("none of {} is named {name:?}", dir.display())
}

fn open_port(path: &Path) -> anyhow::Result<Box<dyn GuestInfo>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(StreamGuestInfo::new(f)))
}
