//! The host's network (manual 4.3): Ethernet interfaces up, DHCP on every one with carrier in
//! parallel and bounded by `buildos.dhcp_wait`, the first lease winning; br0, the public
//! bridge, holding the winner with its MAC address and carrying its lease; br1, the private
//! bridge at `buildos.br1_address`, NATed out through br0; the host name; and the files that
//! describe it all.
//!
//! Nothing here fails the boot: [`setup`] reports what it got and what it did not, and the
//! [`Keeper`] it hands back keeps the lease (or keeps looking for one) for as long as the
//! host runs.

pub mod dhcp;
pub mod netlink;
pub mod render;
pub mod reply;

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use buildos_cmdline::{Config, Ipv4Net};

use crate::console;
use crate::error::FileError;
use crate::host::Host;
use buildos_contract as contract;
use dhcp::{Client, DhcpError, Lease};
use netlink::{Link, Netlink, NetlinkError};
pub use render::Public;

/// dnsmasq, from Debian's package, for br1's DHCP and TFTP.
pub const DNSMASQ: &str = contract::programs::DNSMASQ;
/// Where the image carries nft (Debian package nftables). By path: PID 1 has no PATH.
pub const NFT: &str = contract::programs::NFT;

/// The public bridge.
pub const BR0: &str = "br0";
/// The private bridge.
pub const BR1: &str = "br1";

/// How long after the winner a losing interface may take to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The longest wait between two looks at a link's carrier: the kernel's announcement of a
/// link change ends it sooner (and so carrier is seen as it comes). The bound is how soon an
/// interface still without carrier stops once another one won; without the announcements
/// (their socket could not be opened) carrier is looked at every 100 ms.
const CARRIER_WAKE: Duration = Duration::from_millis(500);
const CARRIER_POLL: Duration = Duration::from_millis(100);

/// Where the files go: `/etc`, `/run/buildos` and `/build/tftp` on a host; a test's own
/// directory otherwise.
#[derive(Clone, Debug)]
pub struct Paths {
    pub etc: PathBuf,
    pub run: PathBuf,
    /// What dnsmasq serves over TFTP on br1.
    pub tftp: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            etc: PathBuf::from("/etc"),
            run: PathBuf::from(contract::run::DIR),
            tftp: PathBuf::from(contract::build::TFTP),
        }
    }
}

impl Paths {
    pub fn resolv_conf(&self) -> PathBuf {
        self.etc.join("resolv.conf")
    }
    pub fn interfaces(&self) -> PathBuf {
        self.etc.join("network/interfaces")
    }
    pub fn network(&self) -> PathBuf {
        self.run.join(contract::run::NETWORK)
    }
    pub fn dnsmasq_conf(&self) -> PathBuf {
        self.run.join(contract::run::DNSMASQ_BR1_CONF)
    }
    pub fn dnsmasq_leases(&self) -> PathBuf {
        self.run.join(contract::run::DNSMASQ_BR1_LEASES)
    }
    pub fn dnsmasq_br0_conf(&self) -> PathBuf {
        self.run.join(contract::run::DNSMASQ_BR0_CONF)
    }
}

/// What happened on one Ethernet interface at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    NoCarrier,
    Lease(Ipv4Addr, u8),
    /// No lease: the reason, as a console line.
    Failed(String),
    /// Another interface won first.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub interface: String,
    pub outcome: Outcome,
}

impl Attempt {
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::NoCarrier => format!("{}: no carrier", self.interface),
            Outcome::Lease(address, prefix) => {
                format!("{}: lease {address}/{prefix}", self.interface)
            }
            Outcome::Failed(why) => why.clone(),
            Outcome::Stopped => format!("{}: stopped, another interface won", self.interface),
        }
    }
}

/// What [`setup`] got and what it did not.
pub struct NetReport {
    /// The Ethernet interfaces found, in index order.
    pub interfaces: Vec<String>,
    /// One per interface tried.
    pub attempts: Vec<Attempt>,
    /// br0's port and lease, when some interface got one.
    pub public: Option<Public>,
    pub hostname: String,
    /// Whether br1 is up with its address, so build machines can be served on it (NAT or
    /// not: a NAT failure is one of the problems).
    pub private_ready: bool,
    /// What went wrong, one line each, for the console and /run/buildos/problems.
    pub problems: Vec<String>,
    /// Keeps the lease, or keeps looking for one; run it with [`Keeper::spawn`].
    pub keeper: Keeper,
}

/// The Ethernet interfaces DHCP is tried on: Ethernet links that are not loopback, not
/// bridges, not a bridge's port, and either hardware (no link kind) or a veth (the wire of a
/// container or a network namespace); taps, VLANs, bonds and the like are left alone.
pub fn is_ethernet(link: &Link) -> bool {
    link.ether
        && !link.loopback
        && link.master.is_none()
        && link.mac.is_some()
        && link.name != BR0
        && link.name != BR1
        && matches!(link.kind.as_deref(), None | Some("veth"))
}

/// Brings up networking at boot. Never fails hard and never waits longer than
/// `config.dhcp_wait` for DHCP. The lines it has for the console are said as it ends; the
/// problems come back in the report for the caller to print and keep.
pub fn setup(host: &dyn Host, config: &Config, paths: &Paths) -> NetReport {
    start(config, crate::hardware::AllLoaded).finish(
        host,
        config,
        paths,
        &crate::hardware::AllLoaded,
    )
}

/// The network's first part, started by the modules step on a thread of its own so that it
/// runs beside storage and state: the NICs' drivers, the interfaces up, DHCP, br0 with the
/// first lease, br1 with NAT. It waits for no step's work and none waits for it but the
/// network step ([`Started::finish`]), which does the rest. A NIC's link comes up, the kernel
/// sees it (up to a second) and a DHCP server answers while the disks are mounted and the
/// host keys made, instead of after.
pub struct Started {
    running: Running,
}

enum Running {
    Thread(std::thread::JoinHandle<Early>),
    /// No thread could be had: the first part runs in [`Started::finish`].
    Here(Box<dyn FnOnce() -> Early + Send>, String),
}

/// Starts the network's first part on a thread of its own, `modules` loading beside it; its
/// bound, `config.dhcp_wait`, counts from now.
pub fn start(
    config: &Config,
    modules: impl crate::hardware::Wait + Clone + Send + 'static,
) -> Started {
    let bound = Duration::from_secs(u64::from(config.dhcp_wait));
    let br1 = config.br1_address;
    let deadline = Instant::now() + bound;
    let theirs = modules.clone();
    let spawned = std::thread::Builder::new()
        .name("network".to_owned())
        .spawn(move || early(&theirs, bound, deadline, br1));
    let running = match spawned {
        Ok(handle) => Running::Thread(handle),
        Err(error) => Running::Here(
            Box::new(move || early(&modules, bound, Instant::now() + bound, br1)),
            format!("network: cannot start its thread ({error}); it ran in the network step"),
        ),
    };
    Started { running }
}

/// What the network's first part did: the lines it has for the console, in order, and the rest
/// for [`Started::finish`].
#[derive(Default)]
struct Early {
    lines: Vec<Said>,
    problems: Vec<String>,
    names: Vec<String>,
    /// The first Ethernet interface's MAC address: the host name's when no lease came.
    first_mac: Option<[u8; 6]>,
    attempts: Vec<Attempt>,
    public: Option<Public>,
    private_ready: bool,
    /// When it waited for modules (the NICs' drivers, the network modules), from and to.
    module_waits: Vec<(Instant, Instant)>,
    /// br0's wait to forward, its warning said already.
    forwarding: Option<Forwarding>,
}

/// A console line kept for later.
enum Said {
    Info(String),
    Warn(String),
}

impl Started {
    /// Waits for the first part to end (it is bounded by `config.dhcp_wait`), says what it did,
    /// then sets the host name and writes the files that describe the network.
    /// The part of the wait for it during which it was waiting for modules counts in
    /// `modules` as the step's wait for them (as it did when the step loaded nothing beside).
    pub fn finish(
        self,
        host: &dyn Host,
        config: &Config,
        paths: &Paths,
        modules: &dyn crate::hardware::Wait,
    ) -> NetReport {
        let joining = Instant::now();
        let mut early = match self.running {
            Running::Thread(handle) => handle.join().unwrap_or_else(|_| Early {
                problems: vec!["network: its thread panicked; no br0, no br1".to_owned()],
                ..Early::default()
            }),
            Running::Here(work, why) => {
                let mut early = work();
                early.problems.insert(0, why);
                early
            }
        };
        let joined = Instant::now();
        modules.count(overlap(&early.module_waits, joining, joined));
        if let (Some(forwarding), Some(public)) = (&early.forwarding, &early.public) {
            // The kernel's link watch, not init: the bench reads this line.
            let (from, to) = forwarding.wait;
            early.lines.push(Said::Info(format!(
                "network: br0 forwards {} ms after {} joined it (the kernel sees a NIC's link \
                 up at most once a second); the network step waited {} ms for it",
                to.saturating_duration_since(forwarding.joined).as_millis(),
                public.port,
                overlap(&[(from, to)], joining, joined).as_millis()
            )));
        }
        for said in &early.lines {
            match said {
                Said::Info(line) => console::info(line),
                Said::Warn(line) => console::warn(line),
            }
        }
        let mut problems = early.problems;
        let public = early.public;
        let mac_source = public.as_ref().map(|p| p.mac).or(early.first_mac);
        let hostname = choose_hostname(
            config.hostname.as_deref(),
            public.as_ref().and_then(|p| p.lease.hostname.as_deref()),
            mac_source,
        );
        if let Err(error) = apply_hostname(host, &hostname, public.as_ref(), paths) {
            problems.push(format!("hostname: {}", console::oneline(&error)));
        }
        if let Err(error) = write_files(paths, public.as_ref(), &hostname, config.br1_address) {
            problems.push(format!("network: {}", console::oneline(&error)));
        }
        let keeper = Keeper {
            paths: paths.clone(),
            br1: config.br1_address,
            hostname: hostname.clone(),
            public: public.clone(),
        };
        NetReport {
            interfaces: early.names,
            attempts: early.attempts,
            public,
            hostname,
            private_ready: early.private_ready,
            problems,
            keeper,
        }
    }
}

/// How much of `waits` (from, to) falls between `from` and `to`.
fn overlap(waits: &[(Instant, Instant)], from: Instant, to: Instant) -> Duration {
    waits
        .iter()
        .map(|(begun, ended)| {
            (*ended)
                .min(to)
                .saturating_duration_since((*begun).max(from))
        })
        .sum()
}

/// The first part, on its thread: the interfaces once their drivers loaded, DHCP on them until
/// `deadline`, br0 with the winner and br1 with NAT once the bridge and nftables modules
/// loaded.
fn early(
    modules: &dyn crate::hardware::Wait,
    bound: Duration,
    deadline: Instant,
    br1: Ipv4Net,
) -> Early {
    let mut early = Early::default();
    let began = Instant::now();
    let nics = modules.wait(crate::hardware::Need::Nics, deadline);
    early.module_waits.push((began, Instant::now()));
    if !nics {
        early.problems.push(format!(
            "network: the network cards' drivers were still loading after {} s; DHCP on the \
             interfaces there are",
            bound.as_secs()
        ));
    }
    let mut netlink = Netlink::open();
    let links = match netlink.as_mut().map(|n| n.links()) {
        Ok(Ok(links)) => links,
        Ok(Err(error)) => {
            early.problems.push(error.to_string());
            Vec::new()
        }
        Err(error) => {
            early.problems.push(error.to_string());
            Vec::new()
        }
    };
    if let Ok(netlink) = netlink.as_mut() {
        if let Some(lo) = links.iter().find(|l| l.loopback) {
            if let Err(error) = netlink.set_up(lo) {
                early.problems.push(error.to_string());
            }
        }
    }
    let ethernet: Vec<Link> = links.into_iter().filter(is_ethernet).collect();
    early.names = ethernet.iter().map(|l| l.name.clone()).collect();
    early.first_mac = ethernet.first().and_then(|l| l.mac);
    if ethernet.is_empty() {
        early
            .problems
            .push("network: no Ethernet interface found; no DHCP, no br0".into());
    } else {
        early.lines.push(Said::Info(format!(
            "network: Ethernet interfaces {}; DHCP on those with carrier, for up to {} s",
            early.names.join(", "),
            bound.as_secs()
        )));
    }

    let (won, attempts) = acquire_any(&ethernet, deadline);
    // The bridges and the NAT need their modules; they loaded while DHCP ran.
    let began = Instant::now();
    modules.wait(crate::hardware::Need::NetworkStack, deadline + STOP_GRACE);
    early.module_waits.push((began, Instant::now()));
    for attempt in &attempts {
        early
            .lines
            .push(Said::Info(format!("network: {}", attempt.line())));
    }
    let joined = match won {
        Some((port, lease)) => {
            early
                .problems
                .extend(lease.rejected.iter().map(|r| format!("network: {r}")));
            match netlink
                .as_mut()
                .map_err(|e| e.to_string())
                .and_then(|n| join_public(n, &port, &lease).map_err(|e| e.to_string()))
            {
                Ok(joined) => Some((joined, port, lease)),
                Err(error) => {
                    early.problems.push(format!("network: br0: {error}"));
                    None
                }
            }
        }
        None => {
            if !ethernet.is_empty() {
                let tried: Vec<String> = attempts.iter().map(Attempt::line).collect();
                early.problems.push(format!(
                    "network: no DHCP lease within {} s ({}); boot goes on without br0 and \
                     keeps trying in the background",
                    bound.as_secs(),
                    tried.join("; ")
                ));
            }
            None
        }
    };
    early.attempts = attempts;

    // br1 and its NAT (nft takes a quarter of a second under emulation) while the kernel gets
    // to see br0's port up (up to a second).
    let private = match netlink.as_mut() {
        Ok(netlink) => make_private(netlink, br1),
        // Said once already, with the public side.
        Err(error) => Err(PrivateError::Bridge(NetlinkError {
            what: error.what.clone(),
            error: io::Error::new(error.error.kind(), error.error.to_string()),
        })),
    };
    if let (Some((joined, port, lease)), Ok(netlink)) = (joined, netlink.as_mut()) {
        let mut forwarding = joined.forwarding(netlink);
        early
            .lines
            .extend(forwarding.warning.take().map(Said::Warn));
        early.forwarding = Some(forwarding);
        early.lines.push(Said::Info(format!(
            "network: br0 holds {} ({}) with {}/{} from DHCP server {}",
            port.name,
            netlink::mac_text(port.mac.unwrap_or_default()),
            lease.address,
            lease.prefix,
            lease.server
        )));
        early.public = Some(Public {
            port: port.name.clone(),
            mac: port.mac.unwrap_or_default(),
            lease,
        });
    }
    early.private_ready = match private {
        Ok(()) => {
            early.lines.push(Said::Info(format!(
                "network: br1 at {br1}, NATed through br0"
            )));
            true
        }
        Err(PrivateError::Nat(nat)) => {
            early
                .problems
                .push(format!("network: br1: {}", console::oneline(&nat)));
            true
        }
        Err(error) => {
            early
                .problems
                .push(format!("network: br1: {}", console::oneline(&error)));
            false
        }
    };
    early
}

/// DHCP on every interface at once, each first waiting for carrier, all until `deadline`;
/// the first lease wins and the others are stopped.
pub fn acquire_any(
    interfaces: &[Link],
    deadline: Instant,
) -> (Option<(Link, Lease)>, Vec<Attempt>) {
    acquire_with(interfaces, deadline, try_link)
}

/// One interface's attempt: carrier, then DHCP, until the deadline or until told to stop.
type TryLink = fn(&Link, Instant, &AtomicBool) -> Result<Lease, Outcome>;

/// [`acquire_any`] with the attempt on one interface given: which interface wins, what the
/// others' attempts say and when the whole ends are decided here, and unit-tested with
/// attempts that need no network.
fn acquire_with(
    interfaces: &[Link],
    deadline: Instant,
    try_link: TryLink,
) -> (Option<(Link, Lease)>, Vec<Attempt>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = mpsc::channel();
    let mut running = 0;
    let mut attempts = Vec::new();
    for link in interfaces {
        let name = link.name.clone();
        let link = link.clone();
        let stop = Arc::clone(&stop);
        let sender = sender.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dhcp-{}", link.name))
            .spawn(move || {
                let result =
                    panic::catch_unwind(AssertUnwindSafe(|| try_link(&link, deadline, &stop)))
                        .unwrap_or_else(|_| {
                            Err(Outcome::Failed(format!(
                                "{}: DHCP client panicked",
                                link.name
                            )))
                        });
                let _ = sender.send((link, result));
            });
        match spawned {
            Ok(_) => running += 1,
            Err(error) => attempts.push(Attempt {
                outcome: Outcome::Failed(format!("{name}: cannot start a thread: {error}")),
                interface: name,
            }),
        }
    }
    drop(sender);
    let mut won = None;
    let mut won_at: Option<Instant> = None;
    while running > 0 {
        // Until the bound (and a little for the threads to report), or shortly after a win.
        let until = won_at.unwrap_or(deadline) + STOP_GRACE;
        let Ok((link, result)) =
            receiver.recv_timeout(until.saturating_duration_since(Instant::now()))
        else {
            break;
        };
        running -= 1;
        let outcome = match result {
            Ok(lease) if won.is_none() => {
                stop.store(true, Ordering::Relaxed);
                won_at = Some(Instant::now());
                let outcome = Outcome::Lease(lease.address, lease.prefix);
                won = Some((link.clone(), lease));
                outcome
            }
            Ok(_) => Outcome::Stopped,
            Err(outcome) => outcome,
        };
        attempts.push(Attempt {
            interface: link.name,
            outcome,
        });
    }
    stop.store(true, Ordering::Relaxed);
    // Interfaces whose threads did not report in time, in the order they were given.
    for link in interfaces {
        if !attempts.iter().any(|a| a.interface == link.name) {
            attempts.push(Attempt {
                interface: link.name.clone(),
                outcome: Outcome::Failed(format!("{}: no result within the bound", link.name)),
            });
        }
    }
    attempts.sort_by_key(|a| interfaces.iter().position(|l| l.name == a.interface));
    (won, attempts)
}

fn try_link(link: &Link, deadline: Instant, stop: &AtomicBool) -> Result<Lease, Outcome> {
    let failed = |error: &dyn std::fmt::Display| Outcome::Failed(format!("{}: {error}", link.name));
    let mut netlink = Netlink::open().map_err(|e| failed(&e))?;
    // Opened before the link is brought up, so that its carrier's announcement is not missed.
    let events = netlink::LinkEvents::open().ok();
    netlink.set_up(link).map_err(|e| failed(&e))?;
    // Carrier: a bounded wait on the link's state; still without it when another interface
    // won, or at the deadline, this one is out.
    let carrier =
        |netlink: &mut Netlink| Ok(netlink.link(&link.name)?.is_some_and(|link| link.carrier));
    match wait_until(&mut netlink, carrier, events.as_ref(), deadline, Some(stop)) {
        Ok(true) => {}
        Ok(false) => return Err(Outcome::NoCarrier),
        Err(error) => return Err(failed(&error)),
    }
    let mac = link.mac.unwrap_or_default();
    let client = Client::new(&link.name, mac).map_err(|e| Outcome::Failed(e.to_string()))?;
    client.acquire(deadline, stop).map_err(|error| match error {
        DhcpError::Stopped => Outcome::Stopped,
        other => Outcome::Failed(other.to_string()),
    })
}

/// br0 with `port` in it, `port`'s MAC address, and the lease's address and default route, and br0
/// forwarding; a warning when it does not yet. A port joins disabled and the bridge enables it only
/// once the kernel has seen the port's link up: the kernel's link watch does that at once for a
/// link that comes up while its interface is up, but at most once a second for one that came up
/// while it was down (virtio_net's, at its probe), so such a NIC can wait up to a second after
/// its probe, and a packet br0 sends meanwhile is lost (the clock step's first NTP or DNS query
/// then waited a second for its retry, on about every other boot under QEMU). br0's own carrier
/// does not tell: a bridge none of whose ports the kernel enabled yet can still say it has one.
/// So this waits, on the kernel's link announcements and at most [`BRIDGE_FORWARDING`], until
/// the port is operationally up and br0 has carrier.
fn make_public(
    netlink: &mut Netlink,
    port: &Link,
    lease: &Lease,
) -> Result<Option<String>, NetlinkError> {
    Ok(join_public(netlink, port, lease)?
        .forwarding(netlink)
        .warning)
}

/// [`make_public`]'s first half: br0 made, `port` in it, the lease on it; its forwarding is
/// still to be waited for ([`Joined::forwarding`]), meanwhile other work can be done.
fn join_public(netlink: &mut Netlink, port: &Link, lease: &Lease) -> Result<Joined, NetlinkError> {
    let bridge = netlink.bridge(BR0)?;
    if let Some(mac) = port.mac {
        netlink.set_mac(&bridge, mac)?;
    }
    // Opened before the port joins, so that no announcement is missed.
    let events = netlink::LinkEvents::open().ok();
    netlink.set_master(port, &bridge)?;
    netlink.set_up(&bridge)?;
    apply_lease(netlink, &bridge, None, lease)?;
    let joined = Instant::now();
    Ok(Joined {
        events,
        port: port.name.clone(),
        joined,
        deadline: joined + BRIDGE_FORWARDING,
    })
}

/// br0 with its port joined, not known to forward yet.
struct Joined {
    events: Option<netlink::LinkEvents>,
    port: String,
    /// When the port joined.
    joined: Instant,
    /// [`BRIDGE_FORWARDING`] after the port joined.
    deadline: Instant,
}

/// What [`Joined::forwarding`] saw: a warning when br0 does not forward yet, and when the
/// port joined, the wait began and it ended.
struct Forwarding {
    warning: Option<String>,
    joined: Instant,
    wait: (Instant, Instant),
}

impl Joined {
    /// Waits until br0 forwards, at most until the deadline.
    fn forwarding(self, netlink: &mut Netlink) -> Forwarding {
        let began = Instant::now();
        let name = &self.port;
        let forwarding = |netlink: &mut Netlink| {
            let port = netlink.link(name)?;
            let bridge = netlink.link(BR0)?;
            Ok(port
                .zip(bridge)
                .is_some_and(|(port, bridge)| forwards(&port, &bridge)))
        };
        let warning = match wait_until(
            netlink,
            forwarding,
            self.events.as_ref(),
            self.deadline,
            None,
        ) {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "network: br0 does not forward {} s after {} joined it: the kernel has not seen \
                 the port's link up yet, and the first packets out wait for it",
                BRIDGE_FORWARDING.as_secs(),
                name
            )),
            Err(error) => Some(format!(
                "network: cannot see whether br0 forwards yet: {error}"
            )),
        };
        Forwarding {
            warning,
            joined: self.joined,
            wait: (began, Instant::now()),
        }
    }
}

/// Whether `bridge` forwards through `port`: the kernel has seen the port's link up (and so
/// enabled it), and the bridge has carrier. The bridge's carrier alone does not tell: one none
/// of whose ports is enabled yet can say it has carrier.
fn forwards(port: &Link, bridge: &Link) -> bool {
    port.oper_up && bridge.carrier
}

/// How long [`make_public`] waits for br0 to forward.
const BRIDGE_FORWARDING: Duration = Duration::from_secs(3);

/// Waits until `ready` says the links are as wanted, until `deadline` or until `stop` is set,
/// waking on `events` (or every [`CARRIER_POLL`] without them); whether they are.
fn wait_until(
    netlink: &mut Netlink,
    mut ready: impl FnMut(&mut Netlink) -> Result<bool, NetlinkError>,
    events: Option<&netlink::LinkEvents>,
    deadline: Instant,
    stop: Option<&AtomicBool>,
) -> Result<bool, NetlinkError> {
    loop {
        if stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            return Ok(false);
        }
        if ready(netlink)? {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        match events {
            Some(events) => {
                events.wait(CARRIER_WAKE.min(left));
            }
            None => std::thread::sleep(CARRIER_POLL.min(left)),
        }
    }
}

/// Puts a lease's address and default route on `link`, replacing the previous lease's.
fn apply_lease(
    netlink: &mut Netlink,
    link: &Link,
    previous: Option<&Lease>,
    lease: &Lease,
) -> Result<(), NetlinkError> {
    if let Some(previous) = previous {
        if (previous.address, previous.prefix) != (lease.address, lease.prefix) {
            remove_lease(netlink, link, previous)?;
        }
    }
    netlink.add_address(link, lease.address, lease.prefix)?;
    if let Some(router) = lease.router {
        netlink.replace_default_route(link, router)?;
    }
    Ok(())
}

fn remove_lease(netlink: &mut Netlink, link: &Link, lease: &Lease) -> Result<(), NetlinkError> {
    if let Some(router) = lease.router {
        // Gone with the address already when the kernel dropped it; that is fine.
        let _ = netlink.delete_default_route(link, router);
    }
    netlink.delete_address(link, lease.address, lease.prefix)
}

/// Why br1 is not all it should be.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// br1 is not up with its address: nothing can be served on it.
    #[error(transparent)]
    Bridge(#[from] NetlinkError),
    /// br1 is up, but its machines cannot reach beyond the host.
    #[error(transparent)]
    Nat(#[from] NatError),
}

/// Why br1's machines have no NAT.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("cannot turn IP forwarding on")]
    Forwarding(#[source] io::Error),
    #[error(
        "no NAT: nft is not in this image (Debian package nftables); br1 has its address but \
         its machines cannot reach beyond the host"
    )]
    NoNft,
    #[error("cannot run nft")]
    Run(#[source] io::Error),
    #[error("cannot give nft the NAT ruleset")]
    Write(#[source] io::Error),
    #[error("cannot wait for nft")]
    Wait(#[source] io::Error),
    #[error("nft refused the NAT ruleset ({status}): {stderr}")]
    Refused {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// br1 up with its address ([`PrivateError::Bridge`] when it cannot be), then IP forwarding and
/// the NAT ruleset ([`PrivateError::Nat`]): without NAT, br1 still serves its build machines.
fn make_private(netlink: &mut Netlink, br1: Ipv4Net) -> Result<(), PrivateError> {
    let bridge = netlink.bridge(BR1)?;
    netlink.set_up(&bridge)?;
    netlink.add_address(&bridge, br1.addr(), br1.prefix())?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n").map_err(NatError::Forwarding)?;
    Ok(load_nft(&render::nft_ruleset(br1))?)
}

/// Loads a ruleset with `nft -f -`.
pub fn load_nft(ruleset: &str) -> Result<(), NatError> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NatError::NoNft,
            _ => NatError::Run(e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(NatError::Write)?;
    }
    let output = child.wait_with_output().map_err(NatError::Wait)?;
    if !output.status.success() {
        return Err(NatError::Refused {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// `buildos.hostname`, else a valid host name from DHCP, else `build-` and the MAC's digits.
pub fn choose_hostname(
    configured: Option<&str>,
    from_dhcp: Option<&str>,
    mac: Option<[u8; 6]>,
) -> String {
    if let Some(name) = configured {
        return name.to_owned();
    }
    if let Some(name) = from_dhcp.filter(|n| render::hostname_ok(n)) {
        return name.to_owned();
    }
    match mac {
        Some(mac) => render::hostname_from_mac(mac),
        None => "build".to_owned(),
    }
}

fn apply_hostname(
    host: &dyn Host,
    hostname: &str,
    public: Option<&Public>,
    paths: &Paths,
) -> Result<(), FileError> {
    host.sethostname(hostname)
        .map_err(|e| FileError::new(format!("set the host name to {hostname}"), e))?;
    write_atomic(&paths.etc.join("hostname"), &format!("{hostname}\n"))?;
    let hosts = paths.etc.join("hosts");
    let existing = std::fs::read_to_string(&hosts).unwrap_or_default();
    let lease = public.map(|p| &p.lease);
    write_atomic(
        &hosts,
        &render::hosts(
            &existing,
            hostname,
            lease.map(|l| l.address),
            lease.and_then(|l| l.domain.as_deref()),
        ),
    )?;
    console::info(&format!("hostname: {hostname}"));
    Ok(())
}

fn write_files(
    paths: &Paths,
    public: Option<&Public>,
    hostname: &str,
    br1: Ipv4Net,
) -> Result<(), FileError> {
    if let Some(public) = public {
        write_atomic(&paths.resolv_conf(), &render::resolv_conf(&public.lease))?;
    }
    write_atomic(&paths.interfaces(), &render::interfaces(public, br1))?;
    write_atomic(&paths.network(), &render::network_file(public, hostname))
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_atomic(path: &Path, text: &str) -> Result<(), FileError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(FileError::on("write", path))?;
    }
    let temporary = path.with_extension("buildos-new");
    std::fs::write(&temporary, text).map_err(FileError::on("write", path))?;
    std::fs::rename(&temporary, path).map_err(FileError::on("write", path))
}

/// The user dnsmasq drops to: its own, else nobody.
fn dnsmasq_user(paths: &Paths) -> &'static str {
    let passwd = std::fs::read_to_string(paths.etc.join("passwd")).unwrap_or_default();
    ["dnsmasq", "nobody"]
        .into_iter()
        .find(|user| passwd.lines().any(|l| l.starts_with(&format!("{user}:"))))
        .unwrap_or("root")
}

/// Writes the configuration of dnsmasq serving TFTP alone on br0 and returns the command that
/// runs it, when a toolchain's machines are on br0 (`None` otherwise: br0 is the LAN, and
/// nothing is served there that no machine needs).
pub fn tftp_br0_command(config: &Config, paths: &Paths) -> Result<Option<Command>, FileError> {
    let wanted = config
        .toolchains
        .values()
        .any(|t| t.bridge == buildos_cmdline::Bridge::Br0);
    if !wanted {
        return Ok(None);
    }
    write_atomic(
        &paths.dnsmasq_br0_conf(),
        &render::tftp_br0_conf(&paths.tftp.display().to_string(), dnsmasq_user(paths)),
    )?;
    Ok(Some(service_command(
        contract::services::Start::ToolchainOnBr0,
        paths,
    )))
}

/// Writes dnsmasq's configuration for br1 and returns the command that runs it in the
/// foreground; init's supervision starts it, and restarts it when it dies.
pub fn dnsmasq_command(config: &Config, paths: &Paths) -> Result<Command, FileError> {
    let user = dnsmasq_user(paths);
    let conf = paths.dnsmasq_conf();
    write_atomic(
        &conf,
        &render::dnsmasq_conf(
            config.br1_address,
            &paths.tftp.display().to_string(),
            &paths.dnsmasq_leases().display().to_string(),
            user,
        ),
    )?;
    Ok(service_command(contract::services::Start::Br1Up, paths))
}

/// The command of the contract's service that starts at `start` (dnsmasq on br1 or br0),
/// reading its configuration from `paths.run`.
fn service_command(start: contract::services::Start, paths: &Paths) -> Command {
    let service = contract::services::starting(start).next();
    let mut command = Command::new(service.map_or(DNSMASQ, |s| s.program));
    if let Some(service) = service {
        command.args(service.args_in(&paths.run.display().to_string()));
    }
    command
}

/// Why a lease could not be put on br0.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("br0 is gone")]
    NoBr0,
}

/// Keeps the public lease for as long as the host runs: renews at T1 with the server that
/// granted it, rebinds at T2 with any server, and when it expires (or a server refuses it)
/// removes the address and goes back to discovery. Without a lease at all, it keeps trying
/// every Ethernet interface and makes br0 when one gets a lease.
pub struct Keeper {
    paths: Paths,
    br1: Ipv4Net,
    hostname: String,
    public: Option<Public>,
}

/// How long one round of discovery in the background lasts before the next one starts.
const BACKGROUND_ROUND: Duration = Duration::from_secs(60);
/// The pause between background rounds that found nothing, so a host without a network
/// does not flood it.
const BACKGROUND_PAUSE: Duration = Duration::from_secs(10);

impl Keeper {
    /// Runs [`Keeper::run`] on its own thread.
    pub fn spawn(self) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("dhcp-keeper".into())
            .spawn(move || self.run(&AtomicBool::new(false)))
    }

    /// The loop; returns only when `stop` is set. A panic inside one step is caught, said on
    /// the console, and the loop goes on from discovery.
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let step = panic::catch_unwind(AssertUnwindSafe(|| self.step(stop)));
            if step.is_err() {
                console::error("network: the DHCP keeper panicked; starting over from discovery");
                self.public = None;
                pause(BACKGROUND_PAUSE, stop);
            }
        }
    }

    /// One stage: keep the lease until it is renewed, rebound or lost; or one round of
    /// discovery when there is none.
    fn step(&mut self, stop: &AtomicBool) {
        match self.public.take() {
            Some(public) => self.public = self.keep(public, stop),
            None => self.discover(stop),
        }
    }

    fn keep(&mut self, public: Public, stop: &AtomicBool) -> Option<Public> {
        let lease = public.lease.clone();
        pause(
            lease.renew_at().saturating_duration_since(Instant::now()),
            stop,
        );
        if stop.load(Ordering::Relaxed) {
            return Some(public);
        }
        let client = match Client::new(BR0, public.mac) {
            Ok(client) => client,
            Err(error) => {
                console::warn(&format!(
                    "network: {error}; trying again in {} s",
                    BACKGROUND_PAUSE.as_secs()
                ));
                pause(BACKGROUND_PAUSE, stop);
                return Some(public);
            }
        };
        let stages = [
            (false, lease.rebind_at(), "renewing with"),
            (true, lease.expires_at(), "rebinding after no answer from"),
        ];
        for (rebinding, until, doing) in stages {
            if Instant::now() >= until {
                continue;
            }
            console::info(&format!(
                "network: {doing} DHCP server {} for {}",
                lease.server, lease.address
            ));
            match client.extend(&lease, rebinding, until, stop) {
                Ok(Some(renewed)) => {
                    for rejected in &renewed.rejected {
                        if !lease.rejected.contains(rejected) {
                            console::warn(&format!("network: {rejected}"));
                        }
                    }
                    let mut public = public.clone();
                    match self.apply(Some(&lease), &renewed) {
                        Ok(()) => console::info(&format!(
                            "network: lease of {}/{} renewed for {} s by {}",
                            renewed.address,
                            renewed.prefix,
                            renewed.times.expire.as_secs(),
                            renewed.server
                        )),
                        Err(error) => {
                            console::warn(&format!("network: {}", console::oneline(&error)))
                        }
                    }
                    let changed = public.lease.address != renewed.address
                        || public.lease.prefix != renewed.prefix
                        || public.lease.dns != renewed.dns
                        || public.lease.domain != renewed.domain;
                    public.lease = renewed;
                    if changed {
                        self.write_public(&public);
                    }
                    return Some(public);
                }
                Ok(None) => continue,
                Err(DhcpError::Stopped) => return Some(public),
                Err(error) => {
                    console::warn(&format!("network: {error}"));
                    break;
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Some(public);
        }
        console::warn(&format!(
            "network: lost the DHCP lease of {}/{} on br0; removing it and going back to discovery",
            lease.address, lease.prefix
        ));
        if let Err(error) = Netlink::open().and_then(|mut n| match n.link(BR0)? {
            Some(br0) => remove_lease(&mut n, &br0, &lease),
            None => Ok(()),
        }) {
            console::warn(&format!("network: {error}"));
        }
        let _ = write_atomic(
            &self.paths.network(),
            &render::network_file(None, &self.hostname),
        );
        None
    }

    /// Puts a new or renewed lease on br0 and rewrites the files that show it.
    fn apply(&self, previous: Option<&Lease>, lease: &Lease) -> Result<(), ApplyError> {
        let mut netlink = Netlink::open()?;
        let br0 = netlink.link(BR0)?.ok_or(ApplyError::NoBr0)?;
        Ok(apply_lease(&mut netlink, &br0, previous, lease)?)
    }

    fn write_public(&self, public: &Public) {
        for result in [
            write_atomic(
                &self.paths.resolv_conf(),
                &render::resolv_conf(&public.lease),
            ),
            write_atomic(
                &self.paths.interfaces(),
                &render::interfaces(Some(public), self.br1),
            ),
            write_atomic(
                &self.paths.network(),
                &render::network_file(Some(public), &self.hostname),
            ),
        ] {
            if let Err(error) = result {
                console::warn(&format!("network: {}", console::oneline(&error)));
            }
        }
    }

    /// One bounded round of discovery: on br0 when it exists (its port keeps carrying it),
    /// else on every Ethernet interface, making br0 for the winner.
    fn discover(&mut self, stop: &AtomicBool) {
        let deadline = Instant::now() + BACKGROUND_ROUND;
        let mut netlink = match Netlink::open() {
            Ok(netlink) => netlink,
            Err(error) => {
                console::warn(&format!("network: {error}"));
                pause(BACKGROUND_PAUSE, stop);
                return;
            }
        };
        let links = netlink.links().unwrap_or_default();
        if let Some(br0) = links.iter().find(|l| l.name == BR0) {
            let Some(mac) = br0.mac else {
                pause(BACKGROUND_PAUSE, stop);
                return;
            };
            let port = links
                .iter()
                .find(|l| l.master == Some(br0.index))
                .map(|l| l.name.clone())
                .unwrap_or_default();
            let result = Client::new(BR0, mac).and_then(|client| client.acquire(deadline, stop));
            if let Ok(lease) = &result {
                warn_rejected(lease);
            }
            match result {
                Ok(lease) => match self.apply(None, &lease) {
                    Ok(()) => {
                        console::info(&format!(
                            "network: br0 has a new DHCP lease: {}/{} from {}",
                            lease.address, lease.prefix, lease.server
                        ));
                        let public = Public { port, mac, lease };
                        self.write_public(&public);
                        self.public = Some(public);
                    }
                    Err(error) => {
                        console::warn(&format!("network: {}", console::oneline(&error)));
                        pause(BACKGROUND_PAUSE, stop);
                    }
                },
                Err(DhcpError::Stopped) => {}
                Err(error) => {
                    console::warn(&format!("network: still no DHCP lease: {error}"));
                    pause(BACKGROUND_PAUSE, stop);
                }
            }
            return;
        }
        let ethernet: Vec<Link> = links.into_iter().filter(is_ethernet).collect();
        let (won, attempts) = acquire_any(&ethernet, deadline);
        if let Some((_, lease)) = &won {
            warn_rejected(lease);
        }
        match won {
            Some((port, lease)) => match make_public(&mut netlink, &port, &lease) {
                Ok(warning) => {
                    if let Some(warning) = warning {
                        console::warn(&warning);
                    }
                    console::info(&format!(
                        "network: br0 holds {} with {}/{} from DHCP server {}",
                        port.name, lease.address, lease.prefix, lease.server
                    ));
                    let public = Public {
                        port: port.name.clone(),
                        mac: port.mac.unwrap_or_default(),
                        lease,
                    };
                    self.write_public(&public);
                    self.public = Some(public);
                }
                Err(error) => {
                    console::warn(&format!("network: br0: {error}"));
                    pause(BACKGROUND_PAUSE, stop);
                }
            },
            None => {
                let tried: Vec<String> = attempts.iter().map(Attempt::line).collect();
                console::warn(&format!(
                    "network: still no DHCP lease ({}); trying again in {} s",
                    if tried.is_empty() {
                        "no Ethernet interface".to_owned()
                    } else {
                        tried.join("; ")
                    },
                    BACKGROUND_PAUSE.as_secs()
                ));
                pause(BACKGROUND_PAUSE, stop);
            }
        }
    }
}

/// Says on the console what a new lease's server sent that was left out.
fn warn_rejected(lease: &Lease) {
    for rejected in &lease.rejected {
        console::warn(&format!("network: {rejected}"));
    }
}

/// Waits `length`, waking every quarter second to look at `stop`. This is the keeper's
/// timer between lease stages, not a synchronisation.
fn pause(length: Duration, stop: &AtomicBool) {
    let until = Instant::now() + length;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(250)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>) -> Link {
        Link {
            index: 2,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            kind: kind.map(str::to_owned),
            master: None,
            up: false,
            carrier: false,
            oper_up: false,
            ether: true,
            loopback: false,
        }
    }

    /// The network step counts, of its wait for the first part, what the part spent waiting
    /// for modules meanwhile: not its waits before the step began, all of those within it.
    #[test]
    fn the_step_counts_the_first_parts_waits_for_modules_that_fall_within_its_own() {
        let at = Instant::now();
        let ms = |n: u64| at + Duration::from_millis(n);
        let waits = [(ms(0), ms(100)), (ms(150), ms(400)), (ms(450), ms(500))];
        assert_eq!(
            overlap(&waits, ms(200), ms(470)),
            Duration::from_millis(220)
        );
        assert_eq!(overlap(&waits, ms(600), ms(700)), Duration::ZERO);
        assert_eq!(overlap(&waits, ms(0), ms(700)), Duration::from_millis(400));
    }

    /// Seen under QEMU: eth0 joined br0 with carrier but before the kernel's link watch saw
    /// it up (up to a second later), br0 said it had carrier, and the first packet out was
    /// lost.
    #[test]
    fn br0_forwards_only_once_the_kernel_has_seen_its_port_up() {
        let mut port = link("eth0", None);
        port.up = true;
        port.carrier = true;
        let mut bridge = link(BR0, Some("bridge"));
        bridge.up = true;
        bridge.carrier = true;
        assert!(!forwards(&port, &bridge), "the port is not enabled yet");
        port.oper_up = true;
        assert!(forwards(&port, &bridge));
        bridge.carrier = false;
        assert!(!forwards(&port, &bridge));
    }

    fn lease(address: [u8; 4]) -> Lease {
        Lease {
            address: Ipv4Addr::from(address),
            prefix: 24,
            router: None,
            dns: Vec::new(),
            ntp: Vec::new(),
            domain: None,
            hostname: None,
            server: Ipv4Addr::new(192, 0, 2, 1),
            times: dhcp::LeaseTimes::from_options(None, None, None),
            acquired: Instant::now(),
            rejected: Vec::new(),
        }
    }

    /// eth0 has no cable, eth1's server answers just after another interface won, eth2's at
    /// once, eth3 waits until it is told to stop: by name, so each thread knows its part.
    fn scripted(link: &Link, deadline: Instant, stop: &AtomicBool) -> Result<Lease, Outcome> {
        match link.name.as_str() {
            "eth0" => Err(Outcome::NoCarrier),
            "eth1" => {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(lease([192, 0, 2, 11]))
            }
            "eth2" => Ok(lease([192, 0, 2, 12])),
            _ => {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(Outcome::Stopped)
            }
        }
    }

    #[test]
    fn the_first_interface_with_a_lease_wins_and_every_other_attempt_is_reported_in_order() {
        let links: Vec<Link> = ["eth0", "eth1", "eth2", "eth3"]
            .iter()
            .map(|name| link(name, None))
            .collect();
        let started = Instant::now();
        let (won, attempts) = acquire_with(&links, started + Duration::from_secs(30), scripted);
        let (link, lease) = won.unwrap();
        assert_eq!(link.name, "eth2");
        assert_eq!(lease.address, Ipv4Addr::new(192, 0, 2, 12));
        // The waiting interface was stopped at the win, not at the 30 s deadline; the later
        // lease on eth1 is not taken.
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            attempts,
            [
                ("eth0", Outcome::NoCarrier),
                ("eth1", Outcome::Stopped),
                ("eth2", Outcome::Lease(Ipv4Addr::new(192, 0, 2, 12), 24)),
                ("eth3", Outcome::Stopped),
            ]
            .map(|(interface, outcome)| Attempt {
                interface: interface.into(),
                outcome
            })
        );
    }

    #[test]
    fn without_any_lease_the_attempts_end_at_the_bound_and_say_why_each_failed() {
        let links = [link("eth0", None), link("eth3", None)];
        let started = Instant::now();
        let (won, attempts) = acquire_with(&links, started + Duration::from_millis(200), scripted);
        assert!(won.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(attempts[0].outcome, Outcome::NoCarrier);
        assert_eq!(attempts[1].interface, "eth3");
    }

    #[test]
    fn ethernet_is_hardware_or_veth_but_not_bridges_taps_or_ports() {
        assert!(is_ethernet(&link("eth0", None)));
        assert!(is_ethernet(&link("veth0", Some("veth"))));
        assert!(!is_ethernet(&link("br0", Some("bridge"))));
        assert!(!is_ethernet(&link("tap0", Some("tun"))));
        assert!(!is_ethernet(&link("br0", None)));
        let mut port = link("eth1", None);
        port.master = Some(5);
        assert!(!is_ethernet(&port));
        let mut lo = link("lo", None);
        lo.loopback = true;
        assert!(!is_ethernet(&lo));
    }

    #[test]
    fn hostname_is_configured_else_from_dhcp_else_from_the_mac() {
        let mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(
            choose_hostname(Some("h.example.org"), Some("d"), mac),
            "h.example.org"
        );
        assert_eq!(choose_hostname(None, Some("from-dhcp"), mac), "from-dhcp");
        assert_eq!(
            choose_hostname(None, Some("bad_name"), mac),
            "build-525400123456"
        );
        assert_eq!(choose_hostname(None, None, mac), "build-525400123456");
        assert_eq!(choose_hostname(None, None, None), "build");
    }
}
