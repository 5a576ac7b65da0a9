//! VM test of the debian profile: QEMU boots the image `cargo xtask test` built in a 1.5 GiB
//! guest with `buildos.debug_shell=1`, and the test runs the guest's own programs in the
//! shell on the serial console. With no toolchain URL, the monitor says on the console that it
//! is idle.

use std::path::PathBuf;
use std::time::Duration;

use buildos_testpeers::wait_until;
use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::DEBIAN_IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(300);
const COMMAND: Duration = Duration::from_secs(120);

/// The debian image `cargo xtask test` built; None, after saying why, when it is not given.
fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        DEBIAN_IMAGE_DIR_VAR,
        "the debian image `cargo xtask test` builds (buildos-image, buildos-initrd)",
    )
}

/// The output of `command` in the guest, failing the test with the console when it does not
/// finish.
fn run(vm: &mut Vm, command: &str) -> String {
    vm.shell(command, COMMAND)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .join("\n")
}

#[test]
fn debian_guest_boots_in_1536_mib_and_its_programs_answer() {
    let Some(dir) = image() else {
        return;
    };
    let mut config = VmConfig::new(&dir).append(&["buildos.debug_shell=1"]);
    // As `cargo xtask qemu` boots the debian image.
    config.memory_mib = xtask::qemu::DEBIAN_MEMORY_MIB;
    // A second NIC whose driver loads firmware from the root: QEMU's i82551 is an e100 that
    // asks for e100/d102e_ucode.bin (firmware-misc-nonfree) when its interface comes up.
    config
        .extra
        .extend(["-netdev", "user,id=fw0", "-device", "i82551,netdev=fw0"].map(str::to_owned));
    let disks = TempDir::new("buildos-debian-disks").unwrap();
    let config = config
        .host_disks(&disks.0)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let ready = vm
        .wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ready.ends_with(", 0 problem(s)"), "{}", vm.console());
    // The modules loaded while storage and the network started, the build machines' at idle
    // priority, and ready waited for them.
    let console = vm.console();
    let at = |text: &str| {
        console
            .find(text)
            .unwrap_or_else(|| panic!("no {text:?} on the console: {console}"))
    };
    assert!(at("loading modules beside storage and the network") < at("phase storage "));
    assert!(at("late modules: loaded ") < at("phase devices ok"));
    assert!(at("phase devices ok") < at("buildos-init: ready at"));
    // The root is the layered one, switched into before anything read the root filesystem.
    assert!(
        at("buildos-init: layers: root on an overlay of modules.squashfs (")
            < at("phase layers ok")
    );
    assert!(at("phase layers ok") < at("phase cmdline "));
    vm.wait_for("debug shell on the console", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // With no toolchain URL the monitor says once that it is idle, and how to give it work; it
    // is its last line, after the host-up mail's, so the shell's output below is not
    // interleaved with the monitor's. The shell's prompt may share its line.
    let idle = wait_until("the monitor's idle line", BOOT, || {
        vm.console()
            .lines()
            .find_map(|l| {
                l.split_once("buildos-monitor: idle: ")
                    .map(|(_, idle)| idle)
            })
            .map(str::to_owned)
    });
    assert!(idle.contains("buildos.toolchain_url="), "{idle}");

    for (command, expected) in [
        ("/usr/sbin/sshd -V", "OpenSSH_"),
        ("dnsmasq --version", "Dnsmasq version "),
        ("nft --version", "nftables v"),
        ("qemu-system-x86_64 --version", "QEMU emulator version "),
        ("id build", "uid=1000(build) gid=1000(build)"),
        ("readlink /usr/sbin/sendmail", "buildos-monitor"),
        ("cat /etc/buildos/profile", "debian"),
        // br1 is NATed out through br0, and its DHCP and TFTP server runs.
        ("nft list table ip buildos", "masquerade"),
        ("cat /proc/[0-9]*/comm | sort -u", "dnsmasq"),
        // What the profile's path excludes and package choices leave must still work: each
        // program the host needs runs for real, not only prints its version.
        // QEMU starts a machine: its BIOS, VGA BIOS and the virtio NIC's option ROM load.
        (
            "printf 'cont\\ninfo status\\nquit\\n' | qemu-system-x86_64 -machine q35 -m 64 \
             -display none -nic user,model=virtio-net-pci -S -monitor stdio -serial none 2>&1",
            "VM status: running",
        ),
        (
            "qemu-img create -q -f qcow2 /tmp/m.qcow2 1M && qemu-img info /tmp/m.qcow2",
            "file format: qcow2",
        ),
        // sshd answers on its port with the host key init made.
        (
            "ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null",
            "ssh-ed25519 AAAA",
        ),
        ("dnsmasq --test 2>&1", "syntax check OK"),
        // btrfs-progs reads the machines disk.
        ("btrfs filesystem show 2>&1", "Label: 'buildos.machines'"),
        ("sudo -u build id -un", "build"),
        // What agents running as build need for their machines: KVM through group kvm, tap
        // devices, QEMU's bridge helper for br0 and br1 only, and a compiler for bootstraps.
        ("id -Gn build", "build kvm"),
        ("stat -c '%U:%G %a' /dev/net/tun", "root:root 666"),
        (
            "stat -c '%U %A' /usr/lib/qemu/qemu-bridge-helper",
            "root -rwsr-xr-x",
        ),
        (
            "grep -v '^#' /etc/qemu/bridge.conf | paste -sd' '",
            "allow br0 allow br1",
        ),
        (
            "gcc --version; g++ --version; make --version",
            "Free Software Foundation",
        ),
        // A toolchain's bootstrap builds with the compiler the profile keeps: `build` compiles
        // and runs a C program and a C++ program (threads, the C++ standard library, an
        // exception) with make, -O2 and -pthread, in /tmp. Each needs cc1 or cc1plus, as, ld,
        // the crt files, libgcc, libc_nonshared.a, libstdc++.so, the headers and make.
        ("sudo -u build mkdir /tmp/cc && echo made", "made"),
        (
            "printf '%s\\n' 'CFLAGS = -O2 -pthread' 'CXXFLAGS = -O2 -pthread' 'all: hello hellopp' \
             | sudo -u build tee /tmp/cc/Makefile >/dev/null && echo wrote",
            "wrote",
        ),
        (
            "printf '%s\\n' '#include <pthread.h>' '#include <stdio.h>' \
             'static void *times7(void *v) { *(int *)v *= 7; return 0; }' \
             'int main(void) { int v = 6; pthread_t t; pthread_create(&t, 0, times7, &v);' \
             'pthread_join(t, 0); printf(\"c: %d\\n\", v); return 0; }' \
             | sudo -u build tee /tmp/cc/hello.c >/dev/null && echo wrote",
            "wrote",
        ),
        (
            "printf '%s\\n' '#include <iostream>' '#include <numeric>' '#include <stdexcept>' \
             '#include <thread>' '#include <vector>' \
             'int main() { std::vector<int> v(10); std::iota(v.begin(), v.end(), 1); int sum = 0;' \
             'std::thread t([&] { sum = std::accumulate(v.begin(), v.end(), 0); }); t.join();' \
             'try { throw std::runtime_error(\"thrown\"); } catch (const std::exception &e) {' \
             'std::cout << \"c++: \" << sum << \" \" << e.what() << std::endl; } }' \
             | sudo -u build tee /tmp/cc/hellopp.cc >/dev/null && echo wrote",
            "wrote",
        ),
        (
            "sudo -u build make -C /tmp/cc \
             && sudo -u build sh -c '/tmp/cc/hello && /tmp/cc/hellopp' | paste -sd' '",
            "c: 42 c++: 55 thrown",
        ),
        // Coverage builds link and write their counts (libgcov.a stays; gcov's tools do not).
        (
            "sudo -u build gcc --coverage -pthread -o /tmp/cc/cov /tmp/cc/hello.c \
             && sudo -u build sh -c '/tmp/cc/cov && ls /tmp/cc/*.gcda' | paste -sd' '",
            "c: 42 /tmp/cc/cov-hello.gcda",
        ),
        // OpenMP and the other libraries whose static archives are cut still link, shared.
        (
            "sudo -u build gcc -O2 -fopenmp -o /tmp/cc/shared /tmp/cc/hello.c -Wl,--no-as-needed \
             -lquadmath -latomic -litm -lcrypt -ltirpc -lnsl -lresolv && /tmp/cc/shared",
            "c: 42",
        ),
        // What the profile's path excludes leave out of the compiler fails with gcc's own
        // message, as docs/profiles.md quotes it (one line each).
        (
            "sudo -u build gcc -fdiagnostics-color=never -O2 -flto -o /tmp/cc/lto /tmp/cc/hello.c \
             -pthread",
            "gcc: fatal error: cannot execute 'lto1': execvp: No such file or directory",
        ),
        (
            "sudo -u build gcc -fdiagnostics-color=never -fsanitize=address -o /tmp/cc/asan \
             /tmp/cc/hello.c",
            "/usr/bin/ld: cannot find -lasan: No such file or directory",
        ),
        (
            "sudo -u build gcc -fdiagnostics-color=never -static -o /tmp/cc/static \
             /tmp/cc/hello.c",
            "/usr/bin/ld: cannot find -lc: No such file or directory",
        ),
        (
            "sudo -u build g++ -fdiagnostics-color=never -static-libstdc++ -o /tmp/cc/static \
             /tmp/cc/hellopp.cc -pthread",
            "/usr/bin/ld: cannot find -lstdc++: No such file or directory",
        ),
        (
            "sudo -u build gcc -fdiagnostics-color=never -o /tmp/cc/gomp /tmp/cc/hello.c \
             -Wl,-Bstatic -lgomp -Wl,-Bdynamic",
            "/usr/bin/ld: cannot find -lgomp: No such file or directory",
        ),
        (
            "sudo -u build gcc -fdiagnostics-color=never -fuse-ld=gold -o /tmp/cc/gold \
             /tmp/cc/hello.c",
            "collect2: fatal error: cannot find 'ld'",
        ),
        (
            "for p in gprofng dwp gcov; do command -v $p || echo no $p; done | paste -sd' '",
            "no gprofng no dwp no gcov",
        ),
        // No program the host runs needs a file the excludes cut.
        (
            "ldd /usr/bin/qemu-system-x86_64 /usr/sbin/sshd /usr/sbin/dnsmasq /usr/bin/qemu-img \
             /usr/lib/gcc/x86_64-linux-gnu/12/cc1plus | grep 'not found' || echo all found",
            "all found",
        ),
        (
            "grep /build/machines /proc/mounts",
            "user_subvol_rm_allowed",
        ),
        // The late modules are loaded.
        ("grep -c -E '^(tun|vhost_net|vhost) ' /proc/modules", "3"),
        // A hard link of the root filesystem is one file with two names, and its data is
        // whole (perl-base's perl; the initrd stores its data once).
        (
            "stat -c '%h %i' /usr/bin/perl /usr/bin/perl5.36.0 | uniq -c",
            "2 2 ",
        ),
        ("perl -e 'print 6 * 7, qq(\\n)'", "42"),
        // Merged /usr comes from mmdebstrap's hooks, not from usrmerge, which brings perl's
        // 46 MB of modules and libraries.
        (
            "readlink /bin /sbin /lib /lib64 | paste -sd' '",
            "usr/bin usr/sbin usr/lib usr/lib64",
        ),
        (
            "dpkg-query -W -f '${Package} ${db:Status-Status}\\n' usr-is-merged",
            "usr-is-merged installed",
        ),
        (
            "dpkg-query -W -f '${Package} ${db:Status-Status}\\n' usrmerge perl perl-modules-5.36 \
             2>/dev/null | grep ' installed$' || echo none installed",
            "none installed",
        ),
        ("ls -d /usr/share/perl/5.36 2>&1", "No such file"),
    ] {
        let output = run(&mut vm, command);
        eprintln!("guest: `{command}`: {output}");
        assert!(
            output.contains(expected),
            "`{command}` printed {output:?}, expected {expected:?}"
        );
    }

    // Nor does any other program or library: every library one names (readelf's NEEDED) is a
    // file of the image (in the loader's directories, or a private one such as sudo's).
    let needed = run(
        &mut vm,
        "find /usr -name '*.so*' | sed 's|.*/||' | sort -u > /tmp/sonames; \
         readelf -d /usr/bin/* /usr/sbin/* /usr/lib/qemu/* /usr/lib/openssh/* /usr/libexec/*/* \
         /usr/lib/gcc/x86_64-linux-gnu/12/* /usr/lib/x86_64-linux-gnu/*.so* \
         /usr/lib/x86_64-linux-gnu/qemu/*.so 2>/dev/null \
         | sed -n 's/.*(NEEDED).*\\[\\(.*\\)\\]/\\1/p' | sort -u > /tmp/needed; \
         while read l; do grep -qxF $l /tmp/sonames || echo $l; done < /tmp/needed \
         | paste -sd' ' > /tmp/unresolved; \
         echo $(wc -l < /tmp/needed) needed, unresolved: $(cat /tmp/unresolved).",
    );
    eprintln!("guest: libraries: {needed}");
    let (count, unresolved) = needed
        .trim()
        .split_once(" needed, unresolved: ")
        .unwrap_or_else(|| panic!("libraries: {needed}"));
    assert!(count.parse::<u32>().is_ok_and(|n| n > 100), "{needed}");
    assert_eq!(unresolved, ".", "libraries no file provides: {needed}");

    // `/` is an overlay of the four squashfs images, each on a loop device of its image, with
    // its writes in the initramfs (RAM).
    let overlay = run(&mut vm, "grep '^overlay / overlay ' /proc/mounts");
    eprintln!("guest: the root: {overlay}");
    assert!(
        overlay.contains(
            "lowerdir=/.buildos/lower/modules:/.buildos/lower/drivers:/.buildos/lower/root:\
             /.buildos/lower/cold,upperdir=/.buildos/upper,workdir=/.buildos/work"
        ),
        "{overlay}"
    );
    let images = run(
        &mut vm,
        "awk '$3 == \"squashfs\" { print $1, $2, $4 }' /proc/mounts",
    );
    eprintln!("guest: the images: {images}");
    let images: Vec<&str> = images.lines().map(str::trim).collect();
    assert_eq!(images.len(), 4, "{images:?}");
    for (line, (image, lower)) in images.iter().zip([
        ("modules.squashfs", "/.buildos/lower/modules"),
        ("drivers.squashfs", "/.buildos/lower/drivers"),
        ("root.squashfs", "/.buildos/lower/root"),
        ("cold.squashfs", "/.buildos/lower/cold"),
    ]) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[1], lower, "{line}");
        assert!(fields[2].starts_with("ro,"), "{line}");
        let device = fields[0].trim_start_matches("/dev/");
        assert!(device.starts_with("loop"), "{line}");
        let backing = run(
            &mut vm,
            &format!("cat /sys/block/{device}/loop/backing_file /sys/block/{device}/ro"),
        );
        eprintln!("guest: {device}'s file and read-only flag: {backing}");
        assert!(
            backing.contains(&format!("/.buildos/layers/{image}")) && backing.ends_with('1'),
            "{device}: {backing}"
        );
    }
    // A file written to `/` is there, on the overlay and in none of the images or disks.
    let written = run(
        &mut vm,
        "echo written at boot > /written-at-boot && cat /written-at-boot && \
         stat -c %m /written-at-boot && \
         ls /.buildos/lower/root/written-at-boot /state/written-at-boot 2>&1 | grep -c 'No such'",
    );
    assert_eq!(
        written.lines().map(str::trim).collect::<Vec<_>>(),
        ["written at boot", "/", "2"],
        "{written}"
    );
    // A module of the modules image loaded: btrfs, for the machines disk, from that image.
    assert_eq!(run(&mut vm, "grep -c '^btrfs ' /proc/modules").trim(), "1");
    let btrfs = run(
        &mut vm,
        "ls /.buildos/lower/modules/usr/lib/modules/$(uname -r)/kernel/fs/btrfs/ && \
         ls /.buildos/lower/root/usr/lib/modules 2>&1",
    );
    assert!(
        btrfs.contains("btrfs.ko") && btrfs.contains("No such"),
        "btrfs is not in the modules image alone: {btrfs}"
    );

    // The compiler the compiles above ran came in the late archive, which init unpacked into
    // RAM (no image holds it) and removed, before the monitor started agents.
    let late = run(
        &mut vm,
        "cat /run/buildos/late; ls /.buildos/late.cpio.xz 2>&1; \
         ls /.buildos/lower/*/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus 2>&1; \
         ls -l /usr/lib/gcc/x86_64-linux-gnu/12/cc1plus",
    );
    eprintln!("guest: the compiler's place: {late}");
    assert!(
        late.lines()
            .next()
            .is_some_and(|l| l.starts_with("unpacked "))
            && late.contains("/.buildos/late.cpio.xz': No such file")
            && late.contains("lower/*/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus': No such file")
            && late.contains(" /usr/lib/gcc/x86_64-linux-gnu/12/cc1plus"),
        "cc1plus did not come from the late archive alone: {late}"
    );
    assert!(
        vm.console().contains("buildos-init: late files: unpacked "),
        "{}",
        vm.console()
    );
    let monitor = run(&mut vm, "grep 'late files' /run/buildos/log/monitor.log");
    assert!(monitor.contains("late files: unpacked "), "{monitor}");

    // A driver of the drivers image loaded where its device is: e100, for the i82551, from
    // that image alone.
    assert_eq!(run(&mut vm, "grep -c '^e100 ' /proc/modules").trim(), "1");
    let e100 = run(
        &mut vm,
        "ls /.buildos/lower/drivers/usr/lib/modules/$(uname -r)/kernel/drivers/net/ethernet/intel/ \
         && ls /.buildos/lower/modules/usr/lib/modules/$(uname -r)/kernel/drivers/net/ethernet/intel/e100.ko \
         2>&1",
    );
    assert!(
        e100.contains("e100.ko") && e100.contains("No such"),
        "e100 is not in the drivers image alone: {e100}"
    );

    // The kernel's firmware loader reads the new root too (it shares init's root): e100's
    // microcode was read from the drivers image, where all firmware is, and no load failed.
    let firmware = run(
        &mut vm,
        "grep -l e100 /sys/class/net/*/device/uevent | wc -l; \
         fincore --noheadings --output PAGES \
         /.buildos/lower/drivers/usr/lib/firmware/e100/d102e_ucode.bin*; \
         dmesg | grep -c 'firmware load for' || true",
    );
    eprintln!("guest: e100 interfaces, resident pages of its firmware, failed loads: {firmware}");
    let firmware: Vec<u64> = firmware
        .split_whitespace()
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{firmware}")))
        .collect();
    assert!(
        firmware.len() == 3 && firmware[0] == 1 && firmware[1] > 0 && firmware[2] == 0,
        "e100 interfaces, resident pages of its firmware, failed firmware loads: {firmware:?}"
    );

    // /dev/kvm is there when the guest's CPU has virtualisation (QEMU emulates AMD's SVM in
    // software; a KVM host may not pass VT-x on): then it is kvm's.
    let kvm = run(
        &mut vm,
        "if [ -e /dev/kvm ]; then stat -c '%U:%G %a' /dev/kvm; else echo no /dev/kvm; fi",
    );
    assert!(
        kvm.trim() == "root:kvm 660" || kvm.trim() == "no /dev/kvm",
        "/dev/kvm: {kvm}"
    );
    eprintln!("guest: /dev/kvm: {kvm}");

    // The RAM the booted host uses (the root filesystem lives in it), for docs/profiles.md.
    let meminfo = run(&mut vm, "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo");
    eprintln!("guest: {}", meminfo.replace('\n', "; "));

    // The running host knows its build id: the one written beside the image.
    let buildid = std::fs::read_to_string(dir.join("buildos-buildid")).unwrap();
    assert_eq!(
        run(&mut vm, "cat /etc/buildos/buildid").trim(),
        buildid.trim()
    );
    // No SSH host keys in the image: init makes them on /state, and /etc/ssh points there.
    let keys = run(&mut vm, "readlink /etc/ssh/ssh_host_*_key | sort");
    assert_eq!(
        keys.trim(),
        "/state/ssh/ssh_host_ecdsa_key\n/state/ssh/ssh_host_ed25519_key",
        "{keys}"
    );
    let sshd = run(&mut vm, "cat /etc/ssh/sshd_config.d/buildos.conf");
    assert!(sshd.contains("PasswordAuthentication no"), "{sshd}");
    // The manifest inside is the one beside the image.
    let manifest = std::fs::read_to_string(dir.join("buildos-packages")).unwrap();
    let inside = run(&mut vm, "grep -c . /etc/buildos/packages");
    assert_eq!(inside.trim(), manifest.lines().count().to_string());
}
