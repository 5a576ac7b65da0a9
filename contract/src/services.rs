//! What init supervises, as data: each service's name, program, arguments, when it starts, how
//! long it gets to stop, and why the host runs it. init's supervisor turns each entry into a
//! running child; a program the image does not carry is reported once and left out.

use crate::programs;

/// When init adds a service to its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Once boot is done (the `services` step).
    AfterBoot,
    /// When the network step made br1 (with its addresses) and wrote dnsmasq's configuration.
    Br1Up,
    /// When a toolchain's machines are on br0 (`buildos.toolchain.<name>.bridge=br0`), so
    /// they need TFTP there.
    ToolchainOnBr0,
}

/// How long a service gets between SIGTERM and SIGKILL at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// A fixed number of seconds.
    Seconds(u64),
    /// `buildos.agent_grace` plus this many seconds: the monitor stops its agents within the
    /// agents' grace and needs a little more to finish.
    AgentGracePlus(u64),
}

impl Grace {
    /// The grace in seconds, given `buildos.agent_grace`.
    pub const fn seconds(self, agent_grace: u32) -> u64 {
        match self {
            Grace::Seconds(seconds) => seconds,
            Grace::AgentGracePlus(extra) => agent_grace as u64 + extra,
        }
    }
}

/// One supervised program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Its name in console lines and its log, `/run/buildos/log/<name>.log`.
    pub name: &'static str,
    /// The absolute path of the program in the image.
    pub program: &'static str,
    /// Its arguments; `{run}` in one stands for the runtime directory ([`crate::run::DIR`] on
    /// a host), where init wrote the service's configuration.
    pub args: &'static [&'static str],
    pub start: Start,
    pub grace: Grace,
    /// A directory the service needs to exist before it starts.
    pub needs_dir: Option<&'static str>,
    /// Why a build host runs it: init prints it beside the name when the service is added
    /// during boot.
    pub why: &'static str,
}

impl Service {
    /// The arguments with `{run}` replaced by `run`.
    pub fn args_in(&self, run: &str) -> Vec<String> {
        self.args.iter().map(|a| a.replace("{run}", run)).collect()
    }
}

/// What a service gets between SIGTERM and SIGKILL unless its entry says otherwise.
pub const DEFAULT_GRACE: Grace = Grace::Seconds(5);

/// Every service, in the order init adds them within one [`Start`].
pub const SERVICES: &[Service] = &[
    Service {
        name: "dnsmasq",
        program: programs::DNSMASQ,
        args: &["--keep-in-foreground", "--conf-file={run}/dnsmasq-br1.conf"],
        start: Start::Br1Up,
        grace: DEFAULT_GRACE,
        needs_dir: None,
        why: "DHCP and TFTP on br1",
    },
    Service {
        name: "dnsmasq-br0",
        program: programs::DNSMASQ,
        args: &["--keep-in-foreground", "--conf-file={run}/dnsmasq-br0.conf"],
        start: Start::ToolchainOnBr0,
        grace: DEFAULT_GRACE,
        needs_dir: None,
        why: "TFTP on br0, for its machines",
    },
    Service {
        name: "sshd",
        program: programs::SSHD,
        // In the foreground, logging to its output (init's log file), not to syslog.
        args: &["-D", "-e"],
        start: Start::AfterBoot,
        grace: DEFAULT_GRACE,
        needs_dir: Some(programs::SSHD_RUN_DIR),
        why: "logins of user build with the keys of buildos.ssh_key",
    },
    Service {
        name: "monitor",
        program: programs::MONITOR,
        args: &[],
        start: Start::AfterBoot,
        grace: Grace::AgentGracePlus(5),
        needs_dir: None,
        why: "toolchains, agents, the host-up mail and polling for a new build",
    },
];

/// The service named `name`.
pub fn named(name: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|s| s.name == name)
}

/// The services that start at `start`, in table order.
pub fn starting(start: Start) -> impl Iterator<Item = &'static Service> {
    SERVICES.iter().filter(move |s| s.start == start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run;

    #[test]
    fn dnsmasq_reads_the_configuration_init_writes_in_the_runtime_directory() {
        let br1 = named("dnsmasq").unwrap();
        assert_eq!(
            br1.args_in(run::DIR),
            [
                "--keep-in-foreground".to_owned(),
                format!("--conf-file={}", run::path(run::DNSMASQ_BR1_CONF))
            ]
        );
        let br0 = named("dnsmasq-br0").unwrap();
        assert_eq!(
            br0.args_in("/tmp/x")[1],
            format!("--conf-file=/tmp/x/{}", run::DNSMASQ_BR0_CONF)
        );
    }

    #[test]
    fn every_service_has_a_unique_name_an_absolute_program_and_a_reason() {
        for (i, service) in SERVICES.iter().enumerate() {
            assert!(service.program.starts_with('/'), "{service:?}");
            assert!(!service.why.is_empty(), "{service:?}");
            assert!(
                SERVICES[..i].iter().all(|s| s.name != service.name),
                "{service:?}"
            );
        }
        let after_boot: Vec<&str> = starting(Start::AfterBoot).map(|s| s.name).collect();
        assert_eq!(after_boot, ["sshd", "monitor"]);
        assert_eq!(named("monitor").unwrap().grace.seconds(30), 35);
        assert_eq!(named("sshd").unwrap().grace.seconds(30), 5);
    }
}
