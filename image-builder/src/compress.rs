//! The initrd's compressors: every format Debian's kernel unpacks an initramfs from
//! (`CONFIG_RD_GZIP`, `RD_ZSTD`, `RD_XZ`, `RD_LZ4`), each with fixed settings so that the same
//! bytes always compress to the same bytes, and one reader for all of them.
//!
//! Settings, each what the kernel's own decompressor accepts:
//!
//! - gzip: flate2 at level 6, header without name or time, OS byte 3 (Unix);
//! - zstd: level 15 with a checksum, window at most 8 MiB (the kernel sizes its workspace from
//!   the window), one frame;
//! - xz: preset 6 with a CRC32 check (the kernel's xz has no CRC64 or SHA-256), one thread;
//! - lz4: the legacy format the kernel's `unlz4` reads (magic `02 21 4c 18`, then each 8 MiB
//!   chunk of input as one LZ4 block after its compressed length), high compression level 9.
//!
//! Several segments of the same format one after the other are one valid input to each
//! decompressor here and in the kernel: gzip members, zstd frames and xz streams follow each
//! other, and a legacy lz4 stream may hold the magic again where a chunk length would be.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// The gzip level. For the minimal image (35 MB of cpio, flate2 on zlib-rs) level 6 gives
/// 11.64 MB in 0.85 s, level 7 11.54 MB in 1.5 s, level 9 11.31 MB in 2.8 s and level 1
/// 15.1 MB in 0.3 s (one core of the build machine): 6 is within 3% of 9 at a third of its
/// time.
pub const GZIP_LEVEL: u32 = 6;
/// zstd's level. For the debian image's 296 MB of cpio, level 19 gives 66.9 MB in 100 s and
/// level 15 75.9 MB in 29 s (one core of the busy build machine): the 9 MB cost 0.09 s at
/// 100 MB/s, the 71 s are paid on every root filesystem build. Unpacking speed hardly
/// depends on the level.
pub const ZSTD_LEVEL: i32 = 15;
/// xz's preset (6 is xz's default; 9 needs a 64 MiB dictionary at unpack time).
pub const XZ_PRESET: u32 = 6;
/// lz4's high-compression level (`lz4 -9`): unpacking is as fast as at any level.
pub const LZ4_LEVEL: i32 = 9;
/// The input of one legacy lz4 chunk: the kernel's `unlz4` unpacks each into a buffer of
/// this size.
pub const LZ4_CHUNK: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = 0x184C_2102_u32.to_le_bytes();

const GZIP_MAGIC: &[u8] = b"\x1f\x8b";
const ZSTD_MAGIC: &[u8] = b"\x28\xb5\x2f\xfd";
pub(crate) const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// How the initrd's segments are compressed. The default is the one with the least kernel
/// unpack plus transfer at 100 MB/s (an HTTP boot), as `cargo xtask bench` measures it: for the
/// debian image's 296 MB of cpio under software emulation, lz4 113.6 MB unpacked in 1.94 s
/// (3.08 s with the transfer), gzip 99.5 MB in 4.93 s (5.93 s), zstd 73.8 MB in 7.20 s
/// (7.94 s), xz 61.2 MB in 13.69 s (14.30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Compression {
    Gzip,
    Zstd,
    Xz,
    #[default]
    Lz4,
}

impl Compression {
    /// Every compressor, in the order the bench lists them.
    pub const ALL: [Compression; 4] = [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lz4,
    ];

    /// Its name, as `--compression` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }

    /// The file name extension of a segment in this format, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Zstd => "zst",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }

    /// The format `bytes` start in, by their magic number.
    pub fn detect(bytes: &[u8]) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|c| bytes.starts_with(c.magic()))
    }

    fn magic(self) -> &'static [u8] {
        match self {
            Compression::Gzip => GZIP_MAGIC,
            Compression::Zstd => ZSTD_MAGIC,
            Compression::Xz => XZ_MAGIC,
            Compression::Lz4 => &LZ4_LEGACY_MAGIC,
        }
    }

    /// `bytes` compressed with this format's fixed settings: a pure function of `bytes`.
    pub fn compress(self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::Gzip => {
                let mut e = flate2::GzBuilder::new().mtime(0).operating_system(3).write(
                    Vec::with_capacity(bytes.len() / 2),
                    flate2::Compression::new(GZIP_LEVEL),
                );
                e.write_all(bytes)?;
                e.finish()
            }
            Compression::Zstd => {
                let mut e = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                e.include_checksum(true)?;
                e.include_contentsize(true)?;
                e.set_pledged_src_size(Some(bytes.len() as u64))?;
                // At most an 8 MiB window, whatever the level would choose.
                e.window_log(23)?;
                e.write_all(bytes)?;
                e.finish()
            }
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_easy_encoder(
                    XZ_PRESET,
                    liblzma::stream::Check::Crc32,
                )
                .map_err(io::Error::other)?;
                let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                e.write_all(bytes)?;
                e.finish()
            }
            Compression::Lz4 => {
                let mut out = Vec::with_capacity(bytes.len() / 2);
                out.extend_from_slice(&LZ4_LEGACY_MAGIC);
                for chunk in bytes.chunks(LZ4_CHUNK) {
                    let block = lz4::block::compress(
                        chunk,
                        Some(lz4::block::CompressionMode::HIGHCOMPRESSION(LZ4_LEVEL)),
                        false,
                    )?;
                    let len = u32::try_from(block.len()).map_err(io::Error::other)?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&block);
                }
                Ok(out)
            }
        }
    }

    /// Decompresses `bytes`, which start in this format, to their end: several segments of
    /// this format one after the other give their contents one after the other.
    pub fn decompress(self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len() * 3);
        match self {
            Compression::Gzip => {
                flate2::bufread::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
            }
            Compression::Zstd => {
                zstd::stream::read::Decoder::with_buffer(bytes)?.read_to_end(&mut out)?;
            }
            Compression::Xz => {
                liblzma::read::XzDecoder::new_multi_decoder(bytes).read_to_end(&mut out)?;
            }
            Compression::Lz4 => lz4_legacy_decompress(bytes, &mut out)?,
        }
        Ok(out)
    }
}

/// The legacy lz4 format as the kernel's `unlz4` reads it: after the magic, chunks of a
/// little-endian length and that many bytes of one LZ4 block; a length equal to the magic is
/// the start of another stream. Ends at the end of the input or at zero padding.
fn lz4_legacy_decompress(bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let Some(mut rest) = bytes.strip_prefix(&LZ4_LEGACY_MAGIC[..]) else {
        return Err(bad("no legacy lz4 magic".to_owned()));
    };
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(bad(format!(
                "legacy lz4 stream ends in a chunk length ({} bytes left)",
                rest.len()
            )));
        };
        if *len == LZ4_LEGACY_MAGIC {
            rest = tail;
            continue;
        }
        let len = u32::from_le_bytes(*len) as usize;
        if len == 0 {
            // Zero padding after the last stream (the kernel aligns what follows).
            break;
        }
        let Some(block) = tail.get(..len) else {
            return Err(bad(format!(
                "legacy lz4 chunk of {len} bytes, but only {} follow",
                tail.len()
            )));
        };
        let plain = lz4::block::decompress(block, Some(LZ4_CHUNK as i32))?;
        out.extend_from_slice(&plain);
        rest = &tail[len..];
    }
    Ok(())
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compressor name that is not one of [`Compression::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown initrd compression {value:?}; expected one of gzip, zstd, xz, lz4")]
pub struct UnknownCompression {
    pub value: String,
}

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Compression, UnknownCompression> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownCompression {
                value: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that compress somewhat, over more than one lz4 chunk.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_u32;
        (0..len)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if i % 7 == 0 {
                    (state >> 24) as u8
                } else {
                    b"070701 cpio newc"[i % 16]
                }
            })
            .collect()
    }

    #[test]
    fn every_compressor_round_trips_and_is_detected_by_its_magic() {
        let plain = sample(LZ4_CHUNK + 12_345);
        for c in Compression::ALL {
            let packed = c.compress(&plain).unwrap();
            assert_eq!(Compression::detect(&packed), Some(c), "{c}");
            assert!(packed.len() < plain.len() / 2, "{c}: {}", packed.len());
            assert_eq!(c.decompress(&packed).unwrap(), plain, "{c}");
        }
    }

    #[test]
    fn same_bytes_give_the_same_compressed_bytes() {
        let plain = sample(300_000);
        for c in Compression::ALL {
            assert_eq!(
                c.compress(&plain).unwrap(),
                c.compress(&plain).unwrap(),
                "{c}"
            );
        }
    }

    #[test]
    fn segments_one_after_the_other_decompress_to_their_contents_in_order() {
        let (a, b) = (sample(1000), b"second segment".to_vec());
        for c in Compression::ALL {
            let mut both = c.compress(&a).unwrap();
            both.extend(c.compress(&b).unwrap());
            assert_eq!(
                c.decompress(&both).unwrap(),
                [a.clone(), b.clone()].concat(),
                "{c}"
            );
        }
    }

    #[test]
    fn headers_are_what_the_kernel_accepts() {
        let gz = Compression::Gzip.compress(b"x").unwrap();
        // magic, CM=8, FLG=0 (no name, no comment, no extra), MTIME=0, XFL, OS=3.
        assert_eq!(&gz[..8], b"\x1f\x8b\x08\x00\x00\x00\x00\x00");
        assert_eq!(gz[9], 3);
        let xz = Compression::Xz.compress(b"x").unwrap();
        // Stream flags: no reserved bits, check type 1 (CRC32).
        assert_eq!(&xz[6..8], b"\x00\x01");
        let lz4 = Compression::Lz4.compress(b"x").unwrap();
        assert_eq!(&lz4[..4], b"\x02\x21\x4c\x18");
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let plain = sample(100_000);
        for c in Compression::ALL {
            let packed = c.compress(&plain).unwrap();
            let cut = &packed[..packed.len() / 2];
            assert!(c.decompress(cut).is_err(), "{c}");
        }
    }

    #[test]
    fn unknown_name_is_an_error_naming_the_value_and_the_choices() {
        assert_eq!("zstd".parse::<Compression>(), Ok(Compression::Zstd));
        let error = "bzip2".parse::<Compression>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown initrd compression \"bzip2\"; expected one of gzip, zstd, xz, lz4"
        );
    }
}
