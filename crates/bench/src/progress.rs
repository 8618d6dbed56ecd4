//! What `ringcast bench` shows while it runs: a progress bar (indicatif) on a terminal,
//! one plain line a second otherwise (a log, a pipe), nothing with `--quiet`. The end of
//! each phase is a line of its own (not with `--quiet`); errors are printed in every
//! mode, `--quiet` included, because a failure must reach the terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

/// Rhythm of the plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

enum Mode {
    Quiet,
    Terminal(Option<ProgressBar>),
    Lines { last: Option<Instant> },
}

pub(crate) struct Progress {
    mode: Mode,
}

/// Counts of the step under way, all for that step alone.
pub(crate) struct StepView<'a> {
    pub phase: &'a str,
    pub elapsed_s: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub to_send: u64,
    pub received: u64,
    /// Deliveries expected in the step, when known in advance (not with churners, whose
    /// share follows their moves).
    pub expected: Option<u64>,
    pub p99: &'a str,
}

impl Progress {
    pub(crate) fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal(None)
        } else {
            Mode::Lines { last: None }
        };
        Progress { mode }
    }

    /// Starts a bar (or the plain-line rhythm) for a phase counting up to `len`.
    pub(crate) fn begin(&mut self, prefix: &str, len: u64, unit: &str) {
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Terminal(bar) => {
                if let Some(old) = bar.take() {
                    old.finish_and_clear();
                }
                let style = ProgressStyle::with_template(&format!(
                    "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                let new = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
                    .with_style(style)
                    .with_prefix(prefix.to_string());
                new.enable_steady_tick(Duration::from_millis(200));
                *bar = Some(new);
            }
            Mode::Lines { last } => *last = Some(Instant::now()),
        }
    }

    /// Connect progress: clients connected and failed so far.
    pub(crate) fn connecting(&mut self, connected: u64, failed: u64, clients: u64) {
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Terminal(bar) => {
                if let Some(bar) = bar {
                    bar.set_position(connected + failed);
                    bar.set_message(format!("({connected} connected, {failed} failed)"));
                }
            }
            Mode::Lines { last } => {
                if due(last) {
                    eprintln!(
                        "connecting: {}/{clients} clients ({connected} connected, {failed} failed)",
                        connected + failed
                    );
                }
            }
        }
    }

    /// Step progress: this step's messages sent and deliveries received so far.
    ///
    /// "N/M" when the step's deliveries are known in advance, "N" otherwise.
    pub(crate) fn step(&mut self, v: &StepView<'_>) {
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Terminal(bar) => {
                if let Some(bar) = bar {
                    bar.set_position(v.sent.min(v.to_send));
                    bar.set_message(format!(
                        "sent, {} deliveries received, p99 {}",
                        of(v.received, v.expected),
                        v.p99
                    ));
                }
            }
            Mode::Lines { last } => {
                if due(last) {
                    eprintln!(
                        "{}: {:.1}s of {}s, sent {}/{}, received {}, p99 {}",
                        v.phase,
                        v.elapsed_s.min(v.duration_s),
                        v.duration_s,
                        v.sent,
                        v.to_send,
                        of(v.received, v.expected),
                        v.p99
                    );
                }
            }
        }
    }

    /// A line that stays: the end of a phase. Not shown with `--quiet`.
    pub(crate) fn note(&self, line: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Terminal(Some(bar)) => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    /// An error as it happens: shown in every mode, above the bar on a terminal.
    pub(crate) fn error(&self, line: &str) {
        match &self.mode {
            Mode::Terminal(Some(bar)) => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub(crate) fn end(&mut self) {
        if let Mode::Terminal(bar) = &mut self.mode {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end();
    }
}

/// True once a second; the first call after `begin` waits a full period.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    match last {
        Some(t) if now.duration_since(*t) < PLAIN_EVERY => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// "N/M", or "N" when the total is not known in advance.
fn of(n: u64, total: Option<u64>) -> String {
    match total {
        Some(total) => format!("{n}/{total}"),
        None => n.to_string(),
    }
}
