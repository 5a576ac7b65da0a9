//! The development machine's side of adding and upgrading (manual 5.1, 5.2): check the
//! subvolume, ask the host what it has, pick the parent, and pipe `btrfs send` into the
//! host's `buildos-machine receive`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::btrfs;
use crate::error::{Error, Result};
use crate::host::{check_owner, Owner};
use crate::name::Revision;
use crate::volume::{MachineInfo, VolumeInfo};

/// How `buildos-machine` is run on the build host: over SSH by default; any command prefix in
/// tests (e.g. the binary itself, run locally through a pipe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// `ssh [-o <option>]... <host> -- <program> <quoted args>`.
    Ssh {
        host: String,
        program: String,
        /// ssh's `-o` options (`Port=2222`, `IdentityFile=...`).
        options: Vec<String>,
    },
    /// `<argv...> <args>` run here.
    Command(Vec<String>),
}

/// What runs `buildos-machine` on the host when none is given: user build may not receive
/// btrfs streams itself, so through sudo, as the manual's `ssh build@build sudo btrfs receive`.
pub const DEFAULT_REMOTE_PROGRAM: &str = "sudo buildos-machine";

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,/:=+@".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl Remote {
    pub fn ssh(host: &str) -> Remote {
        Remote::Ssh {
            host: host.to_string(),
            program: DEFAULT_REMOTE_PROGRAM.to_string(),
            options: Vec::new(),
        }
    }

    /// The command that runs `buildos-machine <args>` on the host.
    pub fn command(&self, args: &[String]) -> Command {
        match self {
            Remote::Ssh {
                host,
                program,
                options,
            } => {
                let mut line = program.clone();
                for arg in args {
                    line.push(' ');
                    line.push_str(&shell_quote(arg));
                }
                let mut command = Command::new("ssh");
                for option in options {
                    command.arg("-o").arg(option);
                }
                command.arg(host).arg("--").arg(line);
                command
            }
            Remote::Command(argv) => {
                let mut command = Command::new(argv.first().map(String::as_str).unwrap_or("true"));
                command.args(argv.iter().skip(1)).args(args);
                command
            }
        }
    }
}

/// Add a new machine or upgrade an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Add,
    Upgrade,
}

/// What `upload` is asked to do.
#[derive(Clone, Debug)]
pub struct Upload {
    pub mode: Mode,
    /// The read-only `<name>-<P>.<R>` subvolume on this machine.
    pub source: PathBuf,
    pub remote: Remote,
    /// The host's machines root (`/build/machines`) and the volume in it.
    pub root: PathBuf,
    pub volume: String,
    /// The parent revision for an incremental send; by default the highest revision below
    /// this one that both sides hold. `full` sends everything.
    pub parent: Option<String>,
    pub full: bool,
    pub remove_old: bool,
    pub owner: Owner,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    pub revision: String,
    pub parent: Option<String>,
    /// What the host printed.
    pub host_output: String,
}

fn output_of(mut command: Command) -> Result<String> {
    command.stdin(Stdio::null());
    btrfs::run(command)
}

/// Asks the host for its volumes (`buildos-machine list --json`).
pub fn remote_list(remote: &Remote, root: &Path) -> Result<Vec<VolumeInfo>> {
    let args = vec![
        "list".to_string(),
        "--json".to_string(),
        "--root".to_string(),
        root.display().to_string(),
    ];
    let command = remote.command(&args);
    let line = btrfs::describe(&command);
    let text = output_of(command)?;
    serde_json::from_str(&text).map_err(|e| Error::RemoteList {
        command: line,
        message: e.to_string(),
    })
}

/// Sends `source` to the host and has it received and made current.
pub fn upload(request: &Upload) -> Result<UploadReport> {
    let file_name = request
        .source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let revision = Revision::parse(&file_name)?;
    request.owner.check_not_root()?;
    let name = revision.to_string();
    if !btrfs::is_subvolume(&request.source)? {
        return Err(Error::NotSubvolume {
            path: request.source.clone(),
        });
    }
    if !btrfs::is_readonly(&request.source)? {
        return Err(Error::NotReadOnly {
            path: request.source.clone(),
        });
    }
    check_owner(&request.source, request.owner)?;

    let volumes = remote_list(&request.remote, &request.root)?;
    let volume_path = request.root.join(&request.volume);
    let Some(volume) = volumes.iter().find(|v| v.name == request.volume) else {
        return Err(Error::NoVolume {
            path: volume_path,
            root: request.root.clone(),
        });
    };
    if !volume.btrfs {
        return Err(Error::NotBtrfs { path: volume_path });
    }
    let machine = volume.machines.iter().find(|m| m.name == revision.machine);
    let machine_path = volume_path.join(&revision.machine);
    let parent = match (request.mode, machine) {
        (Mode::Add, Some(_)) => return Err(Error::MachineExists { path: machine_path }),
        (Mode::Add, None) => None,
        (Mode::Upgrade, None) => return Err(Error::NoMachine { path: machine_path }),
        (Mode::Upgrade, Some(m)) => {
            if m.has_revision(&name) {
                return Err(Error::RevisionExists {
                    path: machine_path.join(&name),
                });
            }
            if request.full {
                None
            } else {
                choose_parent(request, &revision, m)?
            }
        }
    };

    let local_dir = request.source.parent().unwrap_or(Path::new("."));
    let parent_path = parent.as_ref().map(|p| local_dir.join(p));
    let (mut send, send_line) = btrfs::send(&request.source, parent_path.as_deref())?;
    let stream = send
        .stdout
        .take()
        .map(Stdio::from)
        .unwrap_or_else(Stdio::null);

    let mut args = vec![
        "receive".to_string(),
        "--root".to_string(),
        request.root.display().to_string(),
        "--volume".to_string(),
        request.volume.clone(),
        "--owner".to_string(),
        request.owner.to_string(),
    ];
    if request.mode == Mode::Add {
        args.push("--new".to_string());
    }
    if request.remove_old {
        args.push("--remove-old".to_string());
    }
    args.push(name.clone());
    let mut receive = request.remote.command(&args);
    receive
        .stdin(stream)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let receive_line = btrfs::describe(&receive);
    let child = receive.spawn();
    // The command holds the read end of the stream's pipe: drop it, so that `btrfs send`
    // sees a broken pipe rather than blocking when the host side stops reading.
    drop(receive);
    let received = child
        .and_then(|child| child.wait_with_output())
        .map_err(|e| Error::Command {
            command: receive_line.clone(),
            status: format!("cannot run: {e}"),
            stderr: String::new(),
        });
    let mut send_stderr = String::new();
    if let Some(mut err) = send.stderr.take() {
        let _ = err.read_to_string(&mut send_stderr);
    }
    let send_status = send.wait().map_err(|e| Error::Command {
        command: send_line.clone(),
        status: format!("cannot wait: {e}"),
        stderr: String::new(),
    })?;
    let received = received?;
    if !received.status.success() {
        return Err(Error::Command {
            command: receive_line,
            status: received.status.to_string(),
            stderr: String::from_utf8_lossy(&received.stderr).into_owned(),
        });
    }
    if !send_status.success() {
        return Err(Error::Command {
            command: send_line,
            status: send_status.to_string(),
            stderr: send_stderr,
        });
    }
    Ok(UploadReport {
        revision: name,
        parent,
        host_output: String::from_utf8_lossy(&received.stdout).into_owned(),
    })
}

/// The parent for an incremental send: the one asked for (which both sides must hold), or the
/// highest revision of the same protocol below this one that the host holds and that is a
/// read-only subvolume here.
fn choose_parent(
    request: &Upload,
    revision: &Revision,
    machine: &MachineInfo,
) -> Result<Option<String>> {
    let local_dir = request.source.parent().unwrap_or(Path::new("."));
    let usable_here = |name: &str| -> Result<bool> {
        let path = local_dir.join(name);
        Ok(path.is_dir() && btrfs::is_subvolume(&path)? && btrfs::is_readonly(&path)?)
    };
    if let Some(parent) = &request.parent {
        Revision::parse(parent)?;
        if !machine.has_revision(parent) {
            return Err(Error::NoMachine {
                path: request
                    .root
                    .join(&request.volume)
                    .join(&revision.machine)
                    .join(parent),
            });
        }
        if !usable_here(parent)? {
            return Err(Error::NotReadOnly {
                path: local_dir.join(parent),
            });
        }
        return Ok(Some(parent.clone()));
    }
    let mut candidates: Vec<_> = machine
        .revisions
        .iter()
        .filter(|r| r.protocol == revision.protocol && r.revision < revision.revision)
        .collect();
    candidates.sort_by_key(|r| std::cmp::Reverse(r.revision));
    for candidate in candidates {
        if usable_here(&candidate.name)? {
            return Ok(Some(candidate.name.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(command: &Command) -> Vec<String> {
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn ssh_runs_the_host_side_as_one_quoted_remote_command() {
        let args: Vec<String> = ["receive", "--root", "/build/machines", "it's a-1.0"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            argv(&Remote::ssh("build@build").command(&args)),
            [
                "ssh",
                "build@build",
                "--",
                r"sudo buildos-machine receive --root /build/machines 'it'\''s a-1.0'",
            ]
        );
    }

    #[test]
    fn a_command_prefix_runs_the_host_side_here() {
        let remote = Remote::Command(vec!["env".into(), "buildos-machine".into()]);
        assert_eq!(
            argv(&remote.command(&["list".to_string()])),
            ["env", "buildos-machine", "list"]
        );
    }
}
