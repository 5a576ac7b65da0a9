//! Which kernel modules to load: the profile's fixed set, and the drivers for the devices this
//! machine has, found by matching each device's `modalias` against the image's modules.alias,
//! as udev and modprobe would.
//!
//! Drivers create devices of their own (a PCI virtio controller brings virtio devices, a SATA
//! controller brings SCSI disks), so matching runs in passes until a pass finds nothing new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use buildos_kmodnames::{fnmatch, normalize_alias as normalize};

use crate::error::FileError;
use crate::host::Host;

/// The profile's modules that are loaded on every host, one name per line.
pub const FIXED_MODULES: &str = buildos_contract::etc::MODULES_BOOT;

/// Modules that neither storage nor the network needs, only the build machines that start
/// after ready: they load on a thread of their own while storage, state and the network do
/// their work (waiting for disks, DHCP), and the `devices` step waits for them before the
/// build user gets their nodes, so ready still means every module is loaded. Each with why
/// it can wait. Whether one comes from the profile's fixed set or a device asked for it, the
/// table decides; what it depends on loads with it, unless an earlier module already needed it.
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

/// The modules [`load_modules`] left for later: [`LATE`]'s, from the fixed set and the drivers
/// the devices asked for, and the tables to load them with.
pub struct Deferred {
    tables: Arc<Tables>,
    /// The names to load, fixed ones first, in the order they were asked for.
    pub names: Vec<String>,
    /// Drivers among them, with one device that asked for each.
    pub drivers: Vec<(String, String)>,
    /// What the first load loaded or tried, so nothing loads twice.
    done: BTreeMap<String, Loaded>,
    /// The drivers matched so far, and where the devices are (normally /sys): the late
    /// thread goes on matching devices that appear after the modules step.
    matched: BTreeSet<String>,
    sys: PathBuf,
}

/// How often the late thread looks at the devices again, and for how long at most: a device
/// can appear after the modules step's last pass (a USB stick is enumerated a moment after its
/// controller's driver loads), and its driver must still load while storage waits for its
/// disk, as udev loads drivers on hotplug.
const HOTPLUG_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const HOTPLUG_FOR: std::time::Duration = std::time::Duration::from_secs(120);

impl Deferred {
    /// Loads the deferred modules and what they need that is not loaded yet, on this thread.
    pub fn load(self, host: &dyn Host) -> Report {
        self.load_then_watch(host, &std::sync::atomic::AtomicBool::new(true))
    }

    /// [`Deferred::load`], then the drivers of devices that appear later, every
    /// [`HOTPLUG_EVERY`] until `stop` is set (or [`HOTPLUG_FOR`] has passed).
    fn load_then_watch(mut self, host: &dyn Host, stop: &std::sync::atomic::AtomicBool) -> Report {
        let mut report = Report {
            modules: std::mem::take(&mut self.done),
            ..Report::default()
        };
        let already: BTreeSet<String> = report.modules.keys().cloned().collect();
        let mut unknown = self.tables.load(host, &self.names, &mut report);
        let mut drivers = std::mem::take(&mut self.drivers);
        let started = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < HOTPLUG_FOR {
            let found = modaliases(&self.sys);
            let wanted: Vec<(String, String)> =
                matching(&self.tables.aliases, &found, &self.matched)
                    .into_iter()
                    .map(|(module, modalias)| (module.to_owned(), modalias.to_owned()))
                    .collect();
            for (module, modalias) in wanted {
                self.matched.insert(module.clone());
                unknown.extend(
                    self.tables
                        .load(host, std::slice::from_ref(&module), &mut report),
                );
                drivers.push((module, modalias));
            }
            std::thread::sleep(HOTPLUG_EVERY);
        }
        report.modules.retain(|name, _| !already.contains(name));
        report.other_problems = unknown
            .into_iter()
            .map(|name| format!("module {name} is not in this image"))
            .collect();
        report.drivers = drivers;
        report.timings.sort_by_key(|t| std::cmp::Reverse(t.0));
        report
    }

    /// [`Deferred::load`] on a thread of its own; when no thread can be had, on this one (the
    /// handle then holds the finished report).
    /// The thread then goes on loading the drivers of devices that appear later, until
    /// [`Late::wait`].
    pub fn spawn(self, host: &Arc<dyn Host>) -> Late {
        let shared = Arc::new(std::sync::Mutex::new(Some(self)));
        let theirs = Arc::clone(&shared);
        let thread_host = Arc::clone(host);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("late modules".to_owned())
            .spawn(move || {
                let deferred = theirs.lock().ok().and_then(|mut d| d.take());
                deferred.map(|d| d.load_then_watch(thread_host.as_ref(), &thread_stop))
            });
        match spawned {
            Ok(handle) => Late::Running(handle, stop),
            Err(error) => {
                let deferred = shared.lock().ok().and_then(|mut d| d.take());
                let mut report = deferred.map(|d| d.load(host.as_ref())).unwrap_or_default();
                report.other_problems.push(format!(
                    "cannot start a thread for the late modules: {error}"
                ));
                Late::Done(report)
            }
        }
    }
}

/// The late modules, loading or loaded, and the drivers of devices that appeared since.
pub enum Late {
    Running(
        std::thread::JoinHandle<Option<Report>>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
    Done(Report),
}

impl Late {
    /// Stops looking for new devices, waits for the late modules and gives their report.
    pub fn wait(self) -> Report {
        match self {
            Late::Done(report) => report,
            Late::Running(handle, stop) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                Late::joined(handle)
            }
        }
    }

    fn joined(handle: std::thread::JoinHandle<Option<Report>>) -> Report {
        {
            match handle.join() {
                Ok(Some(report)) => report,
                Ok(None) => Report::default(),
                Err(_) => Report {
                    other_problems: vec!["the thread loading the late modules panicked".to_owned()],
                    ..Report::default()
                },
            }
        }
    }
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
    let mut files = vec![sys.join("devices/system/cpu/modalias")];
    let buses = entries(&sys.join("bus"))
        .into_iter()
        .map(|bus| bus.join("devices"));
    for devices in buses.chain(entries(&sys.join("class"))) {
        files.extend(
            entries(&devices)
                .into_iter()
                .map(|device| device.join("modalias")),
        );
    }
    files
        .into_iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect()
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

/// A PCI network or storage controller that no driver claimed after the modules step: the
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
#[derive(Debug, Default)]
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

/// At most this many passes of matching devices to drivers; drivers that create devices
/// needing more drivers are two or three deep in practice.
const PASSES: usize = 6;

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

    /// Loads `names` and what they need, skipping modules this report already has. Returns
    /// the names the image does not have.
    fn load(&self, host: &dyn Host, names: &[String], report: &mut Report) -> Vec<String> {
        let done: BTreeSet<String> = report.modules.keys().cloned().collect();
        let (order, unknown) = self.plan(names, &done);
        for (name, path) in order {
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

/// Loads the fixed set on one thread while matching devices to drivers on this one, so that
/// slow module initialisation (btrfs's RAID checksum benchmarks) overlaps with device probes
/// that wait for hardware. [`LATE`]'s modules, fixed or asked for, are not loaded but returned
/// as [`Deferred`]. `sys` is normally /sys.
pub fn load_modules(
    host: &Arc<dyn Host>,
    dir: &Path,
    fixed: Vec<String>,
    sys: &Path,
) -> Result<(Report, Deferred), FileError> {
    let tables = std::sync::Arc::new(Tables::parse(
        dir,
        &read_table(dir, buildos_contract::modules::DEP)?,
        &read_table(dir, buildos_contract::modules::SOFTDEP).unwrap_or_default(),
        &read_table(dir, buildos_contract::modules::ALIAS).unwrap_or_default(),
        &read_table(dir, buildos_contract::modules::BUILTIN).unwrap_or_default(),
    ));

    let (mut late, fixed): (Vec<String>, Vec<String>) =
        fixed.into_iter().partition(|name| is_late(name));
    let mut late_drivers = Vec::new();
    let fixed_tables = std::sync::Arc::clone(&tables);
    let fixed_host = Arc::clone(host);
    let fixed_thread = std::thread::Builder::new()
        .name("modules".to_owned())
        .spawn(move || {
            let mut report = Report::default();
            let unknown = fixed_tables.load(fixed_host.as_ref(), &fixed, &mut report);
            report.other_problems = unknown
                .into_iter()
                .map(|name| format!("module {name} is not in this image"))
                .collect();
            report
        });

    let mut report = Report::default();
    let mut matched = BTreeSet::new();
    for _ in 0..PASSES {
        let found = modaliases(sys);
        report.devices = found.len();
        // (driver, the device that asked for it): those for later, those for now.
        type Asked = Vec<(String, String)>;
        let (later, wanted): (Asked, Asked) = matching(&tables.aliases, &found, &matched)
            .into_iter()
            .map(|(module, modalias)| (module.to_owned(), modalias.to_owned()))
            .partition(|(module, _)| is_late(module));
        for (module, modalias) in later {
            matched.insert(module.clone());
            late.push(module.clone());
            late_drivers.push((module, modalias));
        }
        if wanted.is_empty() {
            break;
        }
        let names: Vec<String> = wanted.iter().map(|(module, _)| module.clone()).collect();
        // One thread per driver: a probe that waits for its hardware (a NIC's reset) overlaps
        // with the others. A dependency two drivers share is loaded once; the second finit
        // waits for the first and counts it as loaded.
        let loaded: Vec<Report> = std::thread::scope(|scope| {
            let mut parts = Vec::new();
            let mut handles = Vec::new();
            for name in &names {
                let tables = &tables;
                let mut own = Report {
                    modules: report.modules.clone(),
                    ..Report::default()
                };
                let spawned = std::thread::Builder::new()
                    .name(format!("driver {name}"))
                    .spawn_scoped(scope, move || {
                        tables.load(host.as_ref(), std::slice::from_ref(name), &mut own);
                        own
                    });
                match spawned {
                    Ok(handle) => handles.push(handle),
                    // No thread to be had: load it here instead.
                    Err(_) => {
                        let mut own = Report {
                            modules: report.modules.clone(),
                            ..Report::default()
                        };
                        tables.load(host.as_ref(), std::slice::from_ref(name), &mut own);
                        parts.push(own);
                    }
                }
            }
            for handle in handles {
                parts.push(handle.join().unwrap_or_else(|_| Report {
                    other_problems: vec!["a thread loading a driver panicked".to_owned()],
                    ..Report::default()
                }));
            }
            parts
        });
        for part in loaded {
            report.merge(part);
        }
        matched.extend(names);
        report.drivers.extend(wanted);
    }

    match fixed_thread {
        Ok(handle) => match handle.join() {
            Ok(fixed) => report.merge(fixed),
            Err(_) => report
                .other_problems
                .push("the thread loading the fixed modules panicked".to_owned()),
        },
        Err(error) => report
            .other_problems
            .push(format!("cannot start a thread to load modules: {error}")),
    }
    report.timings.sort_by_key(|t| std::cmp::Reverse(t.0));
    // Every driver the devices asked for is loaded now: a network or storage controller left
    // without one is hardware this image cannot use, and the operator hears which.
    report.unclaimed = unclaimed(sys, &tables.aliases);
    let deferred = Deferred {
        tables,
        names: late,
        drivers: late_drivers,
        done: report.modules.clone(),
        matched,
        sys: sys.to_path_buf(),
    };
    Ok((report, deferred))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_device_that_appears_after_the_modules_step_gets_its_driver_before_ready() {
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
        let (report, deferred) = load_modules(&host, &dir, Vec::new(), &sys).unwrap();
        assert_eq!(report.loaded(), 1, "the NIC's driver, the one device there");
        let late = deferred.spawn(&host);

        // A USB stick, enumerated once its controller's driver loaded.
        let stick = sys.join("bus/usb/devices/2-1:1.0");
        std::fs::create_dir_all(&stick).unwrap();
        std::fs::write(
            stick.join("modalias"),
            "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00\n",
        )
        .unwrap();
        let loaded = || recording.calls_of("load_module").len();
        let started = std::time::Instant::now();
        while loaded() < 3 && started.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let late = late.wait();
        let names: Vec<String> = recording
            .calls_of("load_module")
            .iter()
            .map(|c| crate::kmod::module_name(c.trim_start_matches("load_module ")))
            .collect();
        assert_eq!(names, ["virtio_net", "scsi_mod", "usb_storage"]);
        assert_eq!(late.loaded(), 2);
        assert_eq!(late.drivers.len(), 1);
        assert_eq!(late.drivers[0].0, "usb_storage");
    }

    #[test]
    fn build_machine_modules_load_after_the_rest_and_each_module_once() {
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
        let alias = "\
alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_intel
alias virtio:d00000001v* virtio_net
";
        let (root, dir) = module_tree(
            dep,
            alias,
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0085\n",
        );
        let recording = Arc::new(crate::host::Recording::new());
        let host: Arc<dyn Host> = recording.clone();
        let fixed = ["btrfs", "bridge", "tun", "vhost-net"]
            .map(String::from)
            .to_vec();
        let (report, deferred) =
            load_modules(&host, &dir, fixed, &root.path().join("sys")).unwrap();
        let loaded = |calls: Vec<String>| -> BTreeSet<String> {
            calls
                .iter()
                .map(|c| crate::kmod::module_name(c.trim_start_matches("load_module ")))
                .collect()
        };
        let early = loaded(recording.calls_of("load_module"));
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            early,
            names(&["btrfs", "raid6_pq", "bridge", "llc", "virtio_net"]),
            "storage's and the network's modules, and the NIC the devices asked for"
        );
        assert_eq!(deferred.names, ["tun", "vhost-net", "kvm_intel"]);
        assert_eq!(report.loaded(), 5);
        assert!(report.drivers.iter().all(|(m, _)| m != "kvm_intel"));

        let late = deferred.load(host.as_ref());
        let all = recording.calls_of("load_module");
        assert_eq!(all.len(), 10, "each module loads once: {all:?}");
        assert_eq!(
            loaded(all[5..].to_vec()),
            names(&["tun", "vhost", "vhost_net", "kvm", "kvm_intel"]),
            "the late ones, and of their dependencies only those not loaded yet (llc)"
        );
        assert_eq!(late.loaded(), 5);
        assert_eq!(
            late.modules.len(),
            5,
            "the report holds the late modules only"
        );
        assert_eq!(late.drivers.len(), 1);
        assert!(late.problems().is_empty(), "{:?}", late.problems());
    }

    #[test]
    fn a_late_module_the_kernel_refuses_is_a_problem_of_the_late_report() {
        let dep = "kernel/drivers/net/tun.ko:\nkernel/fs/ext4/ext4.ko:\n";
        let (root, dir) = module_tree(dep, "", "cpu:type:x86\n");
        let recording = Arc::new(crate::host::Recording::new());
        recording.fail("load_module", nix::errno::Errno::EINVAL);
        let host: Arc<dyn Host> = recording.clone();
        let fixed = ["ext4", "tun", "nosuch"].map(String::from).to_vec();
        let (report, deferred) =
            load_modules(&host, &dir, fixed, &root.path().join("sys")).unwrap();
        assert_eq!(report.problems().len(), 2, "{:?}", report.problems());
        let late = deferred.spawn(&host).wait();
        let problems = late.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("tun.ko"), "{problems:?}");
    }
}
