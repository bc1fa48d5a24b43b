//! Guest kernel crashes under emulation: how a console shows one, and running a scenario once
//! more after one.
//!
//! Under multi-threaded TCG the guest kernel occasionally dies in code that has nothing to do
//! with the step it was running (seen: a stray `int3` left by runtime text patching, double
//! faults in `kmem_cache_alloc`, a fatal exception in `__skb_get_hash_net`). Such a run says
//! nothing about the stack under test, so a scenario whose guest died of a kernel crash runs
//! once more on a fresh bed; the crash is printed, and a second crash fails the test like any
//! other failure. A step that failed while its guest stayed up is never run again.

use crate::error::Error;

/// What starts a kernel crash report on a console.
const CRASH_MARKERS: [&str; 5] = [
    "Oops:",
    "Kernel panic",
    "general protection fault",
    "double fault",
    "BUG: unable to handle",
];

/// The first console line that reports a kernel crash, if any.
pub fn crash_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| CRASH_MARKERS.iter().any(|m| l.contains(m)))
        .map(str::trim)
}

/// Runs `scenario`, and once more if its first run failed because a guest kernel crashed.
/// `say` hears why the second run happens.
pub fn once_more_after_a_crash<T>(
    mut scenario: impl FnMut() -> Result<T, Error>,
    mut say: impl FnMut(&str),
) -> Result<T, Error> {
    match scenario() {
        Err(e) => match e.guest_kernel_crash() {
            Some(crash) => {
                say(&format!(
                    "a guest kernel crashed under emulation ({crash}); the scenario runs once more on a fresh bed. The first run's failure:\n{e}"
                ));
                scenario()
            }
            None => Err(e),
        },
        ok => ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StepFailure;

    fn step_failure(kernel_crash: Option<&str>) -> Error {
        Error::Step(Box::new(StepFailure {
            step: "io".into(),
            guest: "compute".into(),
            reason: "the guest went away (QEMU exited?)".into(),
            output: String::new(),
            dmesg: String::new(),
            console: "/x/compute.console.log".into(),
            tail: String::new(),
            kernel_crash: kernel_crash.map(String::from),
        }))
    }

    #[test]
    fn the_first_crash_line_is_found() {
        let console = "[ 1.0] virtio_blk virtio2: [vda] 2048 512-byte logical blocks\n\
                       [ 18.6] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
                       [ 18.7] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert_eq!(
            crash_line(console),
            Some("[ 18.6] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        assert_eq!(
            crash_line("[ 3.0] traps: PANIC: double fault, error_code: 0x0"),
            Some("[ 3.0] traps: PANIC: double fault, error_code: 0x0")
        );
        assert_eq!(
            crash_line("testbed-init: FAILED: agent '/x' is not an executable"),
            None
        );
    }

    #[test]
    fn a_crash_runs_the_scenario_once_more_and_a_second_crash_fails() {
        let mut runs = 0;
        let mut said = Vec::new();
        let r: Result<u32, Error> = once_more_after_a_crash(
            || {
                runs += 1;
                if runs == 1 {
                    Err(step_failure(Some("Oops: int3")))
                } else {
                    Ok(7)
                }
            },
            |s| said.push(s.to_string()),
        );
        assert_eq!(r.ok(), Some(7));
        assert_eq!(runs, 2);
        assert!(said[0].contains("Oops: int3"), "{said:?}");

        let mut runs = 0;
        let r: Result<u32, Error> = once_more_after_a_crash(
            || {
                runs += 1;
                Err(step_failure(Some("Oops: int3")))
            },
            |_| {},
        );
        assert!(r.is_err());
        assert_eq!(runs, 2, "a second crash is a failure, not a third run");
    }

    #[test]
    fn a_failure_without_a_crash_is_not_run_again() {
        let mut runs = 0;
        let r: Result<(), Error> = once_more_after_a_crash(
            || {
                runs += 1;
                Err(step_failure(None))
            },
            |_| panic!("nothing to say"),
        );
        assert!(r.is_err());
        assert_eq!(runs, 1);
        let mut runs = 0;
        let _ = once_more_after_a_crash(
            || {
                runs += 1;
                Err::<(), _>(Error::Check {
                    check: "readback".into(),
                    reason: "Oops: a mismatch".into(),
                })
            },
            |_| {},
        );
        assert_eq!(
            runs, 1,
            "only a guest's crash counts, not words in a message"
        );
    }
}
