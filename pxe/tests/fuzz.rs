//! Property test of the inventory loader: the example farm inventory, mutated (TOML fragments
//! inserted, ranges deleted or copied), through `load` and into the files it writes.
//! `PROPTEST_CASES` sets how many cases a run tries.

use buildos_pxe::{dnsmasq_config, grub_config, ipxe_script, load, pxelinux_config, Firmware};
use proptest::prelude::*;
use proptest::sample::{select, Index};

const FARM: &str = include_str!("../../docs/farm.example.toml");
const BUILDID: &str = "ff7ff5119ff90064ad62b0af80069d170f51395ef88cfc64b7f4e1e2c3a4b5c6";

/// TOML and command line text that reaches the loader's corners: quotes and escapes, tables,
/// separators, boot loader syntax, control characters.
const FRAGMENTS: &[&str] = &[
    "\n",
    "\r\n",
    "\"",
    "\\n",
    "\\u000a",
    "\\u001b",
    "\\t",
    "'",
    "=",
    " ",
    "  ",
    "#",
    "${",
    "${mac}",
    "[",
    "]",
    ",",
    ".",
    "-",
    "\nname = \"",
    "\nname = \"a\\nkernel http://x/y\"\n",
    "\nhostname = \"",
    "\nkernel_args = [\"",
    "\nhttp_url = \"http://10.0.0.1/t\\r\\nshell\"\n",
    "\nfirmware = \"uefi\"\n",
    "\nfirmware = \"uefi-secure-boot\"\n",
    "\nfirmware = \"",
    "\\\\",
    "'\\''",
    "\n[hosts.\"de:ad:be:ef:b8:db\"]\n",
    "\n[hosts.\"de:ad:be:ef:b8:db\".toolchain.gcc]\n",
    "\n[defaults.toolchain.x]\n",
    "buildos.",
    "toolchain_url = \"https://h/t\"\n",
    "nice = 3\n",
    "99",
    "-1",
    "true",
    "é",
    "\u{a0}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(Index, &'static str),
    Delete(Index, usize),
    Copy(Index, Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), select(FRAGMENTS)).prop_map(|(at, text)| Mutation::Insert(at, text)),
        (any::<Index>(), 1..24usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<Index>(), any::<Index>(), 1..120usize)
            .prop_map(|(from, to, n)| Mutation::Copy(from, to, n)),
    ]
}

/// A position on a character boundary of `text`.
fn boundary(text: &str, index: &Index) -> usize {
    let mut at = index.index(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &mut String, mutation: &Mutation) {
    match mutation {
        Mutation::Insert(index, fragment) => {
            let at = boundary(text, index);
            text.insert_str(at, fragment);
        }
        Mutation::Delete(index, n) => {
            let at = boundary(text, index);
            let end = text[at..]
                .char_indices()
                .nth(*n)
                .map_or(text.len(), |(i, _)| at + i);
            text.replace_range(at..end, "");
        }
        Mutation::Copy(from, to, n) => {
            let from = boundary(text, from);
            let end = text[from..]
                .char_indices()
                .nth(*n)
                .map_or(text.len(), |(i, _)| from + i);
            let part = text[from..end].to_string();
            let to = boundary(text, to);
            text.insert_str(to, &part);
        }
    }
}

fn mutated_farm() -> impl Strategy<Value = String> {
    prop::collection::vec(mutation(), 0..8).prop_map(|mutations| {
        let mut text = FARM.to_string();
        for mutation in &mutations {
            apply(&mut text, mutation);
        }
        text
    })
}

proptest! {
    #[test]
    fn fuzz_inventory(text in mutated_farm()) {
        match load(&text) {
            Err(errors) => {
                // One line per error, after the heading: nothing from the inventory breaks one.
                let shown = errors.to_string();
                prop_assert_eq!(shown.lines().count(), errors.0.len() + 1, "{}", shown);
                prop_assert!(!errors.0.is_empty());
            }
            Ok(farm) => {
                for boot in farm.hosts.iter().chain([&farm.default]) {
                    // Every command line written is one init parses without a diagnostic,
                    // to the configuration pxe checked.
                    let parsed = buildos_cmdline::parse(&boot.cmdline);
                    prop_assert_eq!(&parsed.diagnostics, &[], "{}", boot.cmdline);
                    prop_assert_eq!(&parsed.config, &boot.config);
                    // The files keep their shape: inventory text adds no line and no control
                    // character, and does not reach iPXE's settings syntax outside values.
                    let pxelinux = pxelinux_config(boot, &farm.boot, BUILDID);
                    prop_assert_eq!(pxelinux.lines().count(), 11, "{}", pxelinux);
                    let ipxe = ipxe_script(boot, &farm.boot, BUILDID);
                    prop_assert_eq!(ipxe.lines().count(), 7, "{}", ipxe);
                    let grub = grub_config(boot, BUILDID);
                    prop_assert_eq!(grub.lines().count(), 7, "{}", grub);
                    for file in [&pxelinux, &ipxe, &grub] {
                        prop_assert!(
                            !file.contains(|c: char| c.is_control() && c != '\n'),
                            "{:?}",
                            file
                        );
                    }
                    prop_assert!(!pxelinux.contains("${"), "{}", pxelinux);
                    // The script's one setting is the platform it asks iPXE for.
                    prop_assert_eq!(ipxe.matches("${").count(), 1, "{}", ipxe);
                    prop_assert!(ipxe.contains("${platform}"), "{}", ipxe);
                    // Each GRUB argument is one single-quoted word, outside of which inventory
                    // text never reaches; the kernel gets the line init checked.
                    let linux = grub.lines().find(|l| l.starts_with("linux ")).unwrap_or("");
                    let words = linux.split(' ').skip(2).collect::<Vec<_>>().join(" ");
                    let unquoted: String = words.split('\'').step_by(2).collect();
                    prop_assert!(unquoted.chars().all(|c| c == ' '), "{}", linux);
                    prop_assert!(!boot.cmdline.contains(['\'', '\\']), "{}", boot.cmdline);
                    prop_assert!(Firmware::ALL.contains(&boot.firmware));
                }
                // The DHCP configuration: every host by its MAC address, nothing else from the
                // inventory on a line of its own.
                let dnsmasq = dnsmasq_config(&farm, std::path::Path::new("/srv/tftp"));
                for host in &farm.hosts {
                    let mac = host.mac.unwrap().to_string();
                    let tagged = format!("dhcp-mac=set:buildos-{},{mac}", host.firmware);
                    prop_assert!(dnsmasq.contains(&tagged), "{}", dnsmasq);
                }
                for line in dnsmasq.lines() {
                    prop_assert!(
                        line.is_empty()
                            || line.starts_with('#')
                            || line.starts_with("dhcp-")
                            || line.starts_with("enable-tftp")
                            || line.starts_with("tftp-root="),
                        "{}",
                        line
                    );
                }
            }
        }
    }
}
