//! Ethernet MAC addresses as the inventory names hosts by them.

use std::fmt;

/// A MAC address. Parsed from six hex pairs separated by `:` or `-` (one separator throughout),
/// in either case; displayed in lower case with colons, like `de:ad:be:ef:b8:da`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac([u8; 6]);

/// What a MAC address must look like, for error messages.
pub const MAC_EXPECTED: &str =
    "a MAC address of six hex pairs separated by : or -, like de:ad:be:ef:b8:da";

impl Mac {
    /// Parses `de:ad:be:ef:b8:da`, `DE-AD-BE-EF-B8-DA` and the like; `None` for anything else.
    pub fn parse(text: &str) -> Option<Mac> {
        let separator = if text.contains(':') { ':' } else { '-' };
        let pairs: Vec<&str> = text.split(separator).collect();
        if pairs.len() != 6 {
            return None;
        }
        let mut bytes = [0u8; 6];
        for (byte, pair) in bytes.iter_mut().zip(&pairs) {
            if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Mac(bytes))
    }

    /// Lower-case hex pairs joined by `-`, as pxelinux and iPXE's `${mac:hexhyp}` spell it.
    pub fn hyphenated(&self) -> String {
        self.pairs().join("-")
    }

    /// The name of this host's file in `pxelinux.cfg/`: `01-` (Ethernet) and the hyphenated
    /// address.
    pub fn pxelinux_name(&self) -> String {
        format!("01-{}", self.hyphenated())
    }

    /// The name of this host's iPXE script in `ipxe/`.
    pub fn ipxe_name(&self) -> String {
        format!("{}.ipxe", self.hyphenated())
    }

    /// The name of this host's GRUB configuration in `grub/`: `grub.cfg-01-` and the hyphenated
    /// address, the name GRUB's own network configuration search uses.
    pub fn grub_name(&self) -> String {
        format!("grub.cfg-{}", self.pxelinux_name())
    }

    fn pairs(&self) -> Vec<String> {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pairs().join(":"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_spellings_of_one_address_are_equal() {
        let canonical = Mac::parse("de:ad:be:ef:b8:da").unwrap();
        for spelling in [
            "DE:AD:BE:EF:B8:DA",
            "de-ad-be-ef-b8-da",
            "De-aD-bE-Ef-B8-dA",
        ] {
            assert_eq!(Mac::parse(spelling), Some(canonical), "{spelling}");
        }
        assert_eq!(canonical.to_string(), "de:ad:be:ef:b8:da");
        assert_eq!(canonical.pxelinux_name(), "01-de-ad-be-ef-b8-da");
        assert_eq!(canonical.ipxe_name(), "de-ad-be-ef-b8-da.ipxe");
        assert_eq!(canonical.grub_name(), "grub.cfg-01-de-ad-be-ef-b8-da");
    }

    #[test]
    fn mac_malformed_is_rejected() {
        for bad in [
            "",
            "de:ad:be:ef:b8",
            "de:ad:be:ef:b8:da:00",
            "de:ad:be:ef:b8:dz",
            "de:ad-be:ef:b8:da",
            "dead.beef.b8da",
            "deadbeefb8da",
            "d:ead:be:ef:b8:da",
            "+e:ad:be:ef:b8:da",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad}");
        }
    }
}
