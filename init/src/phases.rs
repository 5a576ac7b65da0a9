//! Boot timing: every phase line carries the monotonic time since the kernel started, so a
//! console log shows where boot time goes, and the ready marker closes the boot.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Printed once boot is complete; tests and the bench wait for it.
pub const READY_MARKER: &str = "ready at";

pub struct Clock {
    start: Duration,
}

pub fn monotonic() -> Duration {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(Duration::from)
        .unwrap_or_default()
}

impl Clock {
    pub fn start() -> Clock {
        Clock { start: monotonic() }
    }

    pub fn now(&self) -> Duration {
        monotonic()
    }

    pub fn started(&self) -> Duration {
        self.start
    }

    pub fn phase_line(&self, name: &str, status: &str, began: Duration) -> String {
        let now = self.now();
        format!(
            "phase {name} {status} at {:.6} s, took {:.1} ms",
            now.as_secs_f64(),
            now.saturating_sub(began).as_secs_f64() * 1000.0
        )
    }

    /// The ready marker line; `mode` is how the machine booted
    /// ([`crate::firmware::BootMode`]).
    pub fn ready_line(&self, mode: &str, problems: usize) -> String {
        let now = self.now();
        format!(
            "{READY_MARKER} {:.6} s, init took {:.3} s, {mode}, {problems} problem(s)",
            now.as_secs_f64(),
            now.saturating_sub(self.start).as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_line_names_the_phase_its_status_and_times() {
        let clock = Clock::start();
        let line = clock.phase_line("mounts", "ok", clock.started());
        assert!(line.starts_with("phase mounts ok at "), "{line}");
        assert!(line.contains(" s, took "), "{line}");
        assert!(line.ends_with(" ms"), "{line}");
    }

    #[test]
    fn ready_line_starts_with_the_marker_and_counts_problems() {
        let line = Clock::start().ready_line("booted BIOS", 2);
        assert!(line.starts_with(READY_MARKER), "{line}");
        assert!(line.contains(", booted BIOS, "), "{line}");
        assert!(line.ends_with("2 problem(s)"), "{line}");
    }
}
