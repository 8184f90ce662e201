use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vch::guestinfo_server::{serve_file, ListenAddr};

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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
