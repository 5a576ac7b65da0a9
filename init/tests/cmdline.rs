//! init's reading of the kernel command line, on files of the bytes a boot loader can pass.

use buildos_init::read_cmdline;

#[test]
fn cmdline_byte_that_is_not_utf8_costs_only_its_parameter() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("cmdline");
    std::fs::write(
        &path,
        b"BOOT_IMAGE=/buildos/buildos-image buildos.cpu_reserved=3 \
          buildos.hostname=build\xe9-01 buildos.dhcp_wait=7\n",
    )
    .expect("write the command line");
    let cmdline = read_cmdline(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cmdline.parsed.config.cpu_reserved, 3);
    assert_eq!(cmdline.parsed.config.dhcp_wait, 7);
    assert_eq!(cmdline.parsed.config.hostname, None);
    assert_eq!(
        cmdline.problems,
        [
            "invalid parameter buildos.hostname=build\\xe9-01: expected UTF-8 text (the bytes \
          shown as \\xNN are not); the parameter is ignored"
        ]
    );
    assert_eq!(
        cmdline.shown,
        "BOOT_IMAGE=/buildos/buildos-image buildos.cpu_reserved=3 \
         buildos.hostname=build\u{fffd}-01 buildos.dhcp_wait=7"
    );
}

#[test]
fn cmdline_shown_on_the_console_stays_one_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("cmdline");
    std::fs::write(&path, "quiet \"x=a\nbuildos: ready\"\n").expect("write the command line");
    let cmdline = read_cmdline(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cmdline.shown, "quiet \"x=a\\nbuildos: ready\"");
}
