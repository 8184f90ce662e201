//! The network as PID 1 configures it, in network namespaces these tests make (root needed): the
//! container's side holds the NIC (`eth0`, found through a sysfs tree of the test's that puts it in
//! PCI slot 5), the other side a DHCP server (`dnsmasq`) on the veth peer. The tether runs as
//! `tether init` in the container's namespace (PID, mount and UTS namespaces of its own too).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use tether_proto::config::{ExecutorConfig, IpNet, NetworkEndpoint};
use tether_proto::iolog::Stream;

const LIMIT: Duration = Duration::from_secs(90);
/// The PCI slot the test's sysfs gives the container's NIC.
const SLOT: &str = "5";

/// Two network namespaces joined by a veth pair: `eth0` in the container's, `srv0` (10.77.0.1/24)
/// in the server's. Both go when this is dropped.
struct Lab {
    server: String,
    container: String,
    dnsmasq: Option<Child>,
}

impl Lab {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let base = format!("tt{}n{n}", std::process::id());
        let lab = Self {
            server: format!("{base}s"),
            container: format!("{base}c"),
            dnsmasq: None,
        };
        sh(&["ip", "netns", "add", &lab.server]);
        sh(&["ip", "netns", "add", &lab.container]);
        sh(&[
            "ip",
            "link",
            "add",
            "srv0",
            "netns",
            &lab.server,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lab.container,
        ]);
        lab.in_server(&["ip", "addr", "add", "10.77.0.1/24", "dev", "srv0"]);
        lab.in_server(&["ip", "link", "set", "srv0", "up"]);
        lab.in_server(&["ip", "link", "set", "lo", "up"]);
        lab
    }

    fn in_server(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.server];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// dnsmasq as the server's DHCP server: 2-minute leases (its least), renewal after `t1`
    /// seconds, options from `opts` (re-read on SIGHUP), its log in `log`.
    fn dhcp_server(&mut self, dir: &Path, t1: u32) -> (PathBuf, PathBuf) {
        let opts = dir.join("dhcp-opts");
        let log = dir.join("dnsmasq.log");
        std::fs::write(
            &opts,
            "option:router,10.77.0.1\noption:dns-server,10.77.0.53\n",
        )
        .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=srv0",
                "--bind-interfaces",
                "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,2m",
                &format!("--dhcp-option=option:T1,{t1}"),
                "--dhcp-option=option:T2,100",
                "--log-dhcp",
                "--dhcp-authoritative",
                "--no-ping",
            ])
            .arg(format!("--dhcp-optsfile={}", opts.display()))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdout(Stdio::null())
            .spawn()
            .expect("dnsmasq (scripts/setup installs it)");
        self.dnsmasq = Some(child);
        wait_until(Duration::from_secs(10), "dnsmasq to start", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("DHCP, IP range"))
        });
        (opts, log)
    }

    /// `tether init` in the container's namespace with `cfg`, its NIC in [`SLOT`] of a sysfs
    /// tree of the test's. Returns the harness and the running tether.
    fn tether(&self, cfg: &ExecutorConfig) -> (Harness, Child) {
        let h = Harness::new(cfg);
        let sys = h.path("sys");
        std::fs::create_dir_all(sys.join("bus/pci/devices/0000:00:05.0/net/eth0")).unwrap();
        let cmdline = h.init_cmdline(&format!("tether.sys={}", sys.display()));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.container, "unshare"])
            .args(["--pid", "--fork", "--mount", "--uts", "--mount-proc"])
            .arg(tether_bin())
            .args(["init", "--cmdline", &cmdline])
            .spawn()
            .unwrap();
        (h, child)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for ns in [&self.server, &self.container] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn endpoint(name: &str) -> NetworkEndpoint {
    let mut e = NetworkEndpoint::default();
    e.common.id = SLOT.into();
    e.common.name = name.into();
    e
}

fn net(cidr: &str) -> IpNet {
    let (ip, prefix) = cidr.split_once('/').unwrap();
    IpNet::with_prefix(ip.parse().unwrap(), prefix.parse().unwrap())
}

/// Waits for the tether to power its namespace off; returns the session's exit status.
fn finish(h: &Harness, child: &mut Child) -> i32 {
    wait(child, LIMIT, &h.debug_text());
    h.state().sessions[ID].exit_status
}

#[test]
fn dhcp_gives_the_address_a_renewal_applies_new_options_and_shutdown_releases_it() {
    let mut lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (opts, log) = lab.dhcp_server(dir.path(), 3);
    // The container waits for the renewal to bring the second name server, then shows its
    // network: the NIC renamed, its address, the default route, resolv.conf.
    let script = "for i in $(seq 1 300); do grep -q 10.77.0.54 /etc/resolv.conf && break; \
                  sleep 0.1; done; grep nameserver /etc/resolv.conf; \
                  ip -o -4 addr show dev public | awk '{print $2, $4}'; \
                  ip route show default; hostname";
    let mut cfg = config(&["/bin/sh", "-c", script]);
    cfg.hostname = "web".into();
    let mut e = endpoint("public");
    e.network.default = true;
    cfg.networks.insert("public".into(), e);
    let (h, mut child) = lab.tether(&cfg);
    // The first lease, written back.
    wait_until(LIMIT, "the assigned address in guestinfo", || {
        h.state().networks["public"].assigned.ip.is_some()
    });
    let first = h.state().networks["public"].clone();
    let ip = first.assigned.ip.unwrap().to_string();
    assert!(ip.starts_with("10.77.0."), "{ip}");
    assert_eq!(first.assigned.mask, net("0.0.0.0/24").mask);
    assert_eq!(
        first.network.assigned.gateway.ip,
        Some("10.77.0.1".parse().unwrap())
    );
    assert_eq!(
        first.network.assigned.nameservers,
        vec!["10.77.0.53".parse::<std::net::IpAddr>().unwrap()]
    );
    // The server knows the client by its RFC 4361 identifier (type 255, IAID, DUID-EN type 2
    // with VMware's enterprise number 6876 = 0x1adc) and the hostname of the config.
    let leases_file = dir.path().join("leases");
    wait_until(LIMIT, "the lease in dnsmasq's file", || {
        std::fs::read_to_string(&leases_file).is_ok_and(|l| l.contains(&ip))
    });
    let leases = std::fs::read_to_string(&leases_file).unwrap();
    let lease: Vec<&str> = leases.split_whitespace().collect();
    assert_eq!(lease[2], ip, "{leases}");
    assert_eq!(lease[3], "web", "{leases}");
    assert!(lease[4].starts_with("ff:"), "{leases}");
    assert_eq!(&lease[4][15..32], "00:02:00:00:1a:dc", "{leases}");
    // The server's options change; the renewal (T1 = 3 s) brings them in.
    std::fs::write(
        &opts,
        "option:router,10.77.0.1\noption:dns-server,10.77.0.54\n",
    )
    .unwrap();
    let pid = std::fs::read_to_string(dir.path().join("dnsmasq.pid")).unwrap();
    sh(&["kill", "-HUP", pid.trim()]);
    assert_eq!(finish(&h, &mut child), 0, "{}", h.debug_text());
    assert_eq!(
        h.output(Stream::Stdout),
        format!("nameserver 10.77.0.54\npublic {ip}/24\ndefault via 10.77.0.1 dev public \nweb\n"),
        "{}",
        h.debug_text()
    );
    let last = h.state().networks["public"].clone();
    assert_eq!(
        last.network.assigned.nameservers,
        vec!["10.77.0.54".parse::<std::net::IpAddr>().unwrap()],
        "the renewal's options written back"
    );
    let server_log = std::fs::read_to_string(&log).unwrap();
    // Discover/offer/request/ack, then the renewal (a request from the leased address), then
    // the release at shutdown; with the hostname option the config asks for.
    assert!(
        server_log.contains(&format!("DHCPACK(srv0) {ip}")),
        "{server_log}"
    );
    assert!(
        server_log.matches("DHCPACK(srv0)").count() >= 2,
        "{server_log}"
    );
    assert!(
        server_log.contains(&format!("DHCPRELEASE(srv0) {ip}")),
        "{server_log}"
    );
    assert!(
        server_log.contains("client provides name: web"),
        "{server_log}"
    );
}

#[test]
fn static_endpoints_share_a_nic_renamed_and_aliased_with_their_routes() {
    let lab = Lab::new();
    let script = "ip -o link show mgmt | grep -o 'alias [a-z]*'; \
                  ip -o -4 addr show dev mgmt | awk '{print $4}'; ip route show | sort; \
                  grep -E 'localhost$' /etc/hosts | grep -v '^127' | grep -v '^::1' | grep -v ip6; \
                  grep nameserver /etc/resolv.conf";
    let mut cfg = config(&["/bin/sh", "-c", script]);
    let mut bridge = endpoint("bridge");
    bridge.static_ip = true;
    bridge.ip = Some(net("10.78.1.2/24"));
    bridge.network.gateway = net("10.78.1.1/24");
    bridge.network.default = true;
    let mut mgmt = endpoint("mgmt");
    mgmt.internal = true;
    mgmt.static_ip = true;
    mgmt.ip = Some(net("10.78.2.2/24"));
    mgmt.network.gateway = net("10.78.2.1/24");
    mgmt.network.destinations = vec![net("198.51.100.0/24")];
    mgmt.network.nameservers = vec!["10.78.2.53".parse().unwrap()];
    cfg.networks.insert("bridge".into(), bridge);
    cfg.networks.insert("mgmt".into(), mgmt);
    let (h, mut child) = lab.tether(&cfg);
    assert_eq!(finish(&h, &mut child), 0, "{}", h.debug_text());
    assert_eq!(
        h.output(Stream::Stdout),
        "alias bridge\n10.78.2.2/24\n10.78.1.2/24\n\
         10.78.1.0/24 dev mgmt proto kernel scope link src 10.78.1.2 \n\
         10.78.2.0/24 dev mgmt proto kernel scope link src 10.78.2.2 \n\
         198.51.100.0/24 via 10.78.2.1 dev mgmt \n\
         default via 10.78.1.1 dev mgmt \n\
         10.78.2.2\tmgmt.localhost\n10.78.1.2\tbridge.localhost\n\
         nameserver 10.78.2.53\nnameserver 10.78.1.1\n",
        "{}",
        h.debug_text()
    );
    let state = h.state();
    assert_eq!(state.networks["bridge"].assigned, net("10.78.1.2/24"));
    assert_eq!(
        state.networks["mgmt"].network.assigned.gateway,
        net("10.78.2.1/24")
    );
}

#[test]
fn a_missing_nic_fails_the_launch_with_the_cause_in_started() {
    let lab = Lab::new();
    let mut cfg = config(&["/bin/echo", "must not run"]);
    let mut e = endpoint("bridge");
    e.common.id = "9".into();
    cfg.networks.insert("bridge".into(), e);
    let (h, mut child) = lab.tether(&cfg);
    assert_eq!(finish(&h, &mut child), 125, "{}", h.debug_text());
    let started = h.state().sessions[ID].started.clone();
    assert!(started.contains("network bridge: "), "{started}");
    assert!(started.contains("slot 9"), "{started}");
    assert_eq!(h.output(Stream::Stdout), "");
}

#[test]
fn no_dhcp_server_fails_the_launch_after_vics_ten_seconds() {
    let lab = Lab::new();
    let mut cfg = config(&["/bin/echo", "must not run"]);
    cfg.networks.insert("public".into(), endpoint("public"));
    let (h, mut child) = lab.tether(&cfg);
    assert_eq!(finish(&h, &mut child), 125, "{}", h.debug_text());
    let started = h.state().sessions[ID].started.clone();
    assert!(
        started.contains("network public: DHCP: no answer"),
        "{started}"
    );
}
