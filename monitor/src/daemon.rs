//! The monitor's run: clean up, install toolchains, start agents, mail the admin, then poll for
//! changes until one calls for a reboot.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use buildos_backoff::Backoff;
use buildos_cmdline::{Config, DEFAULT_TOOLCHAIN};

use crate::agentkey;
use crate::agents::{self, Policy, Spec, Supervisor, Variables};
use crate::checksums;
use crate::console;
use crate::fetch::{self, Fetch, Retry};
use crate::mail::{self, Queue, Relay};
use crate::paths::{self, Paths};
use crate::poll::{self, Action, Subject, Watch};
use crate::register::{self, Registrar};
use crate::report::{self, HostUp, Report, ToolchainState};
use crate::secrets;
use crate::slices::{self, Host};
use crate::status::{InstanceStatus, PollStatus, Status, ToolchainStatus};
use crate::toolchain::{self, Installed, Outcome};

/// Makes and reads the agent key.
const SSH_KEYGEN: &str = buildos_contract::programs::SSH_KEYGEN;

/// What to do to reboot the host; given the reason.
pub type RebootAction = Box<dyn Fn(&str) + Send>;

/// How the monitor runs; [`Options::host`] is the real host's, tests change the rest.
pub struct Options {
    pub paths: Paths,
    /// How checksums files, build ids and toolchain files are fetched.
    pub fetch: Arc<dyn Fetch>,
    pub retry: Retry,
    /// `None` is `buildos.poll_interval`.
    pub poll_interval: Option<Duration>,
    /// How long agents get between SIGTERM and SIGKILL; `None` is `buildos.agent_grace`.
    pub grace: Option<Duration>,
    pub policy: Policy,
    /// The user agents run as (`build` when the monitor runs as root).
    pub agent_user: Option<(u32, u32)>,
    /// Its supplementary groups from `/etc/group` (`kvm`, for `/dev/kvm`).
    pub agent_groups: Vec<u32>,
    /// The host's CPUs and RAM; `None` detects them.
    pub host: Option<Host>,
    /// The first and the longest wait between tries of the mail relay.
    pub mail_delay: (Duration, Duration),
    /// How the host record is kept and registered with the hubs.
    pub register: register::Options,
    pub reboot: RebootAction,
}

impl Options {
    /// The options of the monitor on a host.
    pub fn host() -> Options {
        use buildos_contract::build;
        let agent_user = nix::unistd::Uid::effective().is_root().then(|| {
            agents::passwd_entry("/etc/passwd", |name, _| name == build::USER)
                .map_or((build::UID, build::GID), |user| (user.uid, user.gid))
        });
        let agent_groups = match agent_user {
            Some(_) => agents::supplementary_groups(
                &std::fs::read_to_string("/etc/group").unwrap_or_default(),
                build::USER,
            ),
            None => Vec::new(),
        };
        Options {
            paths: Paths::from_env(),
            fetch: Arc::new(fetch::Network),
            retry: Retry::default(),
            poll_interval: None,
            grace: None,
            policy: Policy {
                quick: Duration::from_secs(60),
                max_quick_deaths: 5,
                first_delay: Duration::from_secs(5),
                max_delay: Duration::from_secs(300),
                launcher: std::env::current_exe()
                    .unwrap_or_else(|_| PathBuf::from(buildos_contract::programs::MONITOR)),
            },
            agent_user,
            agent_groups,
            host: None,
            mail_delay: (Duration::from_secs(10), Duration::from_secs(600)),
            register: register::Options::default(),
            reboot: Box::new(|reason| {
                console::rebooting(reason);
                // init's convention (busybox's): SIGTERM to PID 1 reboots.
                if let Err(e) = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(1),
                    nix::sys::signal::Signal::SIGTERM,
                ) {
                    log::error!("cannot ask init to reboot: {e}");
                }
            }),
        }
    }
}

/// Sends the admin mail: queues it and wakes the queue runner.
#[derive(Clone)]
pub struct Mailer {
    queue: Queue,
    relay: Option<Relay>,
    wake: Sender<()>,
    hostname: String,
    admin: String,
}

impl Mailer {
    /// Starts the queue runner, which sends what is queued (from earlier boots too) now and
    /// retries with backoff while the relay is down.
    pub fn start(
        config: &Config,
        paths: &Paths,
        hostname: &str,
        delay: (Duration, Duration),
    ) -> Mailer {
        let queue = Queue::new(&paths.mail_queue);
        if let Err(e) = queue.prepare() {
            log::error!("mail queue: {e}");
        }
        let relay = match (&config.smtp_relay, &config.admin_email) {
            (Some(relay), Some(admin)) => Some(Relay {
                relay: relay.clone(),
                admin: admin.clone(),
                hostname: hostname.to_string(),
                timeout: Duration::from_secs(30),
            }),
            _ => {
                log::warn!(
                    "no buildos.smtp_relay or buildos.admin_email: mail stays queued in {}",
                    paths.mail_queue.display()
                );
                None
            }
        };
        let (wake, woken) = mpsc::channel();
        if let Some(relay) = relay.clone() {
            let queue = queue.clone();
            std::thread::spawn(move || run_queue(&queue, &relay, &woken, delay));
        }
        Mailer {
            queue,
            relay,
            wake,
            hostname: hostname.to_string(),
            admin: config
                .admin_email
                .clone()
                .unwrap_or_else(|| "root".to_string()),
        }
    }

    pub fn send(&self, report: &Report) {
        let message = mail::compose(&self.hostname, &self.admin, &report.subject, &report.body);
        match self.queue.enqueue("", &["root".to_string()], &message) {
            Ok(_) => {
                console::mail_queued(
                    &report.subject,
                    self.relay.as_ref().map(|r| r.relay.as_str()),
                );
                let _ = self.wake.send(());
            }
            Err(e) => log::error!(
                "cannot queue mail {:?} in {}: {e}",
                report.subject,
                self.queue.dir().display()
            ),
        }
    }

    /// One attempt to send everything now (before a reboot).
    pub fn flush_now(&self) {
        if let Some(relay) = &self.relay {
            if let Err(e) = self.queue.flush(relay) {
                log::warn!("mail stays queued for after the reboot: {e}");
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

fn run_queue(queue: &Queue, relay: &Relay, woken: &Receiver<()>, delay: (Duration, Duration)) {
    let mut waits = Backoff::new(delay.0, delay.1);
    loop {
        let pending = queue.has_work();
        if pending {
            match queue.flush(relay) {
                Ok(sent) => {
                    if sent > 0 {
                        console::mail_sent(sent, &relay.relay);
                    }
                    waits.reset();
                }
                Err(e) => {
                    let wait = waits.next_wait();
                    log::warn!("mail: {e}; next try in {wait:?}");
                    match woken.recv_timeout(wait) {
                        Err(RecvTimeoutError::Disconnected) => return,
                        _ => continue,
                    }
                }
            }
        }
        // Wait for new mail; look again soon for mail `sendmail` queued or other users
        // handed in.
        if let Err(RecvTimeoutError::Disconnected) = woken.recv_timeout(delay.0) {
            return;
        }
    }
}

/// What the clean-up step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanUp {
    /// The machine volumes looked at.
    pub volumes: usize,
    /// The stray entries removed from them.
    pub removed: usize,
    /// The volumes or entries that could not be cleaned (logged).
    pub problems: usize,
}

/// The clean-up step: removes stray per-build snapshots and bootstrapped machines an earlier
/// run left in `/build/machines/*/` (manual 5.3), never the current machine revisions or their
/// symlinks (`buildos_machines::cleanup_stale`).
pub fn cleanup_machine_volumes(paths: &Paths) -> CleanUp {
    let mut done = CleanUp::default();
    let Ok(entries) = std::fs::read_dir(&paths.machines) else {
        log::info!("machine volumes: none under {}", paths.machines.display());
        return done;
    };
    let mut volumes: Vec<std::path::PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    volumes.sort();
    for volume in volumes {
        done.volumes += 1;
        match buildos_machines::cleanup_stale(&volume) {
            Ok(report) => {
                for removed in &report.removed {
                    log::info!("machine volumes: removed stray {}", removed.display());
                }
                for problem in &report.problems {
                    log::warn!("machine volumes: {problem}");
                }
                log::info!(
                    "machine volumes: {} clean ({} stray entries removed)",
                    volume.display(),
                    report.removed.len()
                );
                done.removed += report.removed.len();
                done.problems += report.problems.len();
            }
            Err(error) => {
                log::warn!("machine volumes: {}: {error}", volume.display());
                done.problems += 1;
            }
        }
    }
    done
}

/// A toolchain as the monitor knows it.
struct Toolchain {
    name: String,
    url: String,
    state: ToolchainState,
    installed: Option<Installed>,
    /// Whether its checksums file was fetched (or failed) at start, and whether it then
    /// counts for the slices (not disabled).
    listed: Option<bool>,
    /// Whether its start-up install is over.
    started: bool,
}

/// What the toolchain and poll threads tell the main loop.
enum Event {
    /// A toolchain's checksums file was fetched (or failed) at start: whether it counts for the
    /// slices (it is not disabled).
    Listed { index: usize, counts: bool },
    /// A toolchain's start-up install ended.
    Started {
        index: usize,
        state: ToolchainState,
        installed: Option<Installed>,
    },
    /// A toolchain that was not installed is now, after a poll.
    Installed { index: usize, installed: Installed },
    /// A watch polled: how it stands now, and what to do.
    Polled {
        index: usize,
        watch: Box<Watch>,
        action: Action,
    },
}

/// How a toolchain's start-up install ended.
struct StartUp {
    state: ToolchainState,
    installed: Option<Installed>,
    /// The checksums file it was installed (or tried) from; `None` when none was fetched.
    checksums: Option<String>,
}

/// What a toolchain's thread needs: where to install, how to fetch, whom to mail.
#[derive(Clone)]
struct Installer {
    tftp_root: PathBuf,
    name: String,
    url: String,
    trust: String,
    fetch: Arc<dyn Fetch>,
    retry: Retry,
    mailer: Mailer,
}

impl Installer {
    /// The start-up fetch of the checksums file; a failure is mailed.
    fn fetch(&self) -> Result<String, toolchain::InstallError> {
        toolchain::fetch_checksums(&*self.fetch, &self.url, &self.retry).inspect_err(|e| {
            let shown = fetch::redact(&self.url);
            self.mailer
                .send(&report::toolchain_failed(&self.name, &shown, e));
        })
    }

    /// The start-up fetch and install, told to the main loop (`Listed`, then `Started`);
    /// returns `watch` ready to poll what was installed or tried, or `None` when the main loop
    /// is gone.
    fn start(&self, index: usize, mut watch: Watch, events: &Sender<Event>) -> Option<Watch> {
        let fetched = self.fetch();
        let disabled = fetched.as_deref().is_ok_and(|text| {
            matches!(
                checksums::parse(&self.url, text),
                Ok(checksums::Checksums::Disabled)
            )
        });
        let listed = Event::Listed {
            index,
            counts: !disabled,
        };
        events.send(listed).ok()?;
        let started = self.install_at_start(fetched);
        watch.subject = Subject::Toolchain {
            name: self.name.clone(),
            running: started.checksums.clone(),
            installed: started.installed.is_some(),
        };
        if let (ToolchainState::Failed { .. }, Some(text)) = (&started.state, &started.checksums) {
            // The file was fetched but did not install: polls try it again.
            watch.install_failed(text);
        }
        let event = Event::Started {
            index,
            state: started.state,
            installed: started.installed,
        };
        events.send(event).ok()?;
        Some(watch)
    }

    /// The start-up install from what [`Installer::fetch`] got.
    fn install_at_start(&self, fetched: Result<String, toolchain::InstallError>) -> StartUp {
        let text = match fetched {
            Ok(text) => text,
            Err(e) => {
                let state = ToolchainState::Failed {
                    reason: e.to_string(),
                };
                return StartUp {
                    state,
                    installed: None,
                    checksums: None,
                };
            }
        };
        let (state, installed) = match self.install(&text) {
            Ok(Outcome::Disabled) => (ToolchainState::Disabled, None),
            Ok(Outcome::Installed(installed)) => (
                ToolchainState::Installed {
                    version: installed.version.clone(),
                },
                Some(installed),
            ),
            Err(e) => {
                let state = ToolchainState::Failed {
                    reason: e.to_string(),
                };
                (state, None)
            }
        };
        StartUp {
            state,
            installed,
            checksums: Some(text),
        }
    }

    /// Installs from the checksums file `text`; mails the admin either way.
    fn install(&self, text: &str) -> Result<Outcome, toolchain::InstallError> {
        let shown = fetch::redact(&self.url);
        let result = toolchain::install_from(
            &*self.fetch,
            &self.tftp_root,
            &self.name,
            &self.url,
            text,
            &self.trust,
            &self.retry,
        );
        match &result {
            Ok(Outcome::Installed(installed)) => {
                console::installed(installed);
                self.mailer
                    .send(&report::toolchain_installed(installed, &shown));
            }
            Ok(Outcome::Disabled) => {}
            Err(e) => self
                .mailer
                .send(&report::toolchain_failed(&self.name, &shown, e)),
        }
        result
    }
}

/// Polls `watch` every `interval` until the main loop is gone. A toolchain that is not
/// installed is installed here when a poll finds one to install (`installer`).
fn poll_loop(
    index: usize,
    mut watch: Watch,
    fetch: &dyn Fetch,
    interval: Duration,
    timeout: Duration,
    installer: Option<(usize, &Installer)>,
    events: &Sender<Event>,
) {
    loop {
        std::thread::sleep(interval);
        let action = watch.poll(fetch, timeout);
        if let (Action::Install(text), Some((toolchain, installer))) = (&action, installer) {
            match installer.install(text) {
                Ok(Outcome::Installed(installed)) => {
                    watch.installed(text);
                    let event = Event::Installed {
                        index: toolchain,
                        installed,
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                }
                Ok(Outcome::Disabled) | Err(_) => watch.install_failed(text),
            }
        }
        let event = Event::Polled {
            index,
            watch: Box::new(watch.clone()),
            action,
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Runs the monitor until a change calls for a reboot; returns the reason after asking for it.
///
/// The steps, in order: [`cleanup_machine_volumes`], [`install`], [`slices`], [`agents`],
/// [`host_up`], [`poll`], then [`reboot`]. From [`install`] on, the toolchains and watches run
/// on threads of their own and report over a channel; the steps that wait ([`slices`],
/// [`host_up`], [`poll`]) handle every event as it comes ([`Running::step`]), so a change seen
/// early reboots at once.
pub fn run(options: Options) -> String {
    let daemon = Daemon::start(options);
    cleanup_machine_volumes(&daemon.options.paths);
    let mut running = install(&daemon);
    let reboot_for = match until_up(&daemon, &mut running) {
        ControlFlow::Continue(()) => poll(&daemon, &mut running),
        ControlFlow::Break(reboot_for) => reboot_for,
    };
    reboot(&daemon, &running, reboot_for)
}

/// The steps between install and polling: slices, agents and the host-up mail.
fn until_up(daemon: &Daemon, running: &mut Running) -> ControlFlow<Reboot> {
    let sliced = slices(daemon, running)?;
    late_files(daemon);
    agents(daemon, running, sliced);
    host_up(daemon, running)?;
    ControlFlow::Continue(())
}

/// What every step reads: the options, the configuration, the mailer and the agent key.
pub struct Daemon {
    options: Options,
    config: Config,
    mailer: Mailer,
    /// The build id the host runs, when known.
    buildid: Option<String>,
    agent_key: Result<agentkey::AgentKey, String>,
    host: Host,
    /// What went wrong as the monitor started that the admin must hear of: the host-up mail
    /// lists it beside init's problems (the agent key has its own part of the mail).
    problems: Vec<String>,
}

impl Daemon {
    /// Reads the configuration, starts the mail queue runner and makes (or reads) the agent key.
    pub fn start(options: Options) -> Daemon {
        let paths = &options.paths;
        let parsed = paths::read_config(paths);
        for diagnostic in &parsed.diagnostics {
            log::warn!("{diagnostic}");
        }
        let config = parsed.config;
        let mut problems = Vec::new();
        match fetch::trust_also(&paths.ca_certificates) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "HTTPS trusts {n} CA certificate(s) of {} besides the built-in roots",
                paths.ca_certificates.display()
            ),
            Err(e) => {
                log::error!("{e}");
                problems.push(format!("{e}; HTTPS trusts the built-in roots only"));
            }
        }
        let hostname = paths::hostname(paths);
        let mailer = Mailer::start(&config, paths, &hostname, options.mail_delay);
        let agent_key = agentkey::ensure(
            &paths.state,
            options.agent_user,
            std::path::Path::new(SSH_KEYGEN),
            &hostname,
        );
        match &agent_key {
            Ok(key) => log::info!(
                "agent key {} {}: {}",
                key.path,
                if key.made { "made" } else { "kept" },
                key.fingerprint
            ),
            Err(e) => log::error!("no agent key: {e}"),
        }
        // Before any agent starts, so a secret can be put there as soon as the host is up, even
        // for a toolchain that is not installed yet.
        for name in config.toolchains.keys() {
            if let Err(e) = secrets::make_dir(&paths.state, name, options.agent_user) {
                log::error!("toolchain {name}: no secrets directory: {e}");
                problems.push(format!("toolchain {name}: no secrets directory: {e}"));
            }
        }
        let buildid = std::fs::read_to_string(&paths.buildid)
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty());
        let host = options.host.clone().unwrap_or_else(slices::detect_host);
        Daemon {
            options,
            config,
            mailer,
            buildid,
            agent_key,
            host,
            problems,
        }
    }

    /// The agent key's path for agents' commands; empty when there is none.
    fn key_path(&self) -> String {
        self.agent_key
            .as_ref()
            .map(|k| k.path.clone())
            .unwrap_or_default()
    }
}

/// A change calls for a reboot: the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reboot(pub String);

/// The slices, or why there are none.
type Sliced = Result<Vec<slices::Slice>, String>;

/// Everything that runs once the install step started it: the toolchains and their watches as
/// the threads last reported them, the agents, and the slices once made.
struct Running {
    toolchains: Vec<Toolchain>,
    watches: Vec<Watch>,
    incoming: Receiver<Event>,
    /// Keeps the host record and registers it with the hubs.
    registrar: Registrar,
    agents: Agents,
    sliced: Option<Sliced>,
}

/// The install step: starts the build id's watch, then each toolchain (`default` first) on a
/// thread that fetches its checksums file, installs, and then polls.
fn install(daemon: &Daemon) -> Running {
    let (config, options) = (&daemon.config, &daemon.options);
    let interval = options
        .poll_interval
        .unwrap_or_else(|| Duration::from_secs(u64::from(config.poll_interval.max(1))));
    let timeout = options.retry.timeout;
    let (events, incoming) = mpsc::channel::<Event>();
    let mut toolchains = Vec::new();
    let mut watches = Vec::new();
    if let Some(url) = &config.buildid_url {
        let watch = Watch::new(
            url,
            Subject::BuildId {
                running: daemon.buildid.clone(),
            },
        );
        let (index, events, fetch) = (watches.len(), events.clone(), options.fetch.clone());
        watches.push(watch.clone());
        std::thread::spawn(move || {
            poll_loop(index, watch, &*fetch, interval, timeout, None, &events)
        });
    }
    let mut names: Vec<&String> = config.toolchains.keys().collect();
    names.sort_by_key(|n| (n.as_str() != DEFAULT_TOOLCHAIN, n.as_str()));
    for name in names {
        let tc = &config.toolchains[name];
        let Some(url) = tc.url.clone() else {
            toolchains.push(Toolchain {
                name: name.clone(),
                url: String::new(),
                state: ToolchainState::NoUrl,
                installed: None,
                listed: Some(false),
                started: true,
            });
            continue;
        };
        let installer = Installer {
            tftp_root: options.paths.tftp_root.clone(),
            name: name.clone(),
            url: url.clone(),
            trust: tc.trust_file().to_string(),
            fetch: options.fetch.clone(),
            retry: options.retry,
            mailer: daemon.mailer.clone(),
        };
        let watch = Watch::new(
            &url,
            Subject::Toolchain {
                name: name.clone(),
                running: None,
                installed: false,
            },
        );
        let (index, watch_index, events) = (toolchains.len(), watches.len(), events.clone());
        watches.push(watch.clone());
        toolchains.push(Toolchain {
            name: name.clone(),
            url,
            state: ToolchainState::Installing,
            installed: None,
            listed: None,
            started: false,
        });
        std::thread::spawn(move || {
            let Some(watch) = installer.start(index, watch, &events) else {
                return;
            };
            let fetch = installer.fetch.clone();
            let installer = Some((index, &installer));
            poll_loop(
                watch_index,
                watch,
                &*fetch,
                interval,
                timeout,
                installer,
                &events,
            );
        });
    }
    drop(events);
    console::polling(&watches, interval);
    let mailer = Mutex::new(daemon.mailer.clone());
    let on_give_up: agents::OnGiveUp = Arc::new(move |spec: &Spec, deaths, last: &str| {
        let report = report::agent_dying(&spec.slice.toolchain, spec.slice.instance, deaths, last);
        lock(&mailer).send(&report);
    });
    let hub_mailer = Mutex::new(daemon.mailer.clone());
    let registrar = Registrar::start(
        config,
        &options.paths,
        &daemon.host,
        options.register.clone(),
        Arc::new(move |report| lock(&hub_mailer).send(report)),
    );
    Running {
        toolchains,
        watches,
        incoming,
        registrar,
        agents: Agents {
            supervisors: Vec::new(),
            policy: options.policy.clone(),
            on_give_up,
        },
        sliced: None,
    }
}

/// The slices step: waits until every toolchain's start-up fetch is over (the slices must know
/// which toolchains are disabled), then makes the slices of those that count.
fn slices(daemon: &Daemon, running: &mut Running) -> ControlFlow<Reboot, Sliced> {
    while !running.toolchains.iter().all(|t| t.listed.is_some()) {
        running.step(daemon)?;
    }
    ControlFlow::Continue(make_slices(
        &daemon.config,
        &daemon.host,
        &running.toolchains,
    ))
}

/// The agents step: keeps the slices and starts the agents of every toolchain installed so
/// far; those that install later start as they do ([`Running::step`]). Returns how many
/// instances started.
fn agents(daemon: &Daemon, running: &mut Running, sliced: Sliced) -> usize {
    let made = running.sliced.insert(sliced);
    let mut started = 0;
    for index in 0..running.toolchains.len() {
        let specs = toolchain_specs(daemon, index, made, &mut running.toolchains);
        started += specs.len();
        running.agents.start(specs);
    }
    started
}

/// How long agents wait for init to unpack the late files: minutes under software emulation
/// would already be a fault.
const LATE_FILES_WAIT: Duration = Duration::from_secs(600);

/// The late-files step: agents (and their bootstraps, which compile) start only once init has
/// unpacked the compiler toolchain; see [`Paths::wait_for_late_files`].
fn late_files(daemon: &Daemon) {
    match daemon.options.paths.wait_for_late_files(LATE_FILES_WAIT) {
        Ok(Some(line)) if line.starts_with("failed") => log::error!("late files: {line}"),
        Ok(Some(line)) => log::info!("late files: {line}"),
        Ok(None) => {}
        Err(e) => log::error!("late files: {e}"),
    }
}

/// The host-up step: waits until every toolchain's start-up install is over, then mails the
/// admin how the host stands. Returns the mail.
fn host_up(daemon: &Daemon, running: &mut Running) -> ControlFlow<Reboot, Report> {
    while !running.toolchains.iter().all(|t| t.started) {
        running.step(daemon)?;
    }
    let paths = &daemon.options.paths;
    let made = running.sliced.as_ref();
    // init's, then the monitor's own.
    let mut problems: Vec<String> = std::fs::read_to_string(paths.problems())
        .map(|text| {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    problems.extend(daemon.problems.iter().cloned());
    // init's failure to unpack the compiler, which agents' bootstraps need.
    if let Ok(line) = std::fs::read_to_string(paths.late()) {
        if line.starts_with("failed") {
            problems.push(format!("late files (the compiler): {}", line.trim()));
        }
    }
    let report = report::host_up(&HostUp {
        buildid: daemon
            .buildid
            .clone()
            .unwrap_or_else(|| "unknown".to_string()),
        toolchains: running
            .toolchains
            .iter()
            .map(|t| (t.name.clone(), t.state.clone()))
            .collect(),
        slices: made
            .and_then(|m| m.as_ref().ok())
            .cloned()
            .unwrap_or_default(),
        slice_error: made.and_then(|m| m.as_ref().err()).cloned(),
        disks: disks(paths),
        problems,
        agent_key: Some(daemon.agent_key.clone()),
        tunnel: tunnel_key(&daemon.config, paths),
    });
    daemon.mailer.send(&report);
    // After the host-up mail's line: with nothing to poll, the monitor's last.
    console::idle(&daemon.config);
    ControlFlow::Continue(report)
}

/// The poll step: handles what the watches report (installs after a poll, failures mailed)
/// until a change calls for a reboot.
fn poll(daemon: &Daemon, running: &mut Running) -> Reboot {
    loop {
        if let ControlFlow::Break(reboot) = running.step(daemon) {
            return reboot;
        }
    }
}

/// The last step: mails why, stops the agents, writes the status and asks for the reboot.
fn reboot(daemon: &Daemon, running: &Running, Reboot(reason): Reboot) -> String {
    let mailer = &daemon.mailer;
    console::change_seen(&reason);
    mailer.send(&report::reboot(&reason));
    mailer.flush_now();
    let grace = daemon
        .options
        .grace
        .unwrap_or_else(|| Duration::from_secs(u64::from(daemon.config.agent_grace)));
    std::thread::scope(|scope| {
        for supervisor in &running.agents.supervisors {
            scope.spawn(move || supervisor.stop(grace));
        }
    });
    running.write_status(daemon);
    (daemon.options.reboot)(&reason);
    reason
}

impl Running {
    /// Writes the status, then waits up to a second for one event and handles it: a toolchain
    /// listed, started or installed (its agents start when there are slices), a poll's result
    /// (a failure mailed once, a change breaks with the reboot's reason).
    fn step(&mut self, daemon: &Daemon) -> ControlFlow<Reboot> {
        self.write_status(daemon);
        let event = match self.incoming.recv_timeout(Duration::from_secs(1)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => return ControlFlow::Continue(()),
            Err(RecvTimeoutError::Disconnected) => {
                // No URL to poll at all: only the agents to keep.
                std::thread::sleep(Duration::from_secs(1));
                return ControlFlow::Continue(());
            }
        };
        // A toolchain that has just started or installed: its agents start once there are slices.
        let mut installed_now = None;
        match event {
            Event::Listed { index, counts } => self.toolchains[index].listed = Some(counts),
            Event::Started {
                index,
                state,
                installed,
            } => {
                let t = &mut self.toolchains[index];
                t.state = state;
                t.installed = installed;
                t.started = true;
                installed_now = Some(index);
            }
            Event::Installed { index, installed } => {
                let t = &mut self.toolchains[index];
                log::info!(
                    "toolchain {} {} installed after a poll; starting its agents",
                    t.name,
                    installed.version
                );
                t.state = ToolchainState::Installed {
                    version: installed.version.clone(),
                };
                t.installed = Some(installed);
                installed_now = Some(index);
            }
            Event::Polled {
                index,
                watch,
                action,
            } => {
                self.watches[index] = *watch;
                match action {
                    Action::None | Action::Install(_) => {}
                    Action::MailFailing { failures, error } => {
                        let url = self.watches[index].shown_url();
                        daemon
                            .mailer
                            .send(&report::fetch_failing(&url, failures, &error));
                    }
                    Action::Reboot(reason) => return ControlFlow::Break(Reboot(reason)),
                }
            }
        }
        if let (Some(index), Some(made)) = (installed_now, &self.sliced) {
            let specs = toolchain_specs(daemon, index, made, &mut self.toolchains);
            self.agents.start(specs);
        }
        ControlFlow::Continue(())
    }

    fn write_status(&self, daemon: &Daemon) {
        let mut status = snapshot(
            daemon.buildid.as_deref(),
            &self.toolchains,
            &self.agents.supervisors,
            &self.watches,
            &daemon.mailer,
        );
        status.agent_key = daemon.agent_key.as_ref().ok().cloned();
        let path = daemon.options.paths.status();
        if let Err(e) = status.write(&path) {
            log::warn!("status {}: {e}", path.display());
        }
        self.registrar.update(&status);
    }
}

/// The agents' supervisors, one per toolchain whose agents started.
struct Agents {
    supervisors: Vec<Supervisor>,
    policy: Policy,
    on_give_up: agents::OnGiveUp,
}

impl Agents {
    /// Starts a supervisor for `specs` (nothing when there are none) and says so on the console.
    fn start(&mut self, specs: Vec<Spec>) {
        if specs.is_empty() {
            return;
        }
        let supervisor = Supervisor::start(specs, self.policy.clone(), self.on_give_up.clone());
        console::agents_started(&supervisor.states());
        self.supervisors.push(supervisor);
    }
}

/// The slices of the toolchains that are not disabled and have a URL: those installed, those
/// installing, and those that failed at start, which keep theirs for when they install.
fn make_slices(
    config: &Config,
    host: &Host,
    toolchains: &[Toolchain],
) -> Result<Vec<slices::Slice>, String> {
    let active: Vec<(String, u32)> = toolchains
        .iter()
        .filter(|t| t.listed == Some(true))
        .map(|t| (t.name.clone(), config.toolchains[&t.name].instances))
        .collect();
    slices::compute(config, host, &active).map_err(|e| {
        log::error!("no agents: {e}");
        e.to_string()
    })
}

/// The specs of toolchain `index`'s instances on its slices, when it is installed; a failure is
/// mailed and marks the toolchain failed.
fn toolchain_specs(
    daemon: &Daemon,
    index: usize,
    made: &Sliced,
    toolchains: &mut [Toolchain],
) -> Vec<Spec> {
    let Ok(made) = made else {
        return Vec::new();
    };
    let t = &mut toolchains[index];
    let Some(installed) = &t.installed else {
        return Vec::new();
    };
    let mine: Vec<&slices::Slice> = made.iter().filter(|s| s.toolchain == t.name).collect();
    if mine.is_empty() {
        return Vec::new();
    }
    match agent_specs(daemon, index as u32 + 1, installed, &mine) {
        Ok(specs) => specs,
        Err(e) => {
            log::error!("toolchain {}: {e}", t.name);
            daemon.mailer.send(&Report {
                subject: format!("toolchain {} agents not started", t.name),
                body: format!("The agents of toolchain {} cannot start:\n  {e}\n", t.name),
            });
            t.state = ToolchainState::Failed {
                reason: format!("agents: {e}"),
            };
            Vec::new()
        }
    }
}

/// The specs of one toolchain's instances: its archive unpacked and its command rendered.
fn agent_specs(
    daemon: &Daemon,
    num: u32,
    installed: &Installed,
    slices: &[&slices::Slice],
) -> Result<Vec<Spec>, agents::AgentError> {
    let (config, options, paths) = (&daemon.config, &daemon.options, &daemon.options.paths);
    let agent_key = daemon.key_path();
    let tc = &config.toolchains[&installed.name];
    let dir = agents::unpack(&installed.archive(), &paths.agents.join(&installed.name))?;
    let (template, bootstrap) = match agents::declaration(&dir)? {
        Some(declaration) => (declaration.command, declaration.bootstrap),
        None => (agents::DEFAULT_COMMAND.to_string(), None),
    };
    let mut bootstrap = bootstrap.map(|template| (template, None));
    let work = agents::user_dir(&paths.work, &installed.name, options.agent_user, 0o700)?;
    let served = agents::user_dir(
        &paths.tftp_root.join(buildos_contract::build::SERVED_AGENTS),
        &installed.name,
        options.agent_user,
        0o755,
    )?;
    let network = std::fs::read_to_string(paths.network()).unwrap_or_default();
    let tftp_host = agents::tftp_host(tc.bridge, config.br1_address, &network)?;
    let mut specs = Vec::new();
    for slice in slices {
        let variables = Variables {
            toolchain_name: installed.name.clone(),
            toolchain_num: num,
            toolchain_version: installed.version.clone(),
            toolchain_id: installed.id.clone(),
            toolchain_dir: installed.dir.display().to_string(),
            agent_dir: dir.display().to_string(),
            work_dir: work.display().to_string(),
            served_dir: served.display().to_string(),
            instance: slice.instance,
            instances: slice.instances,
            cpus: slice.cpus,
            affinity: slice.affinity_list(),
            ram_mib: slice.ram_mib,
            ram_kib: slice.ram_mib * 1024,
            auxiliary_ram_mib: slice.ram_auxiliary_mib,
            auxiliary_ram_kib: slice.ram_auxiliary_mib * 1024,
            bridge: tc.bridge.as_str().to_string(),
            tftp_host: tftp_host.clone(),
            toolchain_trust: tc.trust_file().to_string(),
            trust: tc.controller_trusts.clone(),
            controller_urls: tc.controller_urls.clone(),
            agent_key: agent_key.clone(),
            secrets_dir: secrets::toolchain_dir(&paths.state, &installed.name)
                .display()
                .to_string(),
        };
        if let Some((template, made @ None)) = &mut bootstrap {
            let mailer = Mutex::new(daemon.mailer.clone());
            *made = Some(Arc::new(agents::Bootstrap::new(
                &installed.name,
                agents::command(template, &variables, &dir)?,
                paths
                    .run
                    .join(buildos_contract::run::AGENT_LOGS)
                    .join(format!("{}-bootstrap.log", installed.name)),
                paths
                    .agents
                    .join(format!("{}.bootstrapped", installed.name)),
                &installed.id,
                Arc::new(move |subject, body| {
                    lock(&mailer).send(&Report { subject, body });
                }),
            )));
        }
        specs.push(Spec {
            bootstrap: bootstrap.as_ref().and_then(|(_, made)| made.clone()),
            slice: (*slice).clone(),
            argv: agents::command(&template, &variables, &dir)?,
            dir: dir.clone(),
            nice: tc.nice,
            user: options.agent_user,
            groups: options.agent_groups.clone(),
            home: Some(work.clone()),
            log: paths
                .run
                .join(buildos_contract::run::AGENT_LOGS)
                .join(format!("{}-{}.log", installed.name, slice.instance)),
        });
    }
    Ok(specs)
}

/// With `buildos.tunnel`, the bastion and the public half of the tunnel key init made on the
/// state disk (`<state>/tunnel/id_ed25519.pub`).
fn tunnel_key(config: &Config, paths: &Paths) -> Option<(String, Result<String, String>)> {
    let target = config.tunnel.as_ref()?;
    let public = paths.state.join("tunnel/id_ed25519.pub");
    let key = std::fs::read_to_string(&public)
        .map(|text| text.trim().to_string())
        .map_err(|e| format!("cannot read {}: {e}", public.display()));
    Some((target.to_string(), key))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The disks init mounted: `/state` and `/build/machines/*` from `/proc/mounts`, else the
/// same from `/etc/fstab`.
fn disks(paths: &Paths) -> Vec<String> {
    let wanted = |mountpoint: &str| {
        mountpoint == buildos_contract::state::DIR
            || buildos_contract::build::is_machine_volume(mountpoint)
    };
    for source in [&paths.mounts, &paths.fstab] {
        let Ok(text) = std::fs::read_to_string(source) else {
            continue;
        };
        let found: Vec<String> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                match fields.as_slice() {
                    [device, mountpoint, fstype, ..] if wanted(mountpoint) => {
                        Some(format!("{mountpoint}: {device} ({fstype})"))
                    }
                    _ => None,
                }
            })
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

fn snapshot(
    buildid: Option<&str>,
    toolchains: &[Toolchain],
    supervisors: &[Supervisor],
    watches: &[Watch],
    mailer: &Mailer,
) -> Status {
    Status {
        updated: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        buildid: buildid.unwrap_or("unknown").to_string(),
        toolchains: toolchains
            .iter()
            .map(|t| ToolchainStatus {
                name: t.name.clone(),
                url: fetch::redact(&t.url),
                state: t.state.clone(),
            })
            .collect(),
        instances: supervisors
            .iter()
            .flat_map(Supervisor::states)
            .map(|(slice, state)| InstanceStatus {
                affinity: slice.affinity_list(),
                toolchain: slice.toolchain,
                instance: slice.instance,
                cpus: slice.cpus,
                ram_mib: slice.ram_mib,
                ram_auxiliary_mib: slice.ram_auxiliary_mib,
                pid: state.pid,
                state: state.state,
                starts: state.starts,
                last_exit: state.last_exit,
            })
            .collect(),
        polls: watches
            .iter()
            .map(|w| {
                let (at, result, detail) = match &w.last {
                    None => (None, None, None),
                    Some((at, outcome)) => {
                        let (result, detail) = match outcome {
                            poll::Outcome::Unchanged => ("unchanged", None),
                            poll::Outcome::Changed(why) => ("changed", Some(why.clone())),
                            poll::Outcome::Failed(why) => ("failed", Some(why.clone())),
                            poll::Outcome::Install(why) => ("install", Some(why.clone())),
                        };
                        (Some(*at), Some(result.to_string()), detail)
                    }
                };
                PollStatus {
                    url: w.shown_url(),
                    at,
                    result,
                    detail,
                    failures: w.failures,
                }
            })
            .collect(),
        mail_queue: mailer.queued(),
        agent_key: None,
    }
}
