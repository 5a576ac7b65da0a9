//! The text of every file the network set-up writes, and the rules that choose names and
//! ranges: pure functions, tested here.

use std::net::Ipv4Addr;

use buildos_cmdline::Ipv4Net;

use super::dhcp::Lease;

/// `build-` and all twelve lower-case hex digits of the MAC address, like
/// `build-525400123456`. The manual's example shows ten `x`; all twelve keep two hosts of the
/// same vendor from ever sharing a name.
pub fn hostname_from_mac(mac: [u8; 6]) -> String {
    let digits: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("build-{digits}")
}

/// Whether a host name from DHCP can be used as is: dot-separated labels of letters, digits
/// and `-`, each 1 to 63 long and not starting or ending with `-`, at most 64 in all (what
/// sethostname and `buildos.hostname` accept).
pub fn hostname_ok(name: &str) -> bool {
    name.len() <= 64 && super::reply::domain_ok(name)
}

/// The addresses dnsmasq hands out on br1: the half of the subnet's host addresses that does
/// not hold br1's own address (the upper half for the default 172.30.0.1/24, so
/// 172.30.0.128 to 172.30.0.254), leaving the other half for machines with fixed addresses.
pub fn dhcp_range(net: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let network = u32::from(net.network());
    let broadcast = u32::from(net.broadcast());
    let half = (broadcast - network).div_ceil(2);
    let own = u32::from(net.addr());
    if own >= network + half {
        (
            Ipv4Addr::from(network + 1),
            Ipv4Addr::from(network + half - 1),
        )
    } else {
        (
            Ipv4Addr::from(network + half),
            Ipv4Addr::from(broadcast - 1),
        )
    }
}

/// `a.b.c.d/len` of the network (host bits cleared).
pub fn subnet_text(net: Ipv4Net) -> String {
    format!("{}/{}", net.network(), net.prefix())
}

/// The ruleset `nft -f -` loads: its own table, emptied and refilled on every load, that
/// masquerades br1's subnet out through br0 and lets only answers come back into br1.
pub fn nft_ruleset(br1: Ipv4Net) -> String {
    let subnet = subnet_text(br1);
    format!(
        "# buildos: NAT from the private bridge br1 out through the public bridge br0\n\
         table ip buildos\n\
         delete table ip buildos\n\
         table ip buildos {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} oifname \"br0\" masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"br0\" oifname \"br1\" ct state established,related accept\n\
         \t\tiifname \"br0\" oifname \"br1\" drop\n\
         \t}}\n\
         }}\n"
    )
}

/// dnsmasq's configuration for br1: DHCP from [`dhcp_range`], TFTP from `tftp_root`, DNS
/// forwarded to the servers in /etc/resolv.conf, on br1 only.
pub fn dnsmasq_conf(br1: Ipv4Net, tftp_root: &str, leases: &str, user: &str) -> String {
    let (first, last) = dhcp_range(br1);
    format!(
        "# buildos: DHCP, TFTP and DNS for build machines on the private bridge br1\n\
         interface=br1\n\
         bind-interfaces\n\
         except-interface=lo\n\
         listen-address={address}\n\
         user={user}\n\
         pid-file=\n\
         log-facility=-\n\
         dhcp-range={first},{last},{netmask},12h\n\
         dhcp-option=option:router,{address}\n\
         dhcp-option=option:dns-server,{address}\n\
         dhcp-authoritative\n\
         dhcp-leasefile={leases}\n\
         enable-tftp\n\
         tftp-root={tftp_root}\n\
         # a machine that network boots (its firmware says PXEClient) reads this file of the\n\
         # default toolchain over TFTP: a boot program or an iPXE script, when it has one\n\
         dhcp-vendorclass=set:pxe,PXEClient\n\
         dhcp-boot=tag:pxe,{PXE_BOOT_FILE}\n",
        address = br1.addr(),
        netmask = br1.netmask(),
    )
}

/// The file network-booting machines on br1 are told to read, relative to the TFTP root.
pub const PXE_BOOT_FILE: &str = "toolchains/default/pxe.ipxe";

/// dnsmasq's configuration for TFTP alone on the public bridge br0, for toolchains whose
/// machines are on br0 (`buildos.bridge=br0`): no DNS (`port=0`), no DHCP (the LAN's server
/// gives br0's machines their addresses), read-only TFTP from `tftp_root` on br0's address,
/// whichever it is now or gets later (`bind-dynamic`).
pub fn tftp_br0_conf(tftp_root: &str, user: &str) -> String {
    format!(
        "# buildos: TFTP, read-only, for build machines on the public bridge br0\n\
         interface=br0\n\
         bind-dynamic\n\
         except-interface=lo\n\
         port=0\n\
         user={user}\n\
         pid-file=\n\
         log-facility=-\n\
         enable-tftp\n\
         tftp-root={tftp_root}\n"
    )
}

/// /etc/resolv.conf from a lease.
pub fn resolv_conf(lease: &Lease) -> String {
    let mut text = format!(
        "# buildos: from the DHCP lease of br0 (server {})\n",
        lease.server
    );
    if let Some(domain) = &lease.domain {
        text.push_str(&format!("search {domain}\n"));
    }
    for server in &lease.dns {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text
}

/// The public side as the boot left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Public {
    /// The Ethernet interface in br0.
    pub port: String,
    pub mac: [u8; 6],
    pub lease: Lease,
}

/// /etc/network/interfaces: what the host configured, for operators to read (nothing reads it
/// back).
pub fn interfaces(public: Option<&Public>, br1: Ipv4Net) -> String {
    let mut text = String::from(
        "# buildos: the network as buildos-init configured it at boot, for reading;\n\
         # nothing reads this file back. See /run/buildos/network.\n\
         \n\
         auto lo\n\
         iface lo inet loopback\n\n",
    );
    match public {
        Some(public) => {
            let lease = &public.lease;
            text.push_str(&format!(
                "auto {port}\n\
                 iface {port} inet manual\n\
                 \n\
                 # The public bridge: {port} and its MAC address, configured by DHCP.\n\
                 auto br0\n\
                 iface br0 inet dhcp\n\
                 \tbridge_ports {port}\n\
                 \tbridge_stp off\n\
                 \tbridge_fd 0\n\
                 \thwaddress {mac}\n\
                 \t# leased from {server}: address {address}/{prefix}",
                port = public.port,
                mac = super::netlink::mac_text(public.mac),
                server = lease.server,
                address = lease.address,
                prefix = lease.prefix,
            ));
            if let Some(router) = lease.router {
                text.push_str(&format!(", gateway {router}"));
            }
            if !lease.dns.is_empty() {
                let dns: Vec<String> = lease.dns.iter().map(Ipv4Addr::to_string).collect();
                text.push_str(&format!(", dns {}", dns.join(" ")));
            }
            text.push_str(&format!(", lease {} s\n\n", lease.times.expire.as_secs()));
        }
        None => text.push_str(
            "# The public bridge br0: not configured, no Ethernet interface got a DHCP lease\n\
             # at boot; buildos-init keeps trying.\n\n",
        ),
    }
    text.push_str(&format!(
        "# The private bridge for build machines, NATed to br0, with dnsmasq for DHCP and TFTP.\n\
         auto br1\n\
         iface br1 inet static\n\
         \tbridge_ports none\n\
         \tbridge_stp off\n\
         \tbridge_fd 0\n\
         \taddress {br1}\n"
    ));
    text
}

/// /run/buildos/network: `interface=`, `address=` and `hostname=` lines for the public side;
/// empty values when there is no lease.
pub fn network_file(public: Option<&Public>, hostname: &str) -> String {
    let (interface, address) = match public {
        Some(public) => (
            "br0".to_owned(),
            format!("{}/{}", public.lease.address, public.lease.prefix),
        ),
        None => (String::new(), String::new()),
    };
    format!("interface={interface}\naddress={address}\nhostname={hostname}\n")
}

/// /etc/hosts: the existing lines, without a previous buildos line, then this host's line
/// (its leased address, or 127.0.1.1 as Debian does without one).
pub fn hosts(
    existing: &str,
    hostname: &str,
    address: Option<Ipv4Addr>,
    domain: Option<&str>,
) -> String {
    const MARK: &str = "# buildos";
    let mut text = String::new();
    let mut localhost = false;
    for line in existing.lines() {
        if line.ends_with(MARK) {
            continue;
        }
        localhost |= line
            .split_whitespace()
            .skip(1)
            .any(|name| name == "localhost");
        text.push_str(line);
        text.push('\n');
    }
    if !localhost {
        text.insert_str(0, "127.0.0.1\tlocalhost\n");
    }
    let address = address.unwrap_or(Ipv4Addr::new(127, 0, 1, 1));
    let names = match domain {
        Some(domain) if !hostname.contains('.') => format!("{hostname}.{domain} {hostname}"),
        _ => hostname.to_owned(),
    };
    text.push_str(&format!("{address}\t{names} {MARK}\n"));
    text
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use expect_test::expect;

    use super::super::dhcp::LeaseTimes;
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        Ipv4Net::parse(text).unwrap_or_else(|| panic!("bad test net {text}"))
    }

    fn lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            ntp: Vec::new(),
            domain: Some("example.org".into()),
            hostname: None,
            server: Ipv4Addr::new(10, 0, 2, 2),
            times: LeaseTimes::from_options(Some(86400), None, None),
            acquired: Instant::now(),
            rejected: Vec::new(),
        }
    }

    #[test]
    fn hostname_from_mac_is_build_and_twelve_hex_digits() {
        assert_eq!(
            hostname_from_mac([0xde, 0xad, 0xbe, 0xef, 0xb8, 0xda]),
            "build-deadbeefb8da"
        );
    }

    #[test]
    fn hostname_ok_accepts_names_and_refuses_junk() {
        assert!(hostname_ok("build-07.example.org"));
        for bad in ["", "a_b", "-a", "a-", "a..b", "a b", &"x".repeat(65)] {
            assert!(!hostname_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn dhcp_range_is_the_half_without_the_bridge_address() {
        let check = |text: &str, first: [u8; 4], last: [u8; 4]| {
            assert_eq!(
                dhcp_range(net(text)),
                (Ipv4Addr::from(first), Ipv4Addr::from(last)),
                "{text}"
            );
        };
        check("172.30.0.1/24", [172, 30, 0, 128], [172, 30, 0, 254]);
        check("172.30.0.200/24", [172, 30, 0, 1], [172, 30, 0, 127]);
        check("10.99.0.1/16", [10, 99, 128, 0], [10, 99, 255, 254]);
        check("192.168.7.1/30", [192, 168, 7, 2], [192, 168, 7, 2]);
    }

    #[test]
    fn nft_ruleset_masquerades_br1_subnet_out_of_br0_in_its_own_table() {
        expect![[r##"
            # buildos: NAT from the private bridge br1 out through the public bridge br0
            table ip buildos
            delete table ip buildos
            table ip buildos {
            	chain postrouting {
            		type nat hook postrouting priority srcnat; policy accept;
            		ip saddr 172.30.0.0/24 oifname "br0" masquerade
            	}
            	chain forward {
            		type filter hook forward priority filter; policy accept;
            		iifname "br0" oifname "br1" ct state established,related accept
            		iifname "br0" oifname "br1" drop
            	}
            }
        "##]]
        .assert_eq(&nft_ruleset(net("172.30.0.1/24")));
    }

    #[test]
    fn dnsmasq_conf_serves_dhcp_and_tftp_on_br1_only() {
        let text = dnsmasq_conf(
            net("172.30.0.1/24"),
            "/build/tftp",
            "/run/buildos/dnsmasq-br1.leases",
            "dnsmasq",
        );
        expect![[r#"
            # buildos: DHCP, TFTP and DNS for build machines on the private bridge br1
            interface=br1
            bind-interfaces
            except-interface=lo
            listen-address=172.30.0.1
            user=dnsmasq
            pid-file=
            log-facility=-
            dhcp-range=172.30.0.128,172.30.0.254,255.255.255.0,12h
            dhcp-option=option:router,172.30.0.1
            dhcp-option=option:dns-server,172.30.0.1
            dhcp-authoritative
            dhcp-leasefile=/run/buildos/dnsmasq-br1.leases
            enable-tftp
            tftp-root=/build/tftp
            # a machine that network boots (its firmware says PXEClient) reads this file of the
            # default toolchain over TFTP: a boot program or an iPXE script, when it has one
            dhcp-vendorclass=set:pxe,PXEClient
            dhcp-boot=tag:pxe,toolchains/default/pxe.ipxe
        "#]]
        .assert_eq(&text);
    }

    #[test]
    fn br0_gets_tftp_and_neither_dns_nor_dhcp() {
        let text = tftp_br0_conf("/build/tftp", "dnsmasq");
        expect![[r#"
            # buildos: TFTP, read-only, for build machines on the public bridge br0
            interface=br0
            bind-dynamic
            except-interface=lo
            port=0
            user=dnsmasq
            pid-file=
            log-facility=-
            enable-tftp
            tftp-root=/build/tftp
        "#]]
        .assert_eq(&text);
        assert!(!text.contains("dhcp"), "{text}");
    }

    #[test]
    fn interfaces_shows_br0_with_its_port_and_lease_and_br1_static() {
        let public = Public {
            port: "eth0".into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            lease: lease(),
        };
        expect![[r#"
            # buildos: the network as buildos-init configured it at boot, for reading;
            # nothing reads this file back. See /run/buildos/network.

            auto lo
            iface lo inet loopback

            auto eth0
            iface eth0 inet manual

            # The public bridge: eth0 and its MAC address, configured by DHCP.
            auto br0
            iface br0 inet dhcp
            	bridge_ports eth0
            	bridge_stp off
            	bridge_fd 0
            	hwaddress 52:54:00:12:34:56
            	# leased from 10.0.2.2: address 10.0.2.15/24, gateway 10.0.2.2, dns 10.0.2.3, lease 86400 s

            # The private bridge for build machines, NATed to br0, with dnsmasq for DHCP and TFTP.
            auto br1
            iface br1 inet static
            	bridge_ports none
            	bridge_stp off
            	bridge_fd 0
            	address 172.30.0.1/24
        "#]].assert_eq(&interfaces(Some(&public), net("172.30.0.1/24")));
    }

    #[test]
    fn interfaces_without_a_lease_says_br0_is_not_configured() {
        expect![[r#"
            # buildos: the network as buildos-init configured it at boot, for reading;
            # nothing reads this file back. See /run/buildos/network.

            auto lo
            iface lo inet loopback

            # The public bridge br0: not configured, no Ethernet interface got a DHCP lease
            # at boot; buildos-init keeps trying.

            # The private bridge for build machines, NATed to br0, with dnsmasq for DHCP and TFTP.
            auto br1
            iface br1 inet static
            	bridge_ports none
            	bridge_stp off
            	bridge_fd 0
            	address 172.30.0.1/24
        "#]]
        .assert_eq(&interfaces(None, net("172.30.0.1/24")));
    }

    #[test]
    fn network_file_has_interface_address_and_hostname() {
        let public = Public {
            port: "eth0".into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            lease: lease(),
        };
        assert_eq!(
            network_file(Some(&public), "build-525400123456"),
            "interface=br0\naddress=10.0.2.15/24\nhostname=build-525400123456\n"
        );
        assert_eq!(
            network_file(None, "h"),
            "interface=\naddress=\nhostname=h\n"
        );
    }

    #[test]
    fn resolv_conf_lists_search_domain_and_servers() {
        assert_eq!(
            resolv_conf(&lease()),
            "# buildos: from the DHCP lease of br0 (server 10.0.2.2)\n\
             search example.org\nnameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn hosts_replaces_its_own_line_and_keeps_the_rest() {
        let first = hosts("127.0.0.1\tlocalhost\n", "h1", None, None);
        assert_eq!(first, "127.0.0.1\tlocalhost\n127.0.1.1\th1 # buildos\n");
        let second = hosts(
            &first,
            "h2",
            Some(Ipv4Addr::new(10, 0, 2, 15)),
            Some("example.org"),
        );
        assert_eq!(
            second,
            "127.0.0.1\tlocalhost\n10.0.2.15\th2.example.org h2 # buildos\n"
        );
        assert!(hosts("", "h", None, None).starts_with("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn lease_duration_shows_in_interfaces() {
        let mut l = lease();
        l.times.expire = Duration::from_secs(120);
        let public = Public {
            port: "eth1".into(),
            mac: [2, 0, 0, 0, 0, 1],
            lease: l,
        };
        assert!(interfaces(Some(&public), net("172.30.0.1/24")).contains("lease 120 s"));
    }
}
