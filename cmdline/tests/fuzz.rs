//! Property tests of the command line parser: valid command lines, mutated (bytes and
//! fragments inserted, ranges deleted or copied), through the same entry point init uses.
//! `PROPTEST_CASES` sets how many cases a run tries.

use buildos_cmdline::{parse, parse_bytes, render, PARAMS};
use proptest::prelude::*;
use proptest::sample::{select, subsequence, Index};

/// Every parameter's example, as a command line argument, once for the default toolchain and
/// (for per-toolchain parameters) once for `gcc`.
fn valid_args() -> Vec<String> {
    let arg = |name: &str, value: &str| {
        if value.contains(' ') {
            format!("{name}=\"{value}\"")
        } else {
            format!("{name}={value}")
        }
    };
    let mut args = vec!["console=ttyS0".to_string(), "quiet".to_string()];
    for param in PARAMS {
        args.push(arg(param.name, param.example));
        if param.per_toolchain {
            args.push(arg(&format!("{}.gcc", param.name), param.example));
        }
    }
    args
}

/// Text that reaches the parser's corners: quotes, separators, prefixes, URLs, control
/// characters and bytes that are not UTF-8.
const FRAGMENTS: &[&[u8]] = &[
    b"buildos.",
    b"=",
    b"\"",
    b" ",
    b"\t",
    b"\n",
    b"\r",
    b"\x1b[2J",
    b".",
    b".gcc",
    b"-",
    b"_",
    b"0",
    b"-20",
    b"4294967296",
    b"3/2",
    b"/",
    b",",
    b":",
    b"[::1]",
    b"@",
    b"tftp://",
    b"https://",
    b"10.0.0.1",
    b"172.30.0.1/24",
    b"\xc3\xa9",
    b"\xc2\xa0",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\0",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(Index, &'static [u8]),
    Byte(Index, u8),
    Delete(Index, usize),
    Copy(Index, Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), select(FRAGMENTS)).prop_map(|(at, text)| Mutation::Insert(at, text)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Byte(at, byte)),
        (any::<Index>(), 1..16usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<Index>(), any::<Index>(), 1..64usize)
            .prop_map(|(from, to, n)| Mutation::Copy(from, to, n)),
    ]
}

fn apply(line: &mut Vec<u8>, mutation: &Mutation) {
    let at = |index: &Index, len: usize| index.index(len + 1);
    match mutation {
        Mutation::Insert(index, text) => {
            let at = at(index, line.len());
            line.splice(at..at, text.iter().copied());
        }
        Mutation::Byte(index, byte) => {
            let at = at(index, line.len());
            line.insert(at, *byte);
        }
        Mutation::Delete(index, n) => {
            let at = at(index, line.len());
            let end = (at + n).min(line.len());
            line.drain(at..end);
        }
        Mutation::Copy(from, to, n) => {
            let from = at(from, line.len());
            let end = (from + n).min(line.len());
            let part: Vec<u8> = line[from..end].to_vec();
            let to = at(to, line.len());
            line.splice(to..to, part);
        }
    }
}

fn mutated_line() -> impl Strategy<Value = Vec<u8>> {
    let args = valid_args();
    let count = args.len();
    (
        subsequence(args, 0..=count),
        prop::collection::vec(mutation(), 0..12),
    )
        .prop_map(|(args, mutations)| {
            let mut line = args.join(" ").into_bytes();
            for mutation in &mutations {
                apply(&mut line, mutation);
            }
            line
        })
}

proptest! {
    #[test]
    fn fuzz_parse(line in mutated_line()) {
        let parsed = parse_bytes(&line);
        for diagnostic in &parsed.diagnostics {
            let shown = diagnostic.to_string();
            prop_assert!(
                !shown.contains(|c: char| c.is_control()),
                "a diagnostic spans lines: {shown:?}"
            );
            prop_assert!(diagnostic.offset <= line.len().max(2047), "{diagnostic:?}");
        }
        if let Ok(text) = std::str::from_utf8(&line) {
            prop_assert_eq!(&parse(text), &parsed);
        }
        // What init accepted renders to a line that parses back to it, and rendering again
        // changes nothing.
        let rendered = render(&parsed.config);
        let again = parse(&rendered);
        prop_assert_eq!(&again.config, &parsed.config, "rendered {:?}", rendered);
        prop_assert_eq!(render(&again.config), rendered);
    }
}
