//! A container's disk: a qcow2 overlay over its image's VMDK, written here as `qemu-img create -f
//! qcow2 -F vmdk -b IMAGE` writes it, without a process per container (about 35 ms of each
//! `vch run` before QEMU can start). Images this does not understand fall back to qemu-img.

use std::io::{Read as _, Write as _};
use std::path::Path;

/// Cluster size: 64 KiB, qemu-img's default.
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// qcow2 version 3 header length (with the compression type byte and its padding).
const HEADER_LEN: u32 = 112;
/// Header extension: the backing file's format.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{path}: not a VMDK this reads ({why})")]
    Vmdk { path: String, why: String },
    #[error("the backing file's path is too long for the header ({0} bytes)")]
    BackingPath(usize),
    #[error("{0} bytes is more than this writer lays out")]
    TooLarge(u64),
}

/// The virtual size in bytes of the VMDK at `path`: from a sparse extent's header (`KDMV`,
/// monolithicSparse and streamOptimized, what qemu-img makes) or from a descriptor's extent
/// lines.
pub fn vmdk_size(path: &Path) -> Result<u64, Qcow2Error> {
    let bad = |why: &str| Qcow2Error::Vmdk {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut head)?;
    if head.starts_with(b"KDMV") {
        let capacity = head
            .get(12..20)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| bad("short sparse header"))?;
        return capacity
            .checked_mul(512)
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("no capacity"));
    }
    // A descriptor file: `RW 139264 SPARSE "disk-s001.vmdk"` lines, sectors each.
    let text = std::str::from_utf8(&head).map_err(|_| bad("neither a sparse header nor text"))?;
    if !text.contains("# Disk DescriptorFile") {
        return Err(bad("no sparse header and no descriptor"));
    }
    let mut sectors = 0u64;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if matches!(words.next(), Some("RW" | "RDONLY" | "NOACCESS")) {
            let n: u64 = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| bad(&format!("extent line {line:?}")))?;
            sectors = sectors
                .checked_add(n)
                .ok_or_else(|| bad("extents overflow"))?;
        }
    }
    match sectors.checked_mul(512) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(bad("no extents")),
    }
}

/// Writes at `out` an empty qcow2 (version 3) of `size` bytes over `backing` in `backing_format`.
/// The layout is qemu-img's: the header and its extensions in cluster 0, the refcount table in
/// cluster 1, its one refcount block in cluster 2, the L1 table from cluster 3.
pub fn create_overlay(
    out: &Path,
    backing: &Path,
    backing_format: &str,
    size: u64,
) -> Result<(), Qcow2Error> {
    let backing = backing.as_os_str().as_encoded_bytes();
    // Each L1 entry covers one L2 table: CLUSTER / 8 clusters.
    let per_l1 = CLUSTER * (CLUSTER / 8);
    let l1_entries = size.div_ceil(per_l1).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    // Clusters in use: header, refcount table, refcount block, L1; one block of 16-bit
    // refcounts covers CLUSTER / 2 of them.
    let used = 3 + l1_clusters;
    if used > CLUSTER / 2 {
        return Err(Qcow2Error::TooLarge(size));
    }
    let mut c0 = Vec::with_capacity(CLUSTER as usize);
    let mut extensions = Vec::new();
    let fmt = backing_format.as_bytes();
    extensions.extend(EXT_BACKING_FORMAT.to_be_bytes());
    extensions.extend((fmt.len() as u32).to_be_bytes());
    extensions.extend(fmt);
    extensions.resize(extensions.len().next_multiple_of(8), 0);
    extensions.extend([0u8; 8]); // end of the extensions
    let backing_offset = u64::from(HEADER_LEN) + extensions.len() as u64;
    if backing_offset + backing.len() as u64 > CLUSTER || backing.len() > 1023 {
        return Err(Qcow2Error::BackingPath(backing.len()));
    }
    let l1_size = u32::try_from(l1_entries).map_err(|_| Qcow2Error::TooLarge(size))?;
    c0.extend(0x5146_49fbu32.to_be_bytes()); // "QFI\xfb"
    c0.extend(3u32.to_be_bytes()); // version
    c0.extend(backing_offset.to_be_bytes());
    c0.extend((backing.len() as u32).to_be_bytes());
    c0.extend(CLUSTER_BITS.to_be_bytes());
    c0.extend(size.to_be_bytes());
    c0.extend(0u32.to_be_bytes()); // no encryption
    c0.extend(l1_size.to_be_bytes());
    c0.extend((3 * CLUSTER).to_be_bytes()); // L1 table
    c0.extend(CLUSTER.to_be_bytes()); // refcount table
    c0.extend(1u32.to_be_bytes()); // its clusters
    c0.extend(0u32.to_be_bytes()); // snapshots
    c0.extend(0u64.to_be_bytes()); // their table
    c0.extend(0u64.to_be_bytes()); // incompatible features
    c0.extend(0u64.to_be_bytes()); // compatible features
    c0.extend(0u64.to_be_bytes()); // autoclear features
    c0.extend(4u32.to_be_bytes()); // refcount order: 16-bit refcounts
    c0.extend(HEADER_LEN.to_be_bytes());
    c0.push(0); // compression type: zlib
    c0.resize(HEADER_LEN as usize, 0);
    c0.extend(&extensions);
    c0.extend(backing);
    c0.resize(CLUSTER as usize, 0);

    let mut refcount_table = vec![0u8; CLUSTER as usize];
    refcount_table[..8].copy_from_slice(&(2 * CLUSTER).to_be_bytes());
    let mut refcount_block = vec![0u8; CLUSTER as usize];
    for i in 0..used as usize {
        refcount_block[2 * i..2 * i + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    let partial = out.with_extension("qcow2.partial");
    let mut f = std::fs::File::create(&partial)?;
    f.write_all(&c0)?;
    f.write_all(&refcount_table)?;
    f.write_all(&refcount_block)?;
    // The L1 table: all zero, no cluster allocated yet.
    f.set_len(3 * CLUSTER + l1_entries * 8)?;
    drop(f);
    std::fs::rename(&partial, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> Option<std::process::Output> {
        Command::new("qemu-img").args(args).output().ok()
    }

    #[test]
    fn reads_the_size_of_a_descriptor() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d.vmdk");
        std::fs::write(
            &d,
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\n\
             RW 4192256 SPARSE \"d-s001.vmdk\"\nRW 8192 SPARSE \"d-s002.vmdk\"\n",
        )
        .unwrap();
        assert_eq!(vmdk_size(&d).unwrap(), (4192256 + 8192) * 512);
        std::fs::write(&d, "not a disk at all").unwrap();
        let e = vmdk_size(&d).unwrap_err().to_string();
        assert!(e.contains("not a VMDK"), "{e}");
        std::fs::write(&d, "# Disk DescriptorFile\nRW many SPARSE \"x\"\n").unwrap();
        assert!(vmdk_size(&d).is_err(), "a bad extent line is refused");
    }

    #[test]
    fn an_overlay_qemu_img_accepts_reads_as_its_image_and_takes_writes() {
        let t = tempfile::tempdir().unwrap();
        let raw = t.path().join("image.raw");
        // A recognisable pattern across more than one L2 table's reach would be large; a few
        // MiB with data at both ends shows reads fall through to the image.
        let mut data = vec![0u8; 3 << 20];
        data[..4].copy_from_slice(b"head");
        let n = data.len();
        data[n - 4..].copy_from_slice(b"tail");
        std::fs::write(&raw, &data).unwrap();
        let vmdk = t.path().join("image.vmdk");
        let Some(out) = qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            raw.to_str().unwrap(),
            vmdk.to_str().unwrap(),
        ]) else {
            eprintln!("skipped: no qemu-img on this machine");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let size = vmdk_size(&vmdk).unwrap();
        assert_eq!(size, data.len() as u64);

        let ours = t.path().join("disk.qcow2");
        create_overlay(&ours, &vmdk, "vmdk", size).unwrap();
        let check = qemu_img(&["check", ours.to_str().unwrap()]).unwrap();
        assert!(
            check.status.success(),
            "qemu-img check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let info = qemu_img(&["info", "--output=json", ours.to_str().unwrap()]).unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], size);
        assert_eq!(info["backing-filename"], vmdk.to_str().unwrap());
        assert_eq!(info["backing-filename-format"], "vmdk");
        let cmp = qemu_img(&["compare", ours.to_str().unwrap(), raw.to_str().unwrap()]).unwrap();
        assert!(
            cmp.status.success(),
            "the overlay reads as the image: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );

        // Writes allocate clusters in the overlay and leave the image alone.
        let w = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 128k"])
            .arg(&ours)
            .output();
        if let Ok(w) = w {
            assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
            let check = qemu_img(&["check", ours.to_str().unwrap()]).unwrap();
            assert!(
                check.status.success(),
                "after a write: {}",
                String::from_utf8_lossy(&check.stdout)
            );
            let cmp =
                qemu_img(&["compare", ours.to_str().unwrap(), raw.to_str().unwrap()]).unwrap();
            assert!(!cmp.status.success(), "the write shows in the overlay");
            assert_eq!(std::fs::read(&raw).unwrap(), data, "the image is untouched");
        }
    }

    #[test]
    fn a_backing_path_that_does_not_fit_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let long = t
            .path()
            .join("x".repeat(200))
            .join("y".repeat(200))
            .join("z".repeat(700));
        let e = create_overlay(&t.path().join("o.qcow2"), &long, "vmdk", 1 << 20).unwrap_err();
        assert!(matches!(e, Qcow2Error::BackingPath(_)), "{e}");
        assert!(!t.path().join("o.qcow2").exists());
    }
}
