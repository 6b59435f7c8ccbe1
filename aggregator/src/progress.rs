//! How far `check` has got, on stderr while it runs: on a terminal a progress bar; else
//! (a CI log, a file) a line every interval, `checked N of M references, K in flight`,
//! so a slow or dead registry is never hours of silence. Results go to stdout, so
//! neither mixes into what a script reads.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pipeline::CycleProgress;

/// How often a terminal's progress bar is redrawn.
const BAR_REFRESH: Duration = Duration::from_millis(200);

/// Reports `progress` of `total` container references until [`Reporter::finish`].
pub(crate) struct Reporter {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting: a bar when stderr is a terminal, else a line every `interval`.
    pub(crate) fn start(
        total: usize,
        progress: Arc<CycleProgress>,
        interval: Duration,
    ) -> Reporter {
        let (stop, stopped) = watch::channel(false);
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(bar(total, progress, stopped))
        } else {
            tokio::spawn(lines(total, progress, interval, stopped))
        };
        Reporter {
            stop,
            task: Some(task),
        }
    }

    /// Reports nothing (`-q`).
    pub(crate) fn quiet() -> Reporter {
        Reporter {
            stop: watch::channel(false).0,
            task: None,
        }
    }

    /// Stops reporting, after one last report of where the run ended.
    pub(crate) async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The line a non-terminal stderr gets.
pub(crate) fn line(total: usize, progress: &CycleProgress) -> String {
    format!(
        "checked {} of {total} references, {} in flight",
        progress.done(),
        progress.in_flight()
    )
}

async fn lines(
    total: usize,
    progress: Arc<CycleProgress>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the run starts with nothing checked, said later.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => say(&line(total, &progress)),
            _ = stopped.wait_for(|stop| *stop) => break,
        }
    }
    say(&line(total, &progress));
}

/// One line on stderr; a closed stderr (`2>&-`, a reader gone) drops it, as the logs
/// are dropped, rather than end the run.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn bar(total: usize, progress: Arc<CycleProgress>, mut stopped: watch::Receiver<bool>) {
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("checked {pos} of {len} references [{bar:30}] {msg} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let update = |bar: &ProgressBar| {
        bar.set_position(progress.done() as u64);
        bar.set_message(format!("{} in flight", progress.in_flight()));
    };
    loop {
        update(&bar);
        tokio::select! {
            _ = tokio::time::sleep(BAR_REFRESH) => {}
            _ = stopped.wait_for(|stop| *stop) => break,
        }
    }
    update(&bar);
    // Where it stopped, not full (as `finish` would draw it): a timeout leaves it short.
    bar.abandon();
    say("");
}
