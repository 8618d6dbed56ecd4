//! One way to wait for something that happens in its own time: look again and again until
//! it is done or a deadline passes, then fail naming what was awaited, how long it waited
//! and the last thing seen. Every wait of the tests goes through [`Wait`], so the loop and
//! its deadline exist once.
//!
//! A poll returns `Ok(value)` when done, or `Err(last)` with what it saw instead; `last`
//! goes into the failure message with `{:?}` (wrap text in [`Verbatim`] to show it as is).
//!
//! ```no_run
//! use ringcast_testkit::poll;
//! use std::time::Duration;
//! let mut n = 0;
//! let ten = poll::until("n to reach 10", Duration::from_secs(1), || {
//!     n += 1;
//!     if n >= 10 { Ok(n) } else { Err(n) }
//! });
//! ```

use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// How long a wait sleeps between looks unless told otherwise ([`Wait::every`]).
pub const INTERVAL: Duration = Duration::from_millis(20);

/// A wait that did not end in time: what was awaited, for how long, and what the last
/// look saw.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
pub struct TimedOut {
    pub what: String,
    pub waited: Duration,
    pub last: String,
}

/// Text shown as is (on its own lines) in a failure message, e.g. a server's log.
pub struct Verbatim(pub String);

impl Debug for Verbatim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n{}", self.0)
    }
}

/// A wait for one thing: what it is (for the failure message), how long it may take and
/// how often to look.
#[derive(Debug, Clone)]
pub struct Wait {
    what: String,
    timeout: Duration,
    interval: Duration,
}

impl Wait {
    pub fn new(what: impl Display, timeout: Duration) -> Wait {
        Wait {
            what: what.to_string(),
            timeout,
            interval: INTERVAL,
        }
    }

    /// Looks every `interval` (a poll that asks a server something need not flood it).
    pub fn every(mut self, interval: Duration) -> Wait {
        self.interval = interval;
        self
    }

    /// Polls (blocking the thread between looks) until done; panics on the deadline.
    pub fn until<T, L: Debug>(self, poll: impl FnMut() -> Result<T, L>) -> T {
        self.try_until(poll).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Polls (blocking the thread between looks) until done, or says why not.
    pub fn try_until<T, L: Debug>(
        self,
        mut poll: impl FnMut() -> Result<T, L>,
    ) -> Result<T, TimedOut> {
        // The same loop as the async form, driven here with futures that are always
        // ready: the sleep blocks the thread, so polling it once runs it to the end.
        let run = pin!(self.run(async || poll(), async |pause| std::thread::sleep(pause)));
        let waker = Waker::from(Arc::new(NeverPending));
        match run.poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => result,
            Poll::Pending => unreachable!("a loop of ready futures never waits"),
        }
    }

    /// Polls with an async look (which may borrow what the caller holds, e.g. a client
    /// to ask), sleeping on tokio's timer, until done; panics on the deadline.
    pub async fn until_async<T, L: Debug>(self, poll: impl AsyncFnMut() -> Result<T, L>) -> T {
        self.try_until_async(poll)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// Polls with an async look until done, or says why not.
    pub async fn try_until_async<T, L: Debug>(
        self,
        poll: impl AsyncFnMut() -> Result<T, L>,
    ) -> Result<T, TimedOut> {
        self.run(poll, async |pause| tokio::time::sleep(pause).await)
            .await
    }

    /// The one polling loop: look, and if not done, fail past the deadline or sleep.
    async fn run<T, L: Debug>(
        self,
        mut poll: impl AsyncFnMut() -> Result<T, L>,
        sleep: impl AsyncFn(Duration),
    ) -> Result<T, TimedOut> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        loop {
            let last = match poll().await {
                Ok(done) => return Ok(done),
                Err(last) => last,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(TimedOut {
                    what: self.what,
                    waited: now - started,
                    last: format!("{last:?}"),
                });
            }
            sleep(self.interval.min(deadline - now)).await;
        }
    }
}

/// The waker of [`Wait::try_until`]'s loop, which never waits for a wake-up.
struct NeverPending;

impl Wake for NeverPending {
    fn wake(self: Arc<Self>) {}
}

/// Polls until done (see [`Wait::until`]), looking every [`INTERVAL`].
pub fn until<T, L: Debug>(
    what: impl Display,
    timeout: Duration,
    poll: impl FnMut() -> Result<T, L>,
) -> T {
    Wait::new(what, timeout).until(poll)
}

/// Polls with an async look until done (see [`Wait::until_async`]), looking every
/// [`INTERVAL`].
pub async fn until_async<T, L: Debug>(
    what: impl Display,
    timeout: Duration,
    poll: impl AsyncFnMut() -> Result<T, L>,
) -> T {
    Wait::new(what, timeout).until_async(poll).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_the_poll_found() {
        let mut n = 0;
        let got = until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(n)
            }
        });
        assert_eq!(got, 3);
    }

    #[test]
    fn a_timeout_names_what_was_awaited_and_the_last_value() {
        let mut n = 0;
        let err = Wait::new("the answer", Duration::from_millis(50))
            .every(Duration::from_millis(5))
            .try_until(|| -> Result<(), u32> {
                n += 1;
                Err(n)
            })
            .unwrap_err();
        assert_eq!(err.what, "the answer");
        assert!(err.waited >= Duration::from_millis(50), "{err}");
        assert_eq!(err.last, n.to_string());
        assert!(err
            .to_string()
            .contains("waiting for the answer; last seen: "));
    }

    #[tokio::test]
    async fn the_async_form_waits_on_the_timer() {
        let started = Instant::now();
        let err = Wait::new("never", Duration::from_millis(60))
            .try_until_async(async || Err::<(), _>(Verbatim("a\nlog".into())))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert_eq!(err.last, "\na\nlog");
    }
}
