use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::extraconfig::KeyValues;
use crate::guestinfo::vmx;

/// Reference section 2.4: real VIC encoder output (abbreviated there; the `pools` count that the
/// abbreviation dropped is restored, since the element is unreachable without it).
const WORKED_EXAMPLE: &str = include_str!("../../tests/data/vic-worked-example.txt");

fn worked_example() -> Vec<(String, String)> {
    vmx::parse(WORKED_EXAMPLE).unwrap()
}

#[test]
fn worked_example_decodes() {
    let mut kv: KeyValues = worked_example().into_iter().collect();
    let (cfg, warnings) = ExecutorConfig::decode(&mut kv).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cfg.common.id, "deadbeef0123456789");
    assert_eq!(cfg.debug_level, 1);
    assert_eq!(cfg.hostname, "host");
    assert!(String::from_utf8_lossy(&cfg.key.0).starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let s = &cfg.sessions["deadbeef0123456789"];
    assert_eq!(s.cmd.path, "/bin/sh");
    assert_eq!(s.cmd.args, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(s.cmd.env, ["PATH=/bin", "TERM=xterm"]);
    assert_eq!(s.cmd.dir, "/");
    assert!(s.tty && s.active && s.attach && s.run_block);
    assert_eq!((s.started.as_str(), s.exit_status), ("true", 3));
    assert_eq!(
        (s.detail.start_time, s.diagnostics.resurrection_count),
        (200, 2)
    );
    assert_eq!(s.diagnostics.syslog.as_ref().unwrap().network, "udp");
    assert_eq!(s.stop_signal, "SIGTERM");
    let e = &cfg.execs["execid1"];
    assert_eq!(e.cmd.args, ["/bin/ls"]);
    assert_eq!(e.started, "true");
    assert_eq!(cfg.mounts["vol1"].source.scheme, "label");
    assert_eq!(cfg.mounts["vol1"].path, "/data");
    assert_eq!(cfg.mounts["vol1"].copy_mode, 2);
    assert_eq!(cfg.mounts["nfs1"].mode, "rw,addr=nfshost");
    let n = &cfg.networks["bridge"];
    assert_eq!(n.common.id, "192");
    assert_eq!(
        n.ip.as_ref().unwrap().ip,
        Some("172.16.0.2".parse().unwrap())
    );
    assert_eq!(
        n.ip.as_ref().unwrap().mask,
        Some("255.255.0.0".parse().unwrap())
    );
    assert_eq!(
        n.network.nameservers,
        ["::ffff:8.8.8.8".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        n.network.pools[0].first,
        Some("172.16.0.0".parse().unwrap())
    );
    assert_eq!(n.network.network_type, "bridge");
    assert_eq!(n.ports, ["80:8080/tcp", "53/udp"]);
    assert_eq!(n.assigned.ip, Some("172.16.0.2".parse().unwrap()));
}

#[test]
fn worked_example_re_encodes_line_for_line() {
    let lines = worked_example();
    let mut kv: KeyValues = lines.iter().cloned().collect();
    let (cfg, _) = ExecutorConfig::decode(&mut kv).unwrap();
    let out = cfg.encode();
    let mut covered = 0;
    for (key, value) in &lines {
        // Hidden keys (no `guestinfo.` prefix) never reach the guest and are not in the model.
        if !key.starts_with("guestinfo.") {
            assert!(!out.contains_key(key));
            continue;
        }
        assert_eq!(out.get(key), Some(value), "{key}");
        covered += 1;
    }
    assert_eq!(covered, lines.len() - 2);
}

#[test]
fn network_aliases_travel_in_vics_hidden_keys() {
    let mut kv: KeyValues = [
        ("guestinfo.vice./networks", "bridge"),
        ("guestinfo.vice./networks|bridge/Common/id", "192"),
        ("networks|bridge/network/aliases", "1"),
        ("networks|bridge/network/aliases~", "db|cache"),
    ]
    .into_iter()
    .collect();
    let (cfg, _) = ExecutorConfig::decode(&mut kv).unwrap();
    assert_eq!(cfg.networks["bridge"].network.aliases, ["db", "cache"]);
    let out = cfg.encode();
    assert_eq!(
        out.get("networks|bridge/network/aliases~")
            .map(String::as_str),
        Some("db|cache")
    );
    assert_eq!(
        out.get("networks|bridge/network/aliases")
            .map(String::as_str),
        Some("1")
    );
    // The guest writes none of them back.
    assert!(cfg.networks["bridge"]
        .state("bridge")
        .iter()
        .all(|(k, _)| !k.contains("aliases")));
}

#[test]
fn user_and_group_are_read_in_either_case_and_written_as_the_vch_does() {
    let mut kv: KeyValues = [
        ("guestinfo.vice./sessions", "a"),
        ("guestinfo.vice./sessions|a/user", "nobody"),
        ("guestinfo.vice./sessions|a/group", "nogroup"),
    ]
    .into_iter()
    .collect();
    let (cfg, _) = ExecutorConfig::decode(&mut kv).unwrap();
    assert_eq!(cfg.sessions["a"].user, "nobody");
    assert_eq!(cfg.sessions["a"].group, "nogroup");
    let out = cfg.encode();
    assert_eq!(out["guestinfo.vice./sessions|a/User"], "nobody");
    assert_eq!(out["guestinfo.vice./sessions|a/Group"], "nogroup");
}

#[test]
fn extension_keys_are_written_only_when_set() {
    let mut cfg = ExecutorConfig::default();
    assert!(!cfg.encode().keys().any(|k| k.contains("/tether/")));
    cfg.tether = Some(TetherExtensions {
        debug_shell: true,
        authorized_key: "ssh-ed25519 AAAA".into(),
    });
    let out = cfg.encode();
    assert_eq!(out["guestinfo.vice./tether/debugshell"], "true");
    assert_eq!(
        out["guestinfo.vice./tether/authorizedkey"],
        "ssh-ed25519 AAAA"
    );
}

#[test]
fn session_encoding_uses_the_session_prefix() {
    let s = SessionConfig {
        started: "true".into(),
        ..SessionConfig::default()
    };
    let out = s.encode(SessionKind::Exec, "e1");
    assert_eq!(
        out["guestinfo.vice..execs|e1.started@non-persistent"],
        "true"
    );
    assert!(out
        .keys()
        .all(|k| k.contains("|e1") && k.ends_with("@non-persistent")));
}

#[test]
fn pipe_in_an_argument_survives_our_round_trip() {
    let mut cfg = ExecutorConfig::default();
    cfg.sessions.insert(
        "a".into(),
        SessionConfig {
            cmd: Cmd {
                args: vec!["sh".into(), "-c".into(), "echo a|tr a b".into()],
                ..Cmd::default()
            },
            ..SessionConfig::default()
        },
    );
    let mut kv: KeyValues = cfg.encode().into_iter().collect();
    let (back, _) = ExecutorConfig::decode(&mut kv).unwrap();
    assert_eq!(back.sessions["a"].cmd.args, cfg.sessions["a"].cmd.args);
}

// ---- property: decode(encode(x)) == x over generated configs ----

fn text() -> impl Strategy<Value = String> {
    // Any text but the literal `<nil>`, which VIC's format cannot tell from an empty string.
    "\\PC{0,12}|[|=\" ]{0,4}".prop_filter("<nil> is VIC's empty marker", |s| s != NIL_TEXT)
}

const NIL_TEXT: &str = "<nil>";

fn name() -> impl Strategy<Value = String> {
    // Map names are IDs; guestinfo keys are looked up without regard to case, so names are lower case.
    "[a-z0-9]{1,10}"
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..4)
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn ipnet() -> impl Strategy<Value = IpNet> {
    (prop::option::of(ip()), prop::option::of(ip())).prop_map(|(ip, mask)| IpNet { ip, mask })
}

fn common() -> impl Strategy<Value = Common> {
    (text(), text(), text()).prop_map(|(id, name, execution_environment)| Common {
        id,
        name,
        execution_environment,
    })
}

fn session() -> impl Strategy<Value = SessionConfig> {
    let cmd = (text(), strings(), strings(), text()).prop_map(|(path, args, env, dir)| Cmd {
        path,
        args,
        env,
        dir,
    });
    let exit_log =
        (text(), any::<i32>(), text()).prop_map(|(time, exit_status, message)| ExitLog {
            time,
            exit_status,
            message,
        });
    let diagnostics = (
        any::<i32>(),
        any::<i32>(),
        prop::collection::vec(exit_log, 0..3),
        prop::option::of(
            (text(), text()).prop_map(|(network, raddr)| SyslogConfig { network, raddr }),
        ),
    )
        .prop_map(
            |(debug_level, resurrection_count, exit_logs, syslog)| Diagnostics {
                debug_level,
                resurrection_count,
                exit_logs,
                syslog,
            },
        );
    let detail = any::<(i64, i64, i64)>().prop_map(|(create_time, start_time, stop_time)| Detail {
        create_time,
        start_time,
        stop_time,
    });
    (
        (common(), detail, diagnostics, cmd),
        (
            any::<i32>(),
            text(),
            any::<[bool; 6]>(),
            text(),
            text(),
            text(),
        ),
    )
        .prop_map(
            |(
                (common, detail, diagnostics, cmd),
                (exit_status, started, b, stop_signal, user, group),
            )| {
                SessionConfig {
                    common,
                    detail,
                    diagnostics,
                    cmd,
                    exit_status,
                    started,
                    attach: b[0],
                    open_stdin: b[1],
                    run_block: b[2],
                    active: b[3],
                    tty: b[4],
                    restart: b[5],
                    stop_signal,
                    user,
                    group,
                }
            },
        )
}

fn mount() -> impl Strategy<Value = MountSpec> {
    let url = (
        (text(), text(), text(), text()),
        (text(), any::<bool>(), text(), text()),
    )
        .prop_map(
            |((scheme, opaque, host, path), (raw_path, force_query, raw_query, fragment))| Url {
                scheme,
                opaque,
                host,
                path,
                raw_path,
                force_query,
                raw_query,
                fragment,
            },
        );
    (url, text(), text(), any::<i32>()).prop_map(|(source, path, mode, copy_mode)| MountSpec {
        source,
        path,
        mode,
        copy_mode,
    })
}

fn endpoint() -> impl Strategy<Value = NetworkEndpoint> {
    let range = (prop::option::of(ip()), prop::option::of(ip()))
        .prop_map(|(first, last)| IpRange { first, last });
    let network = (
        (
            common(),
            text(),
            prop::collection::vec(ipnet(), 0..3),
            ipnet(),
        ),
        (
            any::<bool>(),
            prop::collection::vec(ip(), 0..3),
            prop::collection::vec(range, 0..3),
            any::<i32>(),
        ),
        (
            ipnet(),
            prop::collection::vec(ip(), 0..3),
            prop::collection::vec(text(), 0..3),
        ),
    )
        .prop_map(
            |(
                (common, network_type, destinations, gateway),
                (default, nameservers, pools, trust_level),
                (agw, adns, aliases),
            )| {
                ContainerNetwork {
                    common,
                    network_type,
                    destinations,
                    gateway,
                    default,
                    nameservers,
                    pools,
                    trust_level,
                    assigned: NetworkAssigned {
                        gateway: agw,
                        nameservers: adns,
                    },
                    aliases,
                }
            },
        );
    // An `ip` with neither address writes no key, so it reads back absent: generate only real ones.
    let ip_opt = prop::option::of(
        (ip(), prop::option::of(ip())).prop_map(|(ip, mask)| IpNet { ip: Some(ip), mask }),
    );
    (
        common(),
        any::<bool>(),
        ip_opt,
        ipnet(),
        network,
        strings(),
        any::<bool>(),
    )
        .prop_map(
            |(common, static_ip, ip, assigned, network, ports, internal)| NetworkEndpoint {
                common,
                static_ip,
                ip,
                assigned,
                network,
                ports,
                internal,
            },
        )
}

fn config() -> impl Strategy<Value = ExecutorConfig> {
    (
        (
            common(),
            any::<i32>(),
            prop::collection::btree_map(name(), session(), 0..3),
        ),
        (
            prop::collection::btree_map(name(), session(), 0..3),
            prop::collection::btree_map(name(), mount(), 0..3),
            prop::collection::btree_map(name(), endpoint(), 0..3),
        ),
        (
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
            text(),
            text(),
        ),
        prop::option::of(
            (any::<bool>(), text()).prop_map(|(debug_shell, authorized_key)| TetherExtensions {
                debug_shell,
                authorized_key,
            }),
        ),
    )
        .prop_map(
            |(
                (common, debug_level, sessions),
                (execs, mounts, networks),
                (key, asymmetric_routing, hostname, domainname),
                tether,
            )| {
                ExecutorConfig {
                    common,
                    debug_level,
                    sessions,
                    execs,
                    mounts,
                    networks,
                    key: Bytes(key),
                    asymmetric_routing,
                    hostname,
                    domainname,
                    tether,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_decode_is_identity(cfg in config()) {
        let mut kv: KeyValues = cfg.encode().into_iter().collect();
        let (back, warnings) = ExecutorConfig::decode(&mut kv).unwrap();
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
        prop_assert_eq!(back, cfg);
    }

    #[test]
    fn encode_survives_the_vmx_file_format(cfg in config()) {
        let out = cfg.encode();
        let text = vmx::render(out.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let parsed: BTreeMap<String, String> = vmx::parse(&text).unwrap().into_iter().collect();
        prop_assert_eq!(parsed, out);
    }

    #[test]
    fn decoder_is_total(pairs in prop::collection::vec(
        (prop::sample::select(vec![
            "guestinfo.vice./sessions", "guestinfo.vice./sessions|a/cmd/Args", "guestinfo.vice./sessions|a/cmd/Args~",
            "guestinfo.vice./sessions|a/cmd/Args~b64", "guestinfo.vice..sessions|a.status", "guestinfo.vice./key",
            "guestinfo.vice./networks", "guestinfo.vice./networks|a/network/dns", "guestinfo.vice./networks|a/network/dns|0",
            "guestinfo.vice./networks|a/ip/IP", "guestinfo.vice./sessions|a/tty",
        ]), "\\PC{0,10}|[0-9|]{0,6}"),
        0..12,
    )) {
        let mut kv: KeyValues = pairs.into_iter().collect();
        let _ = ExecutorConfig::decode(&mut kv);
    }
}

#[test]
fn an_ipnet_from_a_prefix_and_back() {
    let v4 = IpNet::with_prefix("10.0.2.15".parse().unwrap(), 24);
    assert_eq!(v4.mask, Some("255.255.255.0".parse().unwrap()));
    assert_eq!(v4.prefix(), Some(24));
    assert_eq!(
        IpNet::with_prefix("10.0.2.15".parse().unwrap(), 0).prefix(),
        Some(0)
    );
    let v6 = IpNet::with_prefix("fd00::1".parse().unwrap(), 64);
    assert_eq!(v6.prefix(), Some(64));
    // A v4 mask written by Go in 16-byte form.
    let go = IpNet {
        ip: Some("172.16.0.2".parse().unwrap()),
        mask: Some("::ffff:255.255.0.0".parse().unwrap()),
    };
    assert_eq!(go.prefix(), Some(16));
    assert_eq!(IpNet::default().prefix(), None);
}

#[test]
fn execs_the_host_removed_are_forgotten_on_the_next_read() {
    let exec = |path: &str| SessionConfig {
        cmd: Cmd {
            path: path.into(),
            ..Cmd::default()
        },
        ..SessionConfig::default()
    };
    let mut cfg = ExecutorConfig::default();
    cfg.common.id = "c".into();
    cfg.sessions.insert("c".into(), exec("/bin/sleep"));
    cfg.execs.insert("old".into(), exec("/bin/true"));
    cfg.execs.insert("kept".into(), exec("/bin/false"));
    let mut kv: KeyValues = cfg.encode().into_iter().collect();
    let (mut read, _) = ExecutorConfig::decode(&mut kv).unwrap();
    // The host removes `old` (its keys and its name in the list): merging alone keeps it, as
    // VIC's decoder does; forgetting the unlisted drops it and nothing else.
    cfg.execs.remove("old");
    let mut kv: KeyValues = cfg.encode().into_iter().collect();
    read.decode_from(&mut kv).unwrap();
    assert!(read.execs.contains_key("old"));
    read.forget_unlisted_execs(&mut kv).unwrap();
    assert_eq!(read.execs.keys().collect::<Vec<_>>(), ["kept"]);
    assert_eq!(read.sessions.len(), 1);
    // No exec left at all: the list key is gone too, and so are they.
    cfg.execs.clear();
    let mut kv: KeyValues = cfg.encode().into_iter().collect();
    read.decode_from(&mut kv).unwrap();
    read.forget_unlisted_execs(&mut kv).unwrap();
    assert!(read.execs.is_empty());
}
