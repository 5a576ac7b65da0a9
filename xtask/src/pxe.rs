//! `cargo xtask pxe`: a farm inventory and a built image to a PXE tree (pxelinux over TFTP,
//! iPXE over HTTP), or the command line one host gets. The logic is in the `buildos-pxe` crate;
//! this fetches the boot loader from Debian's packages and does the printing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use buildos_image_builder::deb::Deb;
use buildos_pxe::{Farm, Loaders, Mac, Written};

use crate::apt::Apt;

/// `pxelinux.0` in Debian's `pxelinux` package.
const PXELINUX: (&str, &str) = ("pxelinux", "usr/lib/PXELINUX/pxelinux.0");
/// `ldlinux.c32`, which pxelinux.0 loads next, in `syslinux-common`.
const LDLINUX: (&str, &str) = (
    "syslinux-common",
    "usr/lib/syslinux/modules/bios/ldlinux.c32",
);
/// iPXE's EFI build with its own drivers (the package's `usr/lib/ipxe/ipxe.efi` is a symlink
/// to this).
const IPXE_EFI: (&str, &str) = ("ipxe", "boot/ipxe.efi");
/// iPXE's EFI build on the firmware's network driver.
const SNPONLY_EFI: (&str, &str) = ("ipxe", "usr/lib/ipxe/snponly.efi");
/// shim, signed by Microsoft's UEFI CA, with Debian's key inside.
const SHIM: (&str, &str) = ("shim-signed", "usr/lib/shim/shimx64.efi.signed");
/// GRUB's network image, signed with Debian's key.
const GRUB: (&str, &str) = (
    "grub-efi-amd64-signed",
    "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
);

/// Reads and checks an inventory; `http_url` replaces its `[boot] http_url`.
pub fn load(inventory: &Path, http_url: Option<&str>) -> Result<Farm> {
    let text = std::fs::read_to_string(inventory)
        .with_context(|| format!("cannot read the farm inventory {}", inventory.display()))?;
    let mut farm = buildos_pxe::load(&text)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("in {}", inventory.display()))?;
    if let Some(url) = http_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--http-url {url:?}: expected an http:// or https:// URL the tree is served at");
        }
        let mut url = url.to_string();
        if !url.ends_with('/') {
            url.push('/');
        }
        farm.boot.http_url = Some(url);
    }
    Ok(farm)
}

/// The boot loader files, from the Debian packages fetched into the workflow's cache (never the
/// build machine's own /usr/lib).
pub fn loaders() -> Result<Loaders> {
    crate::system::ensure(&[crate::system::APT])?;
    let apt = Apt::new(&crate::work_dir().join("debs"));
    let file = |(package, path): (&str, &str)| -> Result<Vec<u8>> {
        let deb = apt.fetch(package)?;
        let mut entries = Deb::open(&deb)?.read_files(&[path])?;
        match entries.remove(path) {
            Some(entry) => Ok(entry.contents),
            None => bail!("{} holds no {path}", deb.display()),
        }
    };
    Ok(Loaders {
        pxelinux: file(PXELINUX)?,
        ldlinux: file(LDLINUX)?,
        ipxe_efi: file(IPXE_EFI)?,
        snponly_efi: file(SNPONLY_EFI)?,
        shim: file(SHIM)?,
        grub: file(GRUB)?,
    })
}

/// Writes the tree for `inventory` and the image in `image` into `out`.
pub fn build_tree(
    inventory: &Path,
    image: &Path,
    out: &Path,
    http_url: Option<&str>,
) -> Result<Written> {
    let farm = load(inventory, http_url)?;
    if !image.join("buildos-image").is_file() {
        bail!(
            "no image in {}; build one with `cargo xtask image --out {}`",
            image.display(),
            image.display()
        );
    }
    let loaders = loaders()?;
    Ok(buildos_pxe::write_tree(out, &farm, image, &loaders)?)
}

/// `cargo xtask pxe`.
pub fn run(
    inventory: &Path,
    image: &Path,
    out: Option<&PathBuf>,
    show: Option<&str>,
    http_url: Option<&str>,
) -> Result<()> {
    if let Some(mac) = show {
        let farm = load(inventory, http_url)?;
        let Some(mac) = Mac::parse(mac) else {
            bail!("--show {mac:?}: expected {}", buildos_pxe::MAC_EXPECTED);
        };
        let boot = farm.boot_for(mac);
        match boot.mac {
            Some(_) => eprintln!(
                "xtask: {}, firmware {}: pxelinux.cfg/{}, ipxe/{}, grub/{}",
                boot.describe(),
                boot.firmware,
                mac.pxelinux_name(),
                mac.ipxe_name(),
                mac.grub_name()
            ),
            None => eprintln!(
                "xtask: {mac} is not in the inventory: it gets pxelinux.cfg/default, \
                 ipxe/default.ipxe, grub/grub.cfg-default (firmware {})",
                boot.firmware
            ),
        }
        println!("{}", boot.cmdline);
        return Ok(());
    }
    let Some(out) = out else {
        bail!("say where to write the tree with --out <dir>, or print one host's command line with --show <mac>");
    };
    let written = build_tree(inventory, image, out, http_url)?;
    let farm = load(inventory, http_url)?;
    eprintln!(
        "xtask: PXE tree in {} for build {}: {} host(s) and the default; {} file(s) changed{}",
        out.display(),
        written.buildid,
        farm.hosts.len(),
        written.files.len(),
        if written.pruned.is_empty() {
            String::new()
        } else {
            format!(", removed old build(s) {}", written.pruned.join(", "))
        }
    );
    Ok(())
}

/// Python's `http.server` serving a directory on a free loopback port, for iPXE over HTTP in
/// the VM tests and the bench (QEMU's user-mode guests reach it at 10.0.2.2). Dropping it stops
/// the server.
pub struct HttpServer {
    child: std::process::Child,
    pub port: u16,
}

impl HttpServer {
    pub fn start(dir: &Path) -> Result<HttpServer> {
        HttpServer::start_in(dir, None, "127.0.0.1", 0)
    }

    /// Serves `dir` on `address` and `port` (0: a free one), inside network namespace `netns`
    /// if there is one.
    pub fn start_in(
        dir: &Path,
        netns: Option<&str>,
        address: &str,
        port: u16,
    ) -> Result<HttpServer> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        use std::time::Duration;

        crate::system::ensure(&[crate::system::PYTHON3])?;
        let mut command = match netns {
            Some(netns) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", netns, "python3"]);
                ip
            }
            None => Command::new("python3"),
        };
        let mut child = command
            .args(["-u", "-m", "http.server", "--bind", address])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run python3 -m http.server")?;
        // It prints `Serving HTTP on 127.0.0.1 port <port> (...)` once it listens.
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(stdout);
                let _ = reader.read_line(&mut line);
                let _ = tx.send(line);
                // Keep reading so that the server never blocks on a full pipe.
                let mut sink = String::new();
                while matches!(reader.read_line(&mut sink), Ok(n) if n > 0) {
                    sink.clear();
                }
            });
        }
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let port = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        match port {
            Some(port) => Ok(HttpServer { child, port }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("python3 -m http.server did not say which port it listens on: {line:?}")
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
