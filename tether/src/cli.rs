//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "The in-guest agent of a containerVM"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert between guestinfo key/value lines and the config as JSON.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run as an ordinary process (or PID 1 of a PID namespace): sessions from guestinfo,
    /// orphans adopted as a subreaper, exit status 0 at the end instead of a power-off.
    Run(crate::run::RunOptions),
    /// PID 1 of a containerVM (what runs when the tether is started as PID 1 without arguments):
    /// settings from the kernel command line (`tether.guestinfo=`, `tether.attach=`,
    /// `tether.debug=`, `tether.output=`), and a power-off at the end.
    Init {
        /// Settings to use instead of the kernel command line (for testing in a PID namespace).
        #[arg(long)]
        cmdline: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read `.vmx`-style `key = "value"` lines and print the executor config as JSON.
    Decode {
        /// The file to read; standard input when absent.
        file: Option<PathBuf>,
    },
    /// Read the config as JSON and print the key/value lines VIC's VCH would write, sorted by key.
    Encode {
        /// The file to read; standard input when absent.
        file: Option<PathBuf>,
    },
}
