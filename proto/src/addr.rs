//! Addresses as the tools take them: `scheme:REST` (`tcp:HOST:PORT`, `unix:PATH`, ...), and a bare
//! `HOST:PORT`, which is what people type for a TCP address.

/// The schemes the tools know; one of them before the first `:` is always that scheme.
const SCHEMES: [&str; 6] = ["tcp", "unix", "serial", "vsock", "virtio", "file"];

/// `spec` as `(scheme, rest)`: its own scheme, or `tcp` for a bare `HOST:PORT` (`127.0.0.1:2377`,
/// `localhost:2377`, `[::1]:2377`). `None` when it has no `:` at all.
pub fn split(spec: &str) -> Option<(&str, &str)> {
    match spec.split_once(':') {
        Some((scheme, rest)) if SCHEMES.contains(&scheme) => Some((scheme, rest)),
        _ if is_host_port(spec) => Some(("tcp", spec)),
        other => other,
    }
}

/// A host (a name, an IPv4 address or a bracketed IPv6 one) and a numeric port.
fn is_host_port(spec: &str) -> bool {
    let Some((host, port)) = spec.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.ends_with(']') && v6.len() > 1,
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_bare_host_and_port_is_tcp() {
        assert_eq!(split("127.0.0.1:2377"), Some(("tcp", "127.0.0.1:2377")));
        assert_eq!(split("localhost:2377"), Some(("tcp", "localhost:2377")));
        assert_eq!(split("[::1]:2377"), Some(("tcp", "[::1]:2377")));
    }

    #[test]
    fn schemes_stay_what_they_are() {
        assert_eq!(split("tcp:127.0.0.1:2377"), Some(("tcp", "127.0.0.1:2377")));
        assert_eq!(split("unix:/run/x.sock"), Some(("unix", "/run/x.sock")));
        assert_eq!(split("serial:/dev/ttyS0"), Some(("serial", "/dev/ttyS0")));
        assert_eq!(split("vsock:2:2377"), Some(("vsock", "2:2377")));
        // A scheme whose rest is a number is still that scheme, not a host.
        assert_eq!(split("unix:42"), Some(("unix", "42")));
        assert_eq!(split("other:/x"), Some(("other", "/x")));
        assert_eq!(split("backdoor"), None);
        assert_eq!(split("/tmp/gi.vmx"), None);
    }
}
