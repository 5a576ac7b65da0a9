//! Splitting a command line into arguments the way the kernel does.
//!
//! This follows `next_arg()` in the kernel's `lib/cmdline.c`: whitespace separates arguments
//! unless it is inside double quotes; the key is everything before the first `=`; a value that
//! starts with `"` loses that quote and a closing `"` at the end of the argument, and so does an
//! argument that starts with `"` (`"key=value with space"`). Quotes elsewhere stay part of the
//! text. Two differences: an unbalanced quote is an error here (the kernel silently takes the
//! rest of the line), and only ASCII whitespace separates (the kernel's `isspace()` also matches
//! the byte 0xA0, which in UTF-8 text is part of a character).

use std::fmt;

/// One argument of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The text before the first `=`, or the whole argument if it has none.
    pub key: String,
    /// The text after the first `=`, without enclosing quotes; `None` without `=`.
    pub value: Option<String>,
    /// Where the argument starts in the command line, in bytes.
    pub offset: usize,
}

/// A command line that cannot be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError {
    /// The byte position of the double quote that is never closed.
    pub position: usize,
    /// Where the argument with that quote starts, in bytes.
    pub arg_offset: usize,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unbalanced double quote at byte {}", self.position)
    }
}

impl std::error::Error for SplitError {}

/// Splits a command line into its arguments, like the kernel's `next_arg()`.
///
/// ```
/// let args = buildos_cmdline::split(r#"quiet buildos.ssh_key="ssh-rsa AAA user@host""#).unwrap();
/// assert_eq!(args[1].key, "buildos.ssh_key");
/// assert_eq!(args[1].value.as_deref(), Some("ssh-rsa AAA user@host"));
/// ```
pub fn split(cmdline: &str) -> Result<Vec<Arg>, SplitError> {
    match split_partial(cmdline) {
        (args, None) => Ok(args),
        (_, Some(error)) => Err(error),
    }
}

/// Whether the kernel's `isspace()` holds for an ASCII byte.
pub(crate) fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Splits what it can: the arguments before an unbalanced quote, and the error if there is one.
pub(crate) fn split_partial(cmdline: &str) -> (Vec<Arg>, Option<SplitError>) {
    let bytes = cmdline.as_bytes();
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_space(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            return (args, None);
        }
        match next_arg(cmdline, pos) {
            Ok((arg, next)) => {
                args.push(arg);
                pos = next;
            }
            Err(error) => return (args, Some(error)),
        }
    }
}

/// Reads the argument that starts at `offset` (not whitespace); returns it and where the next
/// one may start. Every index used to slice is that of an ASCII byte or the end, so slicing never
/// splits a character.
fn next_arg(cmdline: &str, offset: usize) -> Result<(Arg, usize), SplitError> {
    let bytes = cmdline.as_bytes();
    let quoted = bytes[offset] == b'"';
    let start = if quoted { offset + 1 } else { offset };
    let mut in_quote = quoted;
    let mut open_quote = offset;
    let mut equals = None;
    let mut end = start;
    while end < bytes.len() {
        let byte = bytes[end];
        if is_space(byte) && !in_quote {
            break;
        }
        if byte == b'=' && equals.is_none() {
            equals = Some(end);
        }
        if byte == b'"' {
            in_quote = !in_quote;
            if in_quote {
                open_quote = end;
            }
        }
        end += 1;
    }
    if in_quote {
        return Err(SplitError {
            position: open_quote,
            arg_offset: offset,
        });
    }
    let ends_with_quote = end > start && bytes[end - 1] == b'"';
    let (key, value) = match equals {
        None => {
            let key_end = if quoted && ends_with_quote {
                end - 1
            } else {
                end
            };
            (&cmdline[start..key_end], None)
        }
        Some(equals) => {
            let mut value_start = equals + 1;
            let mut value_end = end;
            let value_quoted = value_start < end && bytes[value_start] == b'"';
            if value_quoted {
                value_start += 1;
            }
            if (value_quoted || quoted) && ends_with_quote {
                value_end -= 1;
            }
            let value_end = value_end.max(value_start);
            (
                &cmdline[start..equals],
                Some(cmdline[value_start..value_end].to_string()),
            )
        }
    };
    let arg = Arg {
        key: key.to_string(),
        value,
        offset,
    };
    // The separating whitespace byte is consumed with the argument, like the kernel does.
    let next = if end < bytes.len() { end + 1 } else { end };
    Ok((arg, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `input` and compares the arguments, written `key` or `key=value` (with the value
    /// shown in brackets to make spaces visible), with `expect`.
    fn check(input: &str, expect: &[&str]) {
        let args = split(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let shown: Vec<String> = args
            .iter()
            .map(|a| match &a.value {
                None => a.key.clone(),
                Some(v) => format!("{}=[{v}]", a.key),
            })
            .collect();
        assert_eq!(shown, expect, "input {input:?}");
    }

    #[test]
    fn split_separates_on_whitespace_and_first_equals() {
        check("", &[]);
        check("   \n", &[]);
        check(
            "console=ttyS0  quiet\tbuildos.nice=1\n",
            &["console=[ttyS0]", "quiet", "buildos.nice=[1]"],
        );
        check("a=b=c", &["a=[b=c]"]);
        check("a= b", &["a=[]", "b"]);
        check("=x", &["=[x]"]);
    }

    #[test]
    fn split_quoted_value_keeps_spaces_and_drops_quotes() {
        check(
            r#"buildos.ssh_key="ssh-rsa AAA user@host" quiet"#,
            &["buildos.ssh_key=[ssh-rsa AAA user@host]", "quiet"],
        );
        check(r#"a="" b"#, &["a=[]", "b"]);
    }

    #[test]
    fn split_quoted_argument_keeps_spaces_and_drops_quotes() {
        check(
            r#""key=value with space" x"#,
            &["key=[value with space]", "x"],
        );
        check(r#""quiet" "two words""#, &["quiet", "two words"]);
        check(r#""key=""#, &["key=[]"]);
        check(r#""""#, &[""]);
    }

    #[test]
    fn split_inner_quotes_stay_like_the_kernel() {
        check(r#"a=x"y z"w"#, &[r#"a=[x"y z"w]"#]);
        check(r#"a=x"y""#, &[r#"a=[x"y"]"#]);
    }

    #[test]
    fn split_reports_offsets() {
        let args = split(r#"  a=1 "b=2 3"  c"#).unwrap_or_default();
        let offsets: Vec<usize> = args.iter().map(|a| a.offset).collect();
        assert_eq!(offsets, [2, 6, 15]);
    }

    #[test]
    fn cmdline_unbalanced_quote_reports_position() {
        let error = split(r#"quiet buildos.ssh_key="ssh-rsa AAA"#).err();
        assert_eq!(
            error,
            Some(SplitError {
                position: 22,
                arg_offset: 6
            })
        );
        assert_eq!(
            error.map(|e| e.to_string()).unwrap_or_default(),
            "unbalanced double quote at byte 22"
        );
        let error = split(r#"a="b c" d="e"#).err();
        assert_eq!(error.map(|e| e.position), Some(10));
        let error = split(r#""quiet"#).err();
        assert_eq!(error.map(|e| e.position), Some(0));
    }

    #[test]
    fn split_partial_keeps_arguments_before_the_bad_quote() {
        let (args, error) = split_partial(r#"a=1 b="2 c=3"#);
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].key, "a");
        assert_eq!(error.map(|e| e.arg_offset), Some(4));
    }

    #[test]
    fn split_non_ascii_text_stays_whole() {
        check("a=é\u{a0}b c", &["a=[é\u{a0}b]", "c"]);
    }
}
