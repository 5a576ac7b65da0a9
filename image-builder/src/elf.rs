//! Just enough ELF to find a kernel module's `.modinfo` section.
//!
//! Kernel modules are relocatable ELF objects; `.modinfo` holds NUL-separated `key=value`
//! strings (`name=btrfs`, `depends=zstd_compress,raid6_pq`, `alias=fs-btrfs`,
//! `softdep=pre: crc32c`). Every offset is bounds-checked: a corrupt module is an error, never a
//! panic.

/// Why a module's `.modinfo` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file (bad magic)")]
    NotElf,
    #[error("unsupported ELF class {0} or byte order {1}")]
    Unsupported(u8, u8),
    #[error("truncated ELF: {0} lies outside the file")]
    Truncated(&'static str),
    #[error("no .modinfo section")]
    NoModinfo,
}

struct Reader<'a> {
    b: &'a [u8],
    le: bool,
}

impl<'a> Reader<'a> {
    fn bytes(&self, off: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
        let start = usize::try_from(off).map_err(|_| ElfError::Truncated(what))?;
        let len = usize::try_from(len).map_err(|_| ElfError::Truncated(what))?;
        let end = start.checked_add(len).ok_or(ElfError::Truncated(what))?;
        self.b.get(start..end).ok_or(ElfError::Truncated(what))
    }

    fn uint(&self, off: u64, width: u64, what: &'static str) -> Result<u64, ElfError> {
        let raw = self.bytes(off, width, what)?;
        let mut v: u64 = 0;
        for i in 0..raw.len() {
            let byte = if self.le {
                raw[raw.len() - 1 - i]
            } else {
                raw[i]
            };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    }
}

/// Whether `bytes` start as an ELF file does.
pub(crate) fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// Returns the contents of the `.modinfo` section of ELF object `bytes`.
pub fn modinfo_section(bytes: &[u8]) -> Result<&[u8], ElfError> {
    if !is_elf(bytes) {
        return Err(ElfError::NotElf);
    }
    let class = *bytes.get(4).ok_or(ElfError::NotElf)?;
    let data = *bytes.get(5).ok_or(ElfError::NotElf)?;
    let le = match data {
        1 => true,
        2 => false,
        _ => return Err(ElfError::Unsupported(class, data)),
    };
    let r = Reader { b: bytes, le };
    // Offsets of e_shoff, e_shentsize, e_shnum, e_shstrndx and the word size, per class;
    // then sh_name, sh_offset, sh_size within a section header.
    let (shoff_at, word, sh_entsize_at, sh_offset_at, sh_size_at) = match class {
        1 => (0x20, 4, 0x2e, 0x10, 0x14),
        2 => (0x28, 8, 0x3a, 0x18, 0x20),
        _ => return Err(ElfError::Unsupported(class, data)),
    };
    let shoff = r.uint(shoff_at, word, "section header table")?;
    let shentsize = r.uint(sh_entsize_at, 2, "e_shentsize")?;
    let mut shnum = r.uint(sh_entsize_at + 2, 2, "e_shnum")?;
    let mut shstrndx = r.uint(sh_entsize_at + 4, 2, "e_shstrndx")?;
    if shoff == 0 || shentsize == 0 {
        return Err(ElfError::NoModinfo);
    }
    let header = |i: u64| -> Result<u64, ElfError> {
        i.checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or(ElfError::Truncated("section header"))
    };
    // Extended numbering: counts that don't fit 16 bits live in section header 0.
    if shnum == 0 {
        shnum = r.uint(header(0)? + sh_size_at, word, "section header 0")?;
    }
    if shstrndx == 0xffff {
        shstrndx = r.uint(header(0)? + 0x18 + (word - 4) * 4, 4, "section header 0")?;
    }
    if shstrndx >= shnum {
        return Err(ElfError::Truncated("section name table index"));
    }
    let section = |i: u64| -> Result<(u64, &'_ [u8]), ElfError> {
        let h = header(i)?;
        let name = r.uint(h, 4, "section header")?;
        let off = r.uint(h + sh_offset_at, word, "section header")?;
        let size = r.uint(h + sh_size_at, word, "section header")?;
        Ok((name, r.bytes(off, size, "section contents")?))
    };
    let (_, names) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_off, contents) = section(i)?;
        let name = usize::try_from(name_off)
            .ok()
            .and_then(|o| names.get(o..))
            .ok_or(ElfError::Truncated("section name"))?;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        if &name[..end] == b".modinfo" {
            return Ok(contents);
        }
    }
    Err(ElfError::NoModinfo)
}

/// Splits `.modinfo` contents into `(key, value)` pairs, in order.
pub fn modinfo_pairs(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Builds a minimal little-endian ELF64 object whose only section besides the name table is
/// `.modinfo` holding `pairs`: a stand-in for a kernel module in tests.
#[cfg(test)]
pub fn fake_module(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut modinfo = Vec::new();
    for (k, v) in pairs {
        modinfo.extend_from_slice(format!("{k}={v}").as_bytes());
        modinfo.push(0);
    }
    let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little endian
    out[6] = 1; // version
    out[16] = 1; // ET_REL
    let modinfo_off = out.len() as u64;
    out.extend_from_slice(&modinfo);
    let shstrtab_off = out.len() as u64;
    out.extend_from_slice(&shstrtab);
    out.resize(out.len().next_multiple_of(8), 0);
    let shoff = out.len() as u64;
    let mut sh = |name: u32, ty: u32, off: u64, size: u64| {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&h);
    };
    sh(0, 0, 0, 0);
    sh(1, 1, modinfo_off, modinfo.len() as u64);
    sh(10, 3, shstrtab_off, shstrtab.len() as u64);
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_of_a_fake_module_reads_back_in_order() {
        let ko = fake_module(&[("name", "btrfs"), ("depends", "xor,raid6_pq")]);
        let pairs = modinfo_pairs(modinfo_section(&ko).unwrap());
        assert_eq!(
            pairs,
            vec![
                ("name".to_string(), "btrfs".to_string()),
                ("depends".to_string(), "xor,raid6_pq".to_string())
            ]
        );
    }

    #[test]
    fn every_truncation_of_a_module_is_an_error_not_a_panic() {
        let ko = fake_module(&[("name", "x")]);
        let whole = modinfo_section(&ko).unwrap();
        // The last section header's trailing fields (link, info, alignment, entry size) are
        // never read, so cutting only those still finds the section.
        let needed = ko.len() - 24;
        for len in 0..ko.len() {
            match modinfo_section(&ko[..len]) {
                Ok(section) => assert!(len >= needed && section == whole, "length {len}"),
                Err(_) => assert!(len < needed, "length {len}"),
            }
        }
    }

    #[test]
    fn non_elf_input_says_so() {
        assert_eq!(modinfo_section(b"MZ\0\0"), Err(ElfError::NotElf));
    }
}
