//! The doubling wait with a cap: the first wait, then twice the last, never more than the cap.
//!
//! One implementation for every retry and restart in buildos: init's service restarts and
//! DHCP retransmissions, the monitor's download retries, mail relay retries, agent restarts
//! and failed-install retries (counted in polls rather than time, hence the [`Step`] unit).
//! Pure arithmetic: no clock, no sleeping, no panics; the caller decides when to wait.

use std::time::Duration;

/// What a wait is measured in: a [`Duration`], or a count such as polls (`u32`).
pub trait Step: Copy + Ord {
    /// Twice this, or the largest value when that overflows.
    fn doubled(self) -> Self;
}

impl Step for Duration {
    fn doubled(self) -> Self {
        self.saturating_mul(2)
    }
}

impl Step for u32 {
    fn doubled(self) -> Self {
        self.saturating_mul(2)
    }
}

/// A doubling wait from `first` up to `max`, and where a run of failures stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff<T = Duration> {
    first: T,
    max: T,
    next: T,
}

impl<T: Step> Backoff<T> {
    /// Waits `first`, then twice as long each time, never more than `max` (nor `first` more
    /// than `max`).
    pub const fn new(first: T, max: T) -> Backoff<T> {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait after one more failure in a row: `first` after the first, then doubling.
    pub fn next_wait(&mut self) -> T {
        let wait = self.next.min(self.max);
        self.next = wait.doubled().min(self.max);
        wait
    }

    /// A success ends the run of failures: the next wait is `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The wait after the `n`-th failure in a row (from 1; 0 counts as 1), without keeping
    /// count: what [`Backoff::next_wait`] returns the `n`-th time after a reset.
    pub fn nth(&self, n: u32) -> T {
        let mut wait = self.first.min(self.max);
        for _ in 1..n {
            let doubled = wait.doubled().min(self.max);
            if doubled == wait {
                break;
            }
            wait = doubled;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(waits: impl IntoIterator<Item = Duration>) -> Vec<u64> {
        waits.into_iter().map(|w| w.as_secs()).collect()
    }

    #[test]
    fn waits_double_from_the_first_up_to_the_cap_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        assert_eq!(secs(waits), [1, 2, 4, 8, 16, 32, 60, 60]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_secs(1));
        assert_eq!(backoff.nth(0), Duration::from_secs(1));
        assert_eq!(backoff.nth(3), Duration::from_secs(4));
        assert_eq!(backoff.nth(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn counts_double_like_durations() {
        let mut polls = Backoff::new(1u32, 32);
        let waits: Vec<u32> = (0..8).map(|_| polls.next_wait()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn a_first_wait_over_the_cap_is_the_cap_and_huge_waits_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(backoff.next_wait(), Duration::from_secs(5));
        assert_eq!(backoff.nth(1), Duration::from_secs(5));
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        huge.next_wait();
        assert_eq!(huge.next_wait(), Duration::MAX - Duration::from_nanos(1));
        assert_eq!(huge.next_wait(), Duration::MAX);
        assert_eq!(Backoff::new(u32::MAX, u32::MAX).nth(40), u32::MAX);
    }

    proptest! {
        /// Any first wait, cap and run of failures with resets among them: every wait is
        /// between the first (or the cap, when lower) and the cap, doubles the one before
        /// until the cap, and the n-th wait after a reset is `nth(n)`.
        #[test]
        fn fuzz_backoff(
            first in 0u64..10_000,
            max in 0u64..1_000_000,
            runs in proptest::collection::vec(0u32..40, 1..6),
        ) {
            let (first, max) = (Duration::from_millis(first), Duration::from_millis(max));
            let mut backoff = Backoff::new(first, max);
            for run in runs {
                backoff.reset();
                let mut last: Option<Duration> = None;
                for n in 1..=run {
                    let wait = backoff.next_wait();
                    prop_assert!(wait >= first.min(max) && wait <= max);
                    prop_assert_eq!(wait, backoff.nth(n));
                    if let Some(last) = last {
                        prop_assert_eq!(wait, (last * 2).min(max));
                    }
                    last = Some(wait);
                }
            }
        }
    }
}
