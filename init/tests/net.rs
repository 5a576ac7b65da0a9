//! Host-level tests of init's network set-up, as root (as a normal user each says it was
//! skipped), in network namespaces each test makes
//! and removes: veth pairs for wires, a real dnsmasq as the DHCP server, nft and ping.
//!
//! The library runs on a thread that has entered the client's namespace (and a UTS namespace
//! of its own, so setting the host name touches nothing outside); threads it starts inherit
//! both, and so do the programs it runs.

use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::net::{SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildos_cmdline::{Config, Ipv4Net};
use buildos_init::net::dhcp::Client;
use buildos_init::net::netlink::Netlink;
use buildos_init::net::{self, Outcome, Paths};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

/// False, after saying why, when the test cannot run here (not root).
#[must_use]
fn need_root() -> bool {
    if !buildos_testpeers::tier::root("network namespaces, veth pairs, dnsmasq") {
        return false;
    }
    for program in ["ip", "dnsmasq", "nft", "ping", "curl"] {
        assert!(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(program).exists()),
            "this test needs {program}; `cargo xtask test` installs it"
        );
    }
    true
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace, removed (with its links) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    fn ip(&self, args: &str) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend(args.split_whitespace());
        run(&all)
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// Runs `work` on a thread inside this namespace and a UTS namespace of its own.
    fn enter<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            unshare(CloneFlags::CLONE_NEWUTS).expect("unshare the UTS namespace");
            work()
        })
        .join()
        .unwrap_or_else(|_| panic!("the thread in the namespace panicked"))
    }
}

impl Netns {
    /// Runs `work` on a thread inside this namespace until it returns; for servers.
    fn spawn(&self, work: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            work()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair made directly across the two namespaces.
fn veth(a: &Netns, a_name: &str, mac: &str, b: &Netns, b_name: &str) {
    a.ip(&format!(
        "link add {a_name} address {mac} type veth peer name {b_name} netns {}",
        b.name
    ));
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("buildos-net-test-"));
        std::fs::create_dir_all(&dir).expect("make a temporary directory");
        TempDir(dir)
    }

    fn paths(&self) -> Paths {
        let paths = Paths {
            etc: self.0.join("etc"),
            run: self.0.join("run"),
            tftp: self.0.join("tftp"),
        };
        std::fs::create_dir_all(&paths.tftp).expect("make the TFTP root");
        paths
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// dnsmasq as the DHCP server of a namespace, killed on drop; its log goes to a file.
struct Dnsmasq {
    child: Child,
    log: PathBuf,
}

impl Dnsmasq {
    /// Serves `<net>.50` to `<net>.99` of the /24 `net` (like `10.77.0`), itself the router
    /// and DNS server at `<net>.1`.
    fn start(ns: &Netns, interface: &str, net: &str, dir: &TempDir, extra: &[&str]) -> Dnsmasq {
        let log = dir.0.join(format!("dnsmasq-{}.log", unique("")));
        let leases = dir.0.join(format!("dnsmasq-{}.leases", unique("")));
        let mut args = vec![
            "dnsmasq".to_owned(),
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--port=0".into(),
            "--no-ping".into(),
            "--log-dhcp".into(),
            "--log-facility=-".into(),
            "--pid-file=".into(),
            "--user=root".into(),
            format!("--interface={interface}"),
            "--bind-interfaces".into(),
            "--except-interface=lo".into(),
            format!("--dhcp-range={net}.50,{net}.99,255.255.255.0,2m"),
            format!("--dhcp-option=option:router,{net}.1"),
            format!("--dhcp-option=option:dns-server,{net}.1"),
            format!("--dhcp-leasefile={}", leases.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = ns
            .exec(&refs)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("make the dnsmasq log"))
            .spawn()
            .expect("start dnsmasq");
        Dnsmasq { child, log }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `condition` until `bound`, looking every 100 ms; says what it waited for.
fn wait_for(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + bound;
    while !condition() {
        assert!(
            Instant::now() < until,
            "gave up after {bound:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server namespace with `s0` at 10.77.0.1/24 and a client namespace with `c0`, wired.
fn client_and_server(mac: &str) -> (Netns, Netns) {
    let server = Netns::new("bnts");
    let client = Netns::new("bntc");
    veth(&client, "c0", mac, &server, "s0");
    server.ip("addr add 10.77.0.1/24 dev s0");
    server.ip("link set s0 up");
    (client, server)
}

fn config(dhcp_wait: u32) -> Config {
    Config {
        dhcp_wait,
        ..Config::default()
    }
}

#[test]
fn dhcp_client_gets_address_router_dns_and_ntp_servers_from_dnsmasq() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:01");
    // dnsmasq sends option 42 only to a client that asks for it.
    let ntp = "--dhcp-option=option:ntp-server,10.77.0.5,10.77.0.6";
    let _dnsmasq = Dnsmasq::start(&server, "s0", "10.77.0", &dir, &[ntp]);
    let lease = client.enter(|| {
        let mut netlink = Netlink::open().expect("netlink");
        let c0 = netlink.link("c0").expect("links").expect("c0 is there");
        netlink.set_up(&c0).expect("c0 up");
        let dhcp = Client::new("c0", [2, 0, 0, 0x77, 0, 1]).expect("DHCP socket");
        dhcp.acquire(
            Instant::now() + Duration::from_secs(20),
            &AtomicBool::new(false),
        )
    });
    let lease = lease.unwrap_or_else(|e| panic!("no lease: {e}"));
    let address = u32::from(lease.address);
    assert!(
        (u32::from(Ipv4Addr::new(10, 77, 0, 50))..=u32::from(Ipv4Addr::new(10, 77, 0, 99)))
            .contains(&address),
        "{lease:?}"
    );
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.server, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(lease.router, Some(Ipv4Addr::new(10, 77, 0, 1)));
    assert_eq!(lease.dns, [Ipv4Addr::new(10, 77, 0, 1)]);
    assert_eq!(
        lease.ntp,
        [Ipv4Addr::new(10, 77, 0, 5), Ipv4Addr::new(10, 77, 0, 6)]
    );
    assert_eq!(lease.times.expire, Duration::from_secs(120));
}

#[test]
fn setup_bridges_the_interface_with_the_server_and_reports_the_one_without_carrier() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:02");
    // c1's far end stays down: no carrier on c1.
    let nowhere = Netns::new("bntn");
    veth(&client, "c1", "02:00:00:77:00:03", &nowhere, "n0");
    let _dnsmasq = Dnsmasq::start(
        &server,
        "s0",
        "10.77.0",
        &dir,
        &[
            "--dhcp-host=02:00:00:77:00:02,buildhost-a",
            "--domain=farm.test",
        ],
    );
    let paths = dir.paths();
    let report = {
        let paths = paths.clone();
        client.enter(move || {
            let report = net::setup(&buildos_init::host::Linux, &config(10), &paths);
            // At once: the step after the network's sends its first packet now.
            let show = |program: &str, args: &[&str]| {
                std::process::Command::new(program)
                    .args(args)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let br0_now = show("ip", &["-o", "link", "show", "dev", "br0"])
                + &show("bridge", &["-o", "link", "show", "dev", "c0"]);
            let hostname = nix::unistd::gethostname().expect("gethostname");
            (
                report.attempts,
                report.public,
                report.hostname,
                report.private_ready,
                report.problems,
                hostname,
                br0_now,
            )
        })
    };
    let (attempts, public, hostname, private_ready, problems, kernel_hostname, br0_now) = report;
    // br0 forwards when the step ends: a packet sent before that is lost.
    assert!(
        br0_now.contains("LOWER_UP") && !br0_now.contains("NO-CARRIER"),
        "br0 has no carrier when the network step ends: {br0_now}"
    );
    assert!(
        br0_now.contains("state forwarding"),
        "br0's port c0 does not forward when the network step ends: {br0_now}"
    );
    let public =
        public.unwrap_or_else(|| panic!("no lease; attempts {attempts:?}, problems {problems:?}"));
    assert_eq!(public.port, "c0");
    assert!(
        attempts
            .iter()
            .any(|a| a.interface == "c1" && a.outcome == Outcome::NoCarrier),
        "{attempts:?}"
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(private_ready);
    assert_eq!(hostname, "buildhost-a");
    assert_eq!(kernel_hostname.to_string_lossy(), "buildhost-a");

    let address = format!("{}/24", public.lease.address);
    let br0 = client.ip("-o addr show dev br0");
    assert!(br0.contains(&address), "br0 lacks {address}: {br0}");
    let br0_link = client.ip("link show dev br0");
    assert!(
        br0_link.contains("02:00:00:77:00:02"),
        "br0's MAC is not c0's: {br0_link}"
    );
    let c0 = client.ip("link show dev c0");
    assert!(c0.contains("master br0"), "c0 is not in br0: {c0}");
    let route = client.ip("route show default");
    assert!(
        route.contains("via 10.77.0.1 dev br0"),
        "default route: {route}"
    );
    let br1 = client.ip("-o addr show dev br1");
    assert!(br1.contains("172.30.0.1/24"), "br1: {br1}");

    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let resolv = read(paths.resolv_conf());
    assert!(resolv.contains("nameserver 10.77.0.1\n"), "{resolv}");
    assert!(resolv.contains("search farm.test\n"), "{resolv}");
    assert_eq!(
        read(paths.network()),
        format!("interface=br0\naddress={address}\nhostname=buildhost-a\n")
    );
    let interfaces = read(paths.interfaces());
    assert!(
        interfaces.contains("iface br0 inet dhcp\n\tbridge_ports c0\n"),
        "{interfaces}"
    );
    assert!(
        interfaces.contains(&format!("address {address}")),
        "{interfaces}"
    );
    assert!(interfaces.contains("iface br1 inet static"), "{interfaces}");
    assert_eq!(read(paths.etc.join("hostname")), "buildhost-a\n");
    let hosts = read(paths.etc.join("hosts"));
    assert!(
        hosts.contains(&format!(
            "{}\tbuildhost-a.farm.test buildhost-a",
            public.lease.address
        )),
        "{hosts}"
    );
}

/// The modules step starts the network's first part on a thread of its own, so that DHCP, br0
/// and br1 come up while storage and state do their work: here they are up before the network
/// step's part (`finish`) is even called, and `finish` reports what the thread did.
#[test]
fn the_network_comes_up_on_its_own_thread_before_the_network_step_finishes_it() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:0a");
    let _dnsmasq = Dnsmasq::start(&server, "s0", "10.77.0", &dir, &[]);
    let paths = dir.paths();
    let (seen, report) = client.enter(move || {
        let started = net::start(&config(10), buildos_init::hardware::AllLoaded);
        let show = |dev: &str| {
            std::process::Command::new("ip")
                .args(["-o", "-4", "addr", "show", "dev", dev])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let mut seen = String::new();
        wait_for(
            "br0's lease and br1's address, with nobody waiting for them",
            Duration::from_secs(20),
            || {
                seen = format!("{}{}", show("br0"), show("br1"));
                seen.contains("10.77.0.") && seen.contains("172.30.0.1/24")
            },
        );
        let report = started.finish(
            &buildos_init::host::Linux,
            &config(10),
            &paths,
            &buildos_init::hardware::AllLoaded,
        );
        (seen, report)
    });
    let public = report
        .public
        .unwrap_or_else(|| panic!("no lease in the report: {:?}", report.problems));
    assert!(
        seen.contains(&format!("{}/24", public.lease.address)),
        "br0 had another address before the report: {seen}"
    );
    assert!(report.private_ready);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn setup_without_an_answering_server_gives_up_within_its_bound_and_still_makes_br1() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, _server) = client_and_server("02:00:00:77:00:04");
    let paths = dir.paths();
    let began = Instant::now();
    let (attempts, public, problems, private_ready, hostname) = {
        let paths = paths.clone();
        client.enter(move || {
            let r = net::setup(&buildos_init::host::Linux, &config(3), &paths);
            (
                r.attempts,
                r.public,
                r.problems,
                r.private_ready,
                r.hostname,
            )
        })
    };
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(3 + 4),
        "setup took {took:?} with a 3 s bound"
    );
    assert!(public.is_none());
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    match &attempts[0].outcome {
        Outcome::Failed(why) => assert!(
            why.starts_with("c0: no answer from a DHCP server to "),
            "{why}"
        ),
        other => panic!("expected no answer on c0, got {other:?}"),
    }
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("network: no DHCP lease within 3 s (c0: no answer")),
        "{problems:?}"
    );
    assert!(private_ready, "{problems:?}");
    assert_eq!(hostname, "build-020000770004");
    let br1 = client.ip("-o addr show dev br1");
    assert!(br1.contains("172.30.0.1/24"), "br1: {br1}");
    assert_eq!(
        std::fs::read_to_string(paths.network()).expect("network file"),
        "interface=\naddress=\nhostname=build-020000770004\n"
    );
}

#[test]
fn keeper_renews_a_short_lease_with_the_server() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:05");
    let dnsmasq = Dnsmasq::start(
        &server,
        "s0",
        "10.77.0",
        &dir,
        &["--dhcp-option=option:T1,2", "--dhcp-option=option:T2,4"],
    );
    let dnsmasq = Arc::new(dnsmasq);
    let paths = dir.paths();
    let log = {
        let dnsmasq = Arc::clone(&dnsmasq);
        client.enter(move || {
            let report = net::setup(&buildos_init::host::Linux, &config(10), &paths);
            let lease = report.public.clone().expect("a lease at boot").lease;
            // dnsmasq's minimum lease is two minutes; its T1 and T2 options of 2 and 4 s make
            // the renewal due at the client's minimum T1, 10 s.
            assert_eq!(lease.times.renew, Duration::from_secs(10), "{lease:?}");
            let stop = Arc::new(AtomicBool::new(false));
            let keeper = {
                let stop = Arc::clone(&stop);
                let keeper = report.keeper;
                std::thread::spawn(move || keeper.run(&stop))
            };
            let acks = || dnsmasq.log().matches("DHCPACK(s0)").count();
            wait_for(
                "a second DHCPACK (the renewal)",
                Duration::from_secs(40),
                || acks() >= 2,
            );
            stop.store(true, Ordering::Relaxed);
            keeper.join().expect("keeper thread");
            dnsmasq.log()
        })
    };
    let renewal = log
        .lines()
        .filter(|l| l.contains("DHCPREQUEST(s0)"))
        .nth(1)
        .unwrap_or_else(|| panic!("no second DHCPREQUEST in\n{log}"));
    assert!(renewal.contains("10.77.0."), "{renewal}");
}

#[test]
fn private_bridge_serves_dhcp_and_tftp_and_nats_a_machine_out_through_br0() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:06");
    let _dnsmasq = Dnsmasq::start(&server, "s0", "10.77.0", &dir, &[]);
    let paths = dir.paths();
    let public = {
        let paths = paths.clone();
        client.enter(move || net::setup(&buildos_init::host::Linux, &config(10), &paths).public)
    };
    let br0_address = public.as_ref().expect("no lease for br0").lease.address;

    let ruleset = run(&[
        "ip",
        "netns",
        "exec",
        &client.name,
        "nft",
        "list",
        "ruleset",
    ]);
    assert!(ruleset.contains("table ip buildos"), "{ruleset}");
    assert!(
        ruleset.contains("ip saddr 172.30.0.0/24 oifname \"br0\" masquerade"),
        "{ruleset}"
    );
    let forwarding = run(&[
        "ip",
        "netns",
        "exec",
        &client.name,
        "cat",
        "/proc/sys/net/ipv4/ip_forward",
    ]);
    assert_eq!(forwarding.trim(), "1");

    // A build machine on br1, configured by the br1 dnsmasq through our own DHCP client.
    let machine = Netns::new("bntm");
    veth(&machine, "m0", "02:00:00:77:00:07", &client, "tap1");
    client.ip("link set tap1 master br1");
    client.ip("link set tap1 up");
    let command = {
        let paths = paths.clone();
        client.enter(move || net::dnsmasq_command(&Config::default(), &paths))
    }
    .expect("dnsmasq command");
    let conf = std::fs::read_to_string(paths.dnsmasq_conf()).expect("dnsmasq conf");
    assert!(conf.contains("interface=br1\n"), "{conf}");
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        args.contains(&"--keep-in-foreground".to_owned()),
        "{args:?}"
    );
    let mut exec = client.exec(&["dnsmasq"]);
    exec.args(command.get_args());
    let br1_log = dir.0.join("br1-dnsmasq.log");
    let br1_dnsmasq = Dnsmasq {
        child: exec
            .stdout(Stdio::null())
            .stderr(File::create(&br1_log).expect("log"))
            .spawn()
            .expect("start br1's dnsmasq"),
        log: br1_log,
    };
    let lease = machine.enter(|| {
        let mut netlink = Netlink::open().expect("netlink");
        let m0 = netlink.link("m0").expect("links").expect("m0");
        netlink.set_up(&m0).expect("m0 up");
        let dhcp = Client::new("m0", [2, 0, 0, 0x77, 0, 7]).expect("socket");
        let lease = dhcp.acquire(
            Instant::now() + Duration::from_secs(20),
            &AtomicBool::new(false),
        );
        if let Ok(lease) = &lease {
            netlink
                .add_address(&m0, lease.address, lease.prefix)
                .expect("address");
            netlink
                .replace_default_route(&m0, lease.router.expect("a router"))
                .expect("route");
        }
        lease
    });
    let lease =
        lease.unwrap_or_else(|e| panic!("no lease from br1's dnsmasq: {e}\n{}", br1_dnsmasq.log()));
    let net = Ipv4Net::parse("172.30.0.1/24").expect("net");
    let (first, last) = net::render::dhcp_range(net);
    assert!(
        (u32::from(first)..=u32::from(last)).contains(&u32::from(lease.address)),
        "{lease:?}"
    );
    assert_eq!(lease.router, Some(Ipv4Addr::new(172, 30, 0, 1)));

    // TFTP from the TFTP root, as a build machine fetches its toolchain.
    std::fs::write(paths.tftp.join("hello.txt"), "toolchain bytes\n").expect("TFTP file");
    let fetched = machine
        .exec(&[
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "tftp://172.30.0.1/hello.txt",
        ])
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout),
        "toolchain bytes\n",
        "TFTP from br1's dnsmasq failed: {}\n{}",
        String::from_utf8_lossy(&fetched.stderr),
        br1_dnsmasq.log()
    );

    // A toolchain on br0: its machines, on the LAN, read the same files from br0's address,
    // and get neither DNS nor DHCP from the host there.
    let mut br0_config = Config::default();
    let toolchain = buildos_cmdline::Toolchain {
        bridge: buildos_cmdline::Bridge::Br0,
        ..Default::default()
    };
    br0_config.toolchains.insert("default".into(), toolchain);
    assert!(net::tftp_br0_command(&Config::default(), &paths)
        .expect("no br0 toolchain")
        .is_none());
    let command = net::tftp_br0_command(&br0_config, &paths)
        .expect("br0's TFTP command")
        .expect("a br0 toolchain wants TFTP on br0");
    let mut exec = client.exec(&["dnsmasq"]);
    exec.args(command.get_args());
    let br0_log = dir.0.join("br0-dnsmasq.log");
    let br0_dnsmasq = Dnsmasq {
        child: exec
            .stdout(Stdio::null())
            .stderr(File::create(&br0_log).expect("log"))
            .spawn()
            .expect("start br0's TFTP dnsmasq"),
        log: br0_log,
    };
    let url = format!("tftp://{br0_address}/hello.txt");
    let mut fetched = None;
    wait_for("TFTP on br0's address", Duration::from_secs(20), || {
        let output = server
            .exec(&["curl", "--silent", "--max-time", "2", &url])
            .output()
            .expect("run curl");
        let ok = output.stdout == b"toolchain bytes\n";
        fetched = Some(output);
        ok
    });
    drop(fetched);
    // Only TFTP listens on br0's address: no DNS, no DHCP.
    let sockets = String::from_utf8_lossy(
        &client
            .exec(&["ss", "-H", "-lnu4"])
            .output()
            .expect("run ss")
            .stdout,
    )
    .into_owned();
    let on_br0: Vec<&str> = sockets
        .lines()
        .filter(|l| l.contains(&format!("{br0_address}:")))
        .collect();
    assert!(
        on_br0.len() == 1 && on_br0[0].contains(&format!("{br0_address}:69 ")),
        "{sockets}\n{}",
        br0_dnsmasq.log()
    );

    // The server namespace has no route to 172.30.0.0/24: only NAT brings the answer back.
    let ping = machine
        .exec(&["ping", "-c", "1", "-W", "5", "10.77.0.1"])
        .output()
        .expect("run ping");
    assert!(
        ping.status.success(),
        "ping from br1 to beyond br0 failed: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
}

#[test]
fn keeper_goes_back_to_discovery_when_the_server_refuses_the_renewal() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:08");
    let first = Dnsmasq::start(
        &server,
        "s0",
        "10.77.0",
        &dir,
        &["--dhcp-option=option:T1,2", "--dhcp-option=option:T2,4"],
    );
    let paths = dir.paths();
    let (report, old) = {
        let paths = paths.clone();
        client.enter(move || {
            let report = net::setup(&buildos_init::host::Linux, &config(10), &paths);
            let old = report
                .public
                .clone()
                .expect("a lease at boot")
                .lease
                .address;
            (report, old)
        })
    };
    assert_eq!(old.octets()[..3], [10, 77, 0], "{old}");
    // The network moves: the old server goes, a new one on another subnet refuses the old
    // address when the host rebinds.
    drop(first);
    server.ip("addr del 10.77.0.1/24 dev s0");
    server.ip("addr add 10.78.0.1/24 dev s0");
    let _second = Dnsmasq::start(&server, "s0", "10.78.0", &dir, &["--dhcp-authoritative"]);
    let address = client.enter(move || {
        let stop = Arc::new(AtomicBool::new(false));
        let keeper = {
            let stop = Arc::clone(&stop);
            let keeper = report.keeper;
            std::thread::spawn(move || keeper.run(&stop))
        };
        let br0_address = || {
            let mut netlink = Netlink::open().expect("netlink");
            let br0 = netlink.link("br0").expect("links").expect("br0");
            netlink.addresses(&br0).expect("addresses")
        };
        wait_for(
            "br0 to get an address on the new subnet",
            Duration::from_secs(60),
            || {
                br0_address()
                    .iter()
                    .any(|(a, _)| a.octets()[..3] == [10, 78, 0])
            },
        );
        stop.store(true, Ordering::Relaxed);
        keeper.join().expect("keeper thread");
        br0_address()
    });
    assert_eq!(
        address.len(),
        1,
        "the old address is still there: {address:?}"
    );
    let (new, prefix) = address[0];
    assert_eq!(
        std::fs::read_to_string(paths.network()).expect("network file"),
        format!("interface=br0\naddress={new}/{prefix}\nhostname=build-020000770008\n")
    );
}

#[test]
fn keeper_makes_br0_when_a_server_answers_after_boot_gave_up() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:09");
    let paths = dir.paths();
    let report = {
        let paths = paths.clone();
        client.enter(move || net::setup(&buildos_init::host::Linux, &config(2), &paths))
    };
    assert!(report.public.is_none(), "a lease without a server?");
    let _dnsmasq = Dnsmasq::start(&server, "s0", "10.77.0", &dir, &[]);
    let keeper = report.keeper;
    let address = client.enter(move || {
        let stop = Arc::new(AtomicBool::new(false));
        let running = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || keeper.run(&stop))
        };
        let br0_address = || {
            let mut netlink = Netlink::open().expect("netlink");
            match netlink.link("br0").expect("links") {
                Some(br0) => netlink.addresses(&br0).expect("addresses"),
                None => Vec::new(),
            }
        };
        wait_for(
            "the keeper to make br0 with a lease",
            Duration::from_secs(40),
            || !br0_address().is_empty(),
        );
        stop.store(true, Ordering::Relaxed);
        running.join().expect("keeper thread");
        br0_address()
    });
    let (address, prefix) = address[0];
    assert_eq!(address.octets()[..3], [10, 77, 0], "{address}");
    let c0 = client.ip("link show dev c0");
    assert!(c0.contains("master br0"), "c0 is not in br0: {c0}");
    assert_eq!(
        std::fs::read_to_string(paths.network()).expect("network file"),
        format!("interface=br0\naddress={address}/{prefix}\nhostname=build-020000770009\n")
    );
    let resolv = std::fs::read_to_string(paths.resolv_conf()).expect("resolv.conf");
    assert!(resolv.contains("nameserver 10.77.0.1\n"), "{resolv}");
}

/// A DHCP server of the test's own on UDP port 67 of `s0`, answering as `answer` says: for
/// replies a real server would not send (forged, malformed, hostile values). It records every
/// request it gets, with when it got it, and stops on drop.
struct ForgingServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    requests: Arc<Mutex<Vec<(Instant, MessageType, Ipv4Addr)>>>,
}

/// What a [`ForgingServer`] sends for a request: the datagrams, in order.
type Answer = dyn Fn(&Message) -> Vec<Vec<u8>> + Send;

impl ForgingServer {
    fn start(ns: &Netns, answer: Box<Answer>) -> ForgingServer {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (ready, bound) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            let requests = Arc::clone(&requests);
            ns.spawn(move || {
                let fd = socket::socket(
                    AddressFamily::Inet,
                    SockType::Datagram,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .expect("UDP socket");
                socket::setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
                socket::setsockopt(&fd, sockopt::Broadcast, &true).expect("SO_BROADCAST");
                socket::setsockopt(&fd, sockopt::BindToDevice, &"s0".into())
                    .expect("SO_BINDTODEVICE");
                socket::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &SockaddrIn::new(0, 0, 0, 0, 67),
                )
                .expect("bind port 67");
                let socket = UdpSocket::from(fd);
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("read timeout");
                let _ = ready.send(());
                let mut buffer = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((length, _)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    let Ok(request) = Message::from_bytes(&buffer[..length]) else {
                        continue;
                    };
                    let Some(kind) = request.opts().msg_type() else {
                        continue;
                    };
                    requests.lock().expect("requests").push((
                        Instant::now(),
                        kind,
                        request.ciaddr(),
                    ));
                    for datagram in answer(&request) {
                        socket
                            .send_to(&datagram, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
                            .expect("send a reply");
                    }
                }
            })
        };
        bound
            .recv_timeout(Duration::from_secs(10))
            .expect("the forging server binds port 67");
        ForgingServer {
            stop,
            thread: Some(thread),
            requests,
        }
    }

    fn requests(&self) -> Vec<(Instant, MessageType, Ipv4Addr)> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for ForgingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reply a server at 10.77.0.1 gives `request`: an OFFER of 10.77.0.50/24 for a DISCOVER,
/// an ACK for a REQUEST, with router, DNS server and server identifier 10.77.0.1, then
/// `options`.
fn reply_to(request: &Message, options: &[DhcpOption]) -> Message {
    let server = Ipv4Addr::new(10, 77, 0, 1);
    let mut reply = Message::new_with_id(
        request.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 77, 0, 50),
        server,
        Ipv4Addr::UNSPECIFIED,
        request.chaddr(),
    );
    reply.set_opcode(Opcode::BootReply);
    let kind = match request.opts().msg_type() {
        Some(MessageType::Discover) => MessageType::Offer,
        _ => MessageType::Ack,
    };
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    opts.insert(DhcpOption::Router(vec![server]));
    opts.insert(DhcpOption::DomainNameServer(vec![server]));
    opts.insert(DhcpOption::AddressLeaseTime(120));
    for option in options {
        opts.insert(option.clone());
    }
    reply
}

fn bytes(message: &Message) -> Vec<u8> {
    message.to_vec().expect("encode a DHCP message")
}

#[test]
fn dhcp_client_drops_a_forged_reply_with_a_long_hardware_length_and_takes_the_real_one() {
    if !need_root() {
        return;
    }
    let (client, server) = client_and_server("02:00:00:77:00:0a");
    // Anyone on the LAN sees the transaction id of the broadcast DISCOVER; this one answers
    // every request first with hlen 200, which dhcproto's chaddr() slices by, then truthfully.
    let forger = ForgingServer::start(
        &server,
        Box::new(|request| {
            let good = bytes(&reply_to(request, &[]));
            let mut forged = good.clone();
            forged[2] = 200;
            let mut other_type = good.clone();
            other_type[1] = 6;
            vec![forged, other_type, good]
        }),
    );
    let (lease, dropped) = client.enter(|| {
        let mut netlink = Netlink::open().expect("netlink");
        let c0 = netlink.link("c0").expect("links").expect("c0 is there");
        netlink.set_up(&c0).expect("c0 up");
        let dhcp = Client::new("c0", [2, 0, 0, 0x77, 0, 0x0a]).expect("DHCP socket");
        let lease = dhcp.acquire(
            Instant::now() + Duration::from_secs(20),
            &AtomicBool::new(false),
        );
        (lease, dhcp.dropped())
    });
    let lease = lease.unwrap_or_else(|e| panic!("no lease: {e}"));
    assert_eq!(lease.address, Ipv4Addr::new(10, 77, 0, 50));
    assert_eq!(lease.server, Ipv4Addr::new(10, 77, 0, 1));
    // Two forged datagrams for the DISCOVER and two for the REQUEST; the lease came from the
    // forging server's true answers.
    assert!(dropped >= 4, "dropped {dropped}");
    let kinds: Vec<MessageType> = forger.requests().iter().map(|r| r.1).collect();
    assert_eq!(kinds.first(), Some(&MessageType::Discover), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&MessageType::Request), "{kinds:?}");
}

#[test]
fn setup_leaves_out_dhcp_names_that_are_not_names_and_says_so() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:0b");
    // A newline in the domain once added an /etc/hosts line for a toolchain server, and the
    // monitor's resolver reads /etc/hosts first.
    let _forger = ForgingServer::start(
        &server,
        Box::new(|request| {
            vec![bytes(&reply_to(
                request,
                &[
                    DhcpOption::DomainName("farm.test\n10.77.0.66\ttoolchains.example.org".into()),
                    DhcpOption::Hostname("evil\nhost".into()),
                    DhcpOption::DomainNameServer(vec![
                        Ipv4Addr::new(10, 77, 0, 1),
                        Ipv4Addr::UNSPECIFIED,
                        Ipv4Addr::BROADCAST,
                    ]),
                ],
            ))]
        }),
    );
    let paths = dir.paths();
    let (public, hostname, problems) = {
        let paths = paths.clone();
        client.enter(move || {
            let report = net::setup(&buildos_init::host::Linux, &config(10), &paths);
            (report.public, report.hostname, report.problems)
        })
    };
    let public = public.unwrap_or_else(|| panic!("no lease; problems {problems:?}"));
    assert_eq!(public.lease.domain, None);
    assert_eq!(public.lease.hostname, None);
    assert_eq!(public.lease.dns, [Ipv4Addr::new(10, 77, 0, 1)]);
    assert_eq!(hostname, "build-02000077000b");
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let hosts = read(paths.etc.join("hosts"));
    assert!(!hosts.contains("toolchains.example.org"), "{hosts}");
    assert!(
        hosts.ends_with("10.77.0.50\tbuild-02000077000b # buildos\n"),
        "{hosts}"
    );
    assert_eq!(
        read(paths.resolv_conf()),
        "# buildos: from the DHCP lease of br0 (server 10.77.0.1)\nnameserver 10.77.0.1\n"
    );
    assert_eq!(
        problems,
        [
            "network: DHCP server 10.77.0.1 sent option 6 (domain name server) 0.0.0.0: \
             expected a unicast IPv4 address; left out",
            "network: DHCP server 10.77.0.1 sent option 6 (domain name server) \
             255.255.255.255: expected a unicast IPv4 address; left out",
            "network: DHCP server 10.77.0.1 sent option 12 (host name) \"evil\\nhost\": \
             expected a host name of dot-separated labels of letters, digits and -, each 1 to \
             63 long and not starting or ending with -, at most 64 in all; left out",
            "network: DHCP server 10.77.0.1 sent option 15 (domain name) \
             \"farm.test\\n10.77.0.66\\ttoolchains.example.org\": expected a domain name of \
             dot-separated labels of letters, digits and -, each 1 to 63 long and not starting \
             or ending with -, at most 253 in all; left out",
        ]
    );
}

#[test]
fn keeper_with_a_lease_time_of_zero_waits_before_renewing_and_keeps_br0() {
    if !need_root() {
        return;
    }
    let dir = TempDir::new();
    let (client, server) = client_and_server("02:00:00:77:00:0c");
    let forger = Arc::new(ForgingServer::start(
        &server,
        Box::new(|request| {
            vec![bytes(&reply_to(
                request,
                &[DhcpOption::AddressLeaseTime(0)],
            ))]
        }),
    ));
    let paths = dir.paths();
    let (acquired, times, first_renewal, rediscovered) = {
        let forger = Arc::clone(&forger);
        client.enter(move || {
            let report = net::setup(&buildos_init::host::Linux, &config(10), &paths);
            let lease = report.public.clone().expect("a lease at boot").lease;
            let at_boot = forger.requests().len();
            let stop = Arc::new(AtomicBool::new(false));
            let keeper = {
                let stop = Arc::clone(&stop);
                let keeper = report.keeper;
                std::thread::spawn(move || keeper.run(&stop))
            };
            // A keeper that spins asks again at once; one that keeps the lease asks at T1.
            wait_for("a request from the keeper", Duration::from_secs(40), || {
                forger.requests().len() > at_boot
            });
            let first_renewal = forger.requests()[at_boot];
            stop.store(true, Ordering::Relaxed);
            keeper.join().expect("keeper thread");
            let rediscovered = forger.requests()[at_boot..]
                .iter()
                .any(|(_, kind, _)| *kind == MessageType::Discover);
            (lease.acquired, lease.times, first_renewal, rediscovered)
        })
    };
    let (at, kind, ciaddr) = first_renewal;
    let after = at.saturating_duration_since(acquired);
    assert!(
        after >= Duration::from_secs(10),
        "the keeper asked again {after:?} after the lease of 0 s ({kind:?} from {ciaddr})"
    );
    assert!(
        !rediscovered,
        "the keeper lost the lease and went back to discovery"
    );
    assert_eq!(kind, MessageType::Request);
    assert_eq!(ciaddr, Ipv4Addr::new(10, 77, 0, 50), "not a renewal");
    assert_eq!(times.expire, Duration::from_secs(20), "{times:?}");
    assert_eq!(times.renew, Duration::from_secs(10), "{times:?}");
    let br0 = client.ip("-o addr show dev br0");
    assert!(br0.contains("10.77.0.50/24"), "br0: {br0}");
}

#[test]
fn link_events_announce_a_carrier_as_it_comes() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ev");
    ns.ip("link add ev0 type veth peer name ev1");
    // Up, but no carrier while its peer is down.
    ns.ip("link set ev0 up");
    let (listening, listens) = std::sync::mpsc::channel();
    let waiter = ns.spawn(move || {
        let events = buildos_init::net::netlink::LinkEvents::open().unwrap();
        let mut netlink = Netlink::open().unwrap();
        let ev0 = netlink.link("ev0").unwrap().unwrap();
        assert!(!ev0.carrier);
        assert!(!ev0.oper_up, "ev0 is operationally up without carrier");
        assert!(
            !events.wait(Duration::from_millis(50)),
            "an announcement while nothing changed"
        );
        listening.send(()).unwrap();
        let started = Instant::now();
        // Each announcement ends a wait; carrier comes with one of them, long before a minute.
        while !netlink.link("ev0").unwrap().unwrap().carrier {
            assert!(
                events.wait(Duration::from_secs(60)),
                "no announcement within a minute"
            );
            assert!(started.elapsed() < Duration::from_secs(30));
        }
        // What a bridge waits for before it enables a port: the operational state, which the
        // kernel's link watch sets after carrier.
        while !netlink.link("ev0").unwrap().unwrap().oper_up {
            assert!(
                events.wait(Duration::from_secs(60)),
                "no announcement of ev0 operationally up within a minute"
            );
            assert!(started.elapsed() < Duration::from_secs(30));
        }
    });
    listens.recv().unwrap();
    ns.ip("link set ev1 up");
    waiter.join().unwrap();
}
