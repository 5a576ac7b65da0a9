//! `cargo xtask bench`: each figure beside the anchor it is compared with, measured in the
//! same run.
//!
//! - initrd size and assembly time against Debian's own `mkinitramfs` for the same kernel
//!   (targets: under 12 MB, at least 10 times faster);
//! - the QEMU boot: init's own work from its first line to ready (target: under 1 s) beside
//!   the kernel's time until it started init;
//! - the network boot, power-on to init's ready marker: iPXE fetching kernel and initrd over
//!   HTTP against pxelinux fetching them over TFTP (target: HTTP faster), both from the tree
//!   `cargo xtask pxe` writes for the same image, in QEMU's user-mode network.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::qemu::{NetBoot, TempDir, Vm, VmConfig};
use crate::{image, system};

pub fn run() -> Result<()> {
    system::ensure(&[
        system::APT,
        system::QEMU,
        system::MKINITRAMFS,
        system::PYTHON3,
        system::MKFS_EXT4,
        system::MKFS_BTRFS,
    ])?;
    let out = crate::work_dir().join("bench-image");
    let inputs = image::prepare(buildos_rootfs::DEFAULT_PROFILE)?;
    // The best of three: the first run also warms the page cache the others read from.
    let mut assembly = Duration::MAX;
    let mut built = None;
    for _ in 0..3 {
        let b = image::assemble(&inputs, &out)?;
        assembly = assembly.min(b.assembly);
        built = Some(b);
    }
    let Some(built) = built else {
        bail!("no assembly ran")
    };
    let (debian_time, debian_size) = mkinitramfs(&inputs.kernel_deb, &built.output.kernel_version)?;
    let ours = built.output.initrd_size;

    println!("figure                          buildos      anchor       ratio   target");
    println!(
        "initrd size (compressed)        {:>8.1} MB  {:>8.1} MB  {:>6.2}   < 12 MB ({})",
        ours as f64 / 1e6,
        debian_size as f64 / 1e6,
        ours as f64 / debian_size as f64,
        verdict(ours < 12_000_000)
    );
    let speedup = debian_time.as_secs_f64() / assembly.as_secs_f64();
    println!(
        "image assembly time             {:>8.2} s   {:>8.2} s   {:>6.1}x  >= 10x faster ({})",
        assembly.as_secs_f64(),
        debian_time.as_secs_f64(),
        speedup,
        verdict(speedup >= 10.0)
    );
    println!(
        "  (anchor: Debian's mkinitramfs for kernel {})",
        built.output.kernel_version
    );

    let (kernel, init, storage) = boot_times(&out)?;
    println!(
        "init work, first line to ready  {:>8.3} s   {:>8.3} s   {:>6.2}   < 1 s ({})",
        init.as_secs_f64(),
        kernel.as_secs_f64(),
        init.as_secs_f64() / kernel.as_secs_f64(),
        verdict(init < Duration::from_secs(1))
    );
    println!("  (anchor: kernel start to init start in the same QEMU boot)");
    println!(
        "kernel start to ready           {:>8.3} s",
        (kernel + init).as_secs_f64()
    );

    let (http, tftp) = pxe_boot_times(&out)?;
    println!(
        "PXE power-on to ready, HTTP     {:>8.2} s   {:>8.2} s   {:>6.2}   faster than TFTP ({})",
        http.as_secs_f64(),
        tftp.as_secs_f64(),
        http.as_secs_f64() / tftp.as_secs_f64(),
        verdict(http < tftp)
    );
    println!("  (iPXE over HTTP; anchor: pxelinux over TFTP, same tree, prompt 0)");
    let bound = Duration::from_secs(10);
    println!(
        "storage step, 2 disks present   {:>8.3} s   {:>8.3} s   {:>6.3}   well within its bound ({})",
        storage.as_secs_f64(),
        bound.as_secs_f64(),
        storage.as_secs_f64() / bound.as_secs_f64(),
        verdict(storage < bound / 10)
    );
    println!("  (anchor: buildos.storage_wait, the default bound on waiting for disks)");
    Ok(())
}

/// The inventory of the network boots: no wait at pxelinux's prompt, init on the serial port.
const PXE_INVENTORY: &str = "[boot]\nkernel_args = [\"console=ttyS0\"]\nprompt = 0\ntimeout = 0\n";

/// Network-boots the image twice from one tree, from QEMU's start to init's ready marker:
/// iPXE over HTTP from a loopback server, and pxelinux over QEMU's TFTP server.
fn pxe_boot_times(image: &Path) -> Result<(Duration, Duration)> {
    let dir = TempDir::new("buildos-bench-pxe")?;
    let inventory = dir.0.join("farm.toml");
    std::fs::write(&inventory, PXE_INVENTORY)?;
    let tree = dir.0.join("tree");
    std::fs::create_dir_all(&tree)?;
    let server = crate::pxe::HttpServer::start(&tree)?;
    let base = format!("http://10.0.2.2:{}/", server.port);
    crate::pxe::build_tree(&inventory, image, &tree, Some(&base))?;
    let mut times = Vec::new();
    for bootfile in [format!("{base}ipxe/boot.ipxe"), "pxelinux.0".to_string()] {
        let config = VmConfig::netboot(
            image,
            NetBoot {
                tftp: tree.clone(),
                bootfile,
                mac: "de:ad:be:ef:b8:da".into(),
            },
        );
        let started = Instant::now();
        let mut vm = Vm::boot(&config)?;
        vm.wait_for("buildos-init: ready at ", Duration::from_secs(300))?;
        times.push(started.elapsed());
    }
    drop(server);
    Ok((times[0], times[1]))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Runs Debian's mkinitramfs for the kernel in `deb`, in a private mount namespace where that
/// kernel's modules are at /lib/modules, so the build machine's own files are untouched (an
/// empty /lib/modules is made for the mount when there is none, and removed after).
/// Returns its time (depmod, which Debian runs at package install, not counted) and size.
fn mkinitramfs(deb: &Path, version: &str) -> Result<(Duration, u64)> {
    let dir = TempDir::new("buildos-bench")?;
    let root = dir.0.join("root");
    std::fs::create_dir_all(&root)?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&root)
        .status()
        .context("cannot run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    let output = dir.0.join("debian-initrd");
    let script = format!(
        "set -e\n\
         created=\n\
         if [ ! -d /lib/modules ]; then mkdir /lib/modules; created=1; fi\n\
         trap 'umount /lib/modules 2>/dev/null; [ -z \"$created\" ] || rmdir /lib/modules' EXIT\n\
         mount --bind {root}/lib/modules /lib/modules\n\
         mount --bind {root}/boot /boot\n\
         depmod {version}\n\
         start=$(date +%s.%N)\n\
         mkinitramfs -o {output} {version} 2>/dev/null\n\
         end=$(date +%s.%N)\n\
         echo \"$start $end\"\n",
        root = root.display(),
        output = output.display(),
    );
    let result = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .context("cannot run unshare")?;
    if !result.status.success() {
        bail!(
            "mkinitramfs for {version} failed (it needs root for the private mount namespace): {}",
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&result.stdout);
    let times: Vec<f64> = text
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let [start, end] = times[..] else {
        bail!("cannot read mkinitramfs's times from {text:?}");
    };
    let size = std::fs::metadata(&output)?.len();
    Ok((Duration::from_secs_f64(end - start), size))
}

/// Boots the image once and reads init's own lines: the monotonic time it started at (the
/// kernel's share), how long its storage step took and how long its work took until ready.
fn boot_times(image: &Path) -> Result<(Duration, Duration, Duration)> {
    let started = Instant::now();
    // The disks a host needs, or init stops at the emergency shell.
    let disks = TempDir::new("buildos-bench-disks")?;
    let mut config = VmConfig::new(image);
    for disk in crate::qemu::host_disks(&disks.0)? {
        config = config.disk(&disk);
    }
    let mut vm = Vm::boot(&config)?;
    let first = vm.wait_for("buildos-init: ", Duration::from_secs(120))?;
    let storage = vm.wait_for("buildos-init: phase storage ", Duration::from_secs(120))?;
    if !storage.contains("phase storage ok") {
        bail!("the storage step did not succeed: {storage}");
    }
    let storage = seconds_after(&storage, "took ")? / 1000;
    let ready = vm.wait_for("buildos-init: ready at ", Duration::from_secs(120))?;
    let kernel = seconds_after(&first, "starting at ")?;
    let init = seconds_after(&ready, "init took ")?;
    eprintln!(
        "xtask: boot to ready took {:.1} s of wall time",
        started.elapsed().as_secs_f64()
    );
    Ok((kernel, init, storage))
}

fn seconds_after(line: &str, label: &str) -> Result<Duration> {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .with_context(|| format!("no {label:?} time in console line {line:?}"))
}
