//! `buildos-machine`: add, upgrade, receive, remove, login to and list build machines.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use buildos_machines::host::{self, Owner};
use buildos_machines::send::{self, Mode, Remote};
use buildos_machines::sudo::{self, Caller, Given};
use buildos_machines::{login, volume, Error, Revision, BUILD_OWNER, MACHINES_ROOT};

/// Build machines on Build OS hosts (manual section 5).
#[derive(Parser)]
#[command(name = "buildos-machine", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Where {
    /// The host's machines root.
    #[arg(long, default_value = MACHINES_ROOT)]
    root: PathBuf,
    /// The machine volume (a directory of the root).
    #[arg(long, default_value = "default")]
    volume: String,
}

#[derive(Args)]
struct HostArgs {
    /// The build host, as ssh takes it (build@build).
    #[arg(long, required_unless_present = "remote_command")]
    host: Option<String>,
    /// Run `buildos-machine` on the host with this command instead of ssh (words split on
    /// spaces; the subcommand and its arguments follow).
    #[arg(long, conflicts_with = "host")]
    remote_command: Option<String>,
    /// With --host: what runs `buildos-machine` there.
    #[arg(long, default_value = send::DEFAULT_REMOTE_PROGRAM)]
    remote_program: String,
    /// With --host: an ssh option (`-o`), e.g. Port=2222; repeatable.
    #[arg(long = "ssh-option")]
    ssh_options: Vec<String>,
}

impl HostArgs {
    fn remote(&self) -> Remote {
        match (&self.remote_command, &self.host) {
            (Some(command), _) => {
                Remote::Command(command.split_whitespace().map(String::from).collect())
            }
            (None, host) => Remote::Ssh {
                host: host.clone().unwrap_or_default(),
                program: self.remote_program.clone(),
                options: self.ssh_options.clone(),
            },
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Send a new machine's read-only <name>-<P>.<R> subvolume to a host and make it current.
    Add {
        subvolume: PathBuf,
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        place: Where,
        /// The owner the subvolume's files must have (user build on the host).
        #[arg(long, default_value_t = BUILD_OWNER)]
        owner: Owner,
    },
    /// Send a new revision of a machine, incrementally against one the host has, and switch.
    Upgrade {
        subvolume: PathBuf,
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        place: Where,
        #[arg(long, default_value_t = BUILD_OWNER)]
        owner: Owner,
        /// The revision to send against (default: the highest lower one both sides hold).
        #[arg(long, conflicts_with = "full")]
        parent: Option<String>,
        /// Send the whole subvolume.
        #[arg(long)]
        full: bool,
        /// Delete the revision that was current once the switch is made.
        #[arg(long)]
        remove_old: bool,
    },
    /// On the host: receive a `btrfs send` stream from stdin and make it current.
    Receive {
        /// The <name>-<P>.<R> the stream holds.
        revision: String,
        #[command(flatten)]
        place: Where,
        /// The machine is new (its directory must not exist).
        #[arg(long)]
        new: bool,
        #[arg(long)]
        remove_old: bool,
        #[arg(long, default_value_t = BUILD_OWNER)]
        owner: Owner,
    },
    /// On the host: remove a machine once no build uses it.
    Remove {
        machine: String,
        #[command(flatten)]
        place: Where,
        /// How long to wait for builds using the machine to end, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Open the VNC console of a running machine, or resume a suspended one.
    Login {
        toolchain: String,
        instance: u32,
        /// The build host (build@build); without it, --resume works on this host.
        #[arg(long)]
        host: Option<String>,
        #[arg(long, conflicts_with = "host")]
        remote_command: Option<String>,
        #[arg(long, default_value = send::DEFAULT_REMOTE_PROGRAM)]
        remote_program: String,
        #[arg(long = "ssh-option")]
        ssh_options: Vec<String>,
        /// The local and remote VNC port (default 5900 + instance).
        #[arg(long)]
        port: Option<u32>,
        /// Open the tunnel rather than print its command.
        #[arg(long)]
        run: bool,
        /// Resume the suspended machine (`cont` on its QEMU monitor).
        #[arg(long)]
        resume: bool,
        /// The QEMU monitor socket (default /tmp/monitor-<toolchain>-<instance>).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// List volumes, machines, revisions, bootstrapped toolchains, builds and space.
    List {
        #[arg(long, default_value = MACHINES_ROOT)]
        root: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let outcome = sudo::caller().and_then(|caller| {
        if let Caller::OnBehalfOf { .. } = caller {
            let (subcommand, given) = given(&matches);
            sudo::check(&subcommand, &given)?;
            // Whatever the caller's environment was, programs are found on the system's path.
            std::env::set_var("PATH", sudo::SAFE_PATH);
        }
        run(cli, caller)
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("buildos-machine: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The subcommand and every argument given on the command line (not defaulted), by the name
/// a person typed: `--root`, or `<revision>` for a positional one.
fn given(matches: &ArgMatches) -> (String, Vec<Given>) {
    let Some((name, sub)) = matches.subcommand() else {
        return (String::new(), Vec::new());
    };
    let command = Cli::command();
    let mut given = Vec::new();
    if let Some(sub_command) = command.find_subcommand(name) {
        for arg in sub_command.get_arguments() {
            let id = arg.get_id().as_str();
            if sub.value_source(id) != Some(ValueSource::CommandLine) {
                continue;
            }
            let option = match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => format!("<{id}>"),
            };
            for value in sub.get_raw(id).into_iter().flatten() {
                given.push(Given::new(&option, value.to_string_lossy()));
            }
        }
    }
    (name.to_string(), given)
}

fn upload(request: send::Upload) -> Result<(), Error> {
    let report = send::upload(&request)?;
    match &report.parent {
        Some(parent) => println!("sent {} incrementally against {parent}", report.revision),
        None => println!("sent {} whole", report.revision),
    }
    print!("{}", report.host_output);
    Ok(())
}

fn run(cli: Cli, caller: Caller) -> Result<(), Error> {
    match cli.command {
        Command::Add {
            subvolume,
            host,
            place,
            owner,
        } => upload(send::Upload {
            mode: Mode::Add,
            source: subvolume,
            remote: host.remote(),
            root: place.root,
            volume: place.volume,
            parent: None,
            full: true,
            remove_old: false,
            owner,
        }),
        Command::Upgrade {
            subvolume,
            host,
            place,
            owner,
            parent,
            full,
            remove_old,
        } => upload(send::Upload {
            mode: Mode::Upgrade,
            source: subvolume,
            remote: host.remote(),
            root: place.root,
            volume: place.volume,
            parent,
            full,
            remove_old,
            owner,
        }),
        Command::Receive {
            revision,
            place,
            new,
            remove_old,
            owner,
        } => {
            let report = host::receive(
                &host::Receive {
                    root: place.root,
                    volume: place.volume,
                    revision: Revision::parse(&revision)?,
                    new_machine: new,
                    remove_old,
                    owner,
                },
                Stdio::inherit(),
            )?;
            let link = report.machine_dir.join(&report.link);
            match &report.previous {
                Some(previous) => println!(
                    "{}: {} -> {} (was {previous})",
                    report.machine_dir.display(),
                    report.link,
                    report.current
                ),
                None => println!("{} -> {}", link.display(), report.current),
            }
            if report.removed_old {
                if let Some(previous) = &report.previous {
                    println!("deleted {previous}");
                }
            }
            Ok(())
        }
        Command::Remove {
            machine,
            place,
            timeout,
        } => {
            host::remove(
                &host::Remove {
                    root: place.root,
                    volume: place.volume,
                    machine,
                    timeout: Duration::from_secs(timeout),
                    poll: Duration::from_secs(1),
                },
                &mut |line| println!("{line}"),
            )?;
            Ok(())
        }
        Command::Login {
            toolchain,
            instance,
            host,
            remote_command,
            remote_program,
            ssh_options,
            port,
            run,
            resume,
            socket,
        } => {
            let remote = match (remote_command, host.clone()) {
                (Some(command), _) => Some(Remote::Command(
                    command.split_whitespace().map(String::from).collect(),
                )),
                (None, Some(host)) => Some(Remote::Ssh {
                    host,
                    program: remote_program,
                    options: ssh_options,
                }),
                (None, None) => None,
            };
            if resume {
                let Some(remote) = remote else {
                    let socket = match socket {
                        Some(socket) => socket,
                        None => login::monitor_socket(&toolchain, instance)?,
                    };
                    // Resuming needs no root: the socket is the caller's own QEMU's.
                    sudo::become_caller(caller)?;
                    let status = login::resume(&socket, Duration::from_secs(10))?;
                    println!("{status}");
                    return Ok(());
                };
                let mut args = vec![
                    "login".to_string(),
                    toolchain,
                    instance.to_string(),
                    "--resume".to_string(),
                ];
                if let Some(socket) = socket {
                    args.push("--socket".to_string());
                    args.push(socket.display().to_string());
                }
                let command = remote.command(&args);
                print!("{}", buildos_machines::btrfs::run(command)?);
                return Ok(());
            }
            let host = host.unwrap_or_else(|| "build@<host>".to_string());
            let port = port.unwrap_or_else(|| login::vnc_port(instance));
            let mut tunnel = login::tunnel_command(&host, port, 10);
            if let Some(Remote::Ssh { options, .. }) = &remote {
                for option in options.iter().rev() {
                    tunnel.splice(1..1, ["-o".to_string(), option.clone()]);
                }
            }
            if run {
                let mut command = std::process::Command::new(&tunnel[0]);
                command.args(&tunnel[1..]);
                buildos_machines::btrfs::run(command)?;
                println!("tunnel open for 10 s: connect a VNC viewer to 127.0.0.1:{port}");
            } else {
                println!("{} && vinagre 127.0.0.1:{port}", tunnel.join(" "));
            }
            Ok(())
        }
        Command::List { root, json } => {
            let volumes = volume::list(&root)?;
            if json {
                let text = serde_json::to_string_pretty(&volumes).map_err(|e| Error::Io {
                    what: "write the list of",
                    path: root,
                    source: e.into(),
                })?;
                println!("{text}");
            } else {
                print!("{}", volume::render(&volumes));
            }
            Ok(())
        }
    }
}
