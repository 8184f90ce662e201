//! The embedded VMware Tools in process mode: the tether's guestinfo comes over the stream
//! transport from a host of the test's that plays the VMX (the config in a `.vmx` file, and the
//! tools' channels: TCLO requests queued for the guest's polls, its replies, its RPCI requests).

mod common;

use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tether_proto::guestinfo::stream::serve_with_tools;
use tether_proto::guestinfo::tools::ToolsQueue;
use tether_proto::guestinfo::vmx::VmxFile;

const LIMIT: Duration = Duration::from_secs(30);

/// The test's VMX: serves `h`'s `.vmx` and `tools` on a unix socket; returns its address.
fn vmx_host(h: &Harness, tools: &ToolsQueue) -> String {
    let path = h.path("gi.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let vmx = h.vmx.clone();
    let tools = tools.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut store = VmxFile::open(&vmx).unwrap();
            let mut t = tools.clone();
            let _ = serve_with_tools(&mut conn, &mut store, Some(&mut t));
        }
    });
    format!("unix:{}", path.display())
}

fn tether(h: &Harness, guestinfo: &str) -> Child {
    Command::new(tether_bin())
        .args(["run", "--guestinfo", guestinfo, "--stop-timeout", "5"])
        .arg("--output-log")
        .arg(&h.out)
        .arg("--debug-log")
        .arg(&h.debug)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// A relayed StartProgram of `path args` with the container's ID as the credential.
fn start_program(path: &str, args: &str) -> Vec<u8> {
    tether::toolbox::vix::start_program_as(ID, path, args)
}

/// A tether running `args` as its primary, its guestinfo from the test's VMX; back once the
/// primary has started.
fn running(args: &[&str]) -> (Harness, ToolsQueue, Child) {
    let mut cfg = config(args);
    cfg.common.id = ID.into();
    let h = Harness::new(&cfg);
    let tools = ToolsQueue::default();
    let child = tether(&h, &vmx_host(&h, &tools));
    wait_until(LIMIT, "the primary to start", || {
        h.state().sessions[ID].started == "true"
    });
    (h, tools, child)
}

#[test]
fn kill_term_through_the_tools_ends_the_primary_with_143() {
    let (h, tools, mut child) = running(&["/bin/sleep", "1000"]);
    assert_eq!(
        tools.request("Capabilities_Register", LIMIT).as_deref(),
        Some(&b"OK "[..])
    );
    assert!(tools
        .rpci_requests()
        .contains(&b"tools.set.version 2147483647".to_vec()));
    let reply = tools.request(start_program("kill", "TERM"), LIMIT).unwrap();
    assert_eq!(reply, b"OK 0 0 1000\0");
    wait(&mut child, LIMIT, &h.debug_text());
    assert_eq!(
        h.state().sessions[ID].exit_status,
        143,
        "{}",
        h.debug_text()
    );
    assert!(h.debug_text().contains("toolbox: kill SIGTERM"));
}

#[test]
fn group_kill_ends_a_group_that_ignores_term() {
    // The shell ignores TERM and waits on a child that ignores it too.
    let (h, tools, mut child) = running(&[
        "/bin/sh",
        "-c",
        "trap '' TERM; sh -c \"trap '' TERM; sleep 1000\" & wait",
    ]);
    let reply = tools
        .request(start_program("group-kill", "TERM"), LIMIT)
        .unwrap();
    assert_eq!(reply, b"OK 0 0 1000\0");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "TERM is ignored");
    let reply = tools
        .request(start_program("group-kill", "KILL"), LIMIT)
        .unwrap();
    assert_eq!(reply, b"OK 0 0 1001\0");
    wait(&mut child, LIMIT, &h.debug_text());
    assert_eq!(
        h.state().sessions[ID].exit_status,
        137,
        "{}",
        h.debug_text()
    );
}

#[test]
fn reload_starts_an_exec_written_just_before() {
    let (h, tools, mut child) = running(&["/bin/sleep", "1000"]);
    // As a VCH does for docker exec: the exec in the config, then the tools' reload.
    h.update(|c| {
        let mut e = session(&["/bin/sh", "-c", "echo from the exec"]);
        e.common.id = "ex1".into();
        c.execs.insert("ex1".into(), e);
    });
    let reply = tools.request(start_program("reload", ""), LIMIT).unwrap();
    assert_eq!(reply, b"OK 0 0 1000\0");
    wait_until(LIMIT, "the exec to run", || {
        h.state()
            .execs
            .get("ex1")
            .is_some_and(|e| e.started == "true" && e.detail.stop_time != 0)
    });
    assert_eq!(h.state().execs["ex1"].exit_status, 0);
    // OS_Halt: the container stops (its stop signal) and the tether ends, its state written.
    let reply = tools.request("OS_Halt", LIMIT).unwrap();
    assert_eq!(reply, b"OK ");
    wait(&mut child, LIMIT, &h.debug_text());
    let s = &h.state().sessions[ID];
    assert_eq!(s.exit_status, 143, "{}", h.debug_text());
    assert_ne!(s.detail.stop_time, 0);
    assert!(tools
        .rpci_requests()
        .contains(&b"tools.os.statechange.status 1 1\0".to_vec()));
}

#[test]
fn a_host_without_tools_is_polled_once() {
    // The file transport has no TCLO channel: the tools stop at once, the sessions run.
    let h = Harness::new(&config(&["/bin/echo", "hi"]));
    let status = h.run(&[], LIMIT);
    assert!(status.success());
    assert!(
        h.debug_text().contains("no TCLO channel"),
        "{}",
        h.debug_text()
    );
}
