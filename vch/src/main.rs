//! `vch`: parses the command line and hands each command to `vch::commands`.

use std::process::ExitCode;

use clap::Parser as _;
use vch::cli::{Cli, Command, GuestinfoCommand, ImageCommand};
use vch::commands::{self, default_image, lifecycle, line, show};
use vch::container::state_root;
use vch::logs::LogOptions;

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
        Command::Run(args) => return run_async(commands::run::run(root, *args)),
        Command::Exec(args) => return run_async(commands::exec::exec(root, args)),
        Command::Stop { container, time } => {
            return run_async(async move { lifecycle::stop(&root, &container, time).await })
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
                lifecycle::kill(&root, target, listen, id, &signal, group, timeout).await
            })
        }
        Command::Rm {
            container,
            force,
            volumes,
        } => lifecycle::rm(&root, &container, force, volumes),
        Command::Volume(v) => show::volume(&root, v),
        Command::Config(cmd) => return run_config(cmd),
        Command::Attach {
            container,
            listen,
            id,
            tty,
            detach_keys,
            timeout,
        } => {
            let args = line::AttachArgs {
                container,
                listen,
                id,
                tty,
                detach_keys,
                timeout,
            };
            return run_async(async move { line::attach(&root, args).await });
        }
        Command::Proxy { listen, timeout } => return run_async(line::proxy(listen, timeout)),
        Command::Ps {
            listen: Some(listen),
            timeout,
        } => return run_async(line::ps_listen(listen, timeout)),
        Command::Ps { listen: None, .. } => show::ps(&root),
        Command::Inspect { container } => show::inspect(&root, &container),
        Command::Network(n) => show::network(&root, n),
        Command::Logs {
            target,
            timestamps,
            stream,
            execs,
        } => show::logs(
            &root,
            target,
            LogOptions {
                timestamps,
                streams: stream,
                execs,
            },
        ),
        Command::Image(ImageCommand::Build {
            from,
            output,
            label,
        }) => vch::image::build(&from, &output, &label),
        Command::Image(ImageCommand::Default { tree: Some(dir) }) => {
            vch::image::default_tree(&dir).map(|()| println!("{}", dir.display()))
        }
        Command::Image(ImageCommand::Default { tree: None }) => {
            let p = default_image();
            vch::image::ensure_default(&p).map(|()| println!("{}", p.display()))
        }
        Command::Guestinfo(GuestinfoCommand::Serve { file, listen }) => {
            vch::guestinfo_server::serve_file(file, &listen)
        }
        Command::Supervise { dir } => vch::supervisor::supervise(&dir),
        Command::Serve { docker } => {
            let at =
                docker.unwrap_or_else(|| vch::docker::Endpoint::Unix(root.join("docker.sock")));
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(vch::docker::serve(root, at)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vch config decode|encode`: the output, or the error with status 2 (bad input).
fn run_config(cmd: vch::cli::ConfigCommand) -> ExitCode {
    use std::io::Write as _;
    use vch::cli::ConfigCommand as C;
    let output = match cmd {
        C::Decode { file } => vch::config_cmd::decode(file.as_deref()).map(|(json, warnings)| {
            for w in warnings {
                eprintln!("vch: warning: {w}");
            }
            json
        }),
        C::Encode { file } => vch::config_cmd::encode(file.as_deref()),
    };
    match output {
        Ok(text) => {
            // A closed stdout (`| head`) is not an error worth a message.
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vch: {e}");
            ExitCode::from(2)
        }
    }
}
