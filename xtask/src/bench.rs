//! `cargo xtask bench`: each figure beside the anchor it is compared with, measured in the
//! same run.
//!
//! - initrd size and assembly time against Debian's own `mkinitramfs` for the same kernel
//!   (targets: under 12 MB, at least 10 times faster);
//! - the QEMU boot: init's own work from its first line to ready (target: under 1 s) beside
//!   the kernel's time until it started init;
//! - the debian profile: compressed initrd size; a warm rebuild (root filesystem cached,
//!   binaries compiled: what changing only init or the monitor costs besides compiling it)
//!   beside a cold build (the root filesystem made by mmdebstrap in an empty cache, downloads
//!   cached); RAM used by the whole OS after boot in a 1 GiB guest (MemTotal - MemAvailable,
//!   read in the guest; target at most 512 MiB) beside the 4 GiB the Build OS manual reserves.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::qemu::{TempDir, Vm, VmConfig};
use crate::{image, system};

pub fn run() -> Result<()> {
    system::ensure(&[
        system::APT,
        system::QEMU,
        system::MKINITRAMFS,
        system::MMDEBSTRAP,
    ])?;
    let out = crate::work_dir().join("bench-image");
    let inputs = image::prepare("minimal")?;
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

    let (kernel, init) = boot_times(&out)?;
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
    println!("  (the figures above are of the minimal profile)");
    debian()
}

/// The debian profile's figures.
fn debian() -> Result<()> {
    let out = crate::work_dir().join("bench-image-debian");
    // Make sure the cache holds the root filesystem, then time a warm rebuild.
    image::assemble(&image::prepare("debian")?, &out)?;
    let started = Instant::now();
    let inputs = image::prepare("debian")?;
    let built = image::assemble(&inputs, &out)?;
    let warm = started.elapsed();
    let fresh = crate::work_dir().join("rootfs-bench");
    let _ = std::fs::remove_dir_all(&fresh);
    let started = Instant::now();
    let cold_inputs = image::prepare_profile(buildos_rootfs::load("debian")?, &fresh)?;
    image::assemble(
        &cold_inputs,
        &crate::work_dir().join("bench-image-debian-cold"),
    )?;
    let cold = started.elapsed();
    let _ = std::fs::remove_dir_all(&fresh);

    println!();
    println!("debian profile                  buildos      anchor       ratio   target");
    println!(
        "initrd size (compressed)        {:>8.1} MB  {:>8.1} MB           (anchor: its root filesystem segment)",
        built.output.initrd_size as f64 / 1e6,
        built.output.base_size as f64 / 1e6,
    );
    println!(
        "rebuild, only init changed      {:>8.2} s   {:>8.1} s   {:>6.3}   seconds (anchor: cold build, {})",
        warm.as_secs_f64(),
        cold.as_secs_f64(),
        warm.as_secs_f64() / cold.as_secs_f64(),
        verdict(warm < Duration::from_secs(10))
    );
    let used = ram_used(&out)?;
    let reserved = 4u64 << 30;
    println!(
        "RAM used after boot (1 GiB VM)  {:>8.0} MiB {:>8.0} MiB {:>6.3}   <= 512 MiB ({})",
        used as f64 / (1u64 << 20) as f64,
        reserved as f64 / (1u64 << 20) as f64,
        used as f64 / reserved as f64,
        verdict(used <= 512 << 20)
    );
    println!("  (anchor: the 4 GiB the Build OS manual reserves for the OS, buildos.ram_reserved)");
    Ok(())
}

/// Boots the image in a 1 GiB guest and reads MemTotal - MemAvailable in it, in bytes.
fn ram_used(image: &Path) -> Result<u64> {
    let mut config = VmConfig::new(image).append(&["buildos.debug_shell=1"]);
    config.memory_mib = 1024;
    let mut vm = Vm::boot(&config)?;
    vm.wait_for("buildos-init: ready at ", Duration::from_secs(300))?;
    vm.wait_for("debug shell on the console", Duration::from_secs(60))?;
    let lines = vm.shell("cat /proc/meminfo", Duration::from_secs(120))?;
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .with_context(|| format!("no {name} in the guest's /proc/meminfo: {lines:?}"))
    };
    Ok(field("MemTotal:")? - field("MemAvailable:")?)
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
/// kernel's share) and how long its work took until ready.
fn boot_times(image: &Path) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut vm = Vm::boot(&VmConfig::new(image))?;
    let first = vm.wait_for("buildos-init: ", Duration::from_secs(120))?;
    let ready = vm.wait_for("buildos-init: ready at ", Duration::from_secs(120))?;
    let kernel = seconds_after(&first, "starting at ")?;
    let init = seconds_after(&ready, "init took ")?;
    eprintln!(
        "xtask: boot to ready took {:.1} s of wall time",
        started.elapsed().as_secs_f64()
    );
    Ok((kernel, init))
}

fn seconds_after(line: &str, label: &str) -> Result<Duration> {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .with_context(|| format!("no {label:?} time in console line {line:?}"))
}
