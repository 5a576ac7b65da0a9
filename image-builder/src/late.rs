//! The late archive ([`buildos_contract::layers::LATE_ARCHIVE`]): the root filesystem's files
//! only builds use (the profile's `[layers] late` patterns, split off by
//! [`crate::rootfs::split_late`]) as one newc cpio stream in one xz stream, which init unpacks
//! into the running root after the images are mounted.
//!
//! One stream rather than squashfs's 1 MiB blocks: the compressor's 64 MiB dictionary sees
//! cc1 and cc1plus (33 and 35 MB, most of their code in common) together, and the x86 branch
//! filter goes first, as for the cold image. The debian profile's compiler toolchain, 113.5 MB,
//! is 19.6 MB so against 28.7 MB in the cold image. Unpacking needs the dictionary in RAM (64 MiB)
//! and the whole stream read, so only what no boot step runs belongs here.
//!
//! The bytes depend on the archive and the epoch alone: one thread, fixed options, a CRC64
//! check (init's liblzma has it, unlike the kernel's xz).

use std::io::{self, Read, Write};

use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
use sha2::{Digest, Sha256};

use crate::cpio::{Archive, CpioError};

/// The compressor's dictionary: larger than the largest file and its twin (cc1plus after cc1).
const DICTIONARY: u32 = 64 << 20;

/// Why the late archive could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LateError {
    #[error("cannot write the late files as cpio")]
    Cpio(#[source] CpioError),
    #[error("cannot compress the late archive in xz")]
    Xz(#[source] io::Error),
}

/// What [`pack`] is made of, for a cache of its results: a SHA-256 of its code.
pub fn key() -> String {
    Sha256::digest(include_bytes!("late.rs"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The late archive of `archive`: its cpio bytes (every mtime `source_date_epoch`) in xz.
pub fn pack(archive: &Archive, source_date_epoch: u64) -> Result<Vec<u8>, LateError> {
    let cpio = archive
        .to_bytes(source_date_epoch)
        .map_err(LateError::Cpio)?;
    let mut options = LzmaOptions::new_preset(9).map_err(|e| LateError::Xz(e.into()))?;
    options.dict_size(DICTIONARY);
    let mut filters = Filters::new();
    filters.x86();
    filters.lzma2(&options);
    let stream =
        Stream::new_stream_encoder(&filters, Check::Crc64).map_err(|e| LateError::Xz(e.into()))?;
    let mut encoder = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    encoder.write_all(&cpio).map_err(LateError::Xz)?;
    encoder.finish().map_err(LateError::Xz)
}

/// The cpio bytes of late archive `xz`, as init reads them.
pub fn unpack(xz: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    liblzma::read::XzDecoder::new(xz).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_late_archive_is_the_cpio_of_its_files_in_xz_and_the_same_bytes_each_time() {
        let mut archive = Archive::new();
        archive.add_dir("usr/lib/gcc", 0o755).unwrap();
        // 800 kB that xz cannot shrink (a linear congruential sequence's high bytes).
        let mut x = 1u32;
        let program: Vec<u8> = (0..800_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 24) as u8
            })
            .collect();
        archive
            .add_file("usr/lib/gcc/cc1", 0o755, program.clone())
            .unwrap();
        archive
            .add_file("usr/lib/gcc/cc1plus", 0o755, program.clone())
            .unwrap();
        let packed = pack(&archive, 7).unwrap();
        assert_eq!(&packed[..6], b"\xfd7zXZ\0");
        // CRC64: the stream flags' check id 4.
        assert_eq!(packed[7], 4);
        assert_eq!(pack(&archive, 7).unwrap(), packed);
        let cpio = unpack(&packed).unwrap();
        assert_eq!(cpio, archive.to_bytes(7).unwrap());
        // The second copy costs next to nothing: one stream, one dictionary.
        assert!(packed.len() < program.len() * 11 / 10, "{}", packed.len());
    }
}
