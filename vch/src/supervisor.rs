//! One process per running containerVM (`vch run` starts it in the background): it serves the
//! container's guestinfo, starts QEMU, takes the tether's connection on COM1 (handshake, SSH),
//! and relays clients on the control socket to it; when QEMU exits it cleans up and ends.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::attach::Listening;
use crate::container::{state_root, AttachLine, Container, VSOCK_PORT};
use crate::vm::{self, VmSpec};

/// Serves guestinfo from `file` to each connection on `listener` (QEMU's, and its reconnects).
pub fn serve_guestinfo(
    file: std::path::PathBuf,
    listener: UnixListener,
    tools: tether_proto::guestinfo::tools::ToolsQueue,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            crate::guestinfo_server::serve_connection(
                file.clone(),
                Box::new(stream),
                Some(tools.clone()),
            );
        }
    });
}

/// Logs what the guest's tools tell the VMX (their RPCI requests), each once.
#[derive(Clone)]
struct ToolsLog {
    tools: tether_proto::guestinfo::tools::ToolsQueue,
    said: std::sync::Arc<std::sync::Mutex<usize>>,
}

impl ToolsLog {
    /// Logs the requests that came since the last call.
    fn flush(&self) {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        let requests = self.tools.rpci_requests();
        for r in &requests[(*said).min(requests.len())..] {
            let end = r.iter().position(|&b| b == 0).unwrap_or(r.len()).min(48);
            tracing::info!(
                "tools said: {} ({} bytes)",
                String::from_utf8_lossy(&r[..end]),
                r.len()
            );
        }
        *said = requests.len();
    }
}

/// Records when the guest's tools last polled, in `tools.poll` (seconds since the epoch), for
/// `vch inspect`, and logs what they tell the VMX (every second; the caller flushes the rest at
/// the end, or what came in the last second would never be logged).
fn record_tools_polls(
    c: &Container,
    tools: tether_proto::guestinfo::tools::ToolsQueue,
) -> ToolsLog {
    let file = c.dir.join("tools.poll");
    let log = ToolsLog {
        tools: tools.clone(),
        said: Default::default(),
    };
    let logger = log.clone();
    std::thread::spawn(move || {
        let mut last = None;
        loop {
            logger.flush();
            let now = tools.last_poll();
            if now != last {
                if let Some(t) = now.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
                    let _ = std::fs::write(&file, t.as_secs().to_string());
                }
                last = now;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    log
}

/// Takes the tether's connections on its attach line (again after each loss of the line) and
/// serves the control socket while one is up.
async fn attach_lines(
    lines: &Listening,
    c: &Container,
    clients: &crate::front::Clients,
    tools: &tether_proto::guestinfo::tools::ToolsQueue,
) -> anyhow::Result<std::convert::Infallible> {
    loop {
        let line = lines.accept().await?;
        match crate::attach::connect(line, Duration::from_secs(600)).await {
            Ok(h) => {
                tracing::info!("the tether is connected");
                let ctl = crate::front::listen_at(&c.ctl_socket())?;
                crate::front::serve(ctl, h, clients.clone(), tools.clone()).await;
                let _ = std::fs::remove_file(c.ctl_socket());
                tracing::info!("the tether's connection ended");
            }
            Err(e) => tracing::warn!("attach line: {e:#}"),
        }
    }
}

/// The vhost-user vsock backend (`vhost-device-vsock`, from crates.io; `scripts/setup-vm` puts it
/// under the assets' `tools/bin`), started before QEMU, which connects to its socket.
async fn start_vsock_backend(c: &Container) -> anyhow::Result<tokio::process::Child> {
    let bundled = vm::assets_dir().join("tools/bin/vhost-device-vsock");
    let exe = if bundled.exists() {
        bundled
    } else {
        "vhost-device-vsock".into()
    };
    let _ = std::fs::remove_file(c.vhost_socket());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.dir.join("vsock.log"))?;
    let child = tokio::process::Command::new(&exe)
        .args(["--guest-cid", "3", "--socket"])
        .arg(c.vhost_socket())
        .arg("--uds-path")
        .arg(c.vsock_uds())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (scripts/setup-vm installs it)", exe.display()))?;
    let start = std::time::Instant::now();
    while !c.vhost_socket().exists() {
        if start.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("{} made no socket within 10 s", exe.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(child)
}

/// How long, after QEMU has exited, clients may still be taking their output.
const CLIENT_GRACE: Duration = Duration::from_secs(60);

/// Runs the containerVM in `dir` to its end.
pub fn supervise(dir: &Path) -> anyhow::Result<()> {
    let c = Container::open(dir)?;
    std::fs::write(c.pid_file(), std::process::id().to_string())?;
    let result = run_vm(&c);
    let _ = std::fs::remove_file(c.ctl_socket());
    let _ = std::fs::remove_file(c.gi_socket());
    let _ = std::fs::remove_file(c.pid_file());
    result
}

fn run_vm(c: &Container) -> anyhow::Result<()> {
    let assets = vm::assets_dir();
    vm::check_assets(&assets, c.meta.boot)?;
    let accel = vm::accel(&assets, &state_root().join("accel"));
    let _ = std::fs::remove_file(c.gi_socket());
    let _ = std::fs::remove_file(c.ended_marker());
    let gi = UnixListener::bind(c.gi_socket())
        .with_context(|| format!("binding {}", c.gi_socket().display()))?;
    // The VMX's side of the tools: guest operations and power operations reach the tether
    // through its TCLO polls on the guestinfo line.
    let tools = tether_proto::guestinfo::tools::ToolsQueue::default();
    // As a VMX when the tools start: reset, then the capabilities.
    tools.push("reset");
    tools.push("Capabilities_Register");
    serve_guestinfo(c.config_file(), gi, tools.clone());
    let tools_log = record_tools_polls(c, tools.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        // COM1 is there whichever line the tether attaches on, as in VIC's VM.
        let com1 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let com1_port = com1.local_addr()?.port();
        let (lines, vsock, cmdline) = match c.meta.attach_line {
            AttachLine::Serial => (Listening::Tcp(com1), None, c.meta.cmdline.clone()),
            AttachLine::Vsock => {
                let backend = start_vsock_backend(c).await?;
                let uds = format!("{}_{VSOCK_PORT}", c.vsock_uds().display());
                let _ = std::fs::remove_file(&uds);
                let l = tokio::net::UnixListener::bind(&uds)
                    .with_context(|| format!("binding {uds}"))?;
                let cmdline = format!("{} tether.attach=vsock:2:{VSOCK_PORT}", c.meta.cmdline);
                // Kept alive to the end: the backend, and COM1's listener for QEMU to connect to.
                (Listening::Unix(l), Some((backend, com1)), cmdline)
            }
        };
        // Each bridge network's NIC gets a tap on that network's bridge, its descriptor handed
        // to QEMU (kept open here until QEMU is gone).
        let mut nics = c.meta.nics();
        let mut taps = Vec::new();
        for (i, nic) in nics.iter_mut().enumerate() {
            if let Some(net) = nic.tap.clone() {
                let n = crate::bridge::Network::load(c.dir.parent().unwrap_or(&c.dir), &net)?;
                let fd = n.tap(&format!("t{}{i}", &c.meta.id[..10]))?;
                nix::fcntl::fcntl(
                    &fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
                nic.netdev = format!("tap,fd={}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                taps.push(fd);
            }
        }
        // Without a user network, ports are published on the first bridge network's address.
        if c.meta.net == crate::network::NetMode::None {
            if let Some(a) = c.meta.networks.first() {
                let root = c.dir.parent().unwrap_or(&c.dir);
                let n = crate::bridge::Network::load(root, &a.network)?;
                for p in &c.meta.publish {
                    if p.udp {
                        anyhow::bail!("-p {p}: UDP is published on user networks only");
                    }
                    let listen = std::net::SocketAddr::new(p.host_ip, p.host_port);
                    let to = std::net::SocketAddrV4::new(a.ip, p.container_port);
                    crate::forward::publish(listen, n.netns.clone(), to).await?;
                }
            }
        }
        let volumes = c.meta.volume_disks(c.dir.parent().unwrap_or(&c.dir))?;
        let vhost = c.vhost_socket();
        let disk = c.disk();
        let (debug, output, gi_sock) = (c.debug_log(), c.output_log(), c.gi_socket());
        let spec = VmSpec {
            assets: &assets,
            boot: c.meta.boot,
            accel,
            memory_mib: c.meta.memory_mib,
            attach_port: com1_port,
            debug_log: &debug,
            output_log: &output,
            disk: Some(&disk),
            guestinfo: Some(&gi_sock),
            vsock: vsock.is_some().then_some(vhost.as_path()),
            cmdline_extra: &cmdline,
            nics: &nics,
            volumes: &volumes,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(c.dir.join("qemu.log"))?;
        let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
            .args(vm::qemu_args(&spec))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        tracing::info!(
            "QEMU started ({}, {:?} boot, attach line {:?})",
            accel.name(),
            c.meta.boot,
            c.meta.attach_line
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let clients = crate::front::Clients::default();
        tokio::select! {
            status = qemu.wait() => tracing::info!("QEMU exited: {}", status?),
            r = attach_lines(&lines, c, &clients, &tools) => match r? {},
            _ = term.recv() => {
                tracing::info!("stopping QEMU (SIGTERM)");
                let _ = qemu.start_kill();
                let _ = qemu.wait().await;
            }
        }
        tools_log.flush();
        // The container is gone: whoever waits for that (stop, kill) need not wait for the
        // clients below.
        if let Err(e) = std::fs::write(c.ended_marker(), b"") {
            tracing::warn!("writing {}: {e}", c.ended_marker().display());
        }
        // Clients still taking the end of their output get it before this process goes.
        if !clients.wait_gone(CLIENT_GRACE).await {
            tracing::warn!("control clients still connected after {CLIENT_GRACE:?}; leaving them");
        }
        Ok(())
    })
}
