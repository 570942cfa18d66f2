//! How results reach the user: Docker-style tables, JSON for scripts, and per-machine
//! progress lines while work is under way.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use swarmup_providers::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: Format,
    pub quiet: bool,
}

impl Output {
    pub fn new(format: Format, quiet: bool) -> Self {
        Output { format, quiet }
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// A line for people; silent with --quiet or --output json.
    pub fn say(&self, line: &str) {
        if !self.quiet && !self.json() {
            println!("{line}");
        }
    }

    /// A progress sink: spinners on a terminal, plain lines otherwise, nothing when quiet.
    pub fn progress(&self) -> Box<dyn Progress> {
        if self.quiet || self.json() {
            Box::new(swarmup_providers::NoProgress)
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Box::new(Spinners::default())
        } else {
            Box::new(Lines)
        }
    }
}

/// Docker's table layout: columns padded to the widest cell plus three spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Progress as plain lines on stderr (logs, CI).
#[derive(Debug)]
struct Lines;

impl Progress for Lines {
    fn machine(&self, machine: &str, message: &str) {
        eprintln!("{machine}: {message}");
    }
}

/// One spinner per machine on a terminal.
#[derive(Default)]
struct Spinners {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Progress for Spinners {
    fn machine(&self, machine: &str, message: &str) {
        let mut bars = self.bars.lock().expect("progress lock");
        let bar = bars.entry(machine.to_string()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(machine.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        bar.set_message(message.to_string());
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for bar in self.bars.lock().expect("progress lock").values() {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_like_docker() {
        let t = table(
            &["ID", "NAME", "MODE"],
            &[vec!["abc".into(), "web".into(), "replicated".into()]],
        );
        assert_eq!(t, "ID    NAME   MODE\nabc   web    replicated");
    }
}
