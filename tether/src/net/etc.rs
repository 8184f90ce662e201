//! The container's name and name resolution as VIC's tether writes them: the hostname rule, the
//! tether's own `/etc/hosts` (the image's, with the localhost set, the hostname and every
//! network's `<network>.localhost` added) and `resolv.conf` (built fresh). Text only: writing
//! the files and mounting them over the image's is the caller's.

use std::net::IpAddr;

use tether_proto::config::ExecutorConfig;

/// VIC's rule: `Hostname.Domainname` when both are set, else `Hostname`, else the first 12
/// characters of the container's ID.
pub fn hostname(cfg: &ExecutorConfig) -> String {
    match (cfg.hostname.as_str(), cfg.domainname.as_str()) {
        ("", _) => cfg.common.id.chars().take(12).collect(),
        (h, "") => h.to_string(),
        (h, d) => format!("{h}.{d}"),
    }
}

/// The localhost set every container's `/etc/hosts` has (VIC's, as docker's).
const LOCALHOST: [(&str, &[&str]); 6] = [
    (
        "127.0.0.1",
        &[
            "localhost",
            "localhost4",
            "localhost.localdomain",
            "localhost4.localdomain4",
        ],
    ),
    (
        "::1",
        &[
            "ip6-localhost",
            "localhost",
            "localhost.localdomain",
            "localhost6.localdomain6",
            "ip6-loopback",
        ],
    ),
    ("fe00::0", &["ip6-localnet"]),
    ("ff00::0", &["ip6-mcastprefix"]),
    ("ff02::1", &["ip6-allnodes"]),
    ("ff02::2", &["ip6-allrouters"]),
];

/// One line of a hosts file: an address, its names and the line's text while nothing was added
/// to it; or a line kept as it is (a comment, a blank or malformed line).
enum Line {
    Entry(String, Vec<String>, Option<String>),
    Other(String),
}

/// `/etc/hosts`: the image's `image` text with, where missing, the localhost set, `hostname`
/// (and the container's `name`, when it has one) on 127.0.1.1 and ::1, and each
/// `(network, address)` as `<network>.localhost`. The image's own lines stay as they are.
pub fn hosts(image: &str, hostname: &str, name: &str, networks: &[(String, IpAddr)]) -> String {
    let mut lines: Vec<Line> = image
        .lines()
        .map(|l| {
            let body = l.split('#').next().unwrap_or("");
            let mut words = body.split_whitespace();
            match (words.next(), words.clone().next()) {
                (Some(ip), Some(_)) if ip.parse::<IpAddr>().is_ok() => Line::Entry(
                    ip.to_string(),
                    words.map(str::to_string).collect(),
                    Some(l.to_string()),
                ),
                _ => Line::Other(l.to_string()),
            }
        })
        .collect();
    let mut wanted: Vec<(String, String)> = LOCALHOST
        .iter()
        .flat_map(|(ip, names)| names.iter().map(|n| (ip.to_string(), n.to_string())))
        .collect();
    for n in [hostname, name].into_iter().filter(|n| !n.is_empty()) {
        wanted.push(("127.0.1.1".into(), n.to_string()));
        wanted.push(("::1".into(), n.to_string()));
    }
    for (network, ip) in networks {
        wanted.push((ip.to_string(), format!("{network}.localhost")));
    }
    for (ip, name) in wanted {
        let same = |a: &str| a.parse::<IpAddr>().ok() == ip.parse::<IpAddr>().ok();
        let present = lines.iter().any(|l| match l {
            Line::Entry(a, names, _) => same(a) && names.contains(&name),
            Line::Other(_) => false,
        });
        if present {
            continue;
        }
        match lines.iter_mut().find_map(|l| match l {
            Line::Entry(a, names, text) if same(a) => Some((names, text)),
            _ => None,
        }) {
            Some((names, text)) => {
                names.push(name);
                *text = None;
            }
            None => lines.push(Line::Entry(ip, vec![name], None)),
        }
    }
    let mut out = String::new();
    for l in lines {
        match l {
            Line::Entry(_, _, Some(text)) | Line::Other(text) => {
                out.push_str(&text);
                out.push('\n');
            }
            Line::Entry(ip, names, None) => out.push_str(&format!("{ip}\t{}\n", names.join(" "))),
        }
    }
    out
}

/// `resolv.conf`: each nameserver once, in order, then VIC's options.
pub fn resolv_conf(nameservers: &[IpAddr]) -> String {
    let mut seen = Vec::new();
    let mut out = String::new();
    for ns in nameservers {
        // The 16-byte form VIC writes for an IPv4 address is that address.
        let ns = match ns {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(*v6), IpAddr::V4),
            v4 => *v4,
        };
        if !seen.contains(&ns) {
            seen.push(ns);
            out.push_str(&format!("nameserver {ns}\n"));
        }
    }
    out.push_str("options timeout:15\noptions attempts:5\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hostname_follows_vics_rule() {
        let mut c = ExecutorConfig::default();
        c.common.id = "0123456789abcdef0123".into();
        assert_eq!(hostname(&c), "0123456789ab");
        c.hostname = "web".into();
        assert_eq!(hostname(&c), "web");
        c.domainname = "example.com".into();
        assert_eq!(hostname(&c), "web.example.com");
        c.hostname.clear();
        assert_eq!(hostname(&c), "0123456789ab", "a domain alone is no name");
    }

    #[test]
    fn hosts_keeps_the_image_and_adds_what_is_missing_once() {
        let image = "# the image's\n127.0.0.1\tlocalhost\n10.1.2.3 db  # a comment\nnot an entry\n";
        let nets = vec![("bridge".to_string(), "172.16.0.2".parse().unwrap())];
        let out = hosts(image, "web", "", &nets);
        assert!(
            out.starts_with("# the image's\n127.0.0.1\tlocalhost localhost4 "),
            "{out}"
        );
        assert!(
            out.contains("10.1.2.3 db  # a comment\n"),
            "untouched lines stay: {out}"
        );
        assert!(out.contains("not an entry\n"), "{out}");
        assert!(out.contains("127.0.1.1\tweb\n"), "{out}");
        assert!(
            out.contains("::1\tip6-localhost localhost localhost.localdomain localhost6.localdomain6 ip6-loopback web\n"),
            "{out}"
        );
        assert!(out.contains("ff02::2\tip6-allrouters\n"), "{out}");
        assert!(out.contains("172.16.0.2\tbridge.localhost\n"), "{out}");
        assert_eq!(out.matches("localhost4.localdomain4").count(), 1);
        // Applied again (a renewal re-applies the endpoint) it changes nothing.
        assert_eq!(hosts(&out, "web", "", &nets), out);
        // The container's name beside the hostname.
        let named = hosts("", "web", "frontend", &[]);
        assert!(named.contains("127.0.1.1\tweb frontend\n"), "{named}");
    }

    #[test]
    fn resolv_conf_lists_each_nameserver_once_then_vics_options() {
        let ns: Vec<IpAddr> = ["::ffff:8.8.8.8", "8.8.8.8", "10.0.2.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            resolv_conf(&ns),
            "nameserver 8.8.8.8\nnameserver 10.0.2.3\noptions timeout:15\noptions attempts:5\n"
        );
    }
}
