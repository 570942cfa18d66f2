//! A scripted [`RemoteShell`] and [`Connector`] for tests: they record every command and
//! answer from rules the test sets up.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use swarmup_machine::Machine;

use crate::shell::{CommandOutput, RemoteShell, ShellError};
use crate::ssh::{ssh_target, Connector};

/// One command a [`FakeShell`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    pub script: String,
    pub stdin: Option<Vec<u8>>,
}

type Responder = Arc<dyn Fn(&str) -> Result<CommandOutput, ShellError> + Send + Sync>;

enum Answers {
    /// In order; the last one repeats.
    Fixed(VecDeque<Result<CommandOutput, ShellError>>),
    /// Computed from the script.
    Dynamic(Responder),
}

struct Rule {
    contains: String,
    answers: Answers,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("contains", &self.contains)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<FakeCall>,
    rules: Vec<Rule>,
    files: BTreeMap<String, (Vec<u8>, u32)>,
    closed: bool,
}

/// A scripted shell. Rules match when the script contains their text; the rule added
/// last wins. Without a matching rule, `sha256sum PATH` and `cat PATH` answer from the
/// files uploaded so far, and everything else exits 0 with no output.
#[derive(Debug, Clone)]
pub struct FakeShell {
    target: String,
    state: Arc<Mutex<State>>,
}

impl FakeShell {
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake shell lock poisoned")
    }

    /// Answers every script containing `contains` with `answer`.
    pub fn on(&self, contains: &str, answer: CommandOutput) -> &Self {
        self.on_sequence(contains, vec![Ok(answer)])
    }

    /// Answers scripts containing `contains` with `answers` in turn, repeating the last.
    pub fn on_sequence(
        &self,
        contains: &str,
        answers: Vec<Result<CommandOutput, ShellError>>,
    ) -> &Self {
        assert!(!answers.is_empty(), "a fake rule needs at least one answer");
        self.state().rules.push(Rule {
            contains: contains.to_string(),
            answers: Answers::Fixed(answers.into()),
        });
        self
    }

    /// Answers scripts containing `contains` with whatever `respond` returns for them,
    /// for fakes that keep state between commands.
    pub fn on_fn(
        &self,
        contains: &str,
        respond: impl Fn(&str) -> Result<CommandOutput, ShellError> + Send + Sync + 'static,
    ) -> &Self {
        self.state().rules.push(Rule {
            contains: contains.to_string(),
            answers: Answers::Dynamic(Arc::new(respond)),
        });
        self
    }

    /// Puts a file on the fake machine, as if uploaded earlier.
    pub fn put_file(&self, path: &str, bytes: &[u8], mode: u32) {
        self.state()
            .files
            .insert(path.to_string(), (bytes.to_vec(), mode));
    }

    /// Every command so far, in order; uploads appear as `upload PATH MODE`.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.state().calls.clone()
    }

    /// The scripts of [`FakeShell::calls`].
    pub fn scripts(&self) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .map(|c| c.script.clone())
            .collect()
    }

    /// How many scripts contained `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.script.contains(needle))
            .count()
    }

    /// An uploaded file and its mode.
    pub fn file(&self, path: &str) -> Option<(Vec<u8>, u32)> {
        self.state().files.get(path).cloned()
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    fn answer(&self, script: &str, stdin: Option<&[u8]>) -> Result<CommandOutput, ShellError> {
        let mut state = self.state();
        state.calls.push(FakeCall {
            script: script.to_string(),
            stdin: stdin.map(<[u8]>::to_vec),
        });
        if let Some(rule) = state
            .rules
            .iter_mut()
            .rev()
            .find(|r| script.contains(&r.contains))
        {
            match &mut rule.answers {
                Answers::Fixed(answers) if answers.len() > 1 => {
                    return answers.pop_front().expect("checked non-empty")
                }
                Answers::Fixed(answers) => return answers[0].clone(),
                Answers::Dynamic(respond) => {
                    let respond = respond.clone();
                    // The responder may lock state of its own; never call it under ours.
                    drop(state);
                    return respond(script);
                }
            }
        }
        let mut words = script.split_whitespace();
        match (words.next(), words.next()) {
            (Some("sha256sum"), Some(path)) => Ok(match state.files.get(path) {
                Some((bytes, _)) => {
                    CommandOutput::ok(format!("{}  {path}\n", hex::encode(Sha256::digest(bytes))))
                }
                None => CommandOutput::failed(
                    1,
                    format!("sha256sum: {path}: No such file or directory"),
                ),
            }),
            (Some("cat"), Some(path)) => Ok(match state.files.get(path) {
                Some((bytes, _)) => CommandOutput::ok(String::from_utf8_lossy(bytes)),
                None => CommandOutput::failed(1, format!("cat: {path}: No such file or directory")),
            }),
            _ => Ok(CommandOutput::ok("")),
        }
    }
}

#[async_trait::async_trait]
impl RemoteShell for FakeShell {
    fn target(&self) -> &str {
        &self.target
    }

    async fn run(&self, script: &str, _timeout: Duration) -> Result<CommandOutput, ShellError> {
        self.answer(script, None)
    }

    async fn run_with_stdin(
        &self,
        script: &str,
        stdin: &[u8],
        _timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.answer(script, Some(stdin))
    }

    async fn upload(
        &self,
        path: &str,
        bytes: &[u8],
        mode: u32,
        _timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        let answer = self.answer(&format!("upload {path} {mode:o}"), Some(bytes))?;
        if answer.success() {
            self.put_file(path, bytes, mode);
        }
        Ok(answer)
    }

    async fn close(&self) {
        self.state().closed = true;
    }
}

/// Hands out [`FakeShell`]s by machine name; a machine can refuse its first connects.
#[derive(Debug, Clone, Default)]
pub struct FakeConnector {
    shells: Arc<Mutex<HashMap<String, FakeShell>>>,
    refusals: Arc<Mutex<HashMap<String, usize>>>,
    attempts: Arc<Mutex<HashMap<String, usize>>>,
}

impl FakeConnector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shell of machine `name`, created on first use.
    pub fn shell(&self, name: &str) -> FakeShell {
        self.shells
            .lock()
            .expect("fake connector lock poisoned")
            .entry(name.to_string())
            .or_insert_with(|| FakeShell::new(name))
            .clone()
    }

    /// The next `times` connects to `name` fail with "connection refused"; `usize::MAX`
    /// means always.
    pub fn refuse(&self, name: &str, times: usize) {
        self.refusals
            .lock()
            .expect("fake connector lock poisoned")
            .insert(name.to_string(), times);
    }

    /// How many times a connect to `name` was tried.
    pub fn attempts(&self, name: &str) -> usize {
        self.attempts
            .lock()
            .expect("fake connector lock poisoned")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl Connector for FakeConnector {
    async fn connect(
        &self,
        machine: &Machine,
        _timeout: Duration,
    ) -> Result<Arc<dyn RemoteShell>, ShellError> {
        *self
            .attempts
            .lock()
            .expect("fake connector lock poisoned")
            .entry(machine.name.clone())
            .or_default() += 1;
        {
            let mut refusals = self.refusals.lock().expect("fake connector lock poisoned");
            if let Some(left) = refusals.get_mut(&machine.name) {
                if *left > 0 {
                    if *left != usize::MAX {
                        *left -= 1;
                    }
                    return Err(ShellError::Connect {
                        target: ssh_target(machine),
                        message: "ssh: connect to host: Connection refused".to_string(),
                    });
                }
            }
        }
        Ok(Arc::new(self.shell(&machine.name)))
    }
}
