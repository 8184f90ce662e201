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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
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
