//! `cargo xtask`: the workflow in one binary. Each subcommand lives in its own module of the
//! xtask library; this file only reads arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, boot, test and measure buildos")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel, initrd and buildid into out/
    Image {
        #[arg(long, default_value = buildos_rootfs::DEFAULT_PROFILE)]
        profile: String,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// How the initrd is compressed: lz4, gzip, zstd or xz (see docs/image.md)
        #[arg(long, default_value_t = buildos_image_builder::Compression::default())]
        compression: buildos_image_builder::Compression,
        /// How the initrd holds a root filesystem: layered (squashfs images under an overlay,
        /// the default for a profile with one) or cpio (every file unpacked; see docs/image.md)
        #[arg(long)]
        layout: Option<buildos_image_builder::image::Layout>,
        /// How the layered layout's root and modules images are compressed: zstd, lz4, xz or gzip
        #[arg(long, default_value_t = buildos_image_builder::SquashfsCompression::default())]
        squashfs_compression: buildos_image_builder::SquashfsCompression,
        /// A PEM file of CA certificates the monitor trusts besides the built-in roots, for
        /// toolchains served from an internal CA (repeatable; see docs/image.md)
        #[arg(long, value_name = "FILE")]
        ca_certificates: Vec<PathBuf>,
    },
    /// Build the image and boot it in QEMU on this terminal (Ctrl-A X quits)
    Qemu {
        #[arg(long, default_value = buildos_rootfs::DEFAULT_PROFILE)]
        profile: String,
        /// Guest RAM in MiB (the debian profile's cpio layout needs about 1.5 GiB to unpack its
        /// initrd)
        #[arg(long, default_value_t = xtask::qemu::DEBIAN_MEMORY_MIB)]
        memory: u32,
        #[arg(long, default_value_t = xtask::qemu::QEMU_CPUS)]
        cpus: u32,
        /// How the initrd is compressed: lz4, gzip, zstd or xz (see docs/image.md)
        #[arg(long, default_value_t = buildos_image_builder::Compression::default())]
        compression: buildos_image_builder::Compression,
        /// How the initrd holds a root filesystem: layered or cpio (see docs/image.md)
        #[arg(long)]
        layout: Option<buildos_image_builder::image::Layout>,
        /// How the layered layout's root and modules images are compressed: zstd, lz4, xz or gzip
        #[arg(long, default_value_t = buildos_image_builder::SquashfsCompression::default())]
        squashfs_compression: buildos_image_builder::SquashfsCompression,
        /// An OpenSSH public key for user build (default: each ~/.ssh/id_*.pub)
        #[arg(long, value_name = "FILE")]
        ssh_key: Option<PathBuf>,
        /// Boot into a local farm on loopback: a sample toolchain, a mail sink, and the build
        /// id of out/, so that `cargo xtask image` makes the host reboot into the new build
        #[arg(long)]
        demo: bool,
        /// Kernel parameters to append, e.g. buildos.instances=2
        params: Vec<String>,
    },
    /// Write a PXE tree (pxelinux over TFTP, iPXE over HTTP) for a farm inventory and an image,
    /// or print the command line one host gets (see docs/pxe.md)
    Pxe {
        /// The farm inventory (TOML)
        #[arg(long)]
        inventory: PathBuf,
        /// The directory holding buildos-image, buildos-initrd and buildos-buildid
        #[arg(long, default_value = "out")]
        image: PathBuf,
        /// Where to write the tree (the TFTP root, or the directory served over HTTP)
        #[arg(long, required_unless_present = "show")]
        out: Option<PathBuf>,
        /// Print the command line the host with this MAC address gets, instead of writing
        #[arg(long, value_name = "MAC")]
        show: Option<String>,
        /// The URL the tree is served at, for the iPXE scripts (overrides [boot] http_url)
        #[arg(long)]
        http_url: Option<String>,
    },
    /// Install what the tests need, build the image, and run every test
    Test,
    /// Measure image size, assembly and boot time, and the monitor, against their anchors
    Bench {
        /// Measure only the monitor's figures (no image, no QEMU)
        #[arg(long, group = "only")]
        monitor_only: bool,
        /// Measure only the initrd's compressors on the default image
        #[arg(long, group = "only")]
        compression_only: bool,
        /// Run only the property tests of the parsers of untrusted input, longer than the tests do
        #[arg(long, group = "only")]
        fuzz_only: bool,
        /// Measure only the network boots: BIOS iPXE over HTTP and pxelinux over TFTP, UEFI
        /// with iPXE and UEFI with Secure Boot
        #[arg(long, group = "only")]
        pxe_only: bool,
        /// Measure only the default image's driver classes and firmware against the hand-picked
        /// drivers, and its modules step on the hardware device matrix
        #[arg(long, group = "only")]
        classes_only: bool,
        /// Measure only agents that build: the compiler's image beside the profile without it,
        /// and an agent's start to its machine's DHCP lease beside root's same boot
        #[arg(long, group = "only")]
        agents_only: bool,
        /// Measure only the Nix remote builder: a small derivation's round trip built on a host
        /// of the nix profile over SSH, beside the same build run here
        #[arg(long, group = "only")]
        nix_only: bool,
        /// Measure only registration: ready to the first record a hub accepts, and the
        /// record's size with 4 toolchains
        #[arg(long, group = "only")]
        register_only: bool,
        /// List only the default image's 20 largest packages and paths, and why each package
        /// is there
        #[arg(long, group = "only")]
        largest_only: bool,
        /// Measure only the layered root against the gzip cpio root (size, unpack, ready, each
        /// squashfs compressor) and the cached assembly
        #[arg(long, group = "only")]
        layers_only: bool,
        /// Measure only the minimal image's boot: its assembly beside mkinitramfs, init's own
        /// work less the modules step, the modules step beside busybox's modprobe, and each
        /// boot phase with an e1000, a virtio-net and no network card
        #[arg(long, group = "only")]
        boot_only: bool,
    },
    /// List what an initrd contains: path, mode, size
    Ls { initrd: PathBuf },
    /// Regenerate docs/parameters.md from the command line schema
    Docs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Image {
            profile,
            out,
            compression,
            layout,
            squashfs_compression,
            ca_certificates,
        } => xtask::image::run(&xtask::image::Options {
            profile,
            out,
            compression,
            layout,
            squashfs_compression,
            ca_certificates,
        })
        .map(|_| ()),
        Task::Qemu {
            profile,
            memory,
            cpus,
            compression,
            layout,
            squashfs_compression,
            ssh_key,
            demo,
            params,
        } => xtask::qemu::run(&xtask::qemu::Options {
            profile,
            compression,
            layout,
            squashfs_compression,
            memory_mib: memory,
            cpus,
            ssh_key,
            demo,
            params,
        }),
        Task::Pxe {
            inventory,
            image,
            out,
            show,
            http_url,
        } => xtask::pxe::run(
            &inventory,
            &image,
            out.as_ref(),
            show.as_deref(),
            http_url.as_deref(),
        ),
        Task::Test => xtask::test::run(),
        Task::Bench {
            monitor_only,
            compression_only,
            fuzz_only,
            pxe_only,
            classes_only,
            agents_only,
            nix_only,
            register_only,
            largest_only,
            layers_only,
            boot_only,
        } => xtask::bench::run(if monitor_only {
            xtask::bench::Only::Monitor
        } else if compression_only {
            xtask::bench::Only::Compression
        } else if fuzz_only {
            xtask::bench::Only::Fuzz
        } else if pxe_only {
            xtask::bench::Only::Pxe
        } else if classes_only {
            xtask::bench::Only::Classes
        } else if agents_only {
            xtask::bench::Only::Agents
        } else if nix_only {
            xtask::bench::Only::Nix
        } else if register_only {
            xtask::bench::Only::Register
        } else if largest_only {
            xtask::bench::Only::Largest
        } else if layers_only {
            xtask::bench::Only::Layers
        } else if boot_only {
            xtask::bench::Only::Boot
        } else {
            xtask::bench::Only::All
        }),
        Task::Ls { initrd } => xtask::image::list(&initrd),
        Task::Docs => xtask::docs::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
