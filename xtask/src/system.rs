//! The programs the workflow needs from the system, installed with apt when they are missing.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A program and the Debian package that provides it.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub command: &'static str,
    pub package: &'static str,
    pub why: &'static str,
}

pub const APT: Need = Need {
    command: "apt-get",
    package: "apt",
    why: "fetches the Debian kernel and busybox packages",
};
pub const QEMU: Need = Need {
    command: "qemu-system-x86_64",
    package: "qemu-system-x86",
    why: "boots the image for `cargo xtask qemu` and the VM tests",
};
/// OVMF, UEFI for QEMU: the code with Secure Boot, and the variables with Microsoft's keys
/// enrolled (`OVMF_VARS_4M.ms.fd`) beside the empty ones. A file, not a command: [`find`]
/// takes an absolute path as it is.
pub const OVMF: Need = Need {
    command: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    package: "ovmf",
    why: "UEFI firmware (with Secure Boot) for the UEFI network boot tests and bench",
};
pub const SSHD: Need = Need {
    command: "sshd",
    package: "openssh-server",
    why: "the SSH peer the buildos-machines tests send machines through",
};
pub const SSH_KEYGEN: Need = Need {
    command: "ssh-keygen",
    package: "openssh-client",
    why: "makes the key `cargo xtask qemu --demo` logs in with when the user has none",
};
pub const PYTHON3: Need = Need {
    command: "python3",
    package: "python3",
    why: "serves a PXE tree over HTTP (`python3 -m http.server`) for the iPXE VM test and bench",
};
pub const MMDEBSTRAP: Need = Need {
    command: "mmdebstrap",
    package: "mmdebstrap",
    why: "makes the Debian root filesystem of the debian profile",
};
pub const MKSQUASHFS: Need = Need {
    command: "mksquashfs",
    package: "squashfs-tools",
    why: "makes the root and modules images of the layered layout (the debian and nix profiles)",
};
pub const NEWUIDMAP: Need = Need {
    command: "newuidmap",
    package: "uidmap",
    why:
        "maps the user's subordinate ids for mmdebstrap's unshare mode (building as a normal user)",
};
pub const NEWGIDMAP: Need = Need {
    command: "newgidmap",
    package: "uidmap",
    why: "maps the user's subordinate group ids for mmdebstrap's unshare mode",
};
pub const MODINFO: Need = Need {
    command: "modinfo",
    package: "kmod",
    why: "reads the firmware kernel modules declare, the oracle of the firmware manifest's test",
};
pub const MKINITRAMFS: Need = Need {
    command: "mkinitramfs",
    package: "initramfs-tools",
    why: "builds Debian's own initrd, the anchor of `cargo xtask bench`",
};
pub const DNSMASQ: Need = Need {
    command: "dnsmasq",
    package: "dnsmasq-base",
    why: "the DHCP and TFTP server of init's network tests and the monitor's TFTP tests (and br1's DHCP and TFTP on a host)",
};
pub const NFT: Need = Need {
    command: "nft",
    package: "nftables",
    why: "loads br1's NAT ruleset in init's network tests",
};
pub const IP: Need = Need {
    command: "ip",
    package: "iproute2",
    why: "makes the network namespaces and veth pairs of init's network tests",
};
pub const AIOSMTPD: Need = Need {
    command: "aiosmtpd",
    package: "python3-aiosmtpd",
    why: "the SMTP server the monitor's host tests mail to (run with /usr/bin/python3)",
};
pub const OPENSSL: Need = Need {
    command: "openssl",
    package: "openssl",
    why: "makes the self-signed certificate the monitor's https test must refuse",
};
pub const CURL: Need = Need {
    command: "curl",
    package: "curl",
    why: "fetches a file over TFTP from br1's dnsmasq in init's network tests, and with sha256sum is the anchor of the monitor's fetch-and-verify bench",
};
pub const NIX_BUILD: Need = Need {
    command: "nix-build",
    package: "nix-bin",
    why:
        "the Nix client that builds on a host of the nix profile over SSH in its VM test and bench",
};
pub const PING: Need = Need {
    command: "ping",
    package: "iputils-ping",
    why: "shows that NAT forwards from br1 out through br0 in init's network tests",
};

pub const MKFS_EXT4: Need = Need {
    command: "mkfs.ext4",
    package: "e2fsprogs",
    why: "makes the ext4 state disks of the storage tests",
};
pub const MKFS_BTRFS: Need = Need {
    command: "mkfs.btrfs",
    package: "btrfs-progs",
    why: "makes the btrfs machine disks of the storage tests",
};
pub const MKFS_XFS: Need = Need {
    command: "mkfs.xfs",
    package: "xfsprogs",
    why: "makes the xfs disk the storage tests expect to be seen and left alone",
};
pub const LOSETUP: Need = Need {
    command: "losetup",
    package: "mount",
    why: "makes the loop devices the storage tests put filesystems on",
};
pub const BLKID: Need = Need {
    command: "blkid",
    package: "util-linux",
    why: "reads the uuid the storage tests compare init's messages with",
};

/// Finds a command on PATH and in the sbin directories root would search; an absolute path is
/// looked up as it is.
pub fn find(command: &str) -> Option<std::path::PathBuf> {
    if command.starts_with('/') {
        return Path::new(command)
            .is_file()
            .then(|| Path::new(command).to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(command))
        .find(|candidate| candidate.is_file());
    found
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure every needed command is there, installing the missing packages when this runs
/// as root on a system with apt; otherwise says exactly what to install.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let missing: Vec<&Need> = needs.iter().filter(|n| find(n.command).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    // One package may bring several of the commands.
    packages.sort_unstable();
    packages.dedup();
    let reasons: Vec<String> = missing
        .iter()
        .map(|n| format!("  {} (package {}): {}", n.command, n.package, n.why))
        .collect();
    let install = install_args(&packages).join(" ");
    if find("apt-get").is_none() {
        bail!(
            "missing programs:\n{}\nthis system has no apt-get; install the equivalent packages by hand",
            reasons.join("\n")
        );
    }
    if !is_root() {
        bail!(
            "missing programs:\n{}\ninstall them as root with:\n  {install}",
            reasons.join("\n")
        );
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    if !apt_install(&packages)? {
        refuse_removals(&packages, &install)?;
        // The package lists of a fresh system may be empty or stale.
        run_apt(&["update"])?;
        if !apt_install(&packages)? {
            refuse_removals(&packages, &install)?;
            bail!("`{install}` failed; see apt's output above");
        }
    }
    let still: Vec<&str> = missing
        .iter()
        .filter(|n| find(n.command).is_none())
        .map(|n| n.command)
        .collect();
    if !still.is_empty() {
        bail!(
            "installed {} but {} is still not on PATH",
            packages.join(" "),
            still.join(", ")
        );
    }
    Ok(())
}

/// The `apt-get` arguments that install `packages` and nothing else: `--no-remove` makes apt
/// stop rather than remove a package the user has (one from another source, say) to make room.
/// The command line a person is shown is the same, without `-y -q`.
pub fn install_args(packages: &[&str]) -> Vec<String> {
    [
        "apt-get",
        "install",
        "--no-remove",
        "--no-install-recommends",
    ]
    .iter()
    .chain(packages)
    .map(|arg| (*arg).to_owned())
    .collect()
}

fn apt_install(packages: &[&str]) -> Result<bool> {
    let args = install_args(packages);
    let status = Command::new(&args[0])
        .args(&args[1..2])
        .args(["-y", "-q"])
        .args(&args[2..])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    Ok(status.success())
}

/// After a failed install: when apt would have had to remove packages, an error naming them
/// and the command to run by hand; otherwise nothing (the failure has another cause).
fn refuse_removals(packages: &[&str], install: &str) -> Result<()> {
    // A simulation without --no-remove lists what a real install would remove.
    let output = Command::new("apt-get")
        .args(["install", "-s", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("cannot run apt-get")?;
    let removed = removals(&String::from_utf8_lossy(&output.stdout));
    if removed.is_empty() {
        return Ok(());
    }
    let plain = install.replace(" --no-remove", "");
    bail!(
        "installing {} would remove {}, which this machine has; xtask never removes a package. \
         To accept the removal, run as root:\n  {plain}\nor install the missing programs \
         another way and run xtask again",
        packages.join(" "),
        removed.join(", ")
    )
}

/// The packages an `apt-get -s` simulation removes, from its `Remv <package> [<version>]`
/// lines, with their versions.
pub fn removals(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|line| line.strip_prefix("Remv "))
        .map(|rest| rest.trim().to_owned())
        .collect()
}

pub fn run_apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed; see its output above", args.join(" "));
    }
    Ok(())
}

/// Whether apt can update its lists here: root with apt-get.
pub fn can_update_apt() -> bool {
    is_root() && find("apt-get").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every package xtask may install, alone and all together.
    const ALL: [Need; 22] = [
        APT,
        MODINFO,
        QEMU,
        SSHD,
        SSH_KEYGEN,
        PYTHON3,
        MMDEBSTRAP,
        NEWUIDMAP,
        NEWGIDMAP,
        MKINITRAMFS,
        DNSMASQ,
        NFT,
        IP,
        AIOSMTPD,
        OPENSSL,
        CURL,
        PING,
        NIX_BUILD,
        MKFS_EXT4,
        MKFS_BTRFS,
        MKFS_XFS,
        LOSETUP,
    ];

    #[test]
    fn no_install_can_remove_a_package() {
        let mut sets: Vec<Vec<&str>> = ALL.iter().map(|n| vec![n.package]).collect();
        sets.push(ALL.iter().map(|n| n.package).collect());
        sets.push(vec![BLKID.package]);
        for packages in sets {
            let args = install_args(&packages);
            assert_eq!(args[..2], ["apt-get", "install"], "{args:?}");
            assert!(args.contains(&"--no-remove".to_owned()), "{args:?}");
            // Nothing that would turn the install into a removal: no `pkg-` suffix, no other
            // command, no option that lets apt remove.
            for arg in &args[2..] {
                assert!(
                    !arg.ends_with('-') && !arg.starts_with("--auto-remove"),
                    "{arg:?} in {args:?}"
                );
                assert!(
                    ![
                        "remove",
                        "purge",
                        "autoremove",
                        "--purge",
                        "--fix-broken",
                        "-f"
                    ]
                    .contains(&arg.as_str()),
                    "{arg:?} in {args:?}"
                );
            }
            assert_eq!(&args[4..], packages.as_slice(), "{args:?}");
        }
    }

    #[test]
    fn removals_are_read_from_apts_simulation() {
        let simulation = "NOTE: This is only a simulation!\n\
Reading package lists...\n\
The following packages will be REMOVED:\n  qemu-utils\n\
Remv qemu-utils [1:8.2.2+ds-0ubuntu1]\n\
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u7 Debian:12.7/stable [amd64])\n\
Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u7 Debian:12.7/stable [amd64])\n";
        assert_eq!(removals(simulation), ["qemu-utils [1:8.2.2+ds-0ubuntu1]"]);
        assert!(removals("Inst curl (7.88.1-10 Debian:12 [amd64])\n").is_empty());
    }
}
