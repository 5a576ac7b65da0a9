//! Kernel module names and modules.alias patterns as kmod reads them, for the image builder
//! (which writes the image's modules.alias and resolves the profile's names) and for init
//! (which matches this machine's devices against it at boot): both must agree on what a name
//! is and what a pattern matches, so the one implementation lives here.
//!
//! - A module's name folds `-` to `_` (`nf-nat` and `nf_nat` are one module).
//! - An alias pattern folds `-` to `_` too, except inside a `[...]` class, where `-` makes a
//!   range.
//! - Patterns match as `fnmatch(3)` without flags: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`/`[^x]`,
//!   and `\` escaping the next character.

/// A module's name as the kernel knows it: `-` folded to `_`.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// An alias (or a device's modalias) as kmod compares them: `-` becomes `_` outside `[...]`.
pub fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The module name a file path implies: the file name without `.ko` (and any compression
/// suffix after it), normalized. `None` when the file is not a module.
pub fn name_from_path(path: &str) -> Option<String> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = match file.strip_suffix(".ko") {
        Some(stem) => stem,
        None => file.rsplit_once(".ko.")?.0,
    };
    Some(normalize_name(stem))
}

/// Parses the bracket expression starting at `p[at] == b'['`. Returns whether `c` is in it and
/// the index after the closing `]`, or `None` when there is no closing `]` (then `[` is literal).
fn class(p: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&hi| hi != b']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// Whether `text` matches `pattern`.
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: pattern index after it, and the text index it will
    // swallow up to next.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match class(p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                None => (t[ti] == b'[').then_some(pi + 1),
            },
            Some(b'\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((after_star, swallowed))) => {
                pi = after_star;
                ti = swallowed + 1;
                star = Some((after_star, swallowed + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_cases() {
        let cases = [
            ("fs-btrfs", "fs-btrfs", true),
            ("fs-btrfs", "fs-btrf", false),
            (
                "pci:v00008086d0000100Esv*sd*bc*sc*i*",
                "pci:v00008086d0000100Esv1sd2bc3sc4i5",
                true,
            ),
            (
                "pci:v00008086d0000100Esv*sd*bc*sc*i*",
                "pci:v00008086d0000100Fsv1sd2bc3sc4i5",
                false,
            ),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]x", "bx", true),
            ("[!abc]x", "bx", false),
            ("[a-c]x", "cx", true),
            ("[]]", "]", true),
            ("[", "[", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("crypto-crc32c", "crypto-crc32c", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(fnmatch(pattern, text), want, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn device_modaliases_match_their_driver_patterns() {
        let yes = [
            (
                "pci:v00008086d0000100Esv*sd*bc*sc*i*",
                "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
            ),
            ("virtio:d00000001v*", "virtio:d00000001v00001AF4"),
            ("[!a-c]x", "dx"),
            ("[^a]x", "bx"),
            ("[]]x", "]x"),
            ("x[", "x["),
            ("*ab*ab*", "xxabyyabzz"),
            (
                "cpu:type:x86,ven*fam*mod*:feature:*0085*",
                "cpu:type:x86,ven0000fam0006mod003A:feature:,0000,0001,0085,0089",
            ),
        ];
        for (pattern, text) in yes {
            assert!(fnmatch(pattern, text), "{pattern} should match {text}");
        }
        let no = [
            ("[a-c]x", "dx"),
            ("[!a-c]x", "ax"),
            ("*ab", "abx"),
            ("virtio:d00000001v*", "virtio:d00000002v00001AF4"),
        ];
        for (pattern, text) in no {
            assert!(!fnmatch(pattern, text), "{pattern} should not match {text}");
        }
    }

    #[test]
    fn names_fold_dashes_and_aliases_keep_them_in_classes() {
        assert_eq!(normalize_name("nf-nat"), "nf_nat");
        assert_eq!(normalize_alias("scsi:t-0x0[0-9]*"), "scsi:t_0x0[0-9]*");
        assert_eq!(
            name_from_path("kernel/net/netfilter/nf-nat.ko"),
            Some("nf_nat".to_owned())
        );
        assert_eq!(name_from_path("x/btrfs.ko.xz"), Some("btrfs".to_owned()));
        assert_eq!(name_from_path("x/btrfs.ko.zst"), Some("btrfs".to_owned()));
        assert_eq!(name_from_path("modules.dep"), None);
    }
}
