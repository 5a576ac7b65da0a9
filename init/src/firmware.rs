//! How this machine booted: legacy BIOS or UEFI, and with UEFI whether Secure Boot was on, as
//! the kernel's EFI stub read it from the firmware's `SecureBoot` and `SetupMode` variables
//! (the same answer the kernel used to decide on lockdown). The ready line shows it, so that
//! an operator can tell which hosts really are protected.
//!
//! Nothing to mount: `/sys/firmware/efi` exists only on a UEFI boot, and the stub's answer is
//! the `secure_boot` byte of the boot parameters, which x86 kernels expose in
//! `/sys/kernel/boot_params/data`. Reading efivarfs instead would need its module and a mount.

use std::fmt;
use std::path::Path;

/// Where `secure_boot` sits in `struct boot_params` (the kernel's x86 boot protocol:
/// `Documentation/arch/x86/zero-page.rst`, offset 0x1EC).
const SECURE_BOOT_OFFSET: usize = 0x1ec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Bios,
    /// UEFI; `None` when the kernel did not record Secure Boot's state.
    Uefi {
        secure_boot: Option<bool>,
    },
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootMode::Bios => f.write_str("booted BIOS"),
            BootMode::Uefi {
                secure_boot: Some(true),
            } => f.write_str("booted UEFI with Secure Boot on"),
            BootMode::Uefi {
                secure_boot: Some(false),
            } => f.write_str("booted UEFI with Secure Boot off"),
            BootMode::Uefi { secure_boot: None } => {
                f.write_str("booted UEFI, Secure Boot state unknown")
            }
        }
    }
}

impl BootMode {
    /// What `/run/buildos/firmware` (`buildos_contract::run::FIRMWARE`) holds, for the
    /// monitor's host record (which runs after ready and reads no boot parameters itself):
    /// `firmware=bios` or `firmware=uefi`, then for UEFI `secure_boot=on`, `off` or `unknown`,
    /// one per line.
    pub fn file_text(&self) -> String {
        match self {
            BootMode::Bios => "firmware=bios\n".to_string(),
            BootMode::Uefi { secure_boot } => format!(
                "firmware=uefi\nsecure_boot={}\n",
                match secure_boot {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "unknown",
                }
            ),
        }
    }
}

/// Secure Boot's state from the bytes of `/sys/kernel/boot_params/data`: the kernel's
/// `efi_secureboot_mode` (0 unset, 1 unknown, 2 disabled, 3 enabled).
pub fn secure_boot(boot_params: &[u8]) -> Option<bool> {
    match boot_params.get(SECURE_BOOT_OFFSET) {
        Some(3) => Some(true),
        Some(2) => Some(false),
        _ => None,
    }
}

/// The boot mode, from the sysfs mounted at `sys`.
pub fn boot_mode(sys: &Path) -> BootMode {
    if !sys.join("firmware/efi").is_dir() {
        return BootMode::Bios;
    }
    let data = std::fs::read(sys.join("kernel/boot_params/data")).unwrap_or_default();
    BootMode::Uefi {
        secure_boot: secure_boot(&data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(secure_boot: u8) -> Vec<u8> {
        let mut data = vec![0u8; 4096];
        data[SECURE_BOOT_OFFSET] = secure_boot;
        data
    }

    #[test]
    fn file_text_says_firmware_and_secure_boot() {
        assert_eq!(BootMode::Bios.file_text(), "firmware=bios\n");
        let uefi = |secure_boot| BootMode::Uefi { secure_boot }.file_text();
        assert_eq!(uefi(Some(true)), "firmware=uefi\nsecure_boot=on\n");
        assert_eq!(uefi(Some(false)), "firmware=uefi\nsecure_boot=off\n");
        assert_eq!(uefi(None), "firmware=uefi\nsecure_boot=unknown\n");
    }

    #[test]
    fn secure_boot_reads_the_stubs_byte() {
        assert_eq!(secure_boot(&params(3)), Some(true));
        assert_eq!(secure_boot(&params(2)), Some(false));
        assert_eq!(secure_boot(&params(1)), None);
        assert_eq!(secure_boot(&params(0)), None);
        assert_eq!(secure_boot(&[0u8; 16]), None);
    }

    #[test]
    fn boot_mode_is_bios_without_firmware_efi_and_reads_secure_boot_with_it() {
        let dir = std::env::temp_dir().join(format!("buildos-bootmode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("kernel/boot_params")).unwrap();
        std::fs::write(dir.join("kernel/boot_params/data"), params(3)).unwrap();
        assert_eq!(boot_mode(&dir), BootMode::Bios);
        assert_eq!(boot_mode(&dir).to_string(), "booted BIOS");
        std::fs::create_dir_all(dir.join("firmware/efi")).unwrap();
        assert_eq!(
            boot_mode(&dir).to_string(),
            "booted UEFI with Secure Boot on"
        );
        std::fs::write(dir.join("kernel/boot_params/data"), params(2)).unwrap();
        assert_eq!(
            boot_mode(&dir).to_string(),
            "booted UEFI with Secure Boot off"
        );
        std::fs::remove_file(dir.join("kernel/boot_params/data")).unwrap();
        assert_eq!(
            boot_mode(&dir).to_string(),
            "booted UEFI, Secure Boot state unknown"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
