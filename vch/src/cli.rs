//! `vch`'s command line: the commands and their flags (clap), parsed by `main.rs` and carried out
//! by [`crate::commands`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::container::{AttachLine, BootMode, RunSpec};
use crate::guestinfo_server::ListenAddr;
use crate::logs::Streams;
use crate::network::{NetMode, PortSpec};

#[derive(Debug, Parser)]
#[command(name = "vch", version, about = "The host side of containerVMs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a containerVM running CMD and attach to it (or leave it running with -d); exit with
    /// the container's exit status.
    Run(Box<RunArgs>),
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
        /// Remove its anonymous volumes too.
        #[arg(short, long)]
        volumes: bool,
    },
    /// VIC's guestinfo keys and the config as JSON, both ways.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Volumes: disks that outlive containers.
    #[command(subcommand)]
    Volume(VolumeCommand),
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
    /// Bridge networks of containerVMs (needs root, ip and dnsmasq).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// A containerVM's state as JSON: its process, and each network's address, gateway and name
    /// servers as the tether reported them.
    Inspect { container: String },
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
    /// Serve the Docker Engine API (1.41) on the same containerVMs: the docker CLI then runs
    /// them (`DOCKER_HOST=unix://...`).
    Serve {
        /// unix:PATH or tcp:IP:PORT (default: unix:<state root>/docker.sock, mode 0660).
        #[arg(long)]
        docker: Option<crate::docker::Endpoint>,
    },
    /// (internal) Run a containerVM's supervisor in the foreground.
    #[command(hide = true)]
    Supervise { dir: PathBuf },
}

/// How a process runs, as `docker run` and `docker exec` both take it.
#[derive(Debug, clap::Args)]
pub struct ProcessArgs {
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Leave it running in the background and print its ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Environment (KEY=VALUE), repeatable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
}

impl ProcessArgs {
    pub fn spec(self, name: Option<String>, command: Vec<String>) -> RunSpec {
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
pub struct RunArgs {
    /// An image disk (VMDK), a directory or a tar; the built-in default image when absent.
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub process: ProcessArgs,
    #[arg(long)]
    pub name: Option<String>,
    /// Stop the container after this many seconds (stop signal, then SIGKILL).
    #[arg(long)]
    pub kill_after: Option<f64>,
    /// Remove its state when it ends.
    #[arg(long)]
    pub rm: bool,
    /// Boot from bootstrap.iso (as on VMware) instead of the kernel and initramfs directly.
    #[arg(long, value_enum, default_value = "kernel")]
    pub boot: BootMode,
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// The tether's debug level (VIC's; 3 also enables the debug shell).
    #[arg(long, default_value_t = 0)]
    pub debug: i32,
    /// Enable the debug shell (SSH `session` channels, see the README).
    #[arg(long)]
    pub debug_shell: bool,
    /// Extra words for the kernel command line (the kernel boot path only).
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// The tether's attach line: COM1 (as VIC) or virtio-vsock (the kernel boot path only).
    #[arg(long, value_enum, default_value = "serial")]
    pub attach_line: AttachLine,
    /// The container's network: `user` (QEMU's user network: DHCP, outbound NAT), `isolated`
    /// (the same with nothing routed out: only published ports and --host-port reach across),
    /// `none` (only lo). The default: `user`, or `none` when --network is given.
    #[arg(long = "net", env = "VCH_NET", value_enum)]
    pub net: Option<NetMode>,
    /// A bridge network to join (`vch network create`); repeat for several (one NIC each).
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// The address on the (first) bridge network; the first free one when absent.
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// More names the container answers to on its bridge networks.
    #[arg(long = "network-alias")]
    pub network_aliases: Vec<String>,
    /// A volume: NAME:/PATH[:ro] (made on first use), /PATH (anonymous) or
    /// nfs://HOST/EXPORT:/PATH[:ro].
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<crate::volume::VolumeArg>,
    /// Publish a container port on the host: [IP:]HOSTPORT:CTRPORT[/tcp|udp] (IP 127.0.0.1 when
    /// absent).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<PortSpec>,
    /// Let the container reach the host's 127.0.0.1:PORT at 10.0.2.100:PORT (user networks);
    /// GUESTPORT:HOSTPORT for another port on the host.
    #[arg(long = "host-port")]
    pub host_ports: Vec<crate::network::HostPort>,
    /// The command; the image's /hello when absent.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    pub container: String,
    #[command(flatten)]
    pub process: ProcessArgs,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Make an image disk: an ext4 filesystem labelled `containerfs` from a directory or a tar,
    /// as a VMDK.
    Build {
        /// A directory or a tar file (a `docker export` works).
        #[arg(long)]
        from: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// The filesystem label (anything but `containerfs` makes a disk the VM will refuse).
        #[arg(long, default_value = crate::image::LABEL)]
        label: String,
    },
    /// Build the built-in default image (busybox and /hello) and print its path; with --tree,
    /// write its files into DIR instead (to make a docker image of them).
    Default {
        #[arg(long)]
        tree: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GuestinfoCommand {
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

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Make a bridge network: a bridge in a network namespace of its own, with dnsmasq for
    /// DHCP and names.
    Create {
        name: String,
        /// The subnet (A.B.C.D/N); the first free 10.89.N.0/24 when absent.
        #[arg(long)]
        subnet: Option<String>,
    },
    /// The bridge networks.
    Ls,
    /// Remove a bridge network no running container is on.
    Rm { name: String },
    /// A bridge network and its containers, as JSON.
    Inspect { name: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Make a volume: an ext4 filesystem on a VMDK of its own.
    Create {
        name: String,
        /// Its size (M, G or T; MiB without a unit).
        #[arg(long, default_value = "1G")]
        size: String,
        /// Its ext4 label (16 characters at most); one of its own when absent.
        #[arg(long)]
        label: Option<String>,
    },
    /// The volumes.
    Ls,
    /// A volume and the containers naming it, as JSON.
    Inspect { name: String },
    /// Remove a volume no container names.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read .vmx-style `key = "value"` lines (FILE or stdin), print the config as JSON.
    Decode { file: Option<PathBuf> },
    /// Read the config as JSON (FILE or stdin), print the key/value lines VIC's VCH would write.
    Encode { file: Option<PathBuf> },
}
