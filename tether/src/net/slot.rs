//! The NIC of an endpoint: VIC's endpoint ID is the vNIC's PCI slot number in decimal, which
//! names where the device sits in sysfs. On bus 0 the slot is the device's own address; past
//! it, the device sits behind the PCI bridge of its bus (VMware's root ports start at 0x11).

use std::path::{Path, PathBuf};

/// Where the device of PCI slot number `slot` is: a device on bus 0, or one behind a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotPath {
    /// `/sys/bus/pci/devices/<this>`.
    Root(String),
    /// Under the bridge `/sys/bus/pci/devices/<bridge>`, the child whose address ends in
    /// `:<device>.0`.
    Bridged { bridge: String, device: String },
}

/// VIC's decoding of a slot number: device in bits 0-4, bus in 5-9, function in 10-12.
pub fn slot_path(slot: u32) -> SlotPath {
    let (dev, bus, func) = (slot & 0x1f, (slot >> 5) & 0x1f, (slot >> 10) & 7);
    if bus == 0 {
        return SlotPath::Root(format!("0000:00:{dev:02x}.{func}"));
    }
    SlotPath::Bridged {
        bridge: format!("0000:00:{:02x}.{func}", 0x11 + bus - 1),
        device: format!("{dev:02x}.0"),
    }
}

/// The network interface of the vNIC in `slot`, under `sys` (`/sys`): the one entry of the
/// device's `net/`. Fails, saying what it found, when the slot holds no device or not exactly
/// one interface.
pub fn interface(sys: &Path, slot: u32) -> Result<String, String> {
    let devices = sys.join("bus/pci/devices");
    let device: PathBuf = match slot_path(slot) {
        SlotPath::Root(addr) => devices.join(addr),
        SlotPath::Bridged { bridge, device } => {
            let under = devices.join(&bridge);
            let children: Vec<PathBuf> = std::fs::read_dir(&under)
                .map_err(|e| format!("no PCI bridge {bridge} for slot {slot}: {e}"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("0000:") && n.ends_with(&format!(":{device}"))
                    })
                })
                .collect();
            match children.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(format!(
                        "no device {device} behind PCI bridge {bridge} (slot {slot})"
                    ))
                }
                _ => {
                    return Err(format!(
                        "several devices {device} behind PCI bridge {bridge} (slot {slot})"
                    ))
                }
            }
        }
    };
    // A virtio NIC's interface sits one level down, under its virtio device (`virtioN/net`).
    let virtio_net = || {
        std::fs::read_dir(&device)
            .ok()?
            .flatten()
            .map(|e| e.path().join("net"))
            .find(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with("virtio"))
                    && p.is_dir()
            })
    };
    let direct = device.join("net");
    let net = match direct.is_dir() {
        true => direct,
        false => virtio_net().unwrap_or(direct),
    };
    let names: Vec<String> = std::fs::read_dir(&net)
        .map_err(|e| {
            format!(
                "slot {slot}: {} has no network interface: {e}",
                device.display()
            )
        })?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "slot {slot}: {} has {} network interfaces ({}), not one",
            device.display(),
            names.len(),
            names.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vics_table_of_slots() {
        let root = |a: &str| SlotPath::Root(a.into());
        let bridged = |b: &str, d: &str| SlotPath::Bridged {
            bridge: b.into(),
            device: d.into(),
        };
        assert_eq!(slot_path(0), root("0000:00:00.0"));
        assert_eq!(slot_path(32), bridged("0000:00:11.0", "00.0"));
        assert_eq!(slot_path(33), bridged("0000:00:11.0", "01.0"));
        assert_eq!(slot_path(192), bridged("0000:00:16.0", "00.0"));
        assert_eq!(slot_path(1184), bridged("0000:00:15.1", "00.0"));
        assert_eq!(slot_path(1216), bridged("0000:00:16.1", "00.0"));
        assert_eq!(slot_path(1248), bridged("0000:00:17.1", "00.0"));
        assert_eq!(slot_path(1280), bridged("0000:00:18.1", "00.0"));
        // QEMU's NICs sit on bus 0: slot 5 is 00:05.0.
        assert_eq!(slot_path(5), root("0000:00:05.0"));
    }

    #[test]
    fn the_interface_is_found_on_bus_0_and_behind_a_bridge_or_the_failure_says_why() {
        let t = tempfile::tempdir().unwrap();
        let devices = t.path().join("bus/pci/devices");
        std::fs::create_dir_all(devices.join("0000:00:05.0/net/eth0")).unwrap();
        std::fs::create_dir_all(devices.join("0000:00:16.0/0000:0b:00.0/net/ens192")).unwrap();
        std::fs::create_dir_all(devices.join("0000:00:16.0/power")).unwrap();
        std::fs::create_dir_all(devices.join("0000:00:07.0/net/a")).unwrap();
        std::fs::create_dir_all(devices.join("0000:00:07.0/net/b")).unwrap();
        assert_eq!(interface(t.path(), 5).as_deref(), Ok("eth0"));
        assert_eq!(interface(t.path(), 192).as_deref(), Ok("ens192"));
        // A virtio NIC (QEMU): the interface under the virtio device.
        std::fs::create_dir_all(devices.join("0000:00:10.0/virtio2/net/eth1")).unwrap();
        std::fs::create_dir_all(devices.join("0000:00:10.0/msi_irqs")).unwrap();
        assert_eq!(interface(t.path(), 16).as_deref(), Ok("eth1"));
        let missing = interface(t.path(), 6).unwrap_err();
        assert!(
            missing.contains("slot 6") && missing.contains("0000:00:06.0"),
            "{missing}"
        );
        let no_bridge = interface(t.path(), 32).unwrap_err();
        assert!(
            no_bridge.contains("no PCI bridge 0000:00:11.0"),
            "{no_bridge}"
        );
        let two = interface(t.path(), 7).unwrap_err();
        assert!(two.contains("2 network interfaces"), "{two}");
    }
}
