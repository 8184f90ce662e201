//! The command line, parsed with `lexopt` (a few kilobytes of code: clap cost the tether about
//! 200 KB of binary, and with it that much resident memory, since the kernel maps most of a
//! running tether's text).

use std::ffi::OsString;

use lexopt::prelude::*;

use crate::run::RunOptions;

pub const USAGE: &str = "\
tether: the in-guest agent of a containerVM

usage:
  tether run --guestinfo SRC [--attach LINE] [--output-log FILE] [--debug-log FILE]
             [--stop-timeout S] [--drain-timeout S] [--runblock-timeout S]
      Run as an ordinary process (or PID 1 of a PID namespace): sessions from guestinfo,
      orphans adopted as a subreaper, exit status 0 at the end instead of a power-off.
      SRC: a .vmx-style FILE, unix:PATH, HOST:PORT or tcp:HOST:PORT (framed RPC, as `vch
      guestinfo serve`), serial:DEVICE, virtio:NAME, backdoor (backdoor! skips the VMware CPU
      check) or auto (the backdoor on VMware, else COM4). LINE: HOST:PORT, tcp:HOST:PORT,
      unix:PATH, serial:DEVICE or vsock:CID:PORT. Defaults: stop 10 s, drain 2 s, runblock 60 s.
  tether init [--cmdline WORDS]
      PID 1 of a containerVM (what runs as PID 1 without arguments): settings from the kernel
      command line (tether.guestinfo=, tether.attach=, tether.debug=, tether.output=,
      tether.dir=) or WORDS, and a power-off at the end.
  tether --help | --version
";

#[derive(Debug)]
pub enum Command {
    Run(RunOptions),
    Init { cmdline: Option<String> },
    Help,
    Version,
}

/// Parses the arguments after the program's name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, lexopt::Error> {
    let mut p = lexopt::Parser::from_args(args);
    let command = match p.next()? {
        Some(Long("help") | Short('h')) => return Ok(Command::Help),
        Some(Long("version") | Short('V')) => return Ok(Command::Version),
        Some(Value(v)) => v.string()?,
        Some(other) => return Err(other.unexpected()),
        None => return Err("a command is needed (run, init); see --help".into()),
    };
    match command.as_str() {
        "run" => parse_run(&mut p).map(Command::Run),
        "init" => {
            let mut cmdline = None;
            while let Some(arg) = p.next()? {
                match arg {
                    Long("cmdline") => cmdline = Some(p.value()?.string()?),
                    Long("help") | Short('h') => return Ok(Command::Help),
                    other => return Err(other.unexpected()),
                }
            }
            Ok(Command::Init { cmdline })
        }
        other => Err(format!("unknown command {other:?}; see --help").into()),
    }
}

fn parse_run(p: &mut lexopt::Parser) -> Result<RunOptions, lexopt::Error> {
    let mut guestinfo = None;
    let mut o = RunOptions::default();
    let seconds = |p: &mut lexopt::Parser| -> Result<f64, lexopt::Error> {
        let v: f64 = p.value()?.parse()?;
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("{v}: seconds must be 0 or more").into())
        }
    };
    while let Some(arg) = p.next()? {
        match arg {
            Long("guestinfo") => guestinfo = Some(p.value()?.string()?),
            Long("attach") => o.attach = Some(p.value()?.string()?),
            Long("output-log") => o.output_log = Some(p.value()?.into()),
            Long("debug-log") => o.debug_log = Some(p.value()?.into()),
            Long("stop-timeout") => o.stop_timeout = seconds(p)?,
            Long("drain-timeout") => o.drain_timeout = seconds(p)?,
            Long("runblock-timeout") => o.runblock_timeout = seconds(p)?,
            other => return Err(other.unexpected()),
        }
    }
    o.guestinfo = guestinfo.ok_or("run: --guestinfo SRC is needed")?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn every_command_and_its_options() {
        let Command::Run(o) = parse(args(
            "run --guestinfo /tmp/c.vmx --attach 127.0.0.1:2377 --output-log out --debug-log=dbg \
             --stop-timeout 3 --drain-timeout 0.5 --runblock-timeout 30",
        ))
        .unwrap() else {
            panic!("run")
        };
        assert_eq!(o.guestinfo, "/tmp/c.vmx");
        assert_eq!(o.attach.as_deref(), Some("127.0.0.1:2377"));
        assert_eq!(o.output_log, Some(PathBuf::from("out")));
        assert_eq!(o.debug_log, Some(PathBuf::from("dbg")));
        assert_eq!(
            (o.stop_timeout, o.drain_timeout, o.runblock_timeout),
            (3.0, 0.5, 30.0)
        );
        let Command::Run(d) = parse(args("run --guestinfo auto")).unwrap() else {
            panic!("run")
        };
        assert_eq!(
            (d.stop_timeout, d.drain_timeout, d.runblock_timeout),
            (10.0, 2.0, 60.0)
        );
        assert!(matches!(
            parse(vec!["init".into(), "--cmdline".into(), "a=b c=d".into()]).unwrap(),
            Command::Init { cmdline: Some(c) } if c == "a=b c=d"
        ));
        assert!(matches!(
            parse(args("init")).unwrap(),
            Command::Init { cmdline: None }
        ));
        assert!(matches!(parse(args("--help")).unwrap(), Command::Help));
        assert!(parse(args("run --help")).is_err());
        assert!(matches!(
            parse(args("--version")).unwrap(),
            Command::Version
        ));
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        let err = |line: &str| parse(args(line)).unwrap_err().to_string();
        assert!(err("").contains("a command is needed"));
        assert!(err("launch").contains("unknown command \"launch\""));
        assert!(err("run").contains("--guestinfo"));
        assert!(err("run --guestinfo x --stop-timeout -1").contains("0 or more"));
        assert!(err("run --guestinfo x --stop-timeout soon").contains("soon"));
        assert!(err("run --guestinfo x --frobnicate").contains("--frobnicate"));
        assert!(
            err("config decode").contains("unknown command \"config\""),
            "vch's now"
        );
    }
}
