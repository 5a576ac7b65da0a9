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
    },
    /// Build the image and boot it in QEMU on this terminal (Ctrl-A X quits)
    Qemu {
        #[arg(long, default_value = buildos_rootfs::DEFAULT_PROFILE)]
        profile: String,
        /// Guest RAM in MiB
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Kernel parameters to append, e.g. buildos.instances=2
        params: Vec<String>,
    },
    /// Install what the tests need, build the image, and run every test
    Test,
    /// Measure image size, assembly and boot time, and the monitor, against their anchors
    Bench {
        /// Measure only the monitor's figures (no image, no QEMU)
        #[arg(long)]
        monitor_only: bool,
    },
    /// List what an initrd contains: path, mode, size
    Ls { initrd: PathBuf },
    /// Regenerate docs/parameters.md from the command line schema
    Docs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Image { profile, out } => xtask::image::run(&profile, &out).map(|_| ()),
        Task::Qemu {
            profile,
            memory,
            cpus,
            params,
        } => xtask::qemu::run(&profile, memory, cpus, &params),
        Task::Test => xtask::test::run(),
        Task::Bench { monitor_only } => xtask::bench::run(if monitor_only {
            xtask::bench::Only::Monitor
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
