//! QEMU for a containerVM, shaped like VIC's VM: COM1 a network serial port on which the VM is
//! the TCP client of the host (attach), COM2 the `tether.debug` file, COM3 the `output.log` file,
//! the container's disk on a pvscsi controller, bootstrap.iso on the CD-ROM (or the kernel and
//! initramfs given directly), and guestinfo on a virtio-serial port named
//! `org.tether.guestinfo` served by the host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::container::BootMode;

/// The boot media `tether-bootstrap` makes: `$VCH_ASSETS`, else `containervm` beside the
/// directory of the `vch` binary (`target/containervm` for a cargo build).
pub fn assets_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("VCH_ASSETS") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("containervm")))
        .unwrap_or_else(|| PathBuf::from("target/containervm"))
}

use tether_proto::vm::{CMDLINE, OUTPUT_PORT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub struct VmSpec<'a> {
    pub assets: &'a Path,
    pub boot: BootMode,
    pub accel: Accel,
    pub memory_mib: u32,
    /// COM1: the host's attach listener.
    pub attach_port: u16,
    pub debug_log: &'a Path,
    pub output_log: &'a Path,
    /// The container's disk (qcow2 over the image VMDK); none for the KVM probe.
    pub disk: Option<&'a Path>,
    /// The host's guestinfo socket; none for the KVM probe.
    pub guestinfo: Option<&'a Path>,
    /// A vhost-user vsock backend's socket, for a virtio-vsock device.
    pub vsock: Option<&'a Path>,
    pub cmdline_extra: &'a str,
    /// The NICs, each at its PCI slot.
    pub nics: &'a [crate::network::Nic],
    /// Volume disks (VMDK), on pvscsi targets 1, 2, ... beside the container's disk.
    pub volumes: &'a [PathBuf],
}

/// QEMU's arguments for `spec`.
pub fn qemu_args(spec: &VmSpec<'_>) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let cpu = match spec.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    // vhost-user needs the guest's memory shared with the backend.
    let memory = match spec.vsock {
        Some(_) => ",memory-backend=mem0",
        None => "",
    };
    push(&[
        "-machine",
        &format!("pc,accel={}{memory}", spec.accel.name()),
        "-cpu",
        cpu,
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        // COM1: VMware's network serial port with the VM as client; reconnects if the host drops.
        "-chardev",
        &format!(
            "socket,id=com1,host=127.0.0.1,port={},server=off,reconnect-ms=200,nodelay=on",
            spec.attach_port
        ),
        "-serial",
        "chardev:com1",
        "-chardev",
        &format!("file,id=com2,path={},append=on", spec.debug_log.display()),
        "-serial",
        "chardev:com2",
        "-chardev",
        &format!("file,id=com3,path={},append=on", spec.output_log.display()),
        "-serial",
        "chardev:com3",
    ]);
    if let Some(disk) = spec.disk {
        push(&[
            "-device",
            "pvscsi,id=pvscsi0",
            "-drive",
            &format!("file={},format=qcow2,if=none,id=disk0", disk.display()),
            "-device",
            "scsi-hd,drive=disk0,bus=pvscsi0.0,scsi-id=0,lun=0",
        ]);
        for (i, v) in spec.volumes.iter().enumerate() {
            push(&[
                "-drive",
                &format!("file={},format=vmdk,if=none,id=vol{i}", v.display()),
                "-device",
                &format!("scsi-hd,drive=vol{i},bus=pvscsi0.0,scsi-id={},lun=0", i + 1),
            ]);
        }
    }
    if let Some(gi) = spec.guestinfo {
        push(&[
            // COM4: guestinfo, served by the host on a socket (see GUESTINFO_SERIAL).
            "-chardev",
            &format!("socket,id=gi,path={}", gi.display()),
            "-serial",
            "chardev:gi",
            // The output log through a virtio port (see OUTPUT_PORT); COM3 stays, idle, so
            // that a tether told `tether.output=/dev/ttyS2` finds it as on VMware.
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            &format!("file,id=out,path={},append=on", spec.output_log.display()),
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=out,name={OUTPUT_PORT}"),
        ]);
    }
    if let Some(vhu) = spec.vsock {
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem0,size={}M,share=on",
                spec.memory_mib
            ),
            "-chardev",
            &format!("socket,id=vhu0,path={}", vhu.display()),
            "-device",
            "vhost-user-vsock-pci,chardev=vhu0",
        ]);
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        push(&[
            "-netdev",
            &format!("{},id=net{i}", nic.netdev),
            "-device",
            &format!(
                "virtio-net-pci,netdev=net{i},mac={},addr=0x{:x}",
                nic.mac, nic.slot
            ),
        ]);
    }
    match spec.boot {
        BootMode::Kernel => {
            let cmdline = format!("{CMDLINE} {}", spec.cmdline_extra);
            push(&[
                "-kernel",
                &spec.assets.join("vmlinux").display().to_string(),
                "-initrd",
                &spec.assets.join("initramfs.cpio").display().to_string(),
                "-append",
                cmdline.trim(),
            ]);
        }
        BootMode::Iso => push(&[
            "-drive",
            &format!(
                "file={},media=cdrom,if=none,id=cd0,readonly=on",
                spec.assets.join("bootstrap.iso").display()
            ),
            "-device",
            "ahci,id=ahci0",
            "-device",
            "ide-cd,bus=ahci0.0,drive=cd0,bootindex=0",
        ]),
    }
    a
}

/// Checks that the boot media are there, naming the command that makes them.
pub fn check_assets(assets: &Path, boot: BootMode) -> anyhow::Result<()> {
    let need: &[&str] = match boot {
        BootMode::Kernel => &["vmlinux", "initramfs.cpio"],
        BootMode::Iso => &["bootstrap.iso"],
    };
    for n in need {
        if !assets.join(n).exists() {
            bail!(
                "{} is missing: build the boot media with scripts/build-vm (or set VCH_ASSETS)",
                assets.join(n).display()
            );
        }
    }
    Ok(())
}

/// The accelerator: KVM only where a VM really boots with it (on some hosts /dev/kvm opens but
/// guests hang), found by one probe boot with a deadline and remembered in `cache`.
pub fn accel(assets: &Path, cache: &Path) -> Accel {
    if let Ok(v) = std::env::var("VCH_ACCEL") {
        return if v == "kvm" { Accel::Kvm } else { Accel::Tcg };
    }
    let stamp = std::fs::metadata(assets.join("vmlinux"))
        .and_then(|m| m.modified())
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string(cache) {
        if let Some((s, a)) = text.trim().rsplit_once(' ') {
            if s == stamp {
                return if a == "kvm" { Accel::Kvm } else { Accel::Tcg };
            }
        }
    }
    let found = if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        match probe_kvm(assets, Duration::from_secs(10)) {
            Ok(()) => Accel::Kvm,
            Err(e) => {
                eprintln!("vch: KVM is present but a VM did not boot with it ({e:#}); using TCG");
                Accel::Tcg
            }
        }
    } else {
        Accel::Tcg
    };
    if let Some(d) = cache.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(cache, format!("{stamp} {}\n", found.name()));
    found
}

/// Boots the kernel and initramfs with KVM and no disk: the bootstrap stage says it found no
/// disk and powers off at once. Success is that message within the deadline.
fn probe_kvm(assets: &Path, deadline: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let debug = dir.path().join("debug");
    let out = dir.path().join("out");
    let spec = VmSpec {
        assets,
        boot: BootMode::Kernel,
        accel: Accel::Kvm,
        memory_mib: 256,
        attach_port: listener.local_addr()?.port(),
        debug_log: &debug,
        output_log: &out,
        disk: None,
        guestinfo: None,
        vsock: None,
        cmdline_extra: "tether.rootwait=0",
        nics: &[],
        volumes: &[],
    };
    let mut child = std::process::Command::new("qemu-system-x86_64")
        .args(qemu_args(&spec))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let start = Instant::now();
    let result = loop {
        if std::fs::read_to_string(&debug).is_ok_and(|t| t.contains("bootstrap:")) {
            break Ok(());
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "QEMU exited ({status}) before the guest spoke"
            ));
        }
        if start.elapsed() > deadline {
            break Err(anyhow::anyhow!("no word from the guest in {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_is_shaped_like_vics() {
        let spec = VmSpec {
            assets: Path::new("/a"),
            boot: BootMode::Iso,
            accel: Accel::Tcg,
            memory_mib: 256,
            attach_port: 4242,
            debug_log: Path::new("/s/tether.debug"),
            output_log: Path::new("/s/output.log"),
            disk: Some(Path::new("/s/disk.qcow2")),
            guestinfo: Some(Path::new("/s/gi.sock")),
            vsock: None,
            cmdline_extra: "",
            nics: &[],
            volumes: &[],
        };
        let a = qemu_args(&spec).join(" ");
        // COM1, COM2, COM3, COM4 in order: attach (TCP client), debug, output, guestinfo.
        let com1 = a.find("port=4242,server=off").unwrap();
        let com2 = a.find("path=/s/tether.debug,append=on").unwrap();
        let com3 = a.find("path=/s/output.log,append=on").unwrap();
        assert!(com1 < com2 && com2 < com3);
        let serials: Vec<&str> = a
            .split(" -serial ")
            .skip(1)
            .map(|r| r.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            serials,
            ["chardev:com1", "chardev:com2", "chardev:com3", "chardev:gi"]
        );
        assert!(a.contains("socket,id=gi,path=/s/gi.sock"));
        assert!(a.contains("-device pvscsi,id=pvscsi0"));
        assert!(a.contains("scsi-hd,drive=disk0,bus=pvscsi0.0,scsi-id=0,lun=0"));
        assert!(a.contains("name=org.tether.output"));
        assert!(a.contains("file=/a/bootstrap.iso,media=cdrom"));
        assert!(!a.contains("-kernel"));
        let k = qemu_args(&VmSpec {
            boot: BootMode::Kernel,
            cmdline_extra: "tether.rootwait=5",
            nics: &[],
            volumes: &[],
            ..spec
        });
        let append = k.iter().position(|x| x == "-append").unwrap();
        assert_eq!(k[append + 1], format!("{CMDLINE} tether.rootwait=5"));
        assert!(k.contains(&"/a/vmlinux".to_string()));
        assert!(!a.contains("vhost-user"), "no vsock device unless asked");
        let v = qemu_args(&VmSpec {
            vsock: Some(Path::new("/s/vhu.sock")),
            ..spec
        })
        .join(" ");
        assert!(v.contains("-machine pc,accel=tcg,memory-backend=mem0"));
        assert!(v.contains("memory-backend-memfd,id=mem0,size=256M,share=on"));
        assert!(
            v.contains("socket,id=vhu0,path=/s/vhu.sock -device vhost-user-vsock-pci,chardev=vhu0")
        );
    }
}
