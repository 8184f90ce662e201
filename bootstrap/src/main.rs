//! `tether-bootstrap --kernel DIR --tether FILE --out DIR`: makes `vmlinux`, `vmlinuz`,
//! `initramfs.cpio` and `bootstrap.iso` in the output directory, again only when an input
//! changed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use sha2::{Digest as _, Sha256};

#[derive(Parser)]
#[command(about = "Assembles the containerVM's boot media")]
struct Args {
    /// An unpacked Debian kernel package (with `boot/vmlinuz-*` and `lib/modules/*` after depmod).
    #[arg(long)]
    kernel: PathBuf,
    /// The static tether binary (it becomes `/init`).
    #[arg(long)]
    tether: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let version = bootstrap::kernel_version(&args.kernel)?;
    let vmlinuz_path = bootstrap::vmlinuz(&args.kernel, &version);
    let vmlinuz = std::fs::read(&vmlinuz_path)
        .with_context(|| format!("reading {}", vmlinuz_path.display()))?;
    let tether = std::fs::read(&args.tether)
        .with_context(|| format!("reading {}", args.tether.display()))?;
    std::fs::create_dir_all(&args.out)?;

    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    h.update(include_str!("lib.rs"));
    h.update(&version);
    h.update(&vmlinuz);
    h.update(&tether);
    let stamp: String = h
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "\n";
    let stamp_path = args.out.join("bootstrap.stamp");
    let outputs = ["vmlinux", "vmlinuz", "initramfs.cpio", "bootstrap.iso"];
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp)
        && outputs.iter().all(|o| args.out.join(o).exists())
    {
        println!("bootstrap: up to date in {}", args.out.display());
        return Ok(());
    }
    let _ = std::fs::remove_file(&stamp_path);
    let t = Instant::now();
    println!("bootstrap: kernel {version}: unpacking vmlinux");
    // The kernel files are left alone when the same: their times key `vch`'s cached KVM probe,
    // which a new tether alone should not make it run again.
    write_if_changed(
        &args.out.join("vmlinux"),
        &bootstrap::extract_vmlinux(&vmlinuz)?,
    )?;
    write_if_changed(&args.out.join("vmlinuz"), &vmlinuz)?;
    println!("bootstrap: packing the initramfs");
    let (initrd, sel) = bootstrap::initramfs(tether, &args.kernel, &version)?;
    std::fs::write(args.out.join("initramfs.cpio"), &initrd)?;
    let mut report = format!(
        "kernel {version}\ninitramfs {} bytes, {} modules\n",
        initrd.len(),
        sel.index.modules.len()
    );
    for (name, files) in &sel.index.modules {
        report.push_str(&format!("  {name}: {}\n", files.join(" ")));
    }
    report.push_str(&format!("built in: {}\n", sel.builtin.join(" ")));
    report.push_str(&format!("not in this kernel: {}\n", sel.missing.join(" ")));
    std::fs::write(args.out.join("modules.txt"), &report)?;
    if !sel.missing.is_empty() {
        println!(
            "bootstrap: not in kernel {version} (left out): {}",
            sel.missing.join(" ")
        );
    }
    println!("bootstrap: building bootstrap.iso");
    bootstrap::iso(
        &args.out,
        &args.out.join("vmlinuz"),
        &args.out.join("initramfs.cpio"),
        bootstrap::CMDLINE,
        &args.out.join("bootstrap.iso"),
    )?;
    std::fs::write(&stamp_path, stamp)?;
    println!(
        "bootstrap: done in {:.1} s: {} ({} modules, initramfs {} KiB)",
        t.elapsed().as_secs_f64(),
        args.out.display(),
        sel.index.modules.len(),
        initrd.len() / 1024
    );
    Ok(())
}

/// Writes `data` to `path` unless the file holds it already.
fn write_if_changed(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let same = std::fs::metadata(path).is_ok_and(|m| m.len() == data.len() as u64)
        && std::fs::read(path).is_ok_and(|old| old == data);
    if same {
        return Ok(());
    }
    std::fs::write(path, data)
}
