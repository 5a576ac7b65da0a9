//! Filesystem superblocks: which filesystem a device holds, its label and its uuid, read from
//! the first bytes of the device. Pure functions over byte buffers; a buffer that is too short
//! or holds no known magic is "no filesystem", never an error.

use std::fmt;

/// How many bytes from the start of a device [`probe`] needs to see every superblock it knows
/// (btrfs's primary superblock ends at 68 KiB).
pub const PROBE_LEN: usize = BTRFS_SUPER_OFFSET + BTRFS_SUPER_LEN;

const BTRFS_SUPER_OFFSET: usize = 0x1_0000;
const BTRFS_SUPER_LEN: usize = 0x1000;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
const BTRFS_LABEL_LEN: usize = 256;

const EXT_SUPER_OFFSET: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;

const XFS_MAGIC: &[u8; 4] = b"XFSB";

/// The filesystems buildos recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    Btrfs,
    Ext2,
    Ext3,
    Ext4,
    Xfs,
}

impl FsType {
    /// The name `mount` and /etc/fstab use for it.
    pub fn name(self) -> &'static str {
        match self {
            FsType::Btrfs => "btrfs",
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// The kernel driver that mounts it: ext4's driver mounts ext2 and ext3 too, and it is the
    /// one the image always has.
    pub fn driver(self) -> &'static str {
        match self {
            FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => "ext4",
            other => other.name(),
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the superblock of one device says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub fs_type: FsType,
    /// The filesystem label, empty when it has none.
    pub label: String,
    /// The filesystem uuid in its usual text form.
    pub uuid: String,
    /// btrfs only: how many devices the filesystem spans and which one this is.
    pub btrfs: Option<BtrfsDevice>,
    /// ext2/3/4 only: how the filesystem was left when it was last written.
    pub ext_state: Option<ExtState>,
}

/// How an ext2/3/4 superblock says the filesystem was left: its `s_state` flags and
/// `s_error_count`. Without a journal the kernel clears the valid flag when it mounts the
/// filesystem writable and sets it again only at a clean unmount (or a read-only remount), so a
/// power cut or a reset while it was mounted leaves it not clean; an error the kernel met sets
/// the error flag and counts it. (`s_errors` is only what the kernel does on an error, not
/// whether one happened.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtState {
    /// Cleanly unmounted, no error recorded.
    Clean,
    /// Not cleanly unmounted (or still mounted), no error recorded.
    NotClean,
    /// The kernel recorded errors (`errors` of them when it counted; ext2 and ext3 do not).
    Errors { errors: u32 },
}

impl ExtState {
    /// Whether e2fsck should check the filesystem before it is mounted.
    pub fn needs_check(self) -> bool {
        self != ExtState::Clean
    }
}

impl fmt::Display for ExtState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtState::Clean => f.write_str("was cleanly unmounted"),
            ExtState::NotClean => {
                f.write_str("was not cleanly unmounted (a power cut, a reset or a crash)")
            }
            ExtState::Errors { errors: 0 } => f.write_str("has errors the kernel recorded"),
            ExtState::Errors { errors } => {
                write!(f, "has {errors} error(s) the kernel recorded")
            }
        }
    }
}

/// `s_state`'s flags and `s_error_count`, as ext2/3/4 lay them out.
const EXT_STATE_VALID: u16 = 0x1;
const EXT_STATE_ERROR: u16 = 0x2;

fn ext_state(sb: &[u8]) -> Option<ExtState> {
    let state = le_u16(sb, 0x3a)?;
    let errors = le_u32(sb, 0x194)?;
    Some(if state & EXT_STATE_ERROR != 0 || errors != 0 {
        ExtState::Errors { errors }
    } else if state & EXT_STATE_VALID == 0 {
        ExtState::NotClean
    } else {
        ExtState::Clean
    })
}

/// The multi-device part of a btrfs superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtrfsDevice {
    pub num_devices: u64,
    pub devid: u64,
}

/// Reads the superblock at the start of a device, given at least its first [`PROBE_LEN`]
/// bytes (fewer when the device is smaller). `None` when no known filesystem is there.
pub fn probe(bytes: &[u8]) -> Option<Superblock> {
    probe_btrfs(bytes)
        .or_else(|| probe_xfs(bytes))
        .or_else(|| probe_ext(bytes))
}

fn probe_btrfs(bytes: &[u8]) -> Option<Superblock> {
    let sb = bytes.get(BTRFS_SUPER_OFFSET..BTRFS_SUPER_OFFSET + BTRFS_SUPER_LEN)?;
    if sb.get(0x40..0x48)? != BTRFS_MAGIC {
        return None;
    }
    Some(Superblock {
        fs_type: FsType::Btrfs,
        label: text(sb.get(0x12b..0x12b + BTRFS_LABEL_LEN)?),
        uuid: uuid(sb.get(0x20..0x30)?),
        btrfs: Some(BtrfsDevice {
            num_devices: le_u64(sb, 0x88)?,
            devid: le_u64(sb, 0xc9)?,
        }),
        ext_state: None,
    })
}

fn probe_xfs(bytes: &[u8]) -> Option<Superblock> {
    if bytes.get(0..4)? != XFS_MAGIC {
        return None;
    }
    Some(Superblock {
        fs_type: FsType::Xfs,
        label: text(bytes.get(108..120)?),
        uuid: uuid(bytes.get(32..48)?),
        btrfs: None,
        ext_state: None,
    })
}

fn probe_ext(bytes: &[u8]) -> Option<Superblock> {
    let sb = bytes.get(EXT_SUPER_OFFSET..EXT_SUPER_OFFSET + 1024)?;
    if le_u16(sb, 0x38)? != EXT_MAGIC {
        return None;
    }
    const HAS_JOURNAL: u32 = 0x4;
    const JOURNAL_DEV: u32 = 0x8;
    // Incompatible features ext3 does not know: extents, 64bit, flex_bg, and others blkid also
    // counts as ext4.
    const EXT4_INCOMPAT: u32 = 0x40 | 0x80 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x8000 | 0x10000;
    // Read-only features: huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum.
    const EXT4_RO_COMPAT: u32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400;
    let compat = le_u32(sb, 0x5c)?;
    let incompat = le_u32(sb, 0x60)?;
    let ro_compat = le_u32(sb, 0x64)?;
    if incompat & JOURNAL_DEV != 0 {
        // An external journal, not a filesystem.
        return None;
    }
    let fs_type = if incompat & EXT4_INCOMPAT != 0 || ro_compat & EXT4_RO_COMPAT != 0 {
        FsType::Ext4
    } else if compat & HAS_JOURNAL != 0 {
        FsType::Ext3
    } else {
        FsType::Ext2
    };
    Some(Superblock {
        fs_type,
        label: text(sb.get(0x78..0x88)?),
        uuid: uuid(sb.get(0x68..0x78)?),
        btrfs: None,
        ext_state: ext_state(sb),
    })
}

/// A NUL-padded label; bytes that are not UTF-8 are replaced so the label can still be shown.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn uuid(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];
    const UUID_TEXT: &str = "12345678-9abc-def0-0123-456789abcdef";

    fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn btrfs(label: &str, num_devices: u64, devid: u64) -> Vec<u8> {
        let mut buf = vec![0u8; PROBE_LEN];
        let sb = BTRFS_SUPER_OFFSET;
        put(&mut buf, sb + 0x20, &UUID);
        put(&mut buf, sb + 0x40, BTRFS_MAGIC);
        put(&mut buf, sb + 0x88, &num_devices.to_le_bytes());
        put(&mut buf, sb + 0xc9, &devid.to_le_bytes());
        put(&mut buf, sb + 0x12b, label.as_bytes());
        buf
    }

    fn ext(label: &str, compat: u32, incompat: u32, ro_compat: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let sb = EXT_SUPER_OFFSET;
        put(&mut buf, sb + 0x38, &EXT_MAGIC.to_le_bytes());
        put(&mut buf, sb + 0x5c, &compat.to_le_bytes());
        put(&mut buf, sb + 0x60, &incompat.to_le_bytes());
        put(&mut buf, sb + 0x64, &ro_compat.to_le_bytes());
        put(&mut buf, sb + 0x68, &UUID);
        put(&mut buf, sb + 0x78, label.as_bytes());
        buf
    }

    fn xfs(label: &str) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        put(&mut buf, 0, XFS_MAGIC);
        put(&mut buf, 32, &UUID);
        put(&mut buf, 108, label.as_bytes());
        buf
    }

    #[test]
    fn btrfs_label_uuid_and_devices_are_read_from_the_primary_superblock() {
        let sb = probe(&btrfs("buildos.machines", 2, 1)).unwrap();
        assert_eq!(
            sb,
            Superblock {
                fs_type: FsType::Btrfs,
                label: "buildos.machines".into(),
                uuid: UUID_TEXT.into(),
                btrfs: Some(BtrfsDevice {
                    num_devices: 2,
                    devid: 1
                }),
                ext_state: None,
            }
        );
    }

    #[test]
    fn btrfs_label_of_the_full_256_bytes_is_kept() {
        let label = "m".repeat(255);
        let sb = probe(&btrfs(&label, 1, 1)).unwrap();
        assert_eq!(sb.label, label);
    }

    #[test]
    fn btrfs_magic_at_the_wrong_offset_is_not_btrfs() {
        let mut buf = vec![0u8; PROBE_LEN];
        put(&mut buf, BTRFS_SUPER_OFFSET, BTRFS_MAGIC);
        put(&mut buf, 0x40, BTRFS_MAGIC);
        assert_eq!(probe(&buf), None);
    }

    #[test]
    fn btrfs_device_cut_before_the_end_of_its_superblock_is_no_filesystem() {
        let buf = btrfs("buildos.machines", 1, 1);
        assert_eq!(probe(&buf[..PROBE_LEN - 1]), None);
        assert_eq!(probe(&buf[..BTRFS_SUPER_OFFSET + 0x41]), None);
    }

    #[test]
    fn ext4_is_told_from_ext3_and_ext2_by_its_features() {
        let extents = 0x40;
        let journal = 0x4;
        let metadata_csum = 0x400;
        let cases = [
            ((journal, extents, 0), FsType::Ext4),
            ((0, extents, 0), FsType::Ext4),
            ((0, 0, metadata_csum), FsType::Ext4),
            ((journal, 0, 0), FsType::Ext3),
            ((0, 0, 0), FsType::Ext2),
        ];
        for ((compat, incompat, ro), want) in cases {
            let sb = probe(&ext("buildos.state", compat, incompat, ro)).unwrap();
            assert_eq!(
                sb.fs_type, want,
                "features {compat:#x} {incompat:#x} {ro:#x}"
            );
            assert_eq!(sb.label, "buildos.state");
            assert_eq!(sb.uuid, UUID_TEXT);
            assert_eq!(sb.btrfs, None);
        }
    }

    #[test]
    fn ext_label_of_sixteen_bytes_has_no_terminator() {
        let sb = probe(&ext("0123456789abcdef", 0, 0x40, 0)).unwrap();
        assert_eq!(sb.label, "0123456789abcdef");
    }

    #[test]
    fn ext_external_journal_is_not_a_filesystem() {
        assert_eq!(probe(&ext("journal", 0, 0x8, 0)), None);
    }

    #[test]
    fn ext_device_cut_inside_its_superblock_is_no_filesystem() {
        let buf = ext("buildos.state", 0, 0x40, 0);
        assert_eq!(probe(&buf[..EXT_SUPER_OFFSET + 0x39]), None);
        assert_eq!(probe(&buf[..EXT_SUPER_OFFSET + 1023]), None);
    }

    #[test]
    fn xfs_label_and_uuid_are_read() {
        let sb = probe(&xfs("state")).unwrap();
        assert_eq!(
            (sb.fs_type, sb.label.as_str(), sb.uuid.as_str()),
            (FsType::Xfs, "state", UUID_TEXT)
        );
    }

    #[test]
    fn garbage_empty_and_zeroed_devices_hold_no_filesystem() {
        let garbage: Vec<u8> = (0..PROBE_LEN as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(probe(&garbage), None);
        assert_eq!(probe(&[]), None);
        assert_eq!(probe(&vec![0u8; PROBE_LEN]), None);
    }

    #[test]
    fn label_that_is_not_utf8_is_shown_with_replacements() {
        let mut buf = ext("", 0, 0x40, 0);
        put(&mut buf, EXT_SUPER_OFFSET + 0x78, b"st\xffte");
        assert_eq!(probe(&buf).unwrap().label, "st\u{fffd}te");
    }

    #[test]
    fn ext_driver_mounts_every_ext_generation() {
        assert_eq!(FsType::Ext2.driver(), "ext4");
        assert_eq!(FsType::Ext3.driver(), "ext4");
        assert_eq!(FsType::Btrfs.driver(), "btrfs");
    }

    /// An ext4 superblock with `s_state` and `s_error_count` set.
    fn ext4_left(state: u16, errors: u32) -> Vec<u8> {
        let mut buf = ext("buildos.state", 0, 0x40, 0);
        put(&mut buf, EXT_SUPER_OFFSET + 0x3a, &state.to_le_bytes());
        put(&mut buf, EXT_SUPER_OFFSET + 0x194, &errors.to_le_bytes());
        buf
    }

    #[test]
    fn ext_state_says_clean_not_clean_or_errors() {
        let state = |s, e| probe(&ext4_left(s, e)).unwrap().ext_state;
        // As mkfs leaves it and a clean unmount writes it back.
        assert_eq!(state(0x1, 0), Some(ExtState::Clean));
        // Mounted writable without a journal and never unmounted.
        assert_eq!(state(0x0, 0), Some(ExtState::NotClean));
        // Orphans being recovered (0x4) is still a valid filesystem.
        assert_eq!(state(0x5, 0), Some(ExtState::Clean));
        // The kernel met an error: the flag, the count, or both.
        assert_eq!(state(0x3, 0), Some(ExtState::Errors { errors: 0 }));
        assert_eq!(state(0x1, 2), Some(ExtState::Errors { errors: 2 }));
        assert_eq!(state(0x2, 7), Some(ExtState::Errors { errors: 7 }));
        assert!(!ExtState::Clean.needs_check());
        assert!(ExtState::NotClean.needs_check());
        assert!(ExtState::Errors { errors: 1 }.needs_check());
        assert_eq!(
            ExtState::Errors { errors: 2 }.to_string(),
            "has 2 error(s) the kernel recorded"
        );
        // Other filesystems say nothing of it: btrfs needs no check before mounting.
        assert_eq!(
            probe(&btrfs("buildos.machines", 1, 1)).unwrap().ext_state,
            None
        );
        assert_eq!(probe(&xfs("state")).unwrap().ext_state, None);
    }

    proptest::proptest! {
        /// Any `s_state` and `s_error_count`, with any other byte of the superblock changed:
        /// the state is what those two fields say, and only a clean one skips the check.
        #[test]
        fn fuzz_ext_state(
            state in proptest::prelude::any::<u16>(),
            errors in proptest::prelude::any::<u32>(),
            at in 0x100usize..0x400,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut buf = ext4_left(state, errors);
            if !(0x194..0x198).contains(&at) {
                buf[EXT_SUPER_OFFSET + at] = byte;
            }
            let sb = probe(&buf).unwrap();
            let expected = if state & 0x2 != 0 || errors != 0 {
                ExtState::Errors { errors }
            } else if state & 0x1 == 0 {
                ExtState::NotClean
            } else {
                ExtState::Clean
            };
            proptest::prop_assert_eq!(sb.ext_state, Some(expected));
            proptest::prop_assert_eq!(expected.needs_check(), expected != ExtState::Clean);
        }
    }
}
