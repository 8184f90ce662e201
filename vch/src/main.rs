use std::path::PathBuf;
use std::process::ExitCode;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vch::container::{
    executor_config, new_id, state_root, AttachLine, BootMode, Container, Meta, RunSpec,
};
use vch::guestinfo_server::{serve_file, ListenAddr};
use vch::logs::{render, LogOptions, Streams};

#[derive(Debug, Parser)]
#[command(name = "vch", version, about = "The host side of containerVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a containerVM running CMD and attach to it (or leave it running with -d); exit with
    /// the container's exit status.
    Run(RunArgs),
    /// Run CMD in a running containerVM (as `docker exec`); exit with its exit status.
    Exec(ExecArgs),
    /// Stop a containerVM: its stop signal, then SIGKILL to the process group after --time.
    Stop {
        container: String,
        /// Seconds between the stop signal and SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Remove a stopped containerVM's state (-f: stop it first).
    Rm {
        container: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Image disks.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Guestinfo served to a containerVM or a process-mode tether.
    #[command(subcommand)]
    Guestinfo(GuestinfoCommand),
    /// Attach to a containerVM (by name or ID) or, with --listen, wait for a process-mode tether;
    /// relay the terminal and exit with the session's exit status.
    Attach {
        /// The containerVM.
        container: Option<String>,
        /// Where a process-mode tether connects: HOST:PORT, tcp:HOST:PORT or unix:PATH.
        #[arg(long)]
        listen: Option<ListenAddr>,
        /// The session or exec (the container's own when absent).
        #[arg(long)]
        id: Option<String>,
        /// Relay a terminal (raw mode, window size).
        #[arg(short, long)]
        tty: bool,
        /// Keys that detach and leave the container running.
        #[arg(long, default_value = "ctrl-p,ctrl-q")]
        detach_keys: String,
        /// Seconds to wait for the tether.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Send a signal to a session's process: TARGET is a containerVM (its own session, or --id),
    /// or with --listen the session ID of a process-mode tether.
    Kill {
        target: String,
        #[arg(long)]
        listen: Option<ListenAddr>,
        /// The session or exec inside a containerVM.
        #[arg(long)]
        id: Option<String>,
        /// Signal name or number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// Signal the whole process group (VIC's group-kill), not only the process.
        #[arg(long)]
        group: bool,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Handshake with the tether, then relay stdin/stdout: an OpenSSH ProxyCommand.
    Proxy {
        #[arg(long)]
        listen: ListenAddr,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// The containerVMs; with --listen, a process-mode tether's live sessions and execs.
    Ps {
        #[arg(long)]
        listen: Option<ListenAddr>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print a containerVM's output (or an output.log file, VIC's framed format) as plain text.
    Logs {
        /// A containerVM, or an output.log file.
        target: PathBuf,
        /// Prefix each line with its time (RFC 3339, nanoseconds).
        #[arg(short, long)]
        timestamps: bool,
        /// Which streams to show.
        #[arg(long, value_enum, default_value = "all")]
        stream: Streams,
        /// Include the output of exec sessions.
        #[arg(long)]
        execs: bool,
    },
    /// (internal) Run a containerVM's supervisor in the foreground.
    #[command(hide = true)]
    Supervise { dir: PathBuf },
}

/// How a process runs, as `docker run` and `docker exec` both take it.
#[derive(Debug, clap::Args)]
struct ProcessArgs {
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Leave it running in the background and print its ID.
    #[arg(short, long)]
    detach: bool,
    /// Environment (KEY=VALUE), repeatable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(short, long)]
    user: Option<String>,
}

impl ProcessArgs {
    fn spec(self, name: Option<String>, command: Vec<String>) -> RunSpec {
        RunSpec {
            name,
            command,
            env: self.env,
            workdir: self.workdir,
            user: self.user,
            tty: self.tty,
            interactive: self.interactive,
            attached: !self.detach,
            debug: 0,
            debug_shell: false,
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// An image disk (VMDK), a directory or a tar; the built-in default image when absent.
    #[arg(long)]
    image: Option<PathBuf>,
    #[command(flatten)]
    process: ProcessArgs,
    #[arg(long)]
    name: Option<String>,
    /// Stop the container after this many seconds (stop signal, then SIGKILL).
    #[arg(long)]
    kill_after: Option<f64>,
    /// Remove its state when it ends.
    #[arg(long)]
    rm: bool,
    /// Boot from bootstrap.iso (as on VMware) instead of the kernel and initramfs directly.
    #[arg(long, value_enum, default_value = "kernel")]
    boot: BootMode,
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// The tether's debug level (VIC's; 3 also enables the debug shell).
    #[arg(long, default_value_t = 0)]
    debug: i32,
    /// Enable the debug shell (SSH `session` channels, see the README).
    #[arg(long)]
    debug_shell: bool,
    /// Extra words for the kernel command line (the kernel boot path only).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// The tether's attach line: COM1 (as VIC) or virtio-vsock (the kernel boot path only).
    #[arg(long, value_enum, default_value = "serial")]
    attach_line: AttachLine,
    /// The command; the image's /hello when absent.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    container: String,
    #[command(flatten)]
    process: ProcessArgs,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Make an image disk: an ext4 filesystem labelled `containerfs` from a directory or a tar,
    /// as a VMDK.
    Build {
        /// A directory or a tar file (a `docker export` works).
        #[arg(long)]
        from: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// The filesystem label (anything but `containerfs` makes a disk the VM will refuse).
        #[arg(long, default_value = vch::image::LABEL)]
        label: String,
    },
    /// Build the built-in default image (busybox and /hello) and print its path.
    Default,
}

#[derive(Debug, Subcommand)]
enum GuestinfoCommand {
    /// Serve the keys of a `.vmx`-style file over a stream (4-byte little-endian framed RPCI).
    Serve {
        /// The `.vmx`-style file holding the keys; the guest's writes land in it.
        #[arg(long)]
        file: PathBuf,
        /// HOST:PORT, tcp:HOST:PORT or unix:PATH
        #[arg(long)]
        listen: ListenAddr,
    },
}

/// Accepts the tether, handshakes and connects, all within `deadline`.
async fn connect(
    listen: &ListenAddr,
    deadline: std::time::Duration,
) -> anyhow::Result<ssh::Handle> {
    tokio::time::timeout(deadline, async {
        let line = vch::attach::bind(listen).await?.accept().await?;
        vch::attach::connect(line, deadline).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("no tether connected within {deadline:?}"))?
}

/// A running containerVM's tether, through its supervisor.
async fn connect_container(c: &Container) -> anyhow::Result<ssh::Handle> {
    if !c.running() {
        bail!("{} is not running", c.meta.name);
    }
    vch::front::connect(&c.ctl_socket()).await
}

/// Runs `f` on a runtime; its value is the exit status, an error is one line and status 125.
fn run_async(f: impl std::future::Future<Output = anyhow::Result<i32>>) -> ExitCode {
    // One thread: a relay's steps hand work to each other on it without waking other threads
    // (stdout has a thread of its own, stdin tokio's blocking pool).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vch: {e}");
            return ExitCode::from(125);
        }
    };
    let result = rt.block_on(f);
    // A read of stdin may still be blocked in the runtime's thread pool: do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("vch: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let root = state_root();
    let result = match cli.command {
        Command::Run(args) => return run_async(run(root, args)),
        Command::Exec(args) => return run_async(exec(root, args)),
        Command::Stop { container, time } => {
            return run_async(async move {
                let c = Container::find(&root, &container)?;
                stop(&c, Duration::from_secs(time)).await?;
                println!("{}", c.meta.name);
                Ok(0)
            })
        }
        Command::Rm { container, force } => (|| {
            let c = Container::find(&root, &container)?;
            if let Some(pid) = c.supervisor() {
                if !force {
                    bail!("{} is running (stop it, or rm -f)", c.meta.name);
                }
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                // The VM ends at once; the supervisor may still hand attached clients their
                // last output (it leaves within a minute at most) before the state can go.
                wait_until(Duration::from_secs(70), || !c.running());
            }
            std::fs::remove_dir_all(&c.dir)?;
            println!("{}", c.meta.name);
            Ok(())
        })(),
        Command::Image(ImageCommand::Build {
            from,
            output,
            label,
        }) => vch::image::build(&from, &output, &label),
        Command::Image(ImageCommand::Default) => {
            let p = default_image();
            vch::image::ensure_default(&p).map(|()| println!("{}", p.display()))
        }
        Command::Supervise { dir } => vch::supervisor::supervise(&dir),
        Command::Attach {
            container,
            listen,
            id,
            tty,
            detach_keys,
            timeout,
        } => {
            return run_async(async move {
                let mut opts = vch::attach::AttachOptions {
                    id,
                    tty,
                    detach_keys: vch::attach::parse_detach_keys(&detach_keys)?,
                    deadline: Duration::from_secs(timeout),
                };
                let h = match (&listen, &container) {
                    (Some(l), None) => connect(l, opts.deadline).await?,
                    (None, Some(name)) => {
                        let c = Container::find(&root, name)?;
                        opts.id.get_or_insert(c.meta.id.clone());
                        connect_container(&c).await?
                    }
                    _ => bail!("name a containerVM or give --listen"),
                };
                let status = vch::attach::attach(&h, &opts).await?;
                h.disconnect("detached").await;
                Ok(status.unwrap_or(0))
            })
        }
        Command::Kill {
            target,
            listen,
            id,
            signal,
            group,
            timeout,
        } => {
            return run_async(async move {
                let Some(l) = listen else {
                    let c = Container::find(&root, &target)?;
                    let id = id.unwrap_or_else(|| c.meta.id.clone());
                    signal_container(&c, &id, &signal, group).await?;
                    // As docker's kill: SIGKILL to the container's own process returns once
                    // the container is gone; any other signal once it is delivered.
                    let fatal = tether_proto::signal::parse(&signal)? == libc::SIGKILL;
                    if fatal && id == c.meta.id && !vm_ended(&c, Duration::from_secs(15)).await {
                        bail!("{} still runs 15 s after SIGKILL", c.meta.name);
                    }
                    return Ok(0);
                };
                let h = connect(&l, Duration::from_secs(timeout)).await?;
                vch::attach::kill(&h, &target, &signal, group).await?;
                h.disconnect("done").await;
                Ok(0)
            });
        }
        Command::Proxy { listen, timeout } => {
            return run_async(async move {
                let deadline = Duration::from_secs(timeout);
                let line = tokio::time::timeout(deadline, async {
                    vch::attach::bind(&listen).await?.accept().await
                })
                .await
                .map_err(|_| anyhow::anyhow!("no tether connected within {deadline:?}"))??;
                vch::attach::proxy(line, deadline).await?;
                Ok(0)
            })
        }
        Command::Ps {
            listen: Some(listen),
            timeout,
        } => {
            return run_async(async move {
                let h = connect(&listen, Duration::from_secs(timeout)).await?;
                for id in vch::attach::container_ids(&h).await? {
                    println!("{id}");
                }
                h.disconnect("done").await;
                Ok(0)
            })
        }
        Command::Ps { listen: None, .. } => Container::all(&root).map(|all| {
            println!(
                "{:<12}  {:<20}  {:<14}  {:<16}  COMMAND",
                "ID", "NAME", "STATUS", "IMAGE"
            );
            for c in all {
                let status = if c.vm_running() {
                    "running".to_string()
                } else {
                    match c.exit_status() {
                        Some(s) => format!("exited ({s})"),
                        None => "stopped".to_string(),
                    }
                };
                let image = c
                    .meta
                    .image
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                println!(
                    "{:<12}  {:<20}  {:<14}  {:<16}  {}",
                    &c.meta.id[..12.min(c.meta.id.len())],
                    c.meta.name,
                    status,
                    image,
                    c.meta.command.join(" ")
                );
            }
        }),
        Command::Guestinfo(GuestinfoCommand::Serve { file, listen }) => serve_file(file, &listen),
        Command::Logs {
            target,
            timestamps,
            stream,
            execs,
        } => (|| {
            let file = if target.is_file() {
                target
            } else {
                Container::find(&root, &target.to_string_lossy())?.output_log()
            };
            let log =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let opts = LogOptions {
                timestamps,
                streams: stream,
                execs,
            };
            Ok(render(
                &log,
                opts,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?)
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_image() -> PathBuf {
    vch::vm::assets_dir().join("images/default.vmdk")
}

/// Polls `done` every 5 ms (a stat: cheap, and `vch run` waits on it for the container's start)
/// until it holds or `limit` passes; whether it held.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// [`wait_for`] outside a runtime.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// The image to boot: a VMDK as it is; a directory or tar made into one (cached by path and
/// modification time); the default image.
fn image_for(root: &std::path::Path, image: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let Some(p) = image else {
        let d = default_image();
        vch::image::ensure_default(&d)?;
        return Ok(d);
    };
    if p.is_file() && p.extension().is_some_and(|e| e == "vmdk") {
        return Ok(p);
    }
    let m = std::fs::metadata(&p).with_context(|| format!("the image {}", p.display()))?;
    let key: String = format!(
        "{}-{:?}",
        std::fs::canonicalize(&p)?.display(),
        m.modified()?
    )
    .bytes()
    .fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
    .to_string();
    let out = root.join("images").join(format!("{key}.vmdk"));
    if !out.exists() {
        eprintln!("vch: building an image from {}", p.display());
        vch::image::build(&p, &out, vch::image::LABEL)?;
    }
    Ok(out)
}

async fn run(root: PathBuf, args: RunArgs) -> anyhow::Result<i32> {
    let image = image_for(&root, args.image)?;
    let id = new_id();
    let name = args.name.unwrap_or_else(|| id[..12].to_string());
    let command = if args.command.is_empty() {
        vec!["/hello".to_string()]
    } else {
        args.command
    };
    let (tty, detach) = (args.process.tty, args.process.detach);
    let spec = RunSpec {
        debug: args.debug,
        debug_shell: args.debug_shell,
        ..args.process.spec(Some(name.clone()), command.clone())
    };
    let meta = Meta {
        id: id.clone(),
        name: name.clone(),
        image,
        command,
        tty,
        boot: args.boot,
        memory_mib: args.memory,
        cmdline: args.cmdline,
        attach_line: args.attach_line,
    };
    if meta.attach_line == AttachLine::Vsock && meta.boot == BootMode::Iso {
        bail!("--attach-line vsock needs --boot kernel (the ISO's command line is fixed)");
    }
    vch::vm::check_assets(&vch::vm::assets_dir(), meta.boot)?;
    let c = Container::create(&root, meta, &executor_config(&id, &name, &spec))?;
    start_supervisor(&c)?;
    let booted = wait_for(Duration::from_secs(180), || {
        c.ctl_socket().exists() || !c.running()
    })
    .await;
    if !booted || !c.ctl_socket().exists() {
        let why = boot_failure(&c);
        if args.rm {
            wait_for(Duration::from_secs(10), || !c.running()).await;
            let _ = std::fs::remove_dir_all(&c.dir);
        }
        bail!("{name} did not start: {why}");
    }
    if let Some(t) = args.kill_after {
        spawn_stopper(&c, t)?;
    }
    if detach {
        // As docker's run -d: back once the process has started (so that a kill or an exec
        // right after finds it), or with the reason it could not.
        let mut started = None;
        wait_for(Duration::from_secs(180), || {
            started = c.started();
            started.is_some() || !c.vm_running()
        })
        .await;
        match started.as_deref() {
            Some("true") => {}
            Some(why) => {
                eprintln!("vch: {name}: {why}");
                return Ok(c.exit_status().unwrap_or(125));
            }
            None => bail!("{name} did not start: {}", boot_failure(&c)),
        }
        println!("{id}");
        return Ok(0);
    }
    let h = connect_container(&c).await?;
    let Some(mut status) = attach_to(&h, id, tty).await? else {
        return Ok(0); // detached
    };
    // The VM powers off after its primary session; its recorded status is the final word.
    let ended = vm_ended(&c, Duration::from_secs(30)).await;
    if let Some(s) = c.exit_status() {
        status = s;
    }
    // The state goes once the supervisor has gone too (it may still serve other clients).
    if args.rm && ended && wait_for(Duration::from_secs(70), || !c.running()).await {
        let _ = std::fs::remove_dir_all(&c.dir);
    }
    Ok(status)
}

/// Starts `vch supervise DIR` in the background, in its own process group.
fn start_supervisor(c: &Container) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.supervisor_log())?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("supervise")
        .arg(&c.dir)
        .env(
            "VCH_LOG",
            std::env::var("VCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the supervisor")?;
    // Its PID file may lag the first poll: write it here too.
    std::fs::write(c.pid_file(), child.id().to_string())?;
    Ok(())
}

/// `--kill-after`: a detached `vch stop` after the delay.
fn spawn_stopper(c: &Container, after: f64) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    std::process::Command::new("sh")
        .arg("-c")
        .arg("sleep \"$1\" && exec \"$2\" stop \"$3\" >/dev/null 2>&1")
        .arg("vch-stopper")
        .arg(after.to_string())
        .arg(exe)
        .arg(&c.meta.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("scheduling the stop")?;
    Ok(())
}

/// Why a containerVM ended before its tether connected: the last error of the debug port.
fn boot_failure(c: &Container) -> String {
    let debug = std::fs::read_to_string(c.debug_log()).unwrap_or_default();
    let supervisor = std::fs::read_to_string(c.supervisor_log()).unwrap_or_default();
    let line = debug
        .lines()
        .chain(supervisor.lines())
        .rfind(|l| l.contains("ERROR") || l.contains("Error") || l.contains("error:"))
        .map(str::to_string);
    match line {
        Some(l) => l,
        None if c.running() => "no tether connected within 180 s".into(),
        None => format!("the VM stopped; see {}", c.debug_log().display()),
    }
}

/// The stop signal, then SIGKILL to the process group after `grace`, then QEMU itself; returns
/// as soon as the VM is gone (docker's stop: the timeout only bounds the wait before SIGKILL).
async fn stop(c: &Container, grace: Duration) -> anyhow::Result<()> {
    if !c.vm_running() {
        return Ok(());
    }
    let id = c.meta.id.clone();
    let sig = c
        .config()
        .ok()
        .and_then(|cfg| cfg.sessions.get(&id).map(|s| s.stop_signal.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "TERM".into());
    // Each signal on a connection of its own, closed at once: the supervisor stays while it has
    // clients, and this one must not be among them while it waits for the VM to end.
    let _ = signal_container(c, &id, &sig, false).await;
    if vm_ended(c, grace).await {
        return Ok(());
    }
    let _ = signal_container(c, &id, "KILL", true).await;
    if vm_ended(c, Duration::from_secs(15)).await {
        return Ok(());
    }
    if let Some(pid) = c.supervisor() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    vm_ended(c, Duration::from_secs(10)).await;
    Ok(())
}

/// Sends `sig` to session `id` of a running containerVM over a connection of its own.
async fn signal_container(c: &Container, id: &str, sig: &str, group: bool) -> anyhow::Result<()> {
    let h = connect_container(c).await?;
    let sent = vch::attach::kill(&h, id, sig, group).await;
    h.disconnect("done").await;
    sent
}

/// Waits at most `limit` for the VM to end; whether it did.
async fn vm_ended(c: &Container, limit: Duration) -> bool {
    wait_for(limit, || !c.vm_running()).await
}

async fn exec(root: PathBuf, args: ExecArgs) -> anyhow::Result<i32> {
    let c = Container::find(&root, &args.container)?;
    let h = connect_container(&c).await?;
    let exec_id = new_id();
    let (tty, detach) = (args.process.tty, args.process.detach);
    let spec = args.process.spec(None, args.command);
    c.add_exec(
        &exec_id,
        &vch::container::session(&exec_id, &c.meta.name, &spec),
    )?;
    if h.global_request("reload", true, Vec::new())
        .await?
        .is_none()
    {
        bail!("the tether refused the reload");
    }
    let start = Instant::now();
    while !vch::attach::container_ids(&h).await?.contains(&exec_id) {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the tether did not start the exec within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if detach {
        println!("{exec_id}");
        return Ok(0);
    }
    Ok(attach_to(&h, exec_id, tty).await?.unwrap_or(0))
}

/// Attaches to session `id` with docker's detach keys; its exit status, `None` after a detach.
async fn attach_to(h: &ssh::Handle, id: String, tty: bool) -> anyhow::Result<Option<i32>> {
    let opts = vch::attach::AttachOptions {
        id: Some(id),
        tty,
        detach_keys: vch::attach::parse_detach_keys("ctrl-p,ctrl-q")?,
        deadline: Duration::from_secs(60),
    };
    let status = vch::attach::attach(h, &opts).await?;
    h.disconnect("done").await;
    Ok(status)
}
