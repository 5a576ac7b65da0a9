//! Agents: unpacking the toolchain's archive, its agent declaration, and running the instances
//! on their slices as the build user, restarted with backoff.
//!
//! The archive (the first file of the checksums list; `.tar.xz`, `.txz`, `.tar.gz`, `.tgz` or
//! `.tar`) may hold a `buildos-agent.toml` at its top or in its one top directory:
//!
//! ```toml
//! # A Tera template; the rendered text is split at whitespace into the program and its
//! # arguments. A relative program is relative to the directory holding this file.
//! command = "bin/agent --cpus {{ cpus }} --ram {{ ram_kib }} {% for url in controller_urls %} {{ url }}{% endfor %}"
//! ```
//!
//! A declaration may also name a `bootstrap` command, a template like `command`, which runs
//! once per installed toolchain version before any instance starts (see [`Bootstrap`]):
//!
//! ```toml
//! bootstrap = "./build.sh {{ work_dir }}"
//! command = "{{ work_dir }}/bin/agent {{ instance }}"
//! ```
//!
//! Without one the agent is bbot's: [`DEFAULT_COMMAND`].

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::slices::Slice;

/// The declaration's file name.
pub const DECLARATION: &str = "buildos-agent.toml";

/// The command without a declaration: bbot-agent's options (see its manual), with the
/// controller URLs as its arguments.
pub const DEFAULT_COMMAND: &str = "bin/bbot-agent --systemd-daemon \
--toolchain-name {{ toolchain_name }} --toolchain-num {{ toolchain_num }} \
--toolchain-ver {{ toolchain_version }} --toolchain-id {{ toolchain_id }} \
--instance {{ instance }} --instance-max {{ instances }} \
--cpu {{ cpus }} --build-ram {{ ram_kib }} --auxiliary-ram {{ auxiliary_ram_kib }} \
--bridge {{ bridge }} --tftp-host {{ tftp_host }} \
{% for fp in trust %} --trust {{ fp }}{% endfor %}\
{% for url in controller_urls %} {{ url }}{% endfor %}";

/// `buildos-agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    pub command: String,
    /// Run once per installed version, as the agents' user, in the agent directory, before
    /// any instance starts; typically builds the agent from the source the archive holds.
    #[serde(default)]
    pub bootstrap: Option<String>,
}

/// What a command template may use.
#[derive(Debug, Clone, Serialize)]
pub struct Variables {
    pub toolchain_name: String,
    /// The toolchain's position among the configured ones, from 1 (`default` first).
    pub toolchain_num: u32,
    pub toolchain_version: String,
    /// The toolchain archive's hash.
    pub toolchain_id: String,
    /// Where the toolchain's files are served: `<tftp root>/toolchains/<name>`.
    pub toolchain_dir: String,
    /// Where the archive is unpacked (and the declaration was found); root's, read-only to
    /// the agent.
    pub agent_dir: String,
    /// The toolchain's own writable directory (`/build/work/<name>`), owned by the agents'
    /// user and the agents' `HOME`.
    pub work_dir: String,
    /// The toolchain's writable directory served to the build machines over TFTP
    /// (`/build/tftp/agents/<name>`, `agents/<name>/` to a TFTP client).
    pub served_dir: String,
    pub instance: u32,
    pub instances: u32,
    pub cpus: u32,
    /// The CPU list the instance is pinned to, like `2-9`.
    pub affinity: String,
    pub ram_mib: u64,
    pub ram_kib: u64,
    pub auxiliary_ram_mib: u64,
    pub auxiliary_ram_kib: u64,
    pub bridge: String,
    /// The host's address on `bridge`, where its TFTP server serves the toolchain files to
    /// the machines there: br1's static one, or br0's from its lease.
    pub tftp_host: String,
    /// `buildos.toolchain_trust` (`no` when unset).
    pub toolchain_trust: String,
    /// Every `buildos.controller_trust`.
    pub trust: Vec<String>,
    /// Every `buildos.controller_url`.
    pub controller_urls: Vec<String>,
    /// The host's agent key on the state disk (private, the agents' user's), empty when there
    /// is none.
    pub agent_key: String,
    /// The toolchain's secrets, `/state/secrets/<name>`: the agents' user's (0700), one file
    /// per secret (0600); see [`crate::secrets`].
    pub secrets_dir: String,
}

/// An agent step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    pub what: String,
    pub reason: String,
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

impl std::error::Error for AgentError {}

fn error(what: impl fmt::Display, reason: impl fmt::Display) -> AgentError {
    AgentError {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Unpacks `archive` into `dest` (replaced whole) and returns the directory agents run in:
/// the one holding the declaration, else the archive's one top directory, else `dest`.
pub fn unpack(archive: &Path, dest: &Path) -> Result<PathBuf, AgentError> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = fs::File::open(archive).map_err(|e| error(archive.display(), e))?;
    let reader: Box<dyn io::Read> = if name.ends_with(".tar.xz") || name.ends_with(".txz") {
        Box::new(liblzma::read::XzDecoder::new(io::BufReader::new(file)))
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
    } else if name.ends_with(".tar") {
        Box::new(io::BufReader::new(file))
    } else {
        return Err(error(
            archive.display(),
            "expected a .tar.xz, .txz, .tar.gz, .tgz or .tar toolchain archive",
        ));
    };
    if let Some(parent) = dest.parent() {
        crate::paths::private_dir(parent).map_err(|reason| error("agents directory", reason))?;
    }
    let staging = dest.with_extension("unpacking");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(|e| error(staging.display(), e))?;
    if let Err(e) = unpack_into(reader, &staging) {
        let _ = fs::remove_dir_all(&staging);
        return Err(error(format!("unpacking {}", archive.display()), e));
    }
    let _ = fs::remove_dir_all(dest);
    fs::rename(&staging, dest).map_err(|e| error(dest.display(), e))?;
    if is_plain_file(&dest.join(DECLARATION)) {
        return Ok(dest.to_path_buf());
    }
    let entries: Vec<PathBuf> = fs::read_dir(dest)
        .map_err(|e| error(dest.display(), e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    match entries.as_slice() {
        [only] if fs::symlink_metadata(only).is_ok_and(|m| m.is_dir()) => Ok(only.clone()),
        _ => Ok(dest.to_path_buf()),
    }
}

/// Unpacks a tar stream into `dir` as root does it safely: files owned by root, without
/// setuid, setgid or sticky bits and not writable by group or others (so the agents' user
/// cannot change what root reads back, like the declaration), and no device nodes or FIFOs.
fn unpack_into(reader: impl io::Read, dir: &Path) -> Result<(), String> {
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(false);
    tar.set_unpack_xattrs(false);
    tar.set_mask(0o7022);
    for entry in tar.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(format!(
                "{path}: a device node or FIFO; toolchain archives may hold only files, \
                 directories and links"
            ));
        }
        entry.unpack_in(dir).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// A regular file at `path` itself, not a link to one.
fn is_plain_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Makes `parent/name` a directory owned by `user` (the monitor's own when `None`) with `mode`,
/// for the agents to write in; `parent` is made a directory only root can change, so the
/// agents' user can neither rename it nor replace it with a link while root sets it up.
pub fn user_dir(
    parent: &Path,
    name: &str,
    user: Option<(u32, u32)>,
    mode: u32,
) -> Result<PathBuf, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    crate::paths::private_dir(parent).map_err(|reason| error("agents' directories", reason))?;
    let dir = parent.join(name);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(error(dir.display(), e)),
    }
    // Only root can have put something else there, but check before giving it away.
    if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Err(error(dir.display(), "exists and is not a directory"));
    }
    if let Some((uid, gid)) = user {
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| error(format!("giving {} to uid {uid}", dir.display()), e))?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
        .map_err(|e| error(format!("setting the mode of {}", dir.display()), e))?;
    Ok(dir)
}

/// The agent's declaration in `dir`, or `None` (the default command applies).
pub fn declaration(dir: &Path) -> Result<Option<Declaration>, AgentError> {
    let path = dir.join(DECLARATION);
    // Root reads it: never through a link the archive planted (to /etc/shadow, say).
    let read = || {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)?;
        let mut text = String::new();
        io::Read::read_to_string(&mut file, &mut text)?;
        Ok::<_, io::Error>(text)
    };
    let text = match read() {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(path.display(), e)),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| error(path.display(), e))
}

/// The program and arguments of one instance: the template rendered and split at whitespace;
/// a relative program is taken relative to `dir`.
pub fn command(
    template: &str,
    variables: &Variables,
    dir: &Path,
) -> Result<Vec<String>, AgentError> {
    let context = tera::Context::from_serialize(variables)
        .map_err(|e| error("agent command variables", e))?;
    let rendered = tera::Tera::one_off(template, &context, false).map_err(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        error(format!("agent command template {template:?}"), reason)
    })?;
    let mut argv: Vec<String> = rendered.split_whitespace().map(str::to_string).collect();
    let Some(program) = argv.first_mut() else {
        return Err(error("agent command", "the template renders to nothing"));
    };
    if !program.starts_with('/') {
        *program = dir.join(&*program).display().to_string();
    }
    Ok(argv)
}

/// The address machines on `bridge` reach the host's TFTP server at: br1's for br1; for br0
/// the address init wrote as `address=<ip>/<prefix>` into `network` (its
/// `/run/buildos/network`), or an error when br0 has none (no lease).
pub fn tftp_host(
    bridge: buildos_cmdline::Bridge,
    br1: buildos_cmdline::Ipv4Net,
    network: &str,
) -> Result<String, AgentError> {
    match bridge {
        buildos_cmdline::Bridge::Br1 => Ok(br1.addr().to_string()),
        buildos_cmdline::Bridge::Br0 => {
            let address = network
                .lines()
                .find_map(|l| l.strip_prefix("address="))
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.trim().parse::<std::net::Ipv4Addr>().ok());
            address.map(|a| a.to_string()).ok_or_else(|| {
                error(
                    "bridge br0",
                    "br0 has no address (no DHCP lease at boot), so its machines could not \
                     reach this host's TFTP server; the agents start when the host boots with \
                     a lease",
                )
            })
        }
    }
}

/// A toolchain's bootstrap: run once, by whichever of its instances gets there first, while
/// the others wait; an instance starts only after it succeeded.
pub struct Bootstrap {
    pub toolchain: String,
    /// The rendered command (program and arguments), run in the instance's `dir`.
    pub argv: Vec<String>,
    /// Its stdout and stderr, bounded (`<run>/agents/<toolchain>-bootstrap.log`).
    pub log: PathBuf,
    /// Root's record that this toolchain id was bootstrapped (`<agents>/<toolchain>.bootstrapped`):
    /// a restart of the monitor does not bootstrap the same version again.
    pub marker: PathBuf,
    /// The installed toolchain's id; the marker holds it.
    pub id: String,
    /// Told (subject, body) when the bootstrap fails.
    pub on_failure: Arc<dyn Fn(String, String) + Send + Sync>,
    result: std::sync::OnceLock<Result<(), String>>,
}

impl fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bootstrap")
            .field("toolchain", &self.toolchain)
            .field("argv", &self.argv)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// Lines of the log a failure mail quotes.
const TAIL_LINES: usize = 40;

impl Bootstrap {
    pub fn new(
        toolchain: &str,
        argv: Vec<String>,
        log: PathBuf,
        marker: PathBuf,
        id: &str,
        on_failure: Arc<dyn Fn(String, String) + Send + Sync>,
    ) -> Bootstrap {
        Bootstrap {
            toolchain: toolchain.to_string(),
            argv,
            log,
            marker,
            id: id.to_string(),
            on_failure,
            result: std::sync::OnceLock::new(),
        }
    }

    /// Runs the bootstrap the first time it is asked (later callers wait and get the same
    /// answer); done already for this id is success.
    pub fn run(
        &self,
        spec: &Spec,
        policy: &Policy,
        state: &Mutex<InstanceState>,
    ) -> Result<(), String> {
        self.result
            .get_or_init(|| {
                if fs::read_to_string(&self.marker).is_ok_and(|id| id.trim() == self.id) {
                    log::info!("toolchain {}: bootstrapped already", self.toolchain);
                    return Ok(());
                }
                let _ = fs::remove_file(&self.marker);
                log::info!("toolchain {}: bootstrap {:?}", self.toolchain, self.argv);
                let started = Instant::now();
                let result = self.spawn_and_wait(spec, policy, state);
                match &result {
                    Ok(()) => {
                        log::info!(
                            "toolchain {}: bootstrap done in {:.0?}",
                            self.toolchain,
                            started.elapsed()
                        );
                        if let Err(e) = fs::write(&self.marker, format!("{}\n", self.id)) {
                            log::warn!("{}: {e}", self.marker.display());
                        }
                    }
                    Err(why) => {
                        log::error!("toolchain {}: bootstrap failed: {why}", self.toolchain);
                        let tail = log_tail(&self.log, TAIL_LINES);
                        (self.on_failure)(
                            format!("toolchain {} bootstrap failed", self.toolchain),
                            format!(
                                "The bootstrap of toolchain {} ({}) failed: {why}\n\
                                 No agent of this toolchain runs until the next boot; the \
                                 other toolchains go on.\n\n\
                                 The last lines of {}:\n{tail}",
                                self.toolchain,
                                self.argv.join(" "),
                                self.log.display()
                            ),
                        );
                    }
                }
                result
            })
            .clone()
    }

    fn spawn_and_wait(
        &self,
        spec: &Spec,
        policy: &Policy,
        state: &Mutex<InstanceState>,
    ) -> Result<(), String> {
        let (log, copier) =
            buildos_logcap::open_with_copier(&self.log, buildos_logcap::DEFAULT_BOUND)
                .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        // The same launcher and user as the instances, on every CPU.
        let one = Spec {
            argv: self.argv.clone(),
            slice: Slice {
                affinity: Vec::new(),
                ..spec.slice.clone()
            },
            ..spec.clone()
        };
        let mut child = launcher(&one, policy)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", policy.launcher.display()))?;
        // Recorded like an instance's, so stopping the host stops the bootstrap too.
        lock(state).pid = Some(child.id());
        let status = child.wait().map_err(|e| format!("wait failed: {e}"));
        lock(state).pid = None;
        // Its log is read for the mail when it failed: let the copy finish first.
        copier.wait(Duration::from_secs(5));
        let status = status?;
        if status.success() {
            Ok(())
        } else {
            Err(status.to_string())
        }
    }
}

/// The last `lines` lines of the log at `path` (and of its rotated part when the log is
/// shorter), indented for a mail.
fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = fs::read_to_string(buildos_logcap::rotated(path)).unwrap_or_default();
    text.push_str(&fs::read_to_string(path).unwrap_or_default());
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    if tail.is_empty() {
        return "  (no output)\n".to_string();
    }
    tail.iter().map(|l| format!("  {l}\n")).collect()
}

/// One instance to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub slice: Slice,
    pub argv: Vec<String>,
    pub dir: PathBuf,
    pub nice: i32,
    /// `(uid, gid)` to run as; `None` keeps the monitor's.
    pub user: Option<(u32, u32)>,
    /// The user's supplementary groups (`kvm` for `build`); only with `user`.
    pub groups: Vec<u32>,
    /// The agent's `HOME`; `None` keeps the user's from `/etc/passwd`.
    pub home: Option<PathBuf>,
    /// The agent's stdout and stderr.
    pub log: PathBuf,
    /// The toolchain's bootstrap, run before the first start.
    pub bootstrap: Option<Arc<Bootstrap>>,
}

/// How restarts go.
#[derive(Debug, Clone)]
pub struct Policy {
    /// A run shorter than this is a quick death.
    pub quick: Duration,
    /// After this many quick deaths in a row the instance is left stopped.
    pub max_quick_deaths: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The program whose `run-agent` subcommand pins, renices and drops privileges.
    pub launcher: PathBuf,
}

/// An instance's state, for the status and for stopping.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InstanceState {
    pub pid: Option<u32>,
    pub starts: u32,
    /// `running`, `restarting`, `stopped: ...`, `given up: ...`.
    pub state: String,
    pub last_exit: Option<String>,
}

/// Runs instances, each in a thread that restarts it.
pub struct Supervisor {
    instances: Vec<(Spec, Arc<Mutex<InstanceState>>)>,
    stopping: Arc<Mutex<bool>>,
}

/// Called with (spec, deaths, last exit) when an instance keeps dying.
pub type OnGiveUp = Arc<dyn Fn(&Spec, u32, &str) + Send + Sync>;

impl Supervisor {
    pub fn start(specs: Vec<Spec>, policy: Policy, on_give_up: OnGiveUp) -> Supervisor {
        let stopping = Arc::new(Mutex::new(false));
        let mut instances = Vec::new();
        for spec in specs {
            let state = Arc::new(Mutex::new(InstanceState::default()));
            let (spec2, state2, stopping2, on_give_up, policy) = (
                spec.clone(),
                state.clone(),
                stopping.clone(),
                on_give_up.clone(),
                policy.clone(),
            );
            std::thread::spawn(move || {
                supervise(&spec2, &policy, &state2, &stopping2, &on_give_up)
            });
            instances.push((spec, state));
        }
        Supervisor {
            instances,
            stopping,
        }
    }

    /// Each instance's slice and state.
    pub fn states(&self) -> Vec<(Slice, InstanceState)> {
        self.instances
            .iter()
            .map(|(spec, state)| (spec.slice.clone(), lock(state).clone()))
            .collect()
    }

    /// SIGTERM to every agent's process group, then SIGKILL to those still running after
    /// `grace`.
    pub fn stop(&self, grace: Duration) {
        *lock(&self.stopping) = true;
        let pids = || -> Vec<u32> {
            self.instances
                .iter()
                .filter_map(|(_, state)| lock(state).pid)
                .collect()
        };
        // Each agent leads its own process group: the signal reaches what it started too.
        for pid in pids() {
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while !pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in pids() {
            log::warn!("agent {pid} still running after {grace:?}: SIGKILL");
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The launcher's command for `spec`: `run-agent` with its options, in its directory, in a
/// process group of its own.
fn launcher(spec: &Spec, policy: &Policy) -> Command {
    let mut command = Command::new(&policy.launcher);
    command
        .arg("run-agent")
        .arg("--nice")
        .arg(spec.nice.to_string());
    if !spec.slice.affinity.is_empty() {
        command.arg("--cpus").arg(spec.slice.affinity_list());
    }
    if let Some((uid, gid)) = spec.user {
        command
            .arg("--uid")
            .arg(uid.to_string())
            .arg("--gid")
            .arg(gid.to_string());
        if !spec.groups.is_empty() {
            let groups: Vec<String> = spec.groups.iter().map(u32::to_string).collect();
            command.arg("--groups").arg(groups.join(","));
        }
    }
    if let Some(home) = &spec.home {
        command.arg("--home").arg(home);
    }
    use std::os::unix::process::CommandExt;
    command
        .arg("--")
        .args(&spec.argv)
        .process_group(0)
        .current_dir(&spec.dir);
    command
}

fn spawn(spec: &Spec, policy: &Policy) -> io::Result<Child> {
    // Through a pipe to a thread that keeps the log bounded: /run is RAM.
    let log = buildos_logcap::open(&spec.log, buildos_logcap::DEFAULT_BOUND)?;
    launcher(spec, policy)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

fn supervise(
    spec: &Spec,
    policy: &Policy,
    state: &Mutex<InstanceState>,
    stopping: &Mutex<bool>,
    on_give_up: &OnGiveUp,
) {
    let name = format!("{}/{}", spec.slice.toolchain, spec.slice.instance);
    if let Some(bootstrap) = &spec.bootstrap {
        lock(state).state = "bootstrapping".to_string();
        if let Err(why) = bootstrap.run(spec, policy, state) {
            lock(state).state = format!("stopped: bootstrap failed: {why}");
            return;
        }
    }
    let mut quick_deaths = 0;
    let mut delay = policy.first_delay;
    loop {
        if *lock(stopping) {
            lock(state).state = "stopped".to_string();
            return;
        }
        let started = Instant::now();
        let exit = match spawn(spec, policy) {
            Ok(mut child) => {
                {
                    let mut s = lock(state);
                    s.pid = Some(child.id());
                    s.starts += 1;
                    s.state = "running".to_string();
                }
                log::info!("agent {name} started, pid {}", child.id());
                let status = child.wait();
                lock(state).pid = None;
                match status {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                }
            }
            Err(e) => format!("cannot start {}: {e}", policy.launcher.display()),
        };
        log::warn!("agent {name}: {exit}");
        lock(state).last_exit = Some(exit.clone());
        if *lock(stopping) {
            lock(state).state = "stopped".to_string();
            return;
        }
        if started.elapsed() < policy.quick {
            quick_deaths += 1;
        } else {
            quick_deaths = 1;
            delay = policy.first_delay;
        }
        if quick_deaths >= policy.max_quick_deaths {
            lock(state).state = format!("given up after {quick_deaths} quick deaths: {exit}");
            on_give_up(spec, quick_deaths, &exit);
            return;
        }
        lock(state).state = format!("restarting in {delay:?}");
        let until = Instant::now() + delay;
        while Instant::now() < until && !*lock(stopping) {
            std::thread::sleep(Duration::from_millis(50).min(delay));
        }
        delay = (delay * 2).min(policy.max_delay);
    }
}

/// What `run-agent` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Launch {
    pub nice: i32,
    pub cpus: Option<Vec<u32>>,
    /// `(uid, gid)`; both or neither.
    pub user: Option<(u32, u32)>,
    /// The supplementary groups, as `initgroups` would set them for the user.
    pub groups: Vec<u32>,
    pub home: Option<String>,
    pub argv: Vec<String>,
}

/// Reads `run-agent`'s options. It runs as root and drops privileges: any option it cannot
/// read is an error, so a mistake never starts an agent as root or at the wrong priority.
pub fn parse_launch(args: &[String]) -> Result<Launch, AgentError> {
    fn number<T: std::str::FromStr>(
        option: &str,
        value: Option<&String>,
        expected: &str,
    ) -> Result<T, AgentError> {
        let value = value.ok_or_else(|| error("run-agent", format!("{option} needs a value")))?;
        value.parse().map_err(|_| {
            error(
                "run-agent",
                format!("{option} {value:?}: expected {expected}"),
            )
        })
    }
    let mut launch = Launch::default();
    let (mut uid, mut gid) = (None, None);
    // `--` ends the options: it is never an option's value.
    let mut iter = args.iter().peekable();
    let mut iter = std::iter::from_fn(move || match iter.peek() {
        Some(next) if next.as_str() == "--" => None,
        _ => iter.next(),
    });
    let mut ended = false;
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--nice" => {
                let nice: i32 = number("--nice", iter.next(), "a nice value from -20 to 19")?;
                if !(-20..=19).contains(&nice) {
                    return Err(error(
                        "run-agent",
                        format!("--nice \"{nice}\": expected a nice value from -20 to 19"),
                    ));
                }
                launch.nice = nice;
            }
            "--cpus" => {
                let value = iter
                    .next()
                    .ok_or_else(|| error("run-agent", "--cpus needs a value"))?;
                launch.cpus = Some(crate::slices::parse_cpu_list(value).ok_or_else(|| {
                    error(
                        "run-agent",
                        format!("--cpus {value:?}: expected a CPU list like 0-3,8"),
                    )
                })?);
            }
            "--uid" => uid = Some(number::<u32>("--uid", iter.next(), "a numeric user id")?),
            "--gid" => gid = Some(number::<u32>("--gid", iter.next(), "a numeric group id")?),
            "--groups" => {
                let value = iter
                    .next()
                    .ok_or_else(|| error("run-agent", "--groups needs a value"))?;
                launch.groups = value
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(|g| {
                        g.parse().map_err(|_| {
                            error(
                                "run-agent",
                                format!(
                                    "--groups {value:?}: expected numeric group ids separated \
                                     by commas"
                                ),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--home" => {
                launch.home = Some(
                    iter.next()
                        .cloned()
                        .ok_or_else(|| error("run-agent", "--home needs a value"))?,
                );
            }
            other => return Err(error("run-agent", format!("unknown option {other:?}"))),
        }
    }
    if let Some(at) = args.iter().position(|a| a == "--") {
        launch.argv = args[at + 1..].to_vec();
        ended = true;
    }
    if !ended || launch.argv.is_empty() {
        return Err(error("run-agent", "no program after --"));
    }
    launch.user = match (uid, gid) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        (None, None) => None,
        _ => return Err(error("run-agent", "--uid and --gid go together")),
    };
    if launch.user.is_none() && !launch.groups.is_empty() {
        return Err(error("run-agent", "--groups needs --uid and --gid"));
    }
    Ok(launch)
}

/// `buildos-monitor run-agent --nice N --cpus LIST [--uid U --gid G [--groups G,...]]
/// [--home DIR] -- program args…`: pins itself to the CPUs, sets its nice value, drops to the
/// user with its supplementary groups and becomes the agent. Returns only on failure; an
/// option it cannot read is a failure before anything runs.
pub fn run_agent(args: &[String]) -> AgentError {
    let launch = match parse_launch(args) {
        Ok(launch) => launch,
        Err(e) => return e,
    };
    // The agent starts with no signal blocked, whatever the launcher inherited.
    if let Err(e) = unblock_signals() {
        return error("sigprocmask", e);
    }
    if let Some(cpus) = &launch.cpus {
        let mut set = rustix::thread::CpuSet::new();
        for cpu in cpus {
            set.set(*cpu as usize);
        }
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            return error("sched_setaffinity", e);
        }
    }
    if let Err(e) = rustix::process::setpriority_process(None, launch.nice) {
        return error(format!("setpriority {}", launch.nice), e);
    }
    let Some((program, rest)) = launch.argv.split_first() else {
        return error("run-agent", "no program after --");
    };
    let mut command = Command::new(program);
    command.args(rest);
    if let Some((uid, gid)) = launch.user {
        // Groups first, then the group, then the user: each needs the privilege the next
        // step gives up. Done here rather than through Command::uid, which would clear the
        // supplementary groups (`kvm` among them).
        let mut groups: Vec<nix::unistd::Gid> = vec![nix::unistd::Gid::from_raw(gid)];
        groups.extend(
            launch
                .groups
                .iter()
                .filter(|g| **g != gid)
                .map(|g| nix::unistd::Gid::from_raw(*g)),
        );
        if let Err(e) = nix::unistd::setgroups(&groups) {
            return error(format!("setgroups {:?}", launch.groups), e);
        }
        if let Err(e) = nix::unistd::setgid(nix::unistd::Gid::from_raw(gid)) {
            return error(format!("setgid {gid}"), e);
        }
        if let Err(e) = nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)) {
            return error(format!("setuid {uid}"), e);
        }
        if let Some(user) = passwd_entry("/etc/passwd", |_, entry_uid| entry_uid == uid) {
            command
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
    }
    if let Some(home) = &launch.home {
        command.env("HOME", home);
    }
    use std::os::unix::process::CommandExt;
    error(format!("exec {program}"), command.exec())
}

/// The supplementary groups of `user` in the group file text `group` (`name:x:gid:members`),
/// as `initgroups` finds them: every group whose member list names the user. Read directly for
/// the same reason as [`passwd_entry`].
pub fn supplementary_groups(group: &str, user: &str) -> Vec<u32> {
    let mut gids: Vec<u32> = group
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [_, _, gid, members] = fields.as_slice() else {
                return None;
            };
            members
                .split(',')
                .any(|m| m.trim() == user)
                .then(|| gid.parse().ok())
                .flatten()
        })
        .collect();
    gids.sort_unstable();
    gids.dedup();
    gids
}

/// Unblocks every signal of the calling thread (call it before any other thread exists). init
/// blocks the signals it waits for, SIGTERM among them, and its children inherit that mask:
/// without this, the monitor and its agents would be deaf to the SIGTERM that asks them to stop
/// before a reboot, and would only go at the SIGKILL after the grace period.
pub fn unblock_signals() -> nix::Result<()> {
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// A user from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The first entry of the passwd file at `path` that `matches` (name, uid). Read directly: the
/// monitor is a static binary, where glibc's getpwnam would need NSS modules the image lacks.
pub fn passwd_entry(path: &str, matches: impl Fn(&str, u32) -> bool) -> Option<User> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields.as_slice() else {
            return None;
        };
        let uid = uid.parse().ok()?;
        let gid = gid.parse().ok()?;
        matches(name, uid).then(|| User {
            name: name.to_string(),
            uid,
            gid,
            home: home.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables() -> Variables {
        Variables {
            toolchain_name: "default".into(),
            toolchain_num: 1,
            toolchain_version: "0.4.0".into(),
            toolchain_id: "ae89".into(),
            toolchain_dir: "/build/tftp/toolchains/default".into(),
            agent_dir: "/build/agents/default".into(),
            work_dir: "/build/work/default".into(),
            served_dir: "/build/tftp/agents/default".into(),
            instance: 2,
            instances: 3,
            cpus: 4,
            affinity: "2-9".into(),
            ram_mib: 16384,
            ram_kib: 16384 * 1024,
            auxiliary_ram_mib: 4096,
            auxiliary_ram_kib: 4096 * 1024,
            bridge: "br1".into(),
            tftp_host: "172.30.0.1".into(),
            toolchain_trust: "no".into(),
            trust: vec!["AA:BB".into(), "CC:DD".into()],
            controller_urls: vec!["https://ci.example.org/".into(), "https://c2/".into()],
            agent_key: "/state/agent/id_ed25519".into(),
            secrets_dir: "/state/secrets/default".into(),
        }
    }

    #[test]
    fn default_command_follows_bbot_agent_options() {
        let argv = command(DEFAULT_COMMAND, &variables(), Path::new("/a")).unwrap();
        assert_eq!(
            argv.join(" "),
            "/a/bin/bbot-agent --systemd-daemon --toolchain-name default --toolchain-num 1 \
--toolchain-ver 0.4.0 --toolchain-id ae89 --instance 2 --instance-max 3 --cpu 4 \
--build-ram 16777216 --auxiliary-ram 4194304 --bridge br1 --tftp-host 172.30.0.1 \
--trust AA:BB --trust CC:DD https://ci.example.org/ https://c2/"
        );
    }

    #[test]
    fn bad_template_names_the_template_and_the_cause() {
        let err = command("agent {{ nope }}", &variables(), Path::new("/a")).unwrap_err();
        assert!(err.to_string().contains("agent {{ nope }}"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn passwd_entries_are_found_by_name_or_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(
            &path,
            "root:x:0:0:root:/root:/bin/sh\nbuild:x:1000:1000::/build:/bin/sh\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let build = User {
            name: "build".into(),
            uid: 1000,
            gid: 1000,
            home: "/build".into(),
        };
        assert_eq!(
            passwd_entry(path, |name, _| name == "build"),
            Some(build.clone())
        );
        assert_eq!(passwd_entry(path, |_, uid| uid == 1000), Some(build));
        assert_eq!(passwd_entry(path, |name, _| name == "nobody"), None);
    }

    #[test]
    fn tftp_host_is_the_address_on_the_toolchains_own_bridge() {
        use buildos_cmdline::{Bridge, Ipv4Net};
        let br1 = Ipv4Net::parse("172.30.0.1/24").unwrap();
        let network = "interface=br0\naddress=10.0.2.15/24\nhostname=h\n";
        assert_eq!(tftp_host(Bridge::Br1, br1, network).unwrap(), "172.30.0.1");
        assert_eq!(tftp_host(Bridge::Br0, br1, network).unwrap(), "10.0.2.15");
        let none = "interface=\naddress=\nhostname=h\n";
        let err = tftp_host(Bridge::Br0, br1, none).unwrap_err().to_string();
        assert!(err.starts_with("bridge br0: br0 has no address"), "{err}");
    }

    #[test]
    fn declarations_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DECLARATION), "command = \"x\"\nargs = []\n").unwrap();
        let err = declaration(dir.path()).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
