//! The host contract, checked on a real image: the minimal image `cargo xtask test` built (as
//! `cargo xtask image --profile minimal` builds it) carries every path init and the monitor
//! open at boot, as the contract names them.

use std::collections::BTreeMap;

use buildos_contract as contract;
use buildos_image_builder::cpio::{self, Kind};
use xtask::test::IMAGE_DIR_VAR;

#[test]
fn minimal_image_carries_every_path_init_and_the_monitor_open_at_boot() {
    let Some(image) = buildos_testpeers::tier::dir(
        IMAGE_DIR_VAR,
        "the minimal image `cargo xtask test` builds (buildos-initrd, buildos-buildid)",
    ) else {
        return;
    };
    let bytes = std::fs::read(image.join("buildos-initrd")).unwrap();
    // Later segments unpack over earlier ones, as the kernel does it.
    let entries: BTreeMap<String, (cpio::Entry, Vec<u8>)> = cpio::read(&bytes)
        .unwrap()
        .into_iter()
        .map(|(entry, data)| (format!("/{}", entry.path), (entry, data)))
        .collect();
    let get = |path: &str| {
        entries.get(path).unwrap_or_else(|| {
            panic!(
                "{path} is not in the minimal image; it holds: {:?}",
                entries.keys().collect::<Vec<_>>()
            )
        })
    };

    for path in contract::image::opened_at_boot() {
        let (entry, data) = get(path);
        match entry.kind {
            Kind::File => assert!(!data.is_empty(), "{path} is empty"),
            Kind::Symlink => {
                let target = entry.link_target.as_deref().unwrap_or_default();
                let resolved = if target.starts_with('/') {
                    target.to_owned()
                } else {
                    let parent = path.rsplit_once('/').map_or("", |(dir, _)| dir);
                    format!("{parent}/{target}")
                };
                assert_eq!(get(&resolved).0.kind, Kind::File, "{path} -> {target}");
            }
            _ => panic!("{path} is neither a file nor a symlink: {entry}"),
        }
    }
    let monitor = contract::services::named("monitor").unwrap();
    assert_eq!(get(monitor.program).0.mode & 0o111, 0o111);
    assert_eq!(get(contract::programs::INIT).0.mode & 0o777, 0o755);

    let (_, buildid) = get(contract::etc::BUILDID);
    let buildid = String::from_utf8(buildid.clone()).unwrap();
    let built = std::fs::read_to_string(image.join("buildos-buildid")).unwrap();
    assert_eq!(buildid, contract::buildid::render(built.trim()));
    assert!(contract::buildid::is_valid(buildid.trim()), "{buildid:?}");

    let (_, boot) = get(contract::etc::MODULES_BOOT);
    assert_eq!(
        contract::etc::parse_modules_boot(std::str::from_utf8(boot).unwrap()),
        buildos_rootfs::load("minimal").unwrap().modules.boot
    );

    // The one kernel release the image carries modules for.
    let prefix = format!("{}/", contract::modules::DIR);
    let mut releases: Vec<&str> = entries
        .keys()
        .filter_map(|path| path.strip_prefix(&prefix)?.split('/').next())
        .collect();
    releases.dedup();
    assert_eq!(releases.len(), 1, "{releases:?}");
    let modules = contract::modules::release_dir(releases[0]);
    for table in contract::modules::READ_AT_BOOT {
        get(&format!("{modules}/{table}"));
    }
    assert!(
        !entries.contains_key("/etc/buildos/modules"),
        "the closure list nothing reads is still written"
    );
}
