//! Running as root for another user: what `sudo buildos-machine` may do.
//!
//! On a build host user `build` may run `buildos-machine` as root through sudo, because the
//! host side of adding, upgrading and removing a machine needs root (`btrfs receive`,
//! deleting subvolumes). Root for another user must not be more than that: only the host-side
//! operations run, only on the fixed machines root, with the fixed owner and monitor socket,
//! and nothing that starts a command of the caller's choosing (`--remote-command`, ssh and its
//! options, which can run `ProxyCommand`s). Everything else is refused by [`check`] before
//! anything runs, with a message naming the option and why.
//!
//! Who asks is read once, by [`caller`]: root for another user is an effective uid 0 with a
//! different real uid (a set-user-ID bit), or with `SUDO_UID` naming a user other than root
//! (sudo sets it and its environment reset keeps the caller from removing it).

use std::ffi::OsStr;
use std::path::Path;

use crate::error::{Error, Result};
use crate::host::{Owner, BUILD_OWNER, MACHINES_ROOT};

/// Who runs this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Runs with its own rights (an ordinary user, or root itself): nothing to guard.
    Itself,
    /// Runs as root for the user `uid`, group `gid`.
    OnBehalfOf { uid: u32, gid: u32 },
}

/// The environment a process running as root for another user gets, whatever the caller's
/// was: the programs it runs (btrfs) are found on the system's own path only.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Who runs this process: see the module documentation.
pub fn caller() -> Result<Caller> {
    caller_of(
        nix::unistd::getuid().as_raw(),
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getgid().as_raw(),
        std::env::var_os("SUDO_UID").as_deref(),
        std::env::var_os("SUDO_GID").as_deref(),
    )
}

/// [`caller`] from the process's ids and sudo's variables.
pub fn caller_of(
    real: u32,
    effective: u32,
    real_gid: u32,
    sudo_uid: Option<&OsStr>,
    sudo_gid: Option<&OsStr>,
) -> Result<Caller> {
    if real != effective {
        return Ok(Caller::OnBehalfOf {
            uid: real,
            gid: real_gid,
        });
    }
    if effective != 0 {
        return Ok(Caller::Itself);
    }
    let Some(sudo_uid) = sudo_uid else {
        return Ok(Caller::Itself);
    };
    let id = |name: &'static str, value: &OsStr| {
        value
            .to_str()
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| Error::Refused {
                what: format!("{name}={}", value.to_string_lossy()),
                reason: "it names no numeric user or group, so the caller is unknown".into(),
            })
    };
    let uid = id("SUDO_UID", sudo_uid)?;
    if uid == 0 {
        return Ok(Caller::Itself);
    }
    let gid = match sudo_gid {
        Some(gid) => id("SUDO_GID", gid)?,
        None => uid,
    };
    Ok(Caller::OnBehalfOf { uid, gid })
}

/// One argument given on the command line: an option (`--root`) or a positional
/// argument (`<revision>`), with its value as given (`true` for a flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given {
    pub option: String,
    pub value: String,
}

impl Given {
    pub fn new(option: impl Into<String>, value: impl Into<String>) -> Given {
        Given {
            option: option.into(),
            value: value.into(),
        }
    }
}

/// What an argument of an allowed operation may be through sudo.
enum Rule {
    /// Anything the operation itself accepts (names are checked by the operation).
    Any,
    /// Only values for which the test holds; the text says what is expected and why.
    Only(fn(&str) -> bool, &'static str),
}

struct Allowed {
    subcommand: &'static str,
    arguments: &'static [(&'static str, Rule)],
    /// Arguments that must be given: a login through sudo only resumes.
    required: &'static [(&'static str, &'static str)],
}

fn is_machines_root(value: &str) -> bool {
    Path::new(value) == Path::new(MACHINES_ROOT)
}

fn is_build_owner(value: &str) -> bool {
    value.parse::<Owner>() == Ok(BUILD_OWNER)
}

const ROOT_ONLY: Rule = Rule::Only(
    is_machines_root,
    "through sudo the machines root is /build/machines, where the host mounts its volumes",
);
const OWNER_ONLY: Rule = Rule::Only(
    is_build_owner,
    "through sudo a machine's files are owned by user build, 1000:1000",
);

/// The host-side operations, as the development machine's `add`, `upgrade` and `login
/// --resume` and an operator on the host run them.
const ALLOWED: &[Allowed] = &[
    Allowed {
        subcommand: "receive",
        arguments: &[
            ("<revision>", Rule::Any),
            ("--volume", Rule::Any),
            ("--new", Rule::Any),
            ("--remove-old", Rule::Any),
            ("--root", ROOT_ONLY),
            ("--owner", OWNER_ONLY),
        ],
        required: &[],
    },
    Allowed {
        subcommand: "remove",
        arguments: &[
            ("<machine>", Rule::Any),
            ("--volume", Rule::Any),
            ("--timeout", Rule::Any),
            ("--root", ROOT_ONLY),
        ],
        required: &[],
    },
    Allowed {
        subcommand: "list",
        arguments: &[("--json", Rule::Any), ("--root", ROOT_ONLY)],
        required: &[],
    },
    Allowed {
        subcommand: "login",
        arguments: &[
            ("<toolchain>", Rule::Any),
            ("<instance>", Rule::Any),
            ("--resume", Rule::Any),
        ],
        required: &[(
            "--resume",
            "through sudo login only resumes a machine on this host (--resume); open the VNC \
             tunnel from the development machine, without sudo",
        )],
    },
];

/// Why an argument an allowed operation does not take through sudo is refused.
fn why_not(option: &str) -> &'static str {
    match option {
        "--remote-command" | "--remote-program" => {
            "it runs a command of the caller's choosing, which through sudo would run as root"
        }
        "--host" | "--ssh-option" | "--run" | "--port" => {
            "it runs ssh, whose options (ProxyCommand, LocalCommand) run commands, which through \
             sudo would run as root"
        }
        "--socket" => {
            "through sudo the QEMU monitor socket is the agent's, /tmp/monitor-<toolchain>-<instance>"
        }
        _ => "the host-side operations through sudo do not take it",
    }
}

/// Checks what the command line asks for against what root for another user may do: the
/// host-side operations (`receive`, `remove`, `list`, `login --resume`) with the fixed
/// paths and owner, and nothing that runs a command. A refusal names the first argument it
/// does not allow and why; nothing has run.
pub fn check(subcommand: &str, given: &[Given]) -> Result<()> {
    let Some(allowed) = ALLOWED.iter().find(|a| a.subcommand == subcommand) else {
        return Err(Error::Refused {
            what: subcommand.to_string(),
            reason: format!(
                "`{subcommand}` is not a host-side operation; through sudo only receive, remove, \
                 list and login --resume run (add and upgrade run on the development machine, \
                 without sudo on the host)"
            ),
        });
    };
    for argument in given {
        let rule = allowed
            .arguments
            .iter()
            .find(|(option, _)| *option == argument.option)
            .map(|(_, rule)| rule);
        let refused = |reason: &str| Error::Refused {
            what: format!("{subcommand} {} {}", argument.option, argument.value),
            reason: reason.to_string(),
        };
        match rule {
            None => {
                return Err(Error::Refused {
                    what: format!("{subcommand} {}", argument.option),
                    reason: why_not(&argument.option).to_string(),
                })
            }
            Some(Rule::Any) => {}
            Some(Rule::Only(test, expected)) => {
                if !test(&argument.value) {
                    return Err(refused(expected));
                }
            }
        }
    }
    for (option, reason) in allowed.required {
        if !given.iter().any(|g| g.option == *option) {
            return Err(Error::Refused {
                what: format!("{subcommand} without {option}"),
                reason: reason.to_string(),
            });
        }
    }
    Ok(())
}

/// Gives up root for the caller's user and group, for an operation that needs no root
/// (resuming a machine through the socket the caller's own QEMU made).
pub fn become_caller(caller: Caller) -> Result<()> {
    let Caller::OnBehalfOf { uid, gid } = caller else {
        return Ok(());
    };
    let drop = || -> nix::Result<()> {
        nix::unistd::setgroups(&[])?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
    };
    drop().map_err(|errno| Error::Refused {
        what: format!("running as {uid}:{gid}"),
        reason: format!("cannot give up root for the caller: {}", errno.desc()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(pairs: &[(&str, &str)]) -> Vec<Given> {
        pairs.iter().map(|(o, v)| Given::new(*o, *v)).collect()
    }

    #[test]
    fn sudo_and_setuid_callers_are_told_apart_from_root_itself() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(caller_of(0, 0, 0, None, None).unwrap(), Caller::Itself);
        assert_eq!(
            caller_of(1000, 1000, 1000, None, None).unwrap(),
            Caller::Itself
        );
        // A variable left in an ordinary user's environment gives no rights to guard.
        assert_eq!(
            caller_of(1000, 1000, 1000, os("0"), None).unwrap(),
            Caller::Itself
        );
        assert_eq!(
            caller_of(0, 0, 0, os("0"), os("0")).unwrap(),
            Caller::Itself
        );
        assert_eq!(
            caller_of(0, 0, 0, os("1000"), os("1001")).unwrap(),
            Caller::OnBehalfOf {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(
            caller_of(1000, 0, 1000, None, None).unwrap(),
            Caller::OnBehalfOf {
                uid: 1000,
                gid: 1000
            }
        );
        let error = caller_of(0, 0, 0, os("build"), None)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("`SUDO_UID=build` is refused"), "{error}");
    }

    #[test]
    fn the_host_side_as_the_development_machine_sends_it_passes() {
        check(
            "receive",
            &given(&[
                ("--root", "/build/machines"),
                ("--volume", "default"),
                ("--owner", "1000:1000"),
                ("--new", "true"),
                ("<revision>", "linux-gcc_6-1.0"),
            ]),
        )
        .unwrap();
        check(
            "list",
            &given(&[("--json", "true"), ("--root", "/build/machines/")]),
        )
        .unwrap();
        check("list", &[]).unwrap();
        check("remove", &given(&[("<machine>", "vm"), ("--timeout", "5")])).unwrap();
        check(
            "login",
            &given(&[
                ("<toolchain>", "default"),
                ("<instance>", "1"),
                ("--resume", "true"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn every_other_form_is_refused_naming_the_argument() {
        // A subcommand, the arguments given, how the refusal starts.
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("add", &[], "`add` is refused"),
            ("upgrade", &[], "`upgrade` is refused"),
            (
                "login",
                &[("--resume", "true"), ("--remote-command", "sh")],
                "`login --remote-command` is refused",
            ),
            (
                "login",
                &[("--resume", "true"), ("--ssh-option", "ProxyCommand=sh")],
                "`login --ssh-option` is refused",
            ),
            (
                "login",
                &[("--resume", "true"), ("--socket", "/run/x")],
                "`login --socket` is refused",
            ),
            ("login", &[("--run", "true")], "`login --run` is refused"),
            ("login", &[], "`login without --resume` is refused"),
            (
                "receive",
                &[("--root", "/etc")],
                "`receive --root /etc` is refused",
            ),
            (
                "receive",
                &[("--owner", "0:0")],
                "`receive --owner 0:0` is refused",
            ),
            (
                "list",
                &[("--root", "/root")],
                "`list --root /root` is refused",
            ),
            (
                "remove",
                &[("--root", "/build/machines/..")],
                "`remove --root /build/machines/..` is refused",
            ),
        ];
        for (subcommand, pairs, want) in cases {
            let error = check(subcommand, &given(pairs)).unwrap_err().to_string();
            assert!(
                error.starts_with(want) && error.ends_with("; nothing was run"),
                "{subcommand} {pairs:?}: {error}"
            );
        }
    }

    /// Arguments a command line might give, valid and not: every option of every subcommand,
    /// with values near the fixed ones.
    fn any_given() -> impl proptest::strategy::Strategy<Value = Given> {
        use proptest::prelude::*;
        // Mostly the options whose values matter or that run commands, the rest sometimes.
        let options = prop_oneof![
            3 => prop::sample::select(vec![
                "--root",
                "--owner",
                "--socket",
                "--host",
                "--remote-command",
                "--remote-program",
                "--ssh-option",
                "--port",
                "--run",
            ]),
            1 => prop::sample::select(vec![
                "<revision>",
                "<machine>",
                "<toolchain>",
                "<instance>",
                "<subvolume>",
                "--volume",
                "--new",
                "--remove-old",
                "--timeout",
                "--json",
                "--resume",
                "--parent",
                "--full",
                "",
                "--ROOT",
            ]),
        ];
        let values = prop::sample::select(vec![
            "/build/machines",
            "/build/machines/",
            "/build/machines/.",
            "/build/machines/..",
            "//build/machines",
            "/build/machines/default",
            "build/machines",
            "/tmp",
            "1000:1000",
            "1000",
            "1000:0",
            "0:1000",
            "0",
            "0:0",
            "+1000:1000",
            "true",
            "sh -c id",
            "ProxyCommand=sh",
            "",
        ]);
        (options, values).prop_map(|(o, v)| Given::new(o, v))
    }

    proptest::proptest! {
        /// Whatever the command line, what passes the check is a host-side operation with
        /// the fixed root and owner and nothing that runs a command.
        #[test]
        fn fuzz_sudo_check_lets_only_the_host_side_through(
            case in 0usize..4,
            other_subcommand in proptest::option::weighted(0.2, proptest::sample::select(vec![
                "receive", "remove", "list", "login", "add", "upgrade", "", "Receive",
                "receive ", "help",
            ])),
            extra in proptest::collection::vec(any_given(), 0..3),
            drop_at in proptest::option::of(0usize..6),
        ) {
            // Mutations of what the development machine and an operator really send.
            let valid = [
                ("receive", given(&[("--root", "/build/machines"), ("--volume", "default"),
                        ("--owner", "1000:1000"), ("--new", "true"),
                        ("<revision>", "vm-1.0")])),
                ("remove", given(&[("<machine>", "vm"), ("--timeout", "5")])),
                ("list", given(&[("--json", "true"), ("--root", "/build/machines")])),
                ("login", given(&[("<toolchain>", "default"), ("<instance>", "1"),
                        ("--resume", "true")])),
            ];
            let subcommand = other_subcommand.unwrap_or(valid[case].0);
            let mut arguments = valid[case].1.clone();
            arguments.extend(extra);
            if let Some(at) = drop_at {
                if at < arguments.len() {
                    arguments.remove(at);
                }
            }
            let outcome = check(subcommand, &arguments);
            if let Err(error) = &outcome {
                let text = error.to_string();
                proptest::prop_assert!(text.ends_with("; nothing was run"), "{}", text);
            }
            if outcome.is_ok() {
                proptest::prop_assert!(
                    ["receive", "remove", "list", "login"].contains(&subcommand)
                );
                for argument in &arguments {
                    proptest::prop_assert!(
                        ![
                            "--socket", "--host", "--remote-command", "--remote-program",
                            "--ssh-option", "--port", "--run",
                        ]
                        .contains(&argument.option.as_str()),
                        "{:?} passed", argument
                    );
                    if argument.option == "--root" {
                        // The same directory, component by component: no `..`, no other path.
                        proptest::prop_assert_eq!(
                            Path::new(&argument.value).components().collect::<Vec<_>>(),
                            Path::new(MACHINES_ROOT).components().collect::<Vec<_>>()
                        );
                    }
                    if argument.option == "--owner" {
                        proptest::prop_assert_eq!(argument.value.parse::<Owner>(), Ok(BUILD_OWNER));
                    }
                }
                if subcommand == "login" {
                    proptest::prop_assert!(arguments.iter().any(|a| a.option == "--resume"));
                }
            }
        }
    }
}
