use std::process::ExitCode;

use tether::cli::Command;

/// Bad input: a malformed line, value or JSON.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    if std::process::id() == 1 {
        // As `/init` of the initramfs it is the bootstrap stage and then the container's init (the
        // kernel may pass words of its command line as arguments); with no arguments under
        // another name, the container's init of a root already in place.
        let argv0 = std::env::args_os().next().unwrap_or_default();
        if std::path::Path::new(&argv0).file_name() == Some("init".as_ref()) {
            tether::run::bootstrap();
        }
        if std::env::args_os().len() == 1 {
            tether::run::init(None);
        }
    }
    let command = match tether::cli::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match command {
        Command::Help => {
            print!("{}", tether::cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("tether {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Init { cmdline } => tether::run::init(cmdline),
        Command::Run(opts) => match tether::run::run(opts) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("tether: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
