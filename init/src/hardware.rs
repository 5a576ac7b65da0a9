//! Which kernel modules to load: the profile's fixed set, and the drivers for the devices this
//! machine has, found by matching each device's `modalias` against the image's modules.alias,
//! as udev and modprobe would.
//!
//! Drivers create devices of their own (a PCI virtio controller brings virtio devices, a SATA
//! controller brings SCSI disks), so the devices are looked at again each time a driver
//! finished loading, until none is loading and no device wants a new one.
//!
//! It all loads beside the boot steps ([`Modules`]): a step waits only for what it needs
//! ([`Need`]), and the `devices` step for everything.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use buildos_kmodnames::{fnmatch, normalize_alias as normalize};

use crate::error::FileError;
use crate::host::Host;

/// The profile's modules that are loaded on every host, one name per line.
pub const FIXED_MODULES: &str = buildos_contract::etc::MODULES_BOOT;

/// Modules that neither storage nor the network needs, only the build machines that start
/// after ready: they load from the start, beside the fixed set and the drivers, on a thread of
/// their own at idle priority (SCHED_IDLE: it runs only on CPU time the other loading and the
/// steps leave idle, so it never delays storage's or the network's modules), and the `devices`
/// step waits for them before the build user gets their nodes, so ready still means every
/// module is loaded. Each with why it can wait. Whether one comes from the profile's fixed set
/// or a device asked for it (kvm_intel by the CPUs' modalias), the table decides; what it
/// depends on loads with it, unless another thread loads it (what the fixed set and the drivers
/// found in the same look need always does).
pub const LATE: &[(&str, &str)] = &[
    ("kvm", "hardware virtualisation, for build machines only"),
    (
        "kvm_intel",
        "hardware virtualisation on Intel CPUs, for build machines only",
    ),
    (
        "kvm_amd",
        "hardware virtualisation on AMD CPUs, for build machines only",
    ),
    (
        "vhost_net",
        "the build machines' in-kernel virtio-net backend",
    ),
    ("tun", "the build machines' tap devices"),
];

/// Whether `name` is one of [`LATE`] (`-` and `_` alike).
pub fn is_late(name: &str) -> bool {
    let name = name.replace('-', "_");
    LATE.iter().any(|(late, _)| *late == name)
}

/// What a boot step waits for before it goes on, while the rest loads beside it
/// ([`Modules::wait`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The fixed set's filesystems (its modules under `kernel/fs/`: ext4, btrfs), before
    /// storage registers and mounts disks.
    Filesystems,
    /// Every driver the devices asked for, loaded: before storage concludes that a labeled
    /// disk is missing (a disk can be behind any controller).
    Drivers,
    /// The drivers of every device that may bring a network interface (see
    /// [`may_bring_a_nic`]), before the network step lists interfaces.
    Nics,
    /// The fixed set's network modules (its modules under `kernel/net/`: bridge, nf_tables,
    /// ...), before the network step makes its bridges and NAT.
    NetworkStack,
}

/// What a step waits on for the modules it needs: [`Modules`] on a host, [`AllLoaded`] where
/// nothing loads beside the step (tests, and a host whose modules step did not start).
pub trait Wait: Sync {
    /// Waits until what `need` names is loaded, or until `until`; whether it is.
    fn wait(&self, need: Need, until: Instant) -> bool;

    /// Counts `took` as time a step waited for modules: storage's wait for a disk while a
    /// driver that may bring it was loading.
    fn count(&self, _took: Duration) {}
}

/// Nothing is loading: every need is met.
#[derive(Clone, Copy)]
pub struct AllLoaded;

impl Wait for AllLoaded {
    fn wait(&self, _need: Need, _until: Instant) -> bool {
        true
    }
}

impl Wait for Modules {
    fn wait(&self, need: Need, until: Instant) -> bool {
        Modules::wait(self, need, until)
    }

    fn count(&self, took: Duration) {
        self.progress.lock().waited += took;
    }
}

/// Waits on the loading as [`Modules::wait`] does, from a thread of its own; see
/// [`Modules::watch`].
#[derive(Clone)]
pub struct Watch {
    progress: Arc<Progress>,
    filesystems: Vec<String>,
    network_stack: Vec<String>,
}

impl Wait for Watch {
    fn wait(&self, need: Need, until: Instant) -> bool {
        wait_for(&self.progress, until, |seen| {
            met(need, seen, &self.filesystems, &self.network_stack)
        })
        .0
    }
}

/// Waits until `met` holds of what the loading has done, or until `until`: whether it does,
/// and how long that took.
fn wait_for(progress: &Progress, until: Instant, met: impl Fn(&Seen) -> bool) -> (bool, Duration) {
    let began = Instant::now();
    let mut seen = progress.lock();
    let met = loop {
        if met(&seen) {
            break true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        seen = progress
            .changed
            .wait_timeout(seen, left)
            .map(|(seen, _)| seen)
            .unwrap_or_else(|e| e.into_inner().0);
    };
    (met, began.elapsed())
}

/// Whether what `need` names is loaded, given the fixed set's `filesystems` and
/// `network_stack`.
fn met(need: Need, seen: &Seen, filesystems: &[String], network_stack: &[String]) -> bool {
    if seen.ended {
        return true;
    }
    let attempted =
        |names: &[String]| seen.fixed_done || names.iter().all(|n| seen.attempted.contains(n));
    match need {
        Need::Filesystems => attempted(filesystems),
        Need::NetworkStack => attempted(network_stack),
        Need::Nics => seen
            .loading
            .as_ref()
            .is_some_and(|loading| !loading.values().any(|nic| *nic)),
        Need::Drivers => seen.loading.as_ref().is_some_and(BTreeMap::is_empty),
    }
}

/// What the loading has done so far, for the steps that wait on it.
#[derive(Default)]
struct Seen {
    /// Every module attempted so far (loaded, absent or failed), by name.
    attempted: BTreeSet<String>,
    /// The drivers loading now, each with whether it may bring a network interface; `None`
    /// until the devices were first looked at.
    loading: Option<BTreeMap<String, bool>>,
    /// The fixed set is loaded.
    fixed_done: bool,
    /// The fixed set and every driver the devices asked for are loaded (the hotplug watch
    /// aside): what they reserved and did not take is the late thread's.
    foreground_done: bool,
    /// The loading thread ended (normally or not): nothing more will change.
    ended: bool,
    /// Every module a thread took to load (it is in `attempted` once that thread is done with
    /// it): each module is loaded by one thread and is in one report, and a thread that needs
    /// a module another took waits until it is done, as the kernel would make it wait.
    claimed: BTreeSet<String>,
    /// The modules the fixed set and the drivers found so far load, with their dependencies:
    /// the late thread waits for them rather than take them, so none of theirs waits for a
    /// thread at idle priority.
    reserved: BTreeSet<String>,
    /// How long boot steps waited for modules in all.
    waited: Duration,
}

#[derive(Default)]
struct Progress {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Seen)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Takes `module` for the calling thread to load, when no thread took it yet (nor, for the
    /// late thread, does the fixed set load it); otherwise waits until it was attempted and
    /// gives `None`. A module the fixed set or a driver was to load and did not (its thread
    /// panicked) is the late thread's to take once they are all done.
    fn claim<'a>(&'a self, module: &str, loader: Loader) -> Option<Claim<'a>> {
        let mut seen = self.lock();
        loop {
            if seen.attempted.contains(module) || seen.ended {
                return None;
            }
            let theirs_to_come = loader == Loader::Background
                && seen.reserved.contains(module)
                && !seen.foreground_done;
            if !seen.claimed.contains(module) && !theirs_to_come {
                seen.claimed.insert(module.to_owned());
                return Some(Claim {
                    progress: self,
                    module: module.to_owned(),
                });
            }
            seen = self.changed.wait(seen).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Which thread loads: one of the fixed set's, a driver's or the hotplug watch's, or the late
/// modules' thread at idle priority (see [`Progress::claim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loader {
    Foreground,
    Background,
}

/// A module a thread took to load: attempted once dropped, even by a panic, so a thread
/// waiting for it never waits forever.
struct Claim<'a> {
    progress: &'a Progress,
    module: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let module = std::mem::take(&mut self.module);
        self.progress.update(|seen| {
            seen.attempted.insert(module);
        });
    }
}

/// Marks the loading ended when the thread doing it ends, even by a panic.
struct Ended<'a>(&'a Progress);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.update(|seen| seen.ended = true);
    }
}

/// How often the loading thread looks at the devices again, at most, after every driver
/// loaded: a device can appear later (a USB stick is enumerated a moment after its
/// controller's driver loads; libata scans its ports after its driver's init returned), and
/// its driver must still load while storage waits for its disk, as udev loads drivers on
/// hotplug. A uevent of a device that wants a driver wakes it at once; without a uevent
/// socket it looks every [`HOTPLUG_EVERY`]. It stops at the `devices` step, or after
/// [`HOTPLUG_FOR`].
const HOTPLUG_EVERY: Duration = Duration::from_millis(100);
const HOTPLUG_FOR: Duration = Duration::from_secs(120);

/// Everything the modules step started: the profile's fixed set, the drivers the devices ask
/// for and [`LATE`]'s (at idle priority), all loading on threads of their own from the start
/// while the later steps run, then the hotplug watch. A step
/// waits only for what it needs ([`Modules::wait`]); the `devices` step waits for it all
/// ([`Modules::finish`]), so ready still means every module is loaded.
pub struct Modules {
    progress: Arc<Progress>,
    /// The fixed set's filesystems and network modules, by name (see [`Need`]).
    filesystems: Vec<String>,
    network_stack: Vec<String>,
    /// The late modules of the fixed set, known from the start.
    pub late_fixed: Vec<String>,
    stop: Arc<AtomicBool>,
    /// Wakes the hotplug watch when told to stop.
    waker: Option<crate::uevent::Waker>,
    running: Running,
}

enum Running {
    Thread(std::thread::JoinHandle<Finished>),
    Done(Box<Finished>),
}

/// What the loading did: the report of the fixed set and the devices' drivers, and that of
/// [`LATE`]'s modules (those build machines need) with the drivers of devices that appeared
/// later.
#[derive(Debug, Default)]
pub struct Finished {
    pub report: Report,
    pub late: Report,
    /// How long boot steps waited for modules in all, [`Modules::finish`]'s wait included.
    pub waited: Duration,
}

impl Modules {
    /// Starts loading: `fixed` (the profile's fixed set) and the drivers the devices under
    /// `sys` (normally /sys) ask for, from the module tree `dir`. Only reading the tables
    /// happens here; when no thread can be had, everything loads here instead.
    pub fn start(
        host: &Arc<dyn Host>,
        dir: &Path,
        fixed: Vec<String>,
        sys: &Path,
    ) -> Result<Modules, FileError> {
        let tables = Arc::new(Tables::parse(
            dir,
            &read_table(dir, buildos_contract::modules::DEP)?,
            &read_table(dir, buildos_contract::modules::SOFTDEP).unwrap_or_default(),
            &read_table(dir, buildos_contract::modules::ALIAS).unwrap_or_default(),
            &read_table(dir, buildos_contract::modules::BUILTIN).unwrap_or_default(),
        ));
        let (late_fixed, fixed): (Vec<String>, Vec<String>) =
            fixed.into_iter().partition(|name| is_late(name));
        let under = |prefix: &str| -> Vec<String> {
            fixed
                .iter()
                .flat_map(|name| tables.resolve(name))
                .filter(|module| {
                    tables
                        .dep
                        .get(module)
                        .is_some_and(|(path, _)| path.starts_with(prefix))
                })
                .collect()
        };
        let filesystems = under("kernel/fs/");
        let network_stack = under("kernel/net/");
        // Storage's filesystems first, then the network's modules, then the rest: the fixed
        // set loads in that order.
        let rank = |name: &String| {
            let modules = tables.resolve(name);
            if modules.iter().any(|m| filesystems.contains(m)) {
                0
            } else if modules.iter().any(|m| network_stack.contains(m)) {
                1
            } else {
                2
            }
        };
        let mut fixed = fixed;
        fixed.sort_by_key(rank);
        let progress = Arc::new(Progress::default());
        progress.lock().reserved = tables
            .plan(&fixed, &BTreeSet::new())
            .0
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        // Opened now, before the first look at the devices: no device that appears after it
        // is missed.
        let events = crate::uevent::Uevents::open().ok();
        let waker = events.as_ref().map(crate::uevent::Uevents::waker);
        let job = Job {
            events,
            progress: Arc::clone(&progress),
            host: Arc::clone(host),
            tables,
            fixed,
            late: late_fixed.clone(),
            sys: sys.to_path_buf(),
            stop: Arc::clone(&stop),
        };
        let shared = Arc::new(Mutex::new(Some(job)));
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("modules".to_owned())
            .spawn(move || {
                let job = theirs.lock().ok().and_then(|mut job| job.take());
                job.map(Job::run).unwrap_or_default()
            });
        let running = match spawned {
            Ok(handle) => Running::Thread(handle),
            Err(error) => {
                // Here, then: the hotplug watch ends at once.
                stop.store(true, Ordering::Relaxed);
                let job = shared.lock().ok().and_then(|mut job| job.take());
                let mut loaded = job.map(Job::run).unwrap_or_default();
                loaded
                    .report
                    .other_problems
                    .push(format!("cannot start a thread to load modules: {error}"));
                Running::Done(Box::new(loaded))
            }
        };
        Ok(Modules {
            progress,
            filesystems,
            network_stack,
            late_fixed,
            stop,
            waker,
            running,
        })
    }

    /// Waits until what `need` names is loaded, or until `until`; whether it is. The time
    /// waited counts in [`Finished::waited`].
    pub fn wait(&self, need: Need, until: Instant) -> bool {
        let (met, waited) = wait_for(&self.progress, until, |seen| {
            met(need, seen, &self.filesystems, &self.network_stack)
        });
        self.progress.lock().waited += waited;
        met
    }

    /// A handle to wait on the loading from a thread that works beside the boot steps (the
    /// network's first part, [`crate::net::start`]): its waits are not a step's, and do not
    /// count in [`Finished::waited`].
    pub fn watch(&self) -> Watch {
        Watch {
            progress: Arc::clone(&self.progress),
            filesystems: self.filesystems.clone(),
            network_stack: self.network_stack.clone(),
        }
    }

    /// Stops looking for new devices, waits for every module and gives what was loaded.
    pub fn finish(self) -> Finished {
        let began = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(waker) = &self.waker {
            waker.wake();
        }
        let mut loaded = match self.running {
            Running::Done(loaded) => *loaded,
            Running::Thread(handle) => handle.join().unwrap_or_else(|_| Finished {
                report: Report {
                    other_problems: vec!["the thread loading modules panicked".to_owned()],
                    ..Report::default()
                },
                ..Finished::default()
            }),
        };
        loaded.waited = self.progress.lock().waited + began.elapsed();
        loaded
    }
}

/// The loading, on its thread.
struct Job {
    progress: Arc<Progress>,
    host: Arc<dyn Host>,
    tables: Arc<Tables>,
    fixed: Vec<String>,
    /// The fixed set's [`LATE`] modules; the devices ask for more.
    late: Vec<String>,
    sys: PathBuf,
    stop: Arc<AtomicBool>,
    /// The kernel's device events, for the hotplug watch.
    events: Option<crate::uevent::Uevents>,
}

/// A late module a device asked for, with the device's modalias, for the late modules' thread.
type Asked = (String, String);

impl Job {
    fn run(self) -> Finished {
        let progress = Arc::clone(&self.progress);
        let _ended = Ended(&progress);
        let began = Instant::now();
        let fixed = self.start_fixed();
        let (asks, asked) = std::sync::mpsc::channel::<Asked>();
        let late = self.start_late(asked, began);
        let (mut report, matched) = self.drivers(&asks);
        // Every late module the devices asked for is sent: the late thread ends when done.
        drop(asks);
        match fixed {
            Ok(handle) => match handle.join() {
                Ok(fixed) => report.merge(fixed),
                Err(_) => report
                    .other_problems
                    .push("the thread loading the fixed modules panicked".to_owned()),
            },
            Err(fixed) => report.merge(*fixed),
        }
        self.progress.update(|seen| {
            seen.fixed_done = true;
            seen.foreground_done = true;
        });
        report.timings.sort_by_key(|t| std::cmp::Reverse(t.0));
        report.took = began.elapsed();
        // Every driver the devices asked for is loaded now: a network or storage controller left
        // without one is hardware this image cannot use, and the operator hears which.
        report.unclaimed = unclaimed(&self.sys, &self.tables.aliases);
        // No thread for the late modules: they load here, before the hotplug watch, as they
        // did before they had one.
        let (mut late, thread) = match late {
            Ok(thread) => (Report::default(), Some(thread)),
            Err((asked, error)) => {
                let mut late = self.load_late(asked, began);
                late.other_problems.push(format!(
                    "cannot start a thread to load the late modules: {error}; they loaded \
                     after the drivers"
                ));
                (late, None)
            }
        };
        let hotplug = self.hotplug(matched);
        if let Some(thread) = thread {
            late = thread.join().unwrap_or_else(|_| Report {
                other_problems: vec!["the thread loading the late modules panicked".to_owned()],
                ..Report::default()
            });
        }
        late.merge(hotplug);
        late.timings.sort_by_key(|t| std::cmp::Reverse(t.0));
        Finished {
            report,
            late,
            waited: Duration::ZERO,
        }
    }

    /// The late modules on a thread of their own at idle priority (see [`background`]), from
    /// now on; when none can be had, the receiver back with why, to load them on this thread.
    fn start_late(
        &self,
        asked: std::sync::mpsc::Receiver<Asked>,
        began: Instant,
    ) -> Result<std::thread::JoinHandle<Report>, (std::sync::mpsc::Receiver<Asked>, std::io::Error)>
    {
        let shared = Arc::new(Mutex::new(Some(asked)));
        let theirs = Arc::clone(&shared);
        let job = self.late_job();
        let spawned = std::thread::Builder::new()
            .name("late modules".to_owned())
            .spawn(move || {
                let lowered = background("late modules");
                let asked = theirs.lock().ok().and_then(|mut asked| asked.take());
                let mut report = match asked {
                    Some(asked) => job.load(asked, began),
                    None => Report::default(),
                };
                if let Err(why) = lowered {
                    report.other_problems.push(why);
                }
                report
            });
        spawned.map_err(|error| {
            let taken = shared.lock().ok().and_then(|mut asked| asked.take());
            // The thread never ran, so the receiver is still in `shared`.
            (taken.unwrap_or_else(|| std::sync::mpsc::channel().1), error)
        })
    }

    /// [`LateJob::load`] on this thread, at its priority.
    fn load_late(&self, asked: std::sync::mpsc::Receiver<Asked>, began: Instant) -> Report {
        self.late_job().load(asked, began)
    }

    fn late_job(&self) -> LateJob {
        LateJob {
            tables: Arc::clone(&self.tables),
            host: Arc::clone(&self.host),
            progress: Arc::clone(&self.progress),
            late: self.late.clone(),
        }
    }

    /// The fixed set on a thread of its own; when none can be had, loaded here (the error
    /// then holds its report).
    fn start_fixed(&self) -> Result<std::thread::JoinHandle<Report>, Box<Report>> {
        let load = |tables: &Tables, host: &dyn Host, fixed: &[String], progress: &Progress| {
            let mut report = Report::default();
            let unknown = tables.load(host, fixed, &mut report, progress, Loader::Foreground);
            report.other_problems = unknown
                .into_iter()
                .map(|name| format!("module {name} is not in this image"))
                .collect();
            progress.update(|seen| seen.fixed_done = true);
            report
        };
        let (tables, host, fixed, progress) = (
            Arc::clone(&self.tables),
            Arc::clone(&self.host),
            self.fixed.clone(),
            Arc::clone(&self.progress),
        );
        std::thread::Builder::new()
            .name("fixed modules".to_owned())
            .spawn(move || load(&tables, host.as_ref(), &fixed, &progress))
            .map_err(|_| {
                Box::new(load(
                    &self.tables,
                    self.host.as_ref(),
                    &self.fixed,
                    &self.progress,
                ))
            })
    }

    /// The drivers the devices ask for, each on a thread of its own (a probe that waits for its
    /// hardware, a NIC's reset, overlaps with the others), the devices looked at again as
    /// soon as any driver loaded, until none is loading and no device wants a new one (as
    /// udev loads a driver for each device as it appears). The late ones the devices ask for
    /// (kvm_intel, kvm_amd) go to the late modules' thread through `late` as soon as they are
    /// found. Returns the report and the drivers matched so far.
    fn drivers(&self, late: &std::sync::mpsc::Sender<Asked>) -> (Report, BTreeSet<String>) {
        let mut report = Report::default();
        let mut matched: BTreeSet<String> = BTreeSet::new();
        let (sender, receiver) = std::sync::mpsc::channel::<(String, Report)>();
        let mut running = 0usize;
        let mut finished: Option<String> = None;
        loop {
            let found = devices(&self.sys);
            report.devices = found.len();
            let found = with_virtio_children(found);
            let mut started: Vec<(String, bool)> = Vec::new();
            let mut asked: Vec<Asked> = Vec::new();
            for (module, (modalias, nic)) in wanted(&self.tables.aliases, &found, &matched) {
                matched.insert(module.clone());
                if is_late(&module) {
                    asked.push((module, modalias));
                } else {
                    report.drivers.push((module.clone(), modalias));
                    started.push((module, nic));
                }
            }
            // What the new drivers need is theirs to load, not the late thread's (on an AMD
            // host the CCP's driver, ccp, is also kvm_amd's dependency).
            let theirs: Vec<String> = started.iter().map(|(name, _)| name.clone()).collect();
            let (needed, _) = self.tables.plan(&theirs, &BTreeSet::new());
            // The new drivers count as loading before the one that just finished stops
            // counting: a step waiting for drivers never sees a moment with none between them.
            self.progress.update(|seen| {
                seen.reserved
                    .extend(needed.into_iter().map(|(name, _)| name));
                let loading = seen.loading.get_or_insert_with(BTreeMap::new);
                loading.extend(started.iter().cloned());
                if let Some(name) = finished.take() {
                    loading.remove(&name);
                }
            });
            for ask in asked {
                // Refused only when the late thread ended by a panic, which is a problem of
                // its own.
                let _ = late.send(ask);
            }
            for (name, _) in started {
                running += 1;
                let own = Report {
                    modules: report.modules.clone(),
                    ..Report::default()
                };
                let (tables, host, progress, theirs) = (
                    Arc::clone(&self.tables),
                    Arc::clone(&self.host),
                    Arc::clone(&self.progress),
                    sender.clone(),
                );
                let (their_name, their_own) = (name.clone(), own.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("driver {name}"))
                    .spawn(move || {
                        let loaded =
                            load_driver(&tables, host.as_ref(), &progress, &their_name, their_own);
                        let _ = theirs.send((their_name, loaded));
                    });
                if spawned.is_err() {
                    // No thread to be had: load it here instead.
                    let loaded =
                        load_driver(&self.tables, self.host.as_ref(), &self.progress, &name, own);
                    let _ = sender.send((name, loaded));
                }
            }
            if running == 0 {
                break;
            }
            // Each thread sends once, panic or not; this thread holds a sender, so this only
            // ends with a message.
            let Ok((name, part)) = receiver.recv() else {
                break;
            };
            running -= 1;
            report.merge(part);
            finished = Some(name);
        }
        (report, matched)
    }

    /// The drivers of devices that appear after the drivers loaded, until [`Modules::finish`]
    /// (or [`HOTPLUG_FOR`] has passed), at this thread's priority: a USB stick's driver must
    /// not wait for idle time.
    fn hotplug(&self, mut matched: BTreeSet<String>) -> Report {
        let mut report = Report::default();
        let mut unknown = Vec::new();
        let began = Instant::now();
        while !self.stop.load(Ordering::Relaxed) && began.elapsed() < HOTPLUG_FOR {
            let found = with_virtio_children(devices(&self.sys));
            for (module, (modalias, nic)) in wanted(&self.tables.aliases, &found, &matched) {
                matched.insert(module.clone());
                // Loading, for storage's wait before it gives up.
                self.progress.update(|seen| {
                    seen.loading
                        .get_or_insert_with(BTreeMap::new)
                        .insert(module.clone(), nic);
                });
                unknown.extend(self.tables.load(
                    self.host.as_ref(),
                    std::slice::from_ref(&module),
                    &mut report,
                    &self.progress,
                    Loader::Foreground,
                ));
                self.progress.update(|seen| {
                    if let Some(loading) = seen.loading.as_mut() {
                        loading.remove(&module);
                    }
                });
                report.drivers.push((module, modalias));
            }
            match &self.events {
                Some(events) => {
                    events.wait(HOTPLUG_EVERY * 10, |event| event.wants_driver());
                }
                None => std::thread::sleep(HOTPLUG_EVERY),
            }
        }
        report.other_problems = unknown
            .into_iter()
            .map(|name| format!("module {name} is not in this image"))
            .collect();
        report
    }
}

/// The late modules' loading, on their thread.
struct LateJob {
    tables: Arc<Tables>,
    host: Arc<dyn Host>,
    progress: Arc<Progress>,
    /// The fixed set's [`LATE`] modules.
    late: Vec<String>,
}

impl LateJob {
    /// The fixed set's late modules, then each one `asked` brings as the devices ask for it,
    /// until its sender is gone, each with what it needs that no other thread loads. The
    /// report holds what this thread loaded; its `took` runs from `began`, the start of the
    /// loading.
    fn load(self, asked: std::sync::mpsc::Receiver<Asked>, began: Instant) -> Report {
        let mut report = Report::default();
        let (tables, host, progress) = (&self.tables, self.host.as_ref(), &self.progress);
        let mut unknown = tables.load(host, &self.late, &mut report, progress, Loader::Background);
        for (module, modalias) in asked {
            unknown.extend(tables.load(
                host,
                std::slice::from_ref(&module),
                &mut report,
                progress,
                Loader::Background,
            ));
            report.drivers.push((module, modalias));
        }
        report.other_problems = unknown
            .into_iter()
            .map(|name| format!("module {name} is not in this image"))
            .collect();
        report.took = began.elapsed();
        report
    }
}

/// Puts the calling thread in the background (the late modules', the late files'): SCHED_IDLE,
/// so that it runs only on CPU time no other thread wants (the modules boot waits for, the
/// steps) and never delays storage's or the network's modules; nice 19 where SCHED_IDLE cannot be had (a
/// kernel without it refuses with EINVAL). Linux applies either to this thread alone. When
/// neither can be set, the thread loads at the priority it has, and says why.
pub(crate) fn background(what: &str) -> Result<(), String> {
    let idle = match buildos_ioctl::sched_idle() {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    buildos_ioctl::nice_thread(19).map_err(|nice| {
        format!(
            "cannot lower the priority of the thread of the {what} (SCHED_IDLE: {idle}; \
             nice 19: {nice}): it runs at normal priority"
        )
    })
}

/// Loads one driver the devices asked for, with what it needs that `own` does not hold yet; a
/// panic is a problem of the report, never the end of the loading.
fn load_driver(
    tables: &Tables,
    host: &dyn Host,
    progress: &Progress,
    name: &str,
    mut own: Report,
) -> Report {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        tables.load(
            host,
            &[name.to_owned()],
            &mut own,
            progress,
            Loader::Foreground,
        );
        own
    }))
    .unwrap_or_else(|_| Report {
        other_problems: vec![format!("the thread loading driver {name} panicked")],
        ..Report::default()
    })
}

/// modules.alias: `alias <pattern> <module>` lines.
#[derive(Debug, Default)]
pub struct Aliases {
    entries: Vec<(String, String)>,
}

impl Aliases {
    pub fn parse(text: &str) -> Aliases {
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((normalize(pattern), normalize(module)))
                    }
                    _ => None,
                }
            })
            .collect();
        Aliases { entries }
    }

    /// The modules whose aliases match a device's modalias, in modules.alias order.
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        let modalias = normalize(modalias);
        let mut found: Vec<&str> = Vec::new();
        for (pattern, module) in &self.entries {
            if !found.contains(&module.as_str()) && fnmatch(pattern, &modalias) {
                found.push(module);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// modules.softdep: modules to load before (`pre:`) and after (`post:`) a module.
#[derive(Debug, Default)]
pub struct Softdeps {
    deps: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

impl Softdeps {
    pub fn parse(text: &str) -> Softdeps {
        let mut deps: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let entry = deps.entry(normalize(module)).or_default();
            let mut post = false;
            for word in words {
                match word {
                    "pre:" => post = false,
                    "post:" => post = true,
                    name if post => entry.1.push(normalize(name)),
                    name => entry.0.push(normalize(name)),
                }
            }
        }
        Softdeps { deps }
    }

    /// The modules to load before and after `module`.
    pub fn get(&self, module: &str) -> (&[String], &[String]) {
        match self.deps.get(module) {
            Some((pre, post)) => (pre, post),
            None => (&[], &[]),
        }
    }
}

/// Every device's `modalias` under `sys` (normally /sys), deduplicated and sorted: those of
/// the devices on each bus (`bus/*/devices/*`) and in each class (`class/*/*`, which holds
/// DMI's and the input devices'), and the CPUs' (`devices/system/cpu`). These are the devices
/// udev's coldplug visits; a walk of all /sys/devices finds the same set but reads tens of
/// thousands of entries, which took 0.3 s per pass under software emulation.
pub fn modaliases(sys: &Path) -> BTreeSet<String> {
    devices(sys).into_keys().collect()
}

/// [`modaliases`], each with whether a device that has it may bring a network interface
/// ([`may_bring_a_nic`]).
pub fn devices(sys: &Path) -> BTreeMap<String, bool> {
    let mut dirs = vec![sys.join("devices/system/cpu")];
    let buses = entries(&sys.join("bus"))
        .into_iter()
        .map(|bus| bus.join("devices"));
    for devices in buses.chain(entries(&sys.join("class"))) {
        dirs.extend(entries(&devices));
    }
    let mut found: BTreeMap<String, bool> = BTreeMap::new();
    for dir in dirs {
        let Ok(text) = std::fs::read_to_string(dir.join("modalias")) else {
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let nic = may_bring_a_nic(&dir);
        *found.entry(text.to_owned()).or_default() |= nic;
    }
    found
}

/// `found` ([`devices`]) with the virtio device each virtio PCI function in it brings
/// ([`virtio_child`]), whether or not virtio_pci has registered it yet, and the function's
/// word on whether it may bring a NIC: what the drivers are matched against.
fn with_virtio_children(mut found: BTreeMap<String, bool>) -> BTreeMap<String, bool> {
    let children: Vec<(String, bool)> = found
        .iter()
        .filter_map(|(modalias, nic)| Some((virtio_child(modalias)?, *nic)))
        .collect();
    for (child, nic) in children {
        *found.entry(child).or_default() |= nic;
    }
    found
}

/// The modalias of the virtio device a virtio PCI function brings, read from the function's own
/// `pci_modalias`: `virtio:d<type>v<vendor>` (as the virtio bus spells it), the type being the
/// PCI subsystem's device ID for a transitional function (device IDs 0x1000 to 0x103f) and the
/// device ID less 0x1040 for a modern one (0x1040 to 0x107f), the vendor the subsystem's vendor.
/// So the virtio NIC's and disk's drivers load beside virtio_pci instead of after it, and the
/// kernel probes them the moment virtio_pci registers their devices: under software emulation
/// virtio_pci's own loading and probing took 0.4 to 0.7 s, and the kernel sees a virtio NIC's
/// link up only a second after its driver's probe (virtio_net reports the link while the
/// interface is still down, and the kernel's link watch runs such an event at most once a
/// second), which br0 then waited for. `None` for any other device, or a modalias that is not a
/// PCI function's.
fn virtio_child(pci_modalias: &str) -> Option<String> {
    let rest = pci_modalias.strip_prefix("pci:")?;
    let field = |rest: &str, tag: &str| -> Option<u32> {
        let digits = rest.strip_prefix(tag)?.get(..8)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(digits, 16).ok()
    };
    let vendor = field(rest, "v")?;
    let device = field(rest.get(9..)?, "d")?;
    let subsystem_vendor = field(rest.get(18..)?, "sv")?;
    let subsystem_device = field(rest.get(28..)?, "sd")?;
    if vendor != VIRTIO_PCI_VENDOR {
        return None;
    }
    let kind = match device {
        0x1000..=0x103f => subsystem_device,
        0x1040..=0x107f => device - 0x1040,
        _ => return None,
    };
    (kind != 0).then(|| format!("virtio:d{kind:08X}v{subsystem_vendor:08X}"))
}

/// The PCI vendor ID of virtio's PCI functions (Red Hat's, as the virtio specification assigns).
const VIRTIO_PCI_VENDOR: u32 = 0x1af4;

/// Whether the device at `dir` (a sysfs device directory or a link to one) may bring a network
/// interface, from the PCI function it is or sits under (the nearest one in its sysfs path): a
/// network controller (class 02) or a USB controller (class 0c03: a USB NIC) may; a PCI
/// function of any other class (a storage controller, a display) cannot, nor can what sits
/// under it (the disks behind a SATA controller, its CD-ROM). A device under no PCI function
/// (the CPUs, platform and ACPI devices, Hyper-V's VMBus) may, as may one whose class cannot
/// be read: the network step waits for those drivers too.
pub fn may_bring_a_nic(dir: &Path) -> bool {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Some(function) = real.ancestors().find(|dir| {
        dir.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(is_pci_address)
    }) else {
        return true;
    };
    let class = std::fs::read_to_string(function.join("class")).unwrap_or_default();
    let class = class.trim().trim_start_matches("0x").to_ascii_lowercase();
    class.len() != 6 || class.starts_with("02") || class.starts_with("0c03")
}

/// A PCI function's sysfs name: `0000:00:03.0` (domain, bus, device, function in hex).
fn is_pci_address(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 12
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b':',
            10 => *b == b'.',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The paths in `dir`, none when it cannot be read.
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default()
}

/// The modules that match any of `modaliases` and are not yet in `known`, with one device
/// that wants each (for the console).
pub fn matching<'a>(
    aliases: &'a Aliases,
    modaliases: &'a BTreeSet<String>,
    known: &BTreeSet<String>,
) -> BTreeMap<&'a str, &'a str> {
    let mut wanted = BTreeMap::new();
    for modalias in modaliases {
        for module in aliases.modules_for(modalias) {
            if !known.contains(module) {
                wanted.entry(module).or_insert(modalias.as_str());
            }
        }
    }
    wanted
}

/// [`matching`] over [`devices`]: each module wanted, with one device that wants it and
/// whether any device wanting it may bring a network interface.
fn wanted(
    aliases: &Aliases,
    found: &BTreeMap<String, bool>,
    known: &BTreeSet<String>,
) -> BTreeMap<String, (String, bool)> {
    let mut wanted: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for (modalias, nic) in found {
        for module in aliases.modules_for(modalias) {
            if !known.contains(module) {
                wanted
                    .entry(module.to_owned())
                    .or_insert_with(|| (modalias.clone(), false))
                    .1 |= nic;
            }
        }
    }
    wanted
}

/// A PCI network or storage controller that no driver claimed once every driver loaded: the
/// image carries no module for it (or its module failed), so its disks or its link never appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unclaimed {
    /// The PCI address, like `0000:00:03.0`.
    pub address: String,
    /// `vendor:device` in lower-case hex, like `10ec:8139`, as `lspci -nn` shows it.
    pub id: String,
    /// The class code, six hex digits, like `020000`.
    pub class: String,
    pub modalias: String,
    /// The image's modules whose aliases match it: none when the image has no driver for it,
    /// else drivers that were loaded and did not bind (their failure is a problem of its own).
    pub matching: Vec<String>,
}

impl Unclaimed {
    /// What kind of controller the class code says this is.
    fn kind(&self) -> &'static str {
        if self.class.starts_with("02") {
            "network"
        } else {
            "storage"
        }
    }

    /// The problem line, for the console and the host-up mail.
    pub fn problem(&self) -> String {
        let why = if self.matching.is_empty() {
            "the image carries no module whose modules.alias matches it; add its driver to the \
             profile's modules"
                .to_owned()
        } else {
            format!("{} matched it but did not bind", self.matching.join(", "))
        };
        format!(
            "no driver for {} controller {} [{}] class {} ({}): {why}",
            self.kind(),
            self.address,
            self.id,
            self.class,
            self.modalias
        )
    }
}

/// Every PCI device under `sys` (normally /sys) of class 01xxxx (storage) or 02xxxx
/// (network) that has no `driver` link, by address. A value sysfs gives that is not what the
/// kernel writes (a class that is not hex) is shown as read, never a reason to skip the device.
pub fn unclaimed(sys: &Path, aliases: &Aliases) -> Vec<Unclaimed> {
    let read = |dir: &Path, name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|text| text.trim().to_owned())
            .unwrap_or_default()
    };
    let hex = |text: String| text.trim_start_matches("0x").to_ascii_lowercase();
    let mut found: Vec<Unclaimed> = entries(&sys.join("bus/pci/devices"))
        .into_iter()
        .filter_map(|dir| {
            let class = hex(read(&dir, "class"));
            let wanted = class.len() == 6 && (class.starts_with("01") || class.starts_with("02"));
            // symlink_metadata: the link itself, so a driver whose directory went away still
            // counts as a claim.
            let claimed = std::fs::symlink_metadata(dir.join("driver")).is_ok();
            (wanted && !claimed).then(|| {
                let modalias = read(&dir, "modalias");
                Unclaimed {
                    address: dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    id: format!(
                        "{}:{}",
                        hex(read(&dir, "vendor")),
                        hex(read(&dir, "device"))
                    ),
                    class,
                    matching: aliases
                        .modules_for(&modalias)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    modalias,
                }
            })
        })
        .collect();
    found.sort_by(|a, b| a.address.cmp(&b.address));
    found
}

/// How loading one module went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Yes,
    /// The kernel refused it with ENODEV: no such hardware or CPU feature on this machine.
    NoHardware,
    Failed(String),
}

/// What loading modules did, for the console and the boot report.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Every module file attempted, by name.
    pub modules: BTreeMap<String, Loaded>,
    /// Drivers chosen by modalias, with one device that asked for each.
    pub drivers: Vec<(String, String)>,
    /// How many distinct modaliases the last pass saw.
    pub devices: usize,
    /// Problems that are not one module's: names the image does not have, a thread that
    /// could not run.
    pub other_problems: Vec<String>,
    /// How long each module took, slowest first.
    pub timings: Vec<(std::time::Duration, String)>,
    /// Network and storage controllers left without a driver once every driver was loaded.
    pub unclaimed: Vec<Unclaimed>,
    /// From the start of the loading until every module of this report was loaded.
    pub took: Duration,
}

impl Report {
    pub fn loaded(&self) -> usize {
        self.modules.values().filter(|l| **l == Loaded::Yes).count()
    }

    pub fn without_hardware(&self) -> Vec<&str> {
        self.names(|l| *l == Loaded::NoHardware)
    }

    fn names(&self, keep: impl Fn(&Loaded) -> bool) -> Vec<&str> {
        self.modules
            .iter()
            .filter(|(_, l)| keep(l))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Each failure, one line: what the operator should hear about.
    pub fn problems(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .modules
            .values()
            .filter_map(|l| match l {
                Loaded::Failed(why) => Some(why.clone()),
                _ => None,
            })
            .collect();
        lines.extend(self.other_problems.iter().cloned());
        lines.extend(self.unclaimed.iter().map(Unclaimed::problem));
        lines
    }

    fn merge(&mut self, other: Report) {
        for (name, outcome) in other.modules {
            let entry = self.modules.entry(name).or_insert(outcome.clone());
            if outcome == Loaded::Yes {
                *entry = Loaded::Yes;
            }
        }
        self.drivers.extend(other.drivers);
        self.other_problems.extend(other.other_problems);
        self.timings.extend(other.timings);
    }
}

/// The image's module tables, and how to order a load from them.
pub struct Tables {
    dir: PathBuf,
    dep: crate::kmod::ModulesDep,
    softdeps: Softdeps,
    aliases: Aliases,
    builtin: BTreeSet<String>,
}

impl Tables {
    pub fn parse(dir: &Path, dep: &str, softdep: &str, alias: &str, builtin: &str) -> Tables {
        Tables {
            dir: dir.to_path_buf(),
            dep: crate::kmod::ModulesDep::parse(dep),
            softdeps: Softdeps::parse(softdep),
            aliases: Aliases::parse(alias),
            builtin: builtin
                .lines()
                .map(|line| crate::kmod::module_name(line.trim()))
                .filter(|name| !name.is_empty())
                .collect(),
        }
    }

    /// The modules a name means: itself, or the modules an alias names (soft dependencies
    /// often name an alias, like `crc32c` for `crc32c_generic` and `crc32c_intel`).
    fn resolve(&self, name: &str) -> Vec<String> {
        if self.dep.contains(name) {
            return vec![name.replace('-', "_")];
        }
        self.aliases
            .modules_for(name)
            .into_iter()
            .filter(|module| self.dep.contains(module))
            .map(str::to_owned)
            .collect()
    }

    /// The order to load `names` in, as modprobe would: for each module its soft `pre:`
    /// dependencies, its hard dependencies (each with their own soft ones), the module, then its
    /// `post:` dependencies; each once, skipping those in `done`. Returns the (name, file)
    /// pairs and the names asked for that the image does not have and the kernel does not have
    /// built in. A soft dependency the image lacks is optional and not reported.
    pub fn plan(
        &self,
        names: &[String],
        done: &BTreeSet<String>,
    ) -> (Vec<(String, String)>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = done.clone();
        let mut unknown = Vec::new();
        for name in names {
            let modules = self.resolve(name);
            let normal = name.replace('-', "_");
            if modules.is_empty() && !self.builtin.contains(&normal) {
                unknown.push(normal);
            }
            for module in modules {
                self.visit(&module, &mut seen, &mut order);
            }
        }
        (order, unknown)
    }

    fn visit(&self, module: &str, seen: &mut BTreeSet<String>, order: &mut Vec<(String, String)>) {
        let Some((path, deps)) = self.dep.get(module) else {
            return;
        };
        if !seen.insert(module.to_owned()) {
            return;
        }
        let (pre, post) = self.softdeps.get(module);
        for soft in pre {
            for m in self.resolve(soft) {
                self.visit(&m, seen, order);
            }
        }
        // modules.dep lists the deepest dependency last: load from the end.
        for dep in deps.iter().rev() {
            self.visit(&crate::kmod::module_name(dep), seen, order);
        }
        order.push((module.to_owned(), path.to_owned()));
        for soft in post {
            for m in self.resolve(soft) {
                self.visit(&m, seen, order);
            }
        }
    }

    /// Loads `names` and what they need, skipping modules this report already has, and tells
    /// `progress` of each module as it is done. A module another thread took is left to it
    /// (this one waits until it is done: what comes next may need it), so each module is
    /// loaded once and is in one report. Returns the names the image does not have.
    fn load(
        &self,
        host: &dyn Host,
        names: &[String],
        report: &mut Report,
        progress: &Progress,
        loader: Loader,
    ) -> Vec<String> {
        let done: BTreeSet<String> = report.modules.keys().cloned().collect();
        let (order, unknown) = self.plan(names, &done);
        for (name, path) in order {
            let Some(_claim) = progress.claim(&name, loader) else {
                continue;
            };
            let began = std::time::Instant::now();
            let outcome = match crate::kmod::load(host, &self.dir.join(&path)) {
                Ok(()) => Loaded::Yes,
                Err(crate::kmod::LoadError::Init {
                    errno: nix::errno::Errno::ENODEV,
                    ..
                }) => Loaded::NoHardware,
                Err(error) => Loaded::Failed(error.to_string()),
            };
            report.timings.push((began.elapsed(), name.clone()));
            report.modules.insert(name, outcome);
        }
        unknown
    }
}

fn read_table(dir: &Path, name: &str) -> Result<String, FileError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(FileError::on("read", &path))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias virtio:d00000001v* virtio_net
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias fs-btrfs btrfs
alias scsi:t-0x00* sd_mod
alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_intel
alias pci:v00008086d00007010sv*sd*bc*sc*i* ata-piix
";

    #[test]
    fn devices_pick_their_drivers() {
        let aliases = Aliases::parse(ALIAS);
        assert_eq!(aliases.len(), 8);
        assert_eq!(
            aliases.modules_for("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"),
            ["e1000"]
        );
        assert_eq!(
            aliases.modules_for("pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"),
            ["ata_piix"]
        );
        assert!(aliases
            .modules_for("pci:v000010ECd00008139sv00001AF4sd00001100bc02sc00i00")
            .is_empty());
    }

    #[test]
    fn only_new_modules_are_wanted() {
        let aliases = Aliases::parse(ALIAS);
        let devices: BTreeSet<String> = [
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            "virtio:d00000001v00001AF4",
            "scsi:t-0x05",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let known: BTreeSet<String> = ["virtio_pci".to_owned()].into();
        let wanted = matching(&aliases, &devices, &known);
        assert_eq!(
            wanted.keys().copied().collect::<Vec<_>>(),
            ["e1000", "virtio_net"]
        );
        assert_eq!(wanted["virtio_net"], "virtio:d00000001v00001AF4");
    }

    #[test]
    fn soft_dependencies_of_hard_dependencies_come_first() {
        // btrfs needs libcrc32c, whose soft dependency `crc32c` is an alias of two modules.
        let tables = Tables::parse(
            Path::new("/lib/modules/x"),
            "kernel/fs/btrfs/btrfs.ko: kernel/lib/libcrc32c.ko kernel/crypto/xor.ko\n\
             kernel/lib/libcrc32c.ko:\n\
             kernel/crypto/xor.ko:\n\
             kernel/crypto/crc32c_generic.ko:\n\
             kernel/arch/x86/crypto/crc32c-intel.ko:\n\
             kernel/lib/zstd.ko:\n\
             kernel/drivers/net/e1000.ko:\n",
            "softdep btrfs pre: crypto-crc32c post: zstd\n\
             softdep libcrc32c pre: crc32c\n",
            "alias crc32c crc32c_intel\n\
             alias crypto-crc32c crc32c_intel\n\
             alias crc32c crc32c_generic\n\
             alias crypto-crc32c crc32c_generic\n",
            "kernel/lib/crc32.ko\n",
        );
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (order, unknown) = tables.plan(
            &names(&["btrfs", "e1000", "crc32", "nosuch"]),
            &BTreeSet::new(),
        );
        let order: Vec<&str> = order.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            order,
            [
                "crc32c_intel",
                "crc32c_generic",
                "xor",
                "libcrc32c",
                "btrfs",
                "zstd",
                "e1000"
            ]
        );
        assert_eq!(unknown, ["nosuch"]);
        let done: BTreeSet<String> = ["xor".to_owned(), "crc32c_intel".to_owned()].into();
        let (order, _) = tables.plan(&names(&["btrfs"]), &done);
        assert_eq!(
            order[0],
            (
                "crc32c_generic".to_owned(),
                "kernel/crypto/crc32c_generic.ko".to_owned()
            )
        );
    }

    /// A PCI device in a fake sysfs: its directory, the bus's link to it, and a driver link
    /// when `driver` names one.
    fn pci_device(sys: &Path, address: &str, ids: (&str, &str, &str), driver: Option<&str>) {
        let dir = sys.join("devices/pci0000:00").join(address);
        std::fs::create_dir_all(&dir).unwrap();
        let (vendor, device, class) = ids;
        std::fs::write(dir.join("vendor"), format!("0x{vendor}\n")).unwrap();
        std::fs::write(dir.join("device"), format!("0x{device}\n")).unwrap();
        std::fs::write(dir.join("class"), format!("0x{class}\n")).unwrap();
        std::fs::write(
            dir.join("modalias"),
            format!(
                "pci:v0000{}d0000{}sv00001AF4sd00001100bc{}sc{}i{}\n",
                vendor.to_uppercase(),
                device.to_uppercase(),
                &class[0..2],
                &class[2..4],
                &class[4..6]
            ),
        )
        .unwrap();
        if let Some(driver) = driver {
            let target = sys.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&target).unwrap();
            std::os::unix::fs::symlink(&target, dir.join("driver")).unwrap();
        }
        let bus = sys.join("bus/pci/devices");
        std::fs::create_dir_all(&bus).unwrap();
        std::os::unix::fs::symlink(&dir, bus.join(address)).unwrap();
    }

    #[test]
    fn network_and_storage_controllers_without_a_driver_are_reported() {
        let sys = tempfile::tempdir().unwrap();
        let sys = sys.path();
        // Claimed: an e1000 and a virtio disk. Unclaimed: an RTL8139 NIC and a MegaRAID
        // controller. Unclaimed but neither network nor storage: a VGA and a host bridge.
        pci_device(
            sys,
            "0000:00:02.0",
            ("8086", "100e", "020000"),
            Some("e1000"),
        );
        pci_device(sys, "0000:00:03.0", ("10ec", "8139", "020000"), None);
        pci_device(
            sys,
            "0000:00:04.0",
            ("1af4", "1001", "010000"),
            Some("virtio-pci"),
        );
        pci_device(sys, "0000:00:05.0", ("1000", "005b", "010400"), None);
        pci_device(sys, "0000:00:01.0", ("1234", "1111", "030000"), None);
        pci_device(sys, "0000:00:00.0", ("8086", "1237", "060000"), None);
        let aliases = Aliases::parse(ALIAS);
        let found = unclaimed(sys, &aliases);
        assert_eq!(
            found.iter().map(Unclaimed::problem).collect::<Vec<_>>(),
            [
                "no driver for network controller 0000:00:03.0 [10ec:8139] class 020000 \
                 (pci:v000010ECd00008139sv00001AF4sd00001100bc02sc00i00): the image carries no \
                 module whose modules.alias matches it; add its driver to the profile's modules",
                "no driver for storage controller 0000:00:05.0 [1000:005b] class 010400 \
                 (pci:v00001000d0000005Bsv00001AF4sd00001100bc01sc04i00): the image carries no \
                 module whose modules.alias matches it; add its driver to the profile's modules",
            ]
        );
    }

    #[test]
    fn no_pci_bus_means_nothing_unclaimed() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(unclaimed(sys.path(), &Aliases::parse(ALIAS)), []);
    }

    #[test]
    fn controller_whose_driver_did_not_bind_names_the_driver() {
        let sys = tempfile::tempdir().unwrap();
        pci_device(sys.path(), "0000:00:02.0", ("8086", "100e", "020000"), None);
        let found = unclaimed(sys.path(), &Aliases::parse(ALIAS));
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .problem()
                .ends_with(": e1000 matched it but did not bind"),
            "{}",
            found[0].problem()
        );
    }

    #[test]
    fn modaliases_are_read_from_the_buses_and_the_cpus() {
        let sys = std::env::temp_dir().join(format!("buildos-modalias-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&sys);
        let pci = sys.join("devices/pci0000:00/0000:00:03.0");
        let write = |path: PathBuf, text: &str| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            pci.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        );
        write(pci.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n");
        write(pci.join("vendor"), "0x1af4\n");
        write(
            sys.join("devices/system/cpu/modalias"),
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0089\n",
        );
        write(
            sys.join("devices/virtual/dmi/id/modalias"),
            "dmi:bvnSeaBIOS:svnQEMU:\n",
        );
        // A device in no bus or class is not read, nor is an empty modalias.
        write(
            sys.join("devices/virtual/other/thing/modalias"),
            "not:read\n",
        );
        write(sys.join("devices/platform/empty/modalias"), "\n");
        // The buses link to their devices, as sysfs does.
        for (bus, device) in [
            ("pci", pci.clone()),
            ("virtio", pci.join("virtio0")),
            ("platform", sys.join("devices/platform/empty")),
            ("", sys.join("devices/virtual/dmi/id")),
        ] {
            let dir = if bus.is_empty() {
                sys.join("class/dmi")
            } else {
                sys.join("bus").join(bus).join("devices")
            };
            std::fs::create_dir_all(&dir).unwrap();
            let name = device.file_name().unwrap().to_owned();
            std::os::unix::fs::symlink(&device, dir.join(name)).unwrap();
        }
        let found = modaliases(&sys);
        std::fs::remove_dir_all(&sys).unwrap();
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [
                "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0089",
                "dmi:bvnSeaBIOS:svnQEMU:",
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                "virtio:d00000001v00001AF4"
            ]
        );
    }

    #[test]
    fn a_virtio_pci_function_names_the_virtio_device_it_brings() {
        // QEMU's transitional NIC and disk: the type is the subsystem's device ID.
        assert_eq!(
            virtio_child("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00").as_deref(),
            Some("virtio:d00000001v00001AF4")
        );
        assert_eq!(
            virtio_child("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00").as_deref(),
            Some("virtio:d00000002v00001AF4")
        );
        // A modern one (disable-legacy=on): the device ID less 0x1040; the vendor is the
        // subsystem's.
        assert_eq!(
            virtio_child("pci:v00001AF4d00001041sv0000108Esd00001100bc02sc00i00").as_deref(),
            Some("virtio:d00000001v0000108E")
        );
        // Not virtio, not a virtio device's function, no type, not a PCI modalias, cut short.
        for other in [
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
            "pci:v00001AF4d00001100sv00001AF4sd00001100bc08sc80i00",
            "pci:v00001AF4d00001000sv00001AF4sd00000000bc02sc00i00",
            "virtio:d00000001v00001AF4",
            "pci:v00001AF4d00001000sv00001AF4sd0000",
            "pci:v00001AF4d0000100Gsv00001AF4sd00000001bc02sc00i00",
            "pci:v00001AF4d00001000sv00001AF4sd0000000\u{e9}bc02sc00i00",
            "",
        ] {
            assert_eq!(virtio_child(other), None, "{other}");
        }
    }

    #[test]
    fn the_virtio_nics_driver_loads_beside_virtio_pci_before_the_nic_appears() {
        let dep = "\
kernel/drivers/virtio/virtio_pci.ko:
kernel/drivers/net/virtio_net.ko:
";
        let alias = "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
                     alias virtio:d00000001v* virtio_net\n";
        let (root, dir) = module_tree(dep, alias, "cpu:type:x86\n");
        let sys = root.path().join("sys");
        // The virtio NIC is not there yet: only its PCI function, which virtio_pci brings it
        // from.
        std::fs::remove_dir_all(sys.join("bus/virtio")).unwrap();
        pci_device(&sys, "0000:00:03.0", ("1af4", "1000", "020000"), None);
        // As QEMU gives it: the subsystem's device ID is the virtio type, 1 for a NIC.
        std::fs::write(
            sys.join("devices/pci0000:00/0000:00:03.0/modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )
        .unwrap();
        let recording = Arc::new(crate::host::Recording::new());
        let virtio_pci = recording.hold(&load_line(&dir, "kernel/drivers/virtio/virtio_pci.ko"));
        let host: Arc<dyn Host> = recording.clone();
        let modules = Modules::start(&host, &dir, Vec::new(), &sys).unwrap();
        until_asked(&recording, "virtio_pci");
        // virtio_pci has not finished loading, and the NIC's driver is asked for all the same.
        until_asked(&recording, "virtio_net");
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!modules.wait(Need::Nics, soon), "virtio_pci is loading");
        virtio_pci.release();
        let loaded = modules.finish();
        assert_eq!(
            loaded.report.drivers,
            [
                (
                    "virtio_net".to_owned(),
                    "virtio:d00000001v00001AF4".to_owned()
                ),
                (
                    "virtio_pci".to_owned(),
                    "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00".to_owned()
                ),
            ]
        );
        assert_eq!(loaded.report.loaded(), 2);
    }

    /// [`module_tree`] on an Intel CPU with VMX, whose modalias asks for kvm_intel, and a
    /// virtio NIC that asks for `nic`.
    fn intel_tree(dep: &str, nic: &str) -> (tempfile::TempDir, PathBuf) {
        let alias = format!(
            "alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_intel\n\
             alias virtio:d00000001v* {nic}\n"
        );
        module_tree(
            dep,
            &alias,
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0085\n",
        )
    }

    /// A module tree of empty `.ko` files with these modules.dep lines, and a sysfs whose only
    /// device is the CPU with `cpu_modalias` and a virtio NIC.
    fn module_tree(dep: &str, alias: &str, cpu_modalias: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let modules = root.path().join("modules");
        for line in dep.lines() {
            let (path, _) = line.split_once(':').unwrap();
            let file = modules.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, b"").unwrap();
        }
        std::fs::write(modules.join("modules.dep"), dep).unwrap();
        std::fs::write(modules.join("modules.alias"), alias).unwrap();
        let sys = root.path().join("sys");
        let cpu = sys.join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("modalias"), cpu_modalias).unwrap();
        let nic = sys.join("bus/virtio/devices/virtio0");
        std::fs::create_dir_all(&nic).unwrap();
        std::fs::write(nic.join("modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        (root, modules)
    }

    /// The names of the modules `calls` loaded, in order.
    fn names_of(calls: Vec<String>) -> Vec<String> {
        calls
            .iter()
            .map(|c| crate::kmod::module_name(c.trim_start_matches("load_module ")))
            .collect()
    }

    /// Waits (bounded) until `recording` has been asked to load `module`.
    pub(crate) fn until_asked(recording: &crate::host::Recording, module: &str) {
        let started = Instant::now();
        while !names_of(recording.calls_of("load_module")).contains(&module.to_owned()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{module} was never loaded: {:?}",
                recording.calls()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_device_that_appears_after_the_drivers_loaded_gets_its_driver_before_ready() {
        let dep = "\
kernel/drivers/net/virtio_net.ko:
kernel/drivers/usb/storage/usb-storage.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/scsi_mod.ko:
";
        let alias = "\
alias virtio:d00000001v* virtio_net
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
";
        let (root, dir) = module_tree(dep, alias, "cpu:type:x86\n");
        let sys = root.path().join("sys");
        let recording = Arc::new(crate::host::Recording::new());
        let host: Arc<dyn Host> = recording.clone();
        let modules = Modules::start(&host, &dir, Vec::new(), &sys).unwrap();
        assert!(modules.wait(Need::Drivers, Instant::now() + Duration::from_secs(30)));
        assert_eq!(names_of(recording.calls_of("load_module")), ["virtio_net"]);

        // A USB stick, enumerated once its controller's driver loaded.
        let stick = sys.join("bus/usb/devices/2-1:1.0");
        std::fs::create_dir_all(&stick).unwrap();
        std::fs::write(
            stick.join("modalias"),
            "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00\n",
        )
        .unwrap();
        until_asked(&recording, "usb_storage");
        let loaded = modules.finish();
        assert_eq!(
            names_of(recording.calls_of("load_module")),
            ["virtio_net", "scsi_mod", "usb_storage"]
        );
        assert_eq!(loaded.report.loaded(), 1);
        assert_eq!(loaded.late.loaded(), 2);
        assert_eq!(loaded.late.drivers.len(), 1);
        assert_eq!(loaded.late.drivers[0].0, "usb_storage");
    }

    #[test]
    fn build_machine_modules_load_each_once_and_only_they_are_in_the_late_report() {
        let dep = "\
kernel/fs/btrfs/btrfs.ko: kernel/lib/raid6/raid6_pq.ko
kernel/lib/raid6/raid6_pq.ko:
kernel/net/bridge/bridge.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/net/tun.ko:
kernel/drivers/vhost/vhost_net.ko: kernel/drivers/net/tun.ko kernel/drivers/vhost/vhost.ko kernel/net/llc/llc.ko
kernel/drivers/vhost/vhost.ko:
kernel/arch/x86/kvm/kvm-intel.ko: kernel/arch/x86/kvm/kvm.ko
kernel/arch/x86/kvm/kvm.ko:
kernel/drivers/net/virtio_net.ko:
";
        let (root, dir) = intel_tree(dep, "virtio_net");
        let recording = Arc::new(crate::host::Recording::new());
        // llc, which the fixed set's bridge and the late vhost_net both need, loads slowly:
        // the late thread must wait for it rather than load vhost_net without it, or load it
        // a second time.
        let llc = recording.hold(&load_line(&dir, "kernel/net/llc/llc.ko"));
        let host: Arc<dyn Host> = recording.clone();
        let fixed = ["btrfs", "bridge", "tun", "vhost-net"]
            .map(String::from)
            .to_vec();
        let modules = Modules::start(&host, &dir, fixed, &root.path().join("sys")).unwrap();
        assert_eq!(modules.late_fixed, ["tun", "vhost-net"]);
        until_asked(&recording, "llc");
        until_asked(&recording, "tun");
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!modules.wait(Need::NetworkStack, soon), "llc is loading");
        let asked = names_of(recording.calls_of("load_module"));
        assert!(
            !asked.contains(&"vhost_net".to_owned()),
            "vhost_net before its llc was loaded: {asked:?}"
        );
        llc.release();
        let loaded = modules.finish();
        let all = names_of(recording.calls_of("load_module"));
        let set = |list: &[String]| list.iter().cloned().collect::<BTreeSet<_>>();
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(all.len(), 10, "each module loads once: {all:?}");
        assert_eq!(set(&all).len(), 10, "each module loads once: {all:?}");
        let at = |name: &str| all.iter().position(|n| n == name).unwrap();
        assert!(at("llc") < at("vhost_net"), "{all:?}");
        assert!(at("kvm") < at("kvm_intel"), "{all:?}");
        assert_eq!(
            set(&loaded.report.modules.keys().cloned().collect::<Vec<_>>()),
            names(&["btrfs", "raid6_pq", "bridge", "llc", "virtio_net"]),
            "storage's and the network's modules, and the NIC the devices asked for"
        );
        assert_eq!(loaded.report.loaded(), 5);
        assert!(loaded.report.drivers.iter().all(|(m, _)| m != "kvm_intel"));
        assert_eq!(
            set(&loaded.late.modules.keys().cloned().collect::<Vec<_>>()),
            names(&["tun", "vhost", "vhost_net", "kvm", "kvm_intel"]),
            "the late report holds the late modules only, and of their dependencies only \
             those no other thread loads (not llc)"
        );
        assert_eq!(loaded.late.loaded(), 5);
        assert_eq!(loaded.late.timings.len(), 5);
        assert_eq!(loaded.late.drivers.len(), 1);
        assert!(
            loaded.late.problems().is_empty(),
            "{:?}",
            loaded.late.problems()
        );
    }

    #[test]
    fn a_dependency_of_a_late_module_that_a_driver_needs_is_the_drivers_to_load() {
        // On an AMD host kvm_amd needs ccp, which the driver of the CPU's crypto coprocessor,
        // asked for in the same look at the devices, needs too. Here kvm_intel needs ccp, and
        // so does the NIC's driver, after a module whose load is slow.
        let dep = "\
kernel/arch/x86/kvm/kvm-intel.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko
kernel/arch/x86/kvm/kvm.ko:
kernel/drivers/crypto/ccp/ccp.ko:
kernel/drivers/net/nic.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/drivers/net/slow.ko
kernel/drivers/net/slow.ko:
";
        let (root, dir) = intel_tree(dep, "nic");
        let recording = Arc::new(crate::host::Recording::new());
        let slow = recording.hold(&load_line(&dir, "kernel/drivers/net/slow.ko"));
        let host: Arc<dyn Host> = recording.clone();
        let modules = Modules::start(&host, &dir, Vec::new(), &root.path().join("sys")).unwrap();
        until_asked(&recording, "slow");
        until_asked(&recording, "kvm");
        // The late thread, at ccp now, waits for the driver's thread to load it.
        assert!(!modules.wait(Need::Nics, Instant::now() + Duration::from_millis(100)));
        let asked = names_of(recording.calls_of("load_module"));
        assert!(!asked.contains(&"ccp".to_owned()), "{asked:?}");
        slow.release();
        let loaded = modules.finish();
        let all = names_of(recording.calls_of("load_module"));
        assert_eq!(all.len(), 5, "each module loads once: {all:?}");
        let at = |name: &str| all.iter().position(|n| n == name).unwrap();
        assert!(at("ccp") < at("kvm_intel"), "{all:?}");
        assert_eq!(
            loaded.report.modules.keys().collect::<Vec<_>>(),
            ["ccp", "nic", "slow"],
            "the driver's thread loaded what it needs"
        );
        assert_eq!(
            loaded.late.modules.keys().collect::<Vec<_>>(),
            ["kvm", "kvm_intel"]
        );
    }

    /// The scheduling policy of each thread of this process named `name`, from the kernel's
    /// own account of it (field 41 of its stat).
    fn policies_of_threads(name: &str) -> Vec<u32> {
        entries(Path::new("/proc/self/task"))
            .into_iter()
            .filter(|task| {
                std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name)
            })
            .filter_map(|task| {
                let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                let rest = &stat[stat.rfind(')')? + 2..];
                rest.split(' ').nth(41 - 3)?.parse().ok()
            })
            .collect()
    }

    #[test]
    fn late_modules_load_at_idle_priority_while_the_rest_is_still_loading() {
        let dep = "\
kernel/fs/btrfs/btrfs.ko:
kernel/drivers/net/tun.ko:
kernel/arch/x86/kvm/kvm-intel.ko: kernel/arch/x86/kvm/kvm.ko
kernel/arch/x86/kvm/kvm.ko:
kernel/drivers/net/virtio_net.ko:
";
        let (root, dir) = intel_tree(dep, "virtio_net");
        let recording = Arc::new(crate::host::Recording::new());
        // Storage's filesystem and the NIC's driver do not finish until the test says so.
        let btrfs = recording.hold(&load_line(&dir, "kernel/fs/btrfs/btrfs.ko"));
        let nic = recording.hold(&load_line(&dir, "kernel/drivers/net/virtio_net.ko"));
        let kvm_intel = recording.hold(&load_line(&dir, "kernel/arch/x86/kvm/kvm-intel.ko"));
        let host: Arc<dyn Host> = recording.clone();
        let fixed = ["btrfs", "tun"].map(String::from).to_vec();
        let modules = Modules::start(&host, &dir, fixed, &root.path().join("sys")).unwrap();
        until_asked(&recording, "btrfs");
        until_asked(&recording, "virtio_net");
        // Meanwhile the late ones: the fixed set's, and the one the CPUs asked for.
        until_asked(&recording, "tun");
        until_asked(&recording, "kvm_intel");
        assert!(
            policies_of_threads("late modules").contains(&(nix::libc::SCHED_IDLE as u32)),
            "the thread loading kvm_intel runs at idle priority: {:?}",
            policies_of_threads("late modules")
        );
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!modules.wait(Need::Filesystems, soon), "btrfs is loading");
        btrfs.release();
        nic.release();
        kvm_intel.release();
        let loaded = modules.finish();
        let mut late: Vec<&String> = loaded.late.modules.keys().collect();
        late.sort();
        assert_eq!(late, ["kvm", "kvm_intel", "tun"]);
        assert_eq!(loaded.late.loaded(), 3);
        assert_eq!(
            loaded.report.modules.keys().collect::<Vec<_>>(),
            ["btrfs", "virtio_net"]
        );
    }

    #[test]
    fn a_late_module_the_kernel_refuses_is_a_problem_of_the_late_report() {
        let dep = "kernel/drivers/net/tun.ko:\nkernel/fs/ext4/ext4.ko:\n";
        let (root, dir) = module_tree(dep, "", "cpu:type:x86\n");
        let recording = Arc::new(crate::host::Recording::new());
        recording.fail("load_module", nix::errno::Errno::EINVAL);
        let host: Arc<dyn Host> = recording.clone();
        let fixed = ["ext4", "tun", "nosuch"].map(String::from).to_vec();
        let loaded = Modules::start(&host, &dir, fixed, &root.path().join("sys"))
            .unwrap()
            .finish();
        assert_eq!(
            loaded.report.problems().len(),
            2,
            "{:?}",
            loaded.report.problems()
        );
        let problems = loaded.late.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("tun.ko"), "{problems:?}");
    }

    /// Modules for [`fuzz_each_module_loads_once_after_its_dependencies_and_in_one_report`],
    /// each with its file: storage's and the network's (their paths are what the fixed set's
    /// order and the steps' needs go by), every late one, and others. A module may depend on
    /// any before it.
    const FUZZ_MODULES: &[&str] = &[
        "kernel/lib/raid6/raid6_pq.ko",
        "kernel/fs/btrfs/btrfs.ko",
        "kernel/net/llc/llc.ko",
        "kernel/drivers/net/tun.ko",
        "kernel/net/bridge/bridge.ko",
        "kernel/virt/lib/irqbypass.ko",
        "kernel/arch/x86/kvm/kvm.ko",
        "kernel/drivers/vhost/vhost.ko",
        "kernel/drivers/vhost/vhost_net.ko",
        "kernel/arch/x86/kvm/kvm-intel.ko",
        "kernel/fs/ext4/ext4.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/cdrom/cdrom.ko",
    ];

    /// Every module `roots` need, by the module tree's `deps` (indices into [`FUZZ_MODULES`]).
    fn closure(roots: &[usize], deps: &[Vec<usize>]) -> BTreeSet<usize> {
        let mut all = BTreeSet::new();
        let mut todo = roots.to_vec();
        while let Some(module) = todo.pop() {
            if all.insert(module) {
                todo.extend(&deps[module]);
            }
        }
        all
    }

    proptest::proptest! {
        /// Whatever a modalias holds, reading a virtio child from it never panics, and what it
        /// gives is a virtio modalias of a device type and a vendor in eight hex digits each,
        /// from a virtio PCI function's modalias only.
        #[test]
        fn fuzz_virtio_child(
            device in 0x0f00u32..0x1100,
            subsystem in proptest::prelude::any::<u16>(),
            cut in 0usize..64,
            noise in "[ -~]{0,8}",
        ) {
            let valid = format!(
                "pci:v00001AF4d{device:08X}sv00001AF4sd{subsystem:08X}bc02sc00i00"
            );
            let mut mutated = valid.clone();
            mutated.truncate(cut.min(valid.len()));
            mutated.push_str(&noise);
            for modalias in [&valid, &mutated] {
                if let Some(child) = virtio_child(modalias) {
                    let (kind, vendor) = child
                        .strip_prefix("virtio:d")
                        .and_then(|rest| rest.split_once('v'))
                        .unwrap_or_default();
                    proptest::prop_assert!(kind.len() == 8 && vendor.len() == 8, "{child}");
                    proptest::prop_assert!(modalias.starts_with("pci:v00001AF4d"), "{modalias}");
                }
            }
            let expected = match device {
                0x1000..=0x103f if subsystem != 0 => Some(format!("virtio:d{subsystem:08X}v00001AF4")),
                0x1041..=0x107f => Some(format!("virtio:d{:08X}v00001AF4", device - 0x1040)),
                _ => None,
            };
            proptest::prop_assert_eq!(virtio_child(&valid), expected);
        }

        /// Whatever the fixed set, the dependencies between the modules and whether the CPUs
        /// ask for kvm_intel and the NIC for its driver: the fixed set, the drivers and the
        /// late modules loading on their threads at once load each module once, after its
        /// dependencies (whichever thread took them), lose none, and put each in one report,
        /// the late report holding only what the late modules need.
        #[test]
        fn fuzz_each_module_loads_once_after_its_dependencies_and_in_one_report(
            edges in proptest::collection::vec(proptest::bool::weighted(0.25), 13 * 13),
            fixed in proptest::collection::vec(proptest::bool::ANY, 13),
            kvm_cpu in proptest::bool::ANY,
            nic_driver in proptest::option::of(0usize..13),
        ) {
            let n = FUZZ_MODULES.len();
            let deps: Vec<Vec<usize>> = (0..n)
                .map(|i| (0..i).filter(|&j| edges[i * n + j]).collect())
                .collect();
            let dep: String = (0..n)
                .map(|i| {
                    let needs: Vec<&str> = deps[i].iter().map(|&j| FUZZ_MODULES[j]).collect();
                    format!("{}: {}\n", FUZZ_MODULES[i], needs.join(" "))
                })
                .collect();
            let name = |i: usize| crate::kmod::module_name(FUZZ_MODULES[i]);
            let mut alias = "alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_intel\n".to_owned();
            if let Some(driver) = nic_driver {
                alias.push_str(&format!("alias virtio:d00000001v* {}\n", name(driver)));
            }
            let cpu = if kvm_cpu {
                "cpu:type:x86,ven0000fam0006mod003F:feature:,0085\n"
            } else {
                "cpu:type:x86,ven0000fam0006mod003F:feature:,0001\n"
            };
            let (root, dir) = module_tree(&dep, &alias, cpu);
            let recording = Arc::new(crate::host::Recording::new());
            let host: Arc<dyn Host> = recording.clone();
            let fixed_names: Vec<String> = (0..n).filter(|&i| fixed[i]).map(name).collect();
            let loaded = Modules::start(&host, &dir, fixed_names, &root.path().join("sys"))
                .unwrap()
                .finish();
            let all = names_of(recording.calls_of("load_module"));

            let mut roots: Vec<usize> = (0..n).filter(|&i| fixed[i]).collect();
            let kvm_intel = FUZZ_MODULES.iter().position(|p| p.ends_with("kvm-intel.ko")).unwrap();
            if kvm_cpu {
                roots.push(kvm_intel);
            }
            roots.extend(nic_driver);
            let wanted: BTreeSet<String> = closure(&roots, &deps).into_iter().map(name).collect();
            let once: BTreeSet<String> = all.iter().cloned().collect();
            proptest::prop_assert_eq!(once.len(), all.len(), "a module loaded twice: {:?}", all);
            proptest::prop_assert_eq!(&once, &wanted, "loaded {:?}", all);
            let at = |module: &str| all.iter().position(|m| m == module);
            for (i, needs) in deps.iter().enumerate() {
                let Some(here) = at(&name(i)) else { continue };
                for &j in needs {
                    proptest::prop_assert!(
                        at(&name(j)).is_some_and(|there| there < here),
                        "{} before its dependency {}: {:?}", name(i), name(j), all
                    );
                }
            }
            let main: BTreeSet<String> = loaded.report.modules.keys().cloned().collect();
            let late: BTreeSet<String> = loaded.late.modules.keys().cloned().collect();
            proptest::prop_assert!(main.is_disjoint(&late), "in both reports: {:?} {:?}", main, late);
            let reported: BTreeSet<String> = main.union(&late).cloned().collect();
            proptest::prop_assert_eq!(&reported, &once);
            let late_roots: Vec<usize> = roots.iter().copied().filter(|&i| is_late(&name(i))).collect();
            let late_need: BTreeSet<String> =
                closure(&late_roots, &deps).into_iter().map(name).collect();
            proptest::prop_assert!(late.is_subset(&late_need), "late report {:?}", late);
            proptest::prop_assert!(
                loaded.report.problems().is_empty() && loaded.late.problems().is_empty(),
                "{:?} {:?}", loaded.report.problems(), loaded.late.problems()
            );
        }
    }

    /// A module tree and a sysfs like QEMU's PC with a virtio NIC, a virtio disk and a PIIX
    /// IDE controller holding a CD-ROM drive (every device there from the start), and the
    /// Recording host that loads the modules. Returns the scratch directory, the module tree
    /// and the sysfs.
    pub(crate) fn pc() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dep = "\
kernel/drivers/virtio/virtio_pci.ko:
kernel/drivers/net/virtio_net.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko
kernel/drivers/ata/libata.ko:
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/fs/btrfs/btrfs.ko: kernel/lib/raid6/raid6_pq.ko
kernel/lib/raid6/raid6_pq.ko:
kernel/fs/ext4/ext4.ko:
kernel/net/bridge/bridge.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/net/tun.ko:
";
        let alias = "\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix
alias scsi:t-0x05* sr_mod
";
        let (root, dir) = module_tree(dep, alias, "cpu:type:x86\n");
        let sys = root.path().join("sys");
        // module_tree's NIC under no PCI device: this machine's is under its PCI function.
        std::fs::remove_dir_all(sys.join("bus/virtio")).unwrap();
        pci_device(&sys, "0000:00:03.0", ("1af4", "1000", "020000"), None);
        pci_device(&sys, "0000:00:04.0", ("1af4", "1001", "010000"), None);
        pci_device(&sys, "0000:00:01.1", ("8086", "7010", "010180"), None);
        let child = |parent: &str, path: &str, bus: &str, modalias: &str| {
            let dir = sys.join("devices/pci0000:00").join(parent).join(path);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("modalias"), modalias).unwrap();
            let link = sys.join("bus").join(bus).join("devices");
            std::fs::create_dir_all(&link).unwrap();
            std::os::unix::fs::symlink(&dir, link.join(dir.file_name().unwrap())).unwrap();
        };
        child(
            "0000:00:03.0",
            "virtio0",
            "virtio",
            "virtio:d00000001v00001AF4\n",
        );
        child(
            "0000:00:04.0",
            "virtio1",
            "virtio",
            "virtio:d00000002v00001AF4\n",
        );
        child(
            "0000:00:01.1",
            "ata1/host0/target0:0:0/0:0:0:0",
            "scsi",
            "scsi:t-0x05\n",
        );
        (root, dir, sys)
    }

    /// The Recording host's line for loading `path` of the module tree `dir`.
    pub(crate) fn load_line(dir: &Path, path: &str) -> String {
        format!("load_module {}", dir.join(path).display())
    }

    pub(crate) fn pc_fixed() -> Vec<String> {
        ["btrfs", "ext4", "bridge", "tun"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn devices_under_a_network_or_no_pci_function_may_bring_a_nic() {
        let (_root, _dir, sys) = pc();
        let found = devices(&sys);
        assert!(found["virtio:d00000001v00001AF4"], "the NIC");
        assert!(!found["virtio:d00000002v00001AF4"], "the disk");
        assert!(!found["scsi:t-0x05"], "the CD-ROM");
        assert!(found["cpu:type:x86"], "under no PCI function");
        let aliases = Aliases::parse(
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias scsi:t-0x05* sr_mod\n",
        );
        let wanted = wanted(&aliases, &found, &BTreeSet::new());
        assert!(
            wanted["virtio_pci"].1,
            "one of virtio_pci's devices is a NIC"
        );
        assert!(!wanted["sr_mod"].1);
    }

    #[test]
    fn the_network_waits_for_its_nic_driver_and_not_for_the_cd_rom() {
        let (_root, dir, sys) = pc();
        let recording = Arc::new(crate::host::Recording::new());
        let nic = recording.hold(&load_line(&dir, "kernel/drivers/net/virtio_net.ko"));
        let cd = recording.hold(&load_line(&dir, "kernel/drivers/scsi/sr_mod.ko"));
        let host: Arc<dyn Host> = recording.clone();
        let modules = Modules::start(&host, &dir, pc_fixed(), &sys).unwrap();
        until_asked(&recording, "virtio_net");
        until_asked(&recording, "sr_mod");
        let soon = || Instant::now() + Duration::from_millis(100);
        assert!(
            !modules.wait(Need::Nics, soon()),
            "the NIC's driver is loading"
        );
        nic.release();
        assert!(modules.wait(Need::Nics, Instant::now() + Duration::from_secs(30)));
        assert!(
            !modules.wait(Need::Drivers, soon()),
            "the CD-ROM's driver is still loading"
        );
        assert!(modules.wait(Need::NetworkStack, Instant::now() + Duration::from_secs(30)));
        cd.release();
        assert!(modules.wait(Need::Drivers, Instant::now() + Duration::from_secs(30)));
        let loaded = modules.finish();
        assert!(loaded.waited >= Duration::from_millis(200), "{loaded:?}");
    }

    /// The network's first part waits for its modules on a thread beside the steps: it waits
    /// as they do, but its wait is not a step's and does not count in what the steps waited.
    #[test]
    fn a_watch_waits_as_the_steps_do_and_its_wait_is_not_theirs() {
        let (_root, dir, sys) = pc();
        let recording = Arc::new(crate::host::Recording::new());
        let nic = recording.hold(&load_line(&dir, "kernel/drivers/net/virtio_net.ko"));
        let host: Arc<dyn Host> = recording.clone();
        let modules = Modules::start(&host, &dir, pc_fixed(), &sys).unwrap();
        until_asked(&recording, "virtio_net");
        let watch = modules.watch();
        let waiting = std::thread::spawn(move || {
            let began = Instant::now();
            let met = watch.wait(Need::Nics, Instant::now() + Duration::from_secs(30));
            (met, began.elapsed())
        });
        assert!(
            !modules
                .watch()
                .wait(Need::Nics, Instant::now() + Duration::from_millis(300)),
            "the NIC's driver is loading"
        );
        nic.release();
        let (met, took) = waiting.join().unwrap();
        assert!(met);
        assert!(took >= Duration::from_millis(300), "{took:?}");
        let loaded = modules.finish();
        assert!(
            loaded.waited < took,
            "the watches' {took:?} counted as the steps' wait: {:?}",
            loaded.waited
        );
    }

    #[test]
    fn ready_waits_for_every_module_and_the_report_is_complete() {
        let (_root, dir, sys) = pc();
        let recording = Arc::new(crate::host::Recording::new());
        let cd = recording.hold(&load_line(&dir, "kernel/drivers/scsi/sr_mod.ko"));
        let host: Arc<dyn Host> = recording.clone();
        let modules = Modules::start(&host, &dir, pc_fixed(), &sys).unwrap();
        until_asked(&recording, "sr_mod");
        let (tx, rx) = std::sync::mpsc::channel();
        let finishing = std::thread::spawn(move || tx.send(modules.finish()).unwrap());
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "finished while sr_mod was loading"
        );
        cd.release();
        let loaded = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        finishing.join().unwrap();
        let report = &loaded.report;
        let mut drivers: Vec<&str> = report.drivers.iter().map(|(m, _)| m.as_str()).collect();
        drivers.sort();
        assert_eq!(
            drivers,
            [
                "ata_piix",
                "sr_mod",
                "virtio_blk",
                "virtio_net",
                "virtio_pci"
            ]
        );
        assert_eq!(report.loaded(), 13 - 1, "every module but the late tun");
        assert_eq!(report.modules.get("sr_mod"), Some(&Loaded::Yes));
        assert_eq!(report.timings.len(), 12);
        assert_eq!(report.devices, 7);
        // No PCI device claimed: the Recording host binds nothing.
        assert_eq!(report.unclaimed.len(), 3, "{:?}", report.unclaimed);
        assert_eq!(loaded.late.modules.keys().collect::<Vec<_>>(), ["tun"]);
        assert!(report.took > Duration::ZERO);
    }
}
