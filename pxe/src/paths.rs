//! Where things are in the tree, and what the boot loader adds to a command line.

/// The length of a build id: a SHA-256 in lower-case hex.
pub const BUILDID_LEN: usize = 64;

/// The kernel of build `buildid`, from the tree's root (TFTP paths start with `/`).
pub fn kernel_path(buildid: &str) -> String {
    format!("/buildos/{buildid}/buildos-image")
}

/// The initrd of build `buildid`, from the tree's root.
pub fn initrd_path(buildid: &str) -> String {
    format!("/buildos/{buildid}/buildos-initrd")
}

/// How many bytes the boot loader adds to the `append` line before the kernel sees it.
///
/// pxelinux passes `BOOT_IMAGE=<kernel> <append> initrd=<initrd>` (its `initrd` keyword is
/// `append initrd=<initrd>`), so with a 64-digit build id in both paths that is 11 + 87 + 1
/// for the kernel and 8 + 88 for the initrd: 195 bytes. iPXE on BIOS passes its arguments as
/// they are, which is less. The kernel's buffer is [`buildos_cmdline::KERNEL_CMDLINE_MAX`]
/// bytes with the terminating NUL.
pub fn loader_overhead() -> usize {
    let id = "0".repeat(BUILDID_LEN);
    "BOOT_IMAGE=".len()
        + kernel_path(&id).len()
        + " ".len()
        + " initrd=".len()
        + initrd_path(&id).len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn loader_overhead_counts_boot_image_and_initrd() {
        assert_eq!(super::loader_overhead(), 195);
    }
}
