//! Keeping the host record (`/run/buildos/host.json`) up to date and registering it with the
//! hubs of `buildos.register_url`.
//!
//! The daemon hands [`Registrar::update`] its status whenever it writes it; the registrar makes
//! the record from it and from the host's facts (read again every [`Options::facts_every`]),
//! writes the file when anything in it changed, and wakes the hubs' threads when what it says
//! of the host changed ([`Record::same_as`]). Each hub has a thread of its own, so a hub that
//! is slow or down holds up only itself, never boot, the agents or the other hubs: it POSTs
//! the record at start, on every change and every `buildos.register_interval`; a failed POST
//! (bounded by [`Options::timeout`]) is tried again after a wait that doubles from
//! [`Options::first_delay`] to at most [`Options::max_delay`] (and the interval), and after
//! [`Options::report_after`] failures in a row the admin gets one mail, until a POST succeeds
//! again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use buildos_cmdline::Config;

use crate::console;
use crate::fetch;
use crate::paths::Paths;
use crate::record::{self, Facts, Record, Sources};
use crate::report::{self, Report};
use crate::slices::Host;
use crate::status::Status;

/// How the registrar works; tests shorten the waits.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bound on one POST: connecting, sending, the answer.
    pub timeout: Duration,
    /// The wait after a first failure; it doubles up to `max_delay` (and the interval).
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Failures in a row before the admin is told, once.
    pub report_after: u32,
    /// How often the host's facts (addresses, volumes, keys) are read again.
    pub facts_every: Duration,
    /// `None` is `buildos.register_interval`.
    pub interval: Option<Duration>,
    pub sources: Sources,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(30),
            first_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(300),
            report_after: 3,
            facts_every: Duration::from_secs(10),
            interval: None,
            sources: Sources::default(),
        }
    }
}

/// What a hub's thread is told: the latest record is in `latest`.
type Wake = Sender<()>;

/// Sends a report (mail) to the admin.
pub type Notify = Arc<dyn Fn(&Report) + Send + Sync>;

/// Keeps the record and tells the hubs.
pub struct Registrar {
    paths: Paths,
    host: Host,
    instances: BTreeMap<String, u32>,
    options: Options,
    latest: Arc<Mutex<Option<Record>>>,
    hubs: Vec<Wake>,
    state: Mutex<State>,
}

struct State {
    facts: Option<(Instant, Facts)>,
    /// The record last written, without its time.
    written: Option<Record>,
}

impl Registrar {
    /// Starts a thread per `buildos.register_url`; none POSTs before the first
    /// [`Registrar::update`].
    pub fn start(
        config: &Config,
        paths: &Paths,
        host: &Host,
        options: Options,
        notify: Notify,
    ) -> Registrar {
        let latest = Arc::new(Mutex::new(None));
        let interval = options
            .interval
            .unwrap_or_else(|| Duration::from_secs(u64::from(config.register_interval.max(1))));
        let hubs = config
            .register_urls
            .iter()
            .map(|url| {
                let (wake, woken) = mpsc::channel();
                let hub = Hub {
                    url: url.clone(),
                    interval,
                    options: options.clone(),
                    latest: latest.clone(),
                    notify: notify.clone(),
                };
                std::thread::spawn(move || hub.run(&woken));
                wake
            })
            .collect();
        Registrar {
            paths: paths.clone(),
            host: host.clone(),
            instances: config
                .toolchains
                .iter()
                .map(|(name, t)| (name.clone(), t.instances))
                .collect(),
            options,
            latest,
            hubs,
            state: Mutex::new(State {
                facts: None,
                written: None,
            }),
        }
    }

    /// The record file, `host.json` in the runtime directory.
    pub fn path(&self) -> PathBuf {
        self.paths.run.join(record::FILE)
    }

    /// Makes the record of `status` and the host; writes it when it changed and wakes the hubs
    /// when what it says of the host changed.
    pub fn update(&self, status: &Status) {
        let mut state = lock(&self.state);
        let stale = state
            .facts
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= self.options.facts_every);
        if stale {
            let facts = Facts::detect(&self.paths, &self.options.sources, &self.host);
            state.facts = Some((Instant::now(), facts));
        }
        let Some((_, facts)) = &state.facts else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let made = Record::new(facts, status, &self.instances, now);
        let timeless = Record {
            updated: 0,
            ..made.clone()
        };
        if state.written.as_ref() == Some(&timeless) {
            return;
        }
        let changed = {
            let mut latest = lock(&self.latest);
            let changed = latest.as_ref().is_none_or(|l| !l.same_as(&made));
            *latest = Some(made.clone());
            changed
        };
        let path = self.path();
        match made.write(&path) {
            Ok(()) => state.written = Some(timeless),
            Err(e) => log::warn!("host record {}: {e}", path.display()),
        }
        if changed {
            for hub in &self.hubs {
                let _ = hub.send(());
            }
        }
    }
}

/// One hub: where, how often, and whom to tell when it stays down.
struct Hub {
    url: String,
    interval: Duration,
    options: Options,
    latest: Arc<Mutex<Option<Record>>>,
    notify: Notify,
}

impl Hub {
    /// POSTs the latest record when woken (at once, unless a failure's back-off is running)
    /// and when the interval or back-off ends; returns when the registrar is gone.
    fn run(&self, woken: &Receiver<()>) {
        let shown = fetch::redact(&self.url);
        let mut due: Option<Instant> = None;
        let mut failures = 0u32;
        let mut reported = false;
        let mut registered = false;
        loop {
            let wait = due.map(|at| at.saturating_duration_since(Instant::now()));
            let got = match wait {
                None => woken.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(wait) => woken.recv_timeout(wait),
            };
            // Changes that came together are one registration, of the latest record.
            while got.is_ok() && woken.try_recv().is_ok() {}
            match got {
                // A change: now, unless a failure's back-off is running.
                Ok(()) if failures > 0 && due.is_some_and(|at| at > Instant::now()) => continue,
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(record) = lock(&self.latest).clone() else {
                due = None;
                continue;
            };
            let body = match serde_json::to_vec(&record) {
                Ok(body) => body,
                Err(e) => {
                    log::error!("host record: {e}");
                    due = Some(Instant::now() + self.interval);
                    continue;
                }
            };
            match fetch::post_json(&self.url, &body, self.options.timeout) {
                Ok(_) => {
                    if !registered || reported {
                        console::registered(&shown, record.toolchains.len(), body.len());
                    } else {
                        log::info!("registered with {shown} ({} bytes)", body.len());
                    }
                    registered = true;
                    failures = 0;
                    reported = false;
                    due = Some(Instant::now() + self.interval);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = self.delay(failures);
                    log::warn!(
                        "cannot register with {shown} ({failures} in a row): {e}; next try in {wait:?}"
                    );
                    if failures >= self.options.report_after && !reported {
                        reported = true;
                        console::hub_down(&shown, failures);
                        (self.notify)(&report::hub_down(&shown, failures, &e.to_string()));
                    }
                    due = Some(Instant::now() + wait);
                }
            }
        }
    }

    /// The wait after `failures` failures in a row.
    fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.options
            .first_delay
            .saturating_mul(factor)
            .min(self.options.max_delay)
            .min(self.interval)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_bound_and_never_past_the_interval() {
        let hub = |interval: u64| Hub {
            url: "http://hub/".into(),
            interval: Duration::from_secs(interval),
            options: Options::default(),
            latest: Arc::new(Mutex::new(None)),
            notify: Arc::new(|_: &Report| {}),
        };
        let waits: Vec<u64> = (1..=8).map(|n| hub(600).delay(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(hub(30).delay(5), Duration::from_secs(30));
        assert_eq!(hub(600).delay(u32::MAX), Duration::from_secs(300));
    }
}
