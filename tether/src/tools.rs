//! The wiring of the embedded VMware Tools: the toolbox's view of the running container (its
//! ID and volumes from the config, its sessions from the agent's registry, reload and halt as the
//! agent's events) and its channel through the guestinfo transport, on a thread of its own.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use tether_proto::config::ExecutorConfig;
use tokio::sync::mpsc;

use crate::agent::Event;
use crate::guestinfo::Guestinfo;
use crate::session::Registry;
use crate::toolbox::{tclo, Container, Out, Toolbox};

/// The container's ID, its primary session, its volumes' labels.
#[derive(Clone)]
struct Facts {
    id: String,
    primary: Option<String>,
    labels: Vec<String>,
}

/// What the toolbox knows of the config ([`Facts`]), updated at every config read; nothing
/// before the first.
#[derive(Default, Clone)]
pub struct Known(Arc<Mutex<Option<Facts>>>);

impl Known {
    pub fn update(&self, cfg: &ExecutorConfig) {
        let primary = cfg.primary_id().map(str::to_string);
        let labels = cfg
            .mounts
            .values()
            .filter_map(crate::volume::label)
            .collect();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Facts {
            id: cfg.common.id.clone(),
            primary,
            labels,
        });
    }

    fn get(&self) -> Option<Facts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct Live {
    known: Known,
    registry: Registry,
    events: mpsc::UnboundedSender<Event>,
}

impl Container for Live {
    fn id(&self) -> Option<String> {
        self.known.get().map(|f| f.id)
    }

    fn volume_labels(&self) -> Vec<String> {
        self.known.get().map(|f| f.labels).unwrap_or_default()
    }

    fn signal(&self, sig: Signal, group: bool) -> Result<(), String> {
        let primary = self
            .known
            .get()
            .and_then(|f| f.primary)
            .ok_or("no primary session")?;
        let session = self
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&primary)
            .cloned()
            .ok_or("the primary session has not started")?;
        let r = if group {
            session.signal_group(sig as i32)
        } else {
            session.signal(sig as i32)
        };
        r.map_err(|e| format!("signalling {primary}: {e}"))
    }

    fn reload(&self) {
        let _ = self.events.send(Event::Reload);
    }

    fn halt(&self) {
        let _ = self
            .events
            .send(Event::Stop("OS_Halt from the host's tools".into()));
    }

    fn nics(&self) -> Vec<crate::toolbox::nicinfo::Nic> {
        // A MAC from each interface's link-layer address, then its addresses with their masks.
        let Ok(all) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        let all: Vec<_> = all.collect();
        let mut nics: Vec<crate::toolbox::nicinfo::Nic> = Vec::new();
        for a in &all {
            let Some(mac) = a.address.as_ref().and_then(|s| s.as_link_addr()?.addr()) else {
                continue;
            };
            if a.interface_name == "lo" || mac == [0; 6] {
                continue;
            }
            let addresses = all
                .iter()
                .filter(|b| b.interface_name == a.interface_name)
                .filter_map(|b| {
                    let ip = b.address.as_ref()?.as_sockaddr_in()?.ip();
                    let mask = b.netmask.as_ref()?.as_sockaddr_in()?.ip();
                    Some((
                        std::net::IpAddr::V4(ip),
                        u32::from(mask).leading_ones() as u8,
                    ))
                })
                .collect();
            let mac = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            nics.push(crate::toolbox::nicinfo::Nic { mac, addresses });
        }
        nics
    }

    fn network_changes(&self) -> u64 {
        crate::net::changes()
    }

    fn primary_ip(&self) -> Option<String> {
        nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback()).then(|| ip.to_string())
        })
    }
}

/// The TCLO channel through the guestinfo thread.
struct Line(Guestinfo);

impl tclo::Line for Line {
    fn poll(&mut self, reply: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.tclo_blocking(reply.to_vec())
    }
}

struct RpciOut(Guestinfo);

impl Out for RpciOut {
    fn send(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        self.0
            .rpci_blocking(request.to_vec())?
            .ok_or_else(|| "this transport has no RPCI channel".to_string())
    }
}

/// Starts the toolbox's thread; it ends when `stop` is set or the transport has no TCLO channel.
pub fn start(
    gi: Guestinfo,
    known: Known,
    registry: Registry,
    events: mpsc::UnboundedSender<Event>,
    stop: Arc<AtomicBool>,
) {
    let spawned = std::thread::Builder::new()
        .name("toolbox".into())
        .spawn(move || {
            let container = Live {
                known,
                registry,
                events,
            };
            let mut toolbox = Toolbox::new(container, Box::new(RpciOut(gi.clone())));
            let mut line = Line(gi);
            tclo::run(&mut line, &mut toolbox, &stop, &std::thread::sleep);
        });
    if let Err(e) = spawned {
        tracing::warn!("toolbox: {e}");
    }
}
