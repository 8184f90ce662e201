use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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
    /// Guestinfo served to a containerVM or a process-mode tether.
    #[command(subcommand)]
    Guestinfo(GuestinfoCommand),
    /// Wait for a tether on the attach line, attach to a session and relay the terminal; exit
    /// with the session's exit status.
    Attach {
        /// Where the tether connects: tcp:HOST:PORT or unix:PATH.
        #[arg(long)]
        listen: ListenAddr,
        /// The session or exec (the only one when absent).
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
    /// Send a signal to a session's process (the tether connects on --listen).
    Kill {
        #[arg(long)]
        listen: ListenAddr,
        /// Signal name or number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// The session or exec.
        id: String,
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
    /// The tether's live sessions and execs.
    Ps {
        #[arg(long)]
        listen: ListenAddr,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print a container's output.log (VIC's framed format) as plain text.
    Logs {
        /// The output.log file.
        file: PathBuf,
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
}

#[derive(Debug, Subcommand)]
enum GuestinfoCommand {
    /// Serve the keys of a `.vmx`-style file over a stream (4-byte little-endian framed RPCI).
    Serve {
        /// The `.vmx`-style file holding the keys; the guest's writes land in it.
        #[arg(long)]
        file: PathBuf,
        /// unix:PATH or tcp:HOST:PORT
        #[arg(long)]
        listen: ListenAddr,
    },
}

/// Accepts the tether, handshakes and connects, all within `deadline`.
async fn connect(
    listen: &ListenAddr,
    deadline: std::time::Duration,
) -> anyhow::Result<tether_proto::ssh::Handle> {
    tokio::time::timeout(deadline, async {
        let line = vch::attach::bind(listen).await?.accept().await?;
        vch::attach::connect(line, deadline).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("no tether connected within {deadline:?}"))?
}

/// Runs `f` on a runtime; its value is the exit status, an error is one line and status 125.
fn run_async(f: impl std::future::Future<Output = anyhow::Result<i32>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vch: {e}");
            return ExitCode::from(125);
        }
    };
    match rt.block_on(f) {
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
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach {
            listen,
            id,
            tty,
            detach_keys,
            timeout,
        } => {
            return run_async(async move {
                let opts = vch::attach::AttachOptions {
                    id,
                    tty,
                    detach_keys: vch::attach::parse_detach_keys(&detach_keys)?,
                    deadline: std::time::Duration::from_secs(timeout),
                };
                let h = connect(&listen, opts.deadline).await?;
                let status = vch::attach::attach(&h, &opts).await?;
                h.disconnect("detached").await;
                Ok(status.unwrap_or(0))
            })
        }
        Command::Kill {
            listen,
            signal,
            id,
            group,
            timeout,
        } => {
            return run_async(async move {
                let h = connect(&listen, std::time::Duration::from_secs(timeout)).await?;
                vch::attach::kill(&h, &id, &signal, group).await?;
                h.disconnect("done").await;
                Ok(0)
            })
        }
        Command::Proxy { listen, timeout } => {
            return run_async(async move {
                let deadline = std::time::Duration::from_secs(timeout);
                let line = tokio::time::timeout(deadline, async {
                    vch::attach::bind(&listen).await?.accept().await
                })
                .await
                .map_err(|_| anyhow::anyhow!("no tether connected within {deadline:?}"))??;
                vch::attach::proxy(line, deadline).await?;
                Ok(0)
            })
        }
        Command::Ps { listen, timeout } => {
            return run_async(async move {
                let h = connect(&listen, std::time::Duration::from_secs(timeout)).await?;
                for id in vch::attach::container_ids(&h).await? {
                    println!("{id}");
                }
                h.disconnect("done").await;
                Ok(0)
            })
        }
        Command::Guestinfo(GuestinfoCommand::Serve { file, listen }) => serve_file(file, &listen),
        Command::Logs {
            file,
            timestamps,
            stream,
            execs,
        } => std::fs::read(&file)
            .with_context(|| format!("reading {}", file.display()))
            .and_then(|log| {
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
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
