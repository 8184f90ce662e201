//! The containerVM's boot media, made from an unpacked Debian kernel package and the static
//! tether: an uncompressed `vmlinux` (QEMU's fast `-kernel` path), the initramfs (the tether as
//! `/init` plus the kernel modules the containerVM may need and their index), and `bootstrap.iso`
//! (isolinux, El Torito, BIOS) holding the kernel, the initramfs and VIC's command line.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use initramfs::modules::{KernelModules, Selection};
use initramfs::Archive;

pub use tether_proto::vm::CMDLINE;

/// Modules loaded when a device of theirs is present: storage (virtio, pvscsi, SCSI disks and
/// CD-ROMs, ATA), the guestinfo port (virtio console), fw_cfg, vsock (virtio and VMCI) and NICs.
pub const DEVICE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "vmw_pvscsi",
    "sd_mod",
    "sr_mod",
    "ata_piix",
    "ahci",
    "virtio_console",
    "qemu_fw_cfg",
    "vmw_vmci",
    "vmw_vsock_virtio_transport",
    "vmw_vsock_vmci_transport",
    "virtio_net",
    "vmxnet3",
    "e1000",
    "isofs",
    // NFS volumes: the client (v4, one TCP port), loaded by the tether when a volume needs it.
    "nfsv4",
];

/// Modules loaded only when the container's config asks for them (NFS volumes): packed
/// zlib-compressed ([`COMPRESSED_SUFFIX`]), since their files stay in memory with the others for
/// the container's life (5.4 MB as they are, 1.9 MB compressed), and the tether inflates one when
/// it loads it.
pub const ON_DEMAND_MODULES: &[&str] = &["nfsv4"];

/// The suffix of a compressed module file in the initramfs and its index.
pub use tether_proto::modindex::COMPRESSED_SUFFIX;

/// Device modules not needed to find the disk, in the order the tether loads them beside the
/// container's start, at idle priority until the primary session has launched (all of them load
/// early too when the disk does not show up without them). virtio is among them: guestinfo comes
/// over the backdoor on VMware and over COM4 under QEMU, both without a module, and the output
/// log's virtio port can open a moment later (the log holds what comes before).
pub const LATE_MODULES: &[&str] = &[
    "virtio_pci",
    // The NICs' drivers first: a container with a network waits for them before its launch (its
    // addresses come first), while the output log's port may open a moment later. A VM without
    // a NIC loads neither.
    "virtio_net",
    "vmxnet3",
    "e1000",
    "virtio_console",
    "ata_piix",
    "sr_mod",
    "qemu_fw_cfg",
    "vmw_vmci",
    "vmw_vsock_virtio_transport",
    "vmw_vsock_vmci_transport",
];

/// Modules loaded at every boot: the container's filesystem, and the SCSI disk driver (the
/// container's disk sits on pvscsi, on VMware and here): loaded before the host adapter's driver,
/// it takes the disk as the adapter's scan finds it, without a second round of device matching.
/// (isofs and nfsv4, in the device list, have no device alias: they are packed for the container,
/// not loaded; the tether loads nfsv4 when an NFS volume needs it.)
pub const ALWAYS_MODULES: &[&str] = &["ext4", "sd_mod"];

/// The kernel version directory of an unpacked kernel package (`lib/modules/<version>`).
pub fn kernel_version(kernel: &Path) -> anyhow::Result<String> {
    let dir = kernel.join("lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    versions.sort();
    match versions.as_slice() {
        [v] => Ok(v.clone()),
        [] => bail!("{}: no kernel version", dir.display()),
        more => bail!("{}: more than one kernel version: {more:?}", dir.display()),
    }
}

/// The compressed kernel (`boot/vmlinuz-<version>`).
pub fn vmlinuz(kernel: &Path, version: &str) -> PathBuf {
    kernel.join("boot").join(format!("vmlinuz-{version}"))
}

/// The compressed payload of a bzImage (`payload_offset`/`payload_length` of the setup header,
/// counted from the end of the real-mode setup sectors) and the tool that unpacks it.
pub fn bzimage_payload(bz: &[u8]) -> anyhow::Result<(&[u8], &'static str)> {
    let field = |at: usize| -> anyhow::Result<u32> {
        let b = bz.get(at..at + 4).context("truncated bzImage header")?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS setup header)");
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + field(0x248)? as usize;
    let len = field(0x24c)? as usize;
    let payload = bz
        .get(start..start + len)
        .context("the payload runs past the end of the bzImage")?;
    let tool = if payload.starts_with(b"\xfd7zXZ\0") {
        "xz"
    } else if payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        "lz4"
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else {
        bail!("the bzImage payload is in a compression this build does not unpack (not xz, lz4, zstd or gzip)");
    };
    Ok((payload, tool))
}

/// The uncompressed ELF kernel inside a bzImage (it has a PVH entry QEMU starts directly).
pub fn extract_vmlinux(bz: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (payload, tool) = bzimage_payload(bz)?;
    // The kernel's build appends the uncompressed size (4 bytes, little-endian) to the payload;
    // some tools complain of it as trailing garbage, so the size is what tells success.
    let size = u32::from_le_bytes(
        payload[payload.len().saturating_sub(4)..]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = payload.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context(tool)?;
    feeder.join().ok();
    if out.stdout.len() != size as usize || !out.stdout.starts_with(b"\x7fELF") {
        bail!(
            "{tool} could not unpack the kernel ({}; {} bytes of {size})",
            out.status,
            out.stdout.len()
        );
    }
    Ok(out.stdout)
}

/// The initramfs: `/init` (the tether), the selected modules and their index, and the
/// directories the bootstrap stage mounts on. Uncompressed: the kernel unpacks it in 0.13-0.22 s
/// under TCG against 0.31-0.40 s gzipped (0.19-0.31 s as LZ4); QEMU and isolinux load the
/// 6.5 MB as fast as 2.3 MB.
pub fn initramfs(
    tether: Vec<u8>,
    kernel: &Path,
    version: &str,
) -> anyhow::Result<(Vec<u8>, Selection)> {
    let mod_dir = kernel.join("lib/modules").join(version);
    let km = KernelModules::load(&mod_dir)?;
    let sel = km.select(DEVICE_MODULES, ALWAYS_MODULES, LATE_MODULES);
    let mut a = Archive::new();
    for d in ["dev", "proc", "sys", "mnt", "lib", "lib/modules"] {
        a.dir(d, 0o755)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.char_device("dev/null", 0o666, 1, 3)?;
    a.file("init", 0o755, tether)?;
    // The files only the on-demand modules need go in compressed.
    let booting: Vec<&str> = DEVICE_MODULES
        .iter()
        .copied()
        .filter(|m| !ON_DEMAND_MODULES.contains(m))
        .collect();
    let others: std::collections::BTreeSet<String> = km
        .select(&booting, ALWAYS_MODULES, LATE_MODULES)
        .index
        .modules
        .into_values()
        .flatten()
        .collect();
    let mut sel = sel;
    for files in sel.index.modules.values_mut() {
        for f in files.iter_mut() {
            if !others.contains(f.as_str()) {
                f.push_str(COMPRESSED_SUFFIX);
            }
        }
    }
    let mut dirs = std::collections::BTreeSet::new();
    let files: std::collections::BTreeSet<&String> = sel.index.modules.values().flatten().collect();
    for f in files {
        let mut parent = Path::new(f.as_str()).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_path_buf());
            parent = p.parent();
        }
        for p in chain.into_iter().rev() {
            if dirs.insert(p.clone()) {
                a.dir(&format!("lib/modules/{}", p.display()), 0o755)?;
            }
        }
        let data = match f.strip_suffix(COMPRESSED_SUFFIX) {
            Some(plain) => {
                let data = std::fs::read(mod_dir.join(plain))
                    .with_context(|| format!("reading {plain}"))?;
                miniz_oxide::deflate::compress_to_vec_zlib(&data, 9)
            }
            None => std::fs::read(mod_dir.join(f)).with_context(|| format!("reading {f}"))?,
        };
        a.file(&format!("lib/modules/{f}"), 0o644, data)?;
    }
    a.file(
        "lib/modules/tether.index",
        0o644,
        sel.index.render().into_bytes(),
    )?;
    let mut cpio = Vec::new();
    a.write(&mut cpio)?;
    Ok((cpio, sel))
}

/// `bootstrap.iso`: isolinux (BIOS, El Torito, hybrid MBR) booting `vmlinuz` with `initrd` and
/// `cmdline`, built with xorriso in `work`.
pub fn iso(
    work: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let syslinux = Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32");
    let isolinux = Path::new("/usr/lib/ISOLINUX/isolinux.bin");
    let mbr = Path::new("/usr/lib/ISOLINUX/isohdpfx.bin");
    for p in [syslinux, isolinux, mbr] {
        if !p.exists() {
            bail!(
                "{} is missing (packages isolinux and syslinux-common)",
                p.display()
            );
        }
    }
    let tree = work.join("iso");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("isolinux"))?;
    std::fs::create_dir_all(tree.join("boot"))?;
    std::fs::copy(isolinux, tree.join("isolinux/isolinux.bin"))?;
    std::fs::copy(syslinux, tree.join("isolinux/ldlinux.c32"))?;
    std::fs::copy(vmlinuz, tree.join("boot/vmlinuz64"))?;
    std::fs::copy(initrd, tree.join("boot/core.gz"))?;
    // isolinux's own messages go to COM2 (the debug port), never to COM1 (attach).
    std::fs::write(
        tree.join("isolinux/isolinux.cfg"),
        format!(
            "SERIAL 1 115200\nDEFAULT containervm\nPROMPT 0\nTIMEOUT 0\n\
             LABEL containervm\n  KERNEL /boot/vmlinuz64\n  INITRD /boot/core.gz\n  APPEND {cmdline}\n"
        ),
    )?;
    let result = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(out)
        .args(["-V", "BOOTSTRAP", "-J", "-R", "-isohybrid-mbr"])
        .arg(mbr)
        .args([
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ])
        .arg(&tree)
        .output()
        .context("running xorriso (package xorriso)")?;
    if !result.status.success() {
        bail!(
            "xorriso failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    let _ = std::fs::remove_dir_all(&tree);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_payload_of_a_bzimage() {
        let mut bz = vec![0u8; 3 * 512 + 64];
        bz[0x1f1] = 2; // setup sectors: the protected-mode code starts at 3 * 512
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        bz[3 * 512 + 16..3 * 512 + 24].copy_from_slice(b"\xfd7zXZ\0ab");
        assert_eq!(bzimage_payload(&bz).unwrap(), (&b"\xfd7zXZ\0ab"[..], "xz"));
        bz[3 * 512 + 16..3 * 512 + 20].copy_from_slice(&[0x02, 0x21, 0x4c, 0x18]);
        assert_eq!(bzimage_payload(&bz).unwrap().1, "lz4");
        bz[3 * 512 + 16] = 0x77;
        assert!(bzimage_payload(&bz)
            .unwrap_err()
            .to_string()
            .contains("not xz, lz4"));
        bz[0x24c..0x250].copy_from_slice(&4096u32.to_le_bytes());
        assert!(bzimage_payload(&bz).is_err(), "a payload past the end");
        assert!(bzimage_payload(&[0u8; 600]).is_err(), "no header");
    }
}
