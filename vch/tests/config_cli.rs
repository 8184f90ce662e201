//! `vch config decode|encode` as a user runs it.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use tether_proto::guestinfo::vmx;

const WORKED_EXAMPLE: &str = include_str!("../../proto/tests/data/vic-worked-example.txt");

fn vch(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The worked example in the canonical form our encoder writes (`key = "value"`, escaped).
fn canonical_example() -> String {
    let pairs = vmx::parse(WORKED_EXAMPLE).unwrap();
    vmx::render(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[test]
fn decode_then_encode_reproduces_every_covered_line() {
    let input = canonical_example();
    let decoded = vch(&["config", "decode"], &input);
    assert!(decoded.status.success(), "{}", text(&decoded.stderr));
    let json = text(&decoded.stdout);
    assert!(json.contains("\"path\": \"/bin/sh\""), "{json}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, &json).unwrap();
    let encoded = vch(&["config", "encode", file.to_str().unwrap()], "");
    assert!(encoded.status.success(), "{}", text(&encoded.stderr));
    let out = text(&encoded.stdout);
    let out_lines: Vec<&str> = out.lines().collect();
    let mut sorted = out_lines.clone();
    sorted.sort();
    assert_eq!(out_lines, sorted, "lines are sorted by key");
    for line in input.lines().filter(|l| l.starts_with("guestinfo.")) {
        assert!(out_lines.contains(&line), "missing: {line}");
    }
}

#[test]
fn unquoted_lines_as_printed_in_the_reference_decode_the_same() {
    let a = vch(&["config", "decode"], WORKED_EXAMPLE);
    let b = vch(&["config", "decode"], &canonical_example());
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn bad_input_is_a_clear_error_with_status_2() {
    let cases = [
        (
            "guestinfo.vice./hostname = \"h\"\nthis line is wrong\n",
            "line 2",
        ),
        (
            "guestinfo.vice./key = \"@@@\"\n",
            "guestinfo.vice./key: bad base64",
        ),
        (
            "guestinfo.vice./sessions = \"a\"\nguestinfo.vice./sessions|a/cmd/Args = \"100000\"\n",
            "guestinfo.vice./sessions|a/cmd/Args: index 100000 is out of range",
        ),
        (
            "guestinfo.vice./diagnostics/debug = \"loud\"\n",
            "guestinfo.vice./diagnostics/debug: expected an integer",
        ),
        (
            "guestinfo.vice./networks = \"n\"\nguestinfo.vice./networks|n/ip/IP = \"AQI=\"\n",
            "guestinfo.vice./networks|n/ip/IP: an IP address has 4 or 16 bytes",
        ),
    ];
    for (input, message) in cases {
        let out = vch(&["config", "decode"], input);
        assert_eq!(out.status.code(), Some(2), "{input}");
        assert!(
            text(&out.stderr).contains(message),
            "{input}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
    let out = vch(&["config", "encode"], "{ not json");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a config in JSON"),
        "{}",
        text(&out.stderr)
    );
    let out = vch(&["config", "decode", "/nonexistent/file"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("reading /nonexistent/file"));
}

#[test]
fn a_pipe_truncation_is_reported_as_a_warning() {
    let input = "guestinfo.vice./sessions = \"a\"\n\
                 guestinfo.vice./sessions|a/cmd/Args = \"2\"\n\
                 guestinfo.vice./sessions|a/cmd/Args~ = \"sh|7C-c|7Cecho a|7Ctr a b\"\n";
    let out = vch(&["config", "decode"], input);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("warning: guestinfo.vice./sessions|a/cmd/Args~"));
    assert!(text(&out.stdout).contains("\"echo a\""));
}
