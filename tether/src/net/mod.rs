//! Networking: the container's identity (hostname, `/etc/hosts`, `resolv.conf`: [`etc`],
//! [`identity`]), its NICs found by PCI slot ([`slot`]) and configured from VIC's endpoint keys
//! ([`endpoint`], through [`link`]), the DHCP client ([`dhcp`]) and the leases kept while the
//! container runs ([`Network`]).
//!
//! Owns: network interfaces, the tether's copies of `/etc/hosts` and `resolv.conf`, the leases.
//! Uses: `sys`. Must not touch sessions or guestinfo: the wiring brings the network up before the
//! primary's launch, tells the launch the outcome and publishes the keys this hands it.

pub mod dhcp;
pub mod endpoint;
pub mod etc;
pub mod identity;
pub mod link;
pub mod slot;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_proto::config::ExecutorConfig;

use endpoint::{Dhcp, Find, Nic};
use identity::Identity;
use link::Links;

/// Counts the changes of the container's addresses (bring-up, each new lease), so that the
/// tools report the NICs again.
static CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times the addresses have changed so far.
pub fn changes() -> u64 {
    CHANGES.load(std::sync::atomic::Ordering::Relaxed)
}

fn changed() {
    CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Where the container's `/etc` is, and the tether's own copies of its files.
#[derive(Debug, Clone)]
pub struct EtcPaths {
    pub etc: PathBuf,
    pub own: PathBuf,
}

/// Receives the keys to write back (each endpoint's read-write fields).
pub type Publish = Box<dyn Fn(Vec<(String, String)>) + Send>;

/// The network as configured, and its leases while the container runs.
pub struct Network {
    cfg: ExecutorConfig,
    nics: Vec<Nic>,
    paths: EtcPaths,
    publish: Publish,
    /// Set at shutdown: leases are given back and no longer renewed.
    released: bool,
}

/// Every endpoint's read-write keys.
pub fn state_keys(cfg: &ExecutorConfig) -> Vec<(String, String)> {
    cfg.networks
        .iter()
        .flat_map(|(name, e)| e.state(name))
        .collect()
}

impl Network {
    /// Configures the NICs of `cfg`'s endpoints, then the identity (whose name servers may have
    /// come from DHCP), and publishes what each endpoint got. Fails with the first cause.
    pub fn bring_up(
        mut cfg: ExecutorConfig,
        find: &Find,
        links: &mut dyn Links,
        dhcp: &mut dyn Dhcp,
        paths: EtcPaths,
        publish: Publish,
    ) -> Result<Arc<Mutex<Self>>, String> {
        let nics = endpoint::configure(&mut cfg, find, links, dhcp)?;
        let net = Self {
            cfg,
            nics,
            paths,
            publish,
            released: false,
        };
        net.identity()?;
        (net.publish)(state_keys(&net.cfg));
        changed();
        Ok(Arc::new(Mutex::new(net)))
    }

    /// The config with what the endpoints got.
    pub fn config(&self) -> &ExecutorConfig {
        &self.cfg
    }

    fn identity(&self) -> Result<(), String> {
        let id = Identity::from_config(&self.cfg);
        identity::apply(&id, &self.paths.etc, &self.paths.own)?;
        tracing::info!(
            "hostname {:?}, name servers {:?}",
            id.hostname,
            id.nameservers
        );
        Ok(())
    }

    /// Whether any NIC holds a lease to keep.
    pub fn has_leases(&self) -> bool {
        self.nics.iter().any(|n| n.dhcp.is_some())
    }

    /// Gives every lease back (at shutdown); later renewals are skipped.
    pub fn release(&mut self) {
        self.released = true;
        for nic in &self.nics {
            if let Some((client, lease, _)) = &nic.dhcp {
                match client.release(lease) {
                    Ok(()) => tracing::info!("DHCP: released {} on {}", lease.address, nic.name),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
    }

    /// The next lease to attend to: (NIC, when, what to do).
    fn next(&self, failures: &[Option<Instant>]) -> Option<(usize, Instant, Step)> {
        self.nics
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let (_, lease, got) = n.dhcp.as_ref()?;
                let (step, at) = step_at(lease, *got, failures.get(i).copied().flatten());
                Some((i, at, step))
            })
            .min_by_key(|(_, at, _)| *at)
    }

    /// A new lease for NIC `i`: the endpoints on it applied again, the identity rewritten and
    /// every endpoint's keys published (as VIC does after each renewal).
    fn renewed(
        &mut self,
        i: usize,
        lease: dhcp::Lease,
        links: &mut dyn Links,
    ) -> Result<(), String> {
        let nic = &mut self.nics[i];
        if let Some((_, held, got)) = nic.dhcp.as_mut() {
            *held = lease;
            *got = Instant::now();
        }
        let nic = self.nics[i].clone();
        for key in &nic.endpoints {
            if let Some(e) = self.cfg.networks.get_mut(key) {
                endpoint::apply(links, &nic, e).map_err(|e| format!("network {key}: {e}"))?;
            }
        }
        self.identity()?;
        (self.publish)(state_keys(&self.cfg));
        changed();
        Ok(())
    }
}

/// What a lease needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Ask its server (unicast), from T1.
    Renew,
    /// Ask any server (broadcast), from T2.
    Rebind,
    /// It has run out: start again.
    Obtain,
}

/// The step a lease got at `got` needs, and when: at T1, T2 and expiry; after a failed try,
/// again after half the time left to the next stage but at least a minute (RFC 2131 4.4.5),
/// never past that stage.
fn step_at(lease: &dhcp::Lease, got: Instant, failed: Option<Instant>) -> (Step, Instant) {
    let (t1, t2, end) = (got + lease.renew, got + lease.rebind, got + lease.duration);
    let now = Instant::now();
    let (step, start, until) = if now < t2 {
        (Step::Renew, t1, t2)
    } else if now < end {
        (Step::Rebind, t2, end)
    } else {
        return (
            Step::Obtain,
            failed.map_or(end, |f| f + Duration::from_secs(60)),
        );
    };
    let at = match failed {
        Some(f) if f >= start => {
            let half = until.saturating_duration_since(f) / 2;
            (f + half.max(Duration::from_secs(60))).min(until)
        }
        _ => start,
    };
    (step, at)
}

/// Keeps the leases of `net` until it is released: renews, rebinds and starts again as their
/// times come, applying each new lease. Runs on the calling thread; returns once released (or
/// when there is nothing to keep).
pub fn keep_leases(net: &Arc<Mutex<Network>>, links: &mut dyn Links) {
    let lock = || net.lock().unwrap_or_else(|p| p.into_inner());
    let mut failures: Vec<Option<Instant>> = vec![None; lock().nics.len()];
    loop {
        let next = {
            let n = lock();
            if n.released {
                return;
            }
            n.next(&failures)
        };
        let Some((i, at, step)) = next else {
            return;
        };
        let wait = at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            // Woken early now and then, to notice a release.
            std::thread::sleep(wait.min(Duration::from_secs(1)));
            continue;
        }
        let (client, lease, name) = {
            let n = lock();
            let nic = &n.nics[i];
            let Some((c, l, _)) = nic.dhcp.clone() else {
                continue;
            };
            (c, l, nic.name.clone())
        };
        let result = match step {
            Step::Renew => client.extend(&lease, false),
            Step::Rebind => client.extend(&lease, true),
            Step::Obtain => client.obtain(),
        };
        let mut n = lock();
        if n.released {
            return;
        }
        match result {
            Ok(new) => {
                tracing::info!(
                    "DHCP: {step:?} on {name}: {}/{} for {:?}",
                    new.address,
                    new.prefix,
                    new.duration
                );
                failures[i] = None;
                if let Err(e) = n.renewed(i, new, links) {
                    tracing::error!("applying the new lease on {name}: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("{step:?} on {name}: {e}");
                failures[i] = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> dhcp::Lease {
        dhcp::Lease {
            address: "10.0.0.5".parse().unwrap(),
            prefix: 24,
            routers: vec![],
            dns: vec![],
            server: "10.0.0.1".parse().unwrap(),
            duration: Duration::from_secs(800),
            renew: Duration::from_secs(400),
            rebind: Duration::from_secs(700),
        }
    }

    #[test]
    fn a_lease_is_renewed_at_t1_rebound_at_t2_and_obtained_again_at_its_end() {
        let l = lease();
        let now = Instant::now();
        assert_eq!(step_at(&l, now, None), (Step::Renew, now + l.renew));
        // After a failed renewal at T1: half the way to T2.
        let got = now - Duration::from_secs(400);
        let (step, at) = step_at(&l, got, Some(now));
        assert_eq!(step, Step::Renew);
        assert_eq!(at, now + Duration::from_secs(150));
        // Close to T2: at least a minute later, but not past T2.
        let got = now - Duration::from_secs(690);
        assert_eq!(step_at(&l, got, Some(now)), (Step::Renew, got + l.rebind));
        let got = now - Duration::from_secs(750);
        assert_eq!(step_at(&l, got, None), (Step::Rebind, got + l.rebind));
        let got = now - Duration::from_secs(900);
        assert_eq!(step_at(&l, got, None), (Step::Obtain, got + l.duration));
    }

    #[test]
    fn the_state_keys_are_vics_read_write_endpoint_keys() {
        let mut cfg = ExecutorConfig::default();
        let mut e = tether_proto::config::NetworkEndpoint::default();
        e.common.id = "192".into();
        e.assigned.ip = Some("172.16.0.2".parse().unwrap());
        e.network.network_type = "bridge".into();
        e.network.assigned.nameservers = vec!["10.0.0.53".parse().unwrap()];
        cfg.networks.insert("bridge".into(), e);
        let keys: std::collections::BTreeMap<String, String> =
            state_keys(&cfg).into_iter().collect();
        assert!(
            keys.contains_key("guestinfo.vice..networks|bridge.assigned.IP"),
            "{keys:?}"
        );
        assert_eq!(
            keys.get("guestinfo.vice..networks|bridge.network.type")
                .map(String::as_str),
            Some("bridge")
        );
        assert!(
            keys.contains_key("guestinfo.vice..networks|bridge.network.assigned.dns|0"),
            "{keys:?}"
        );
        assert!(keys.keys().all(|k| !k.contains('/')), "{keys:?}");
    }
}
