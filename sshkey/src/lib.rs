//! An OpenSSH public key line (`<type> <base64 blob> [comment]`) and its SHA256 fingerprint,
//! `SHA256:` and the unpadded base64 of the SHA-256 of the blob, as `ssh-keygen -l` prints it.
//! init prints its host keys' fingerprints at every boot and the monitor puts them in the host
//! record; computing them here costs no `ssh-keygen` run (hundreds of milliseconds each under
//! software emulation, where the program and its libraries are read and linked first).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

/// A public key without its comment, with its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `<type> <base64 blob>`.
    pub public: String,
    /// `SHA256:...`.
    pub fingerprint: String,
}

/// The key of an OpenSSH public key line; `None` for a line that is not `<type> <base64>`.
pub fn parse(line: &str) -> Option<Key> {
    let mut words = line.split_whitespace();
    let (kind, blob) = (words.next()?, words.next()?);
    let bytes = STANDARD.decode(blob).ok()?;
    Some(Key {
        public: format!("{kind} {blob}"),
        fingerprint: format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&bytes))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIrudlSfZ9CgNxMVH1MrKbWn8XJbANllt9YGL1s/z2dX";

    #[test]
    fn fingerprint_is_what_ssh_keygen_prints() {
        // `ssh-keygen -lf` of a file holding this line prints this fingerprint.
        let key = parse(&format!("{ED25519} root@host")).unwrap();
        assert_eq!(key.public, ED25519);
        assert_eq!(
            key.fingerprint,
            "SHA256:gk97cDO77dq8xFP2vHsFeliHeqm4X3nJiRqmWnnPRug"
        );
    }

    #[test]
    fn a_line_without_a_base64_blob_is_no_key() {
        assert_eq!(parse("ssh-ed25519 !!!"), None);
        assert_eq!(parse("ssh-ed25519"), None);
        assert_eq!(parse(""), None);
    }

    proptest! {
        #[test]
        fn fuzz_parse_keeps_type_and_blob(kind in "[a-z0-9-]{1,20}", blob in proptest::collection::vec(any::<u8>(), 1..200), comment in "[ -~]{0,40}") {
            // A blob of at least one byte: an empty one leaves no blob field, and a comment
            // that reads as base64 ("AaAa") then stands in its place, as it would for ssh.
            let encoded = STANDARD.encode(&blob);
            let line = format!("{kind} {encoded} {comment}");
            let Some(key) = parse(&line) else {
                return Err(TestCaseError::fail(format!("no key in {line:?}")));
            };
            prop_assert_eq!(key.public, format!("{kind} {encoded}"));
            prop_assert!(key.fingerprint.starts_with("SHA256:"));
            prop_assert_eq!(key.fingerprint.len(), "SHA256:".len() + 43);
        }
    }
}
