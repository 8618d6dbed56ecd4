//! The generator processes: this binary again with `--worker-index`, commanded over
//! stdin, reporting events as JSON lines on stdout.

use crate::wire::{Command, Event};
use anyhow::{bail, Context as _};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The generator processes; killed if the orchestrator gives up on them.
pub(super) struct Generators {
    pub(super) children: Vec<Child>,
    pub(super) stdins: Vec<ChildStdin>,
    pub(super) events: mpsc::Receiver<(usize, Option<Event>)>,
}

impl Generators {
    pub(super) fn spawn(procs: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the ringcast binary")?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let (tx, events) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for i in 0..procs {
            let mut child = std::process::Command::new(&exe)
                .args(&args)
                .arg("--worker-index")
                .arg(i.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting generator process {i}"))?;
            let stdout = child.stdout.take().context("generator stdout")?;
            stdins.push(child.stdin.take().context("generator stdin")?);
            children.push(child);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("bench-gen-{i}"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        match serde_json::from_str::<Event>(&line) {
                            Ok(event) => {
                                if tx.send((i, Some(event))).is_err() {
                                    return;
                                }
                            }
                            Err(err) => {
                                eprintln!("ringcast bench: generator {i} said {line:?}: {err}")
                            }
                        }
                    }
                    let _ = tx.send((i, None));
                })
                .context("starting a generator reader thread")?;
        }
        Ok(Self {
            children,
            stdins,
            events,
        })
    }

    pub(super) fn send(&mut self, cmd: &Command) -> anyhow::Result<()> {
        let line = serde_json::to_string(cmd).context("encoding a command")?;
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            writeln!(stdin, "{line}")
                .and_then(|_| stdin.flush())
                .with_context(|| format!("commanding generator {i}"))?;
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> anyhow::Result<()> {
        self.send(&Command::Finish)?;
        self.stdins.clear();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for (i, child) in self.children.iter_mut().enumerate() {
            loop {
                match child.try_wait().context("waiting for a generator")? {
                    Some(status) if status.success() => break,
                    Some(status) => bail!("generator {i} exited with {status}"),
                    None if std::time::Instant::now() > deadline => {
                        bail!("generator {i} did not exit after the run")
                    }
                    None => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for Generators {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
