//! What the node init decides about its services, apart from doing it.
//!
//! The supervisor is a state machine fed with events (unit files seen, a process started,
//! a process exited, time passed) that answers with [`Action`]s for the init to carry out.
//! Keeping processes and clocks out of it lets the restart and stop rules be tested alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::unit::{self, ExitKind, KillMode, Unit};

/// Something the init must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the service; report back with [`Supervisor::started`].
    Start { name: String, unit: Box<Unit> },
    /// Signal a main process (and its process group when `group`): SIGTERM, or SIGKILL when `kill`.
    Signal { pid: u32, group: bool, kill: bool },
    /// Append a line to the service's log.
    Log { name: String, line: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Running {
        pid: u32,
    },
    Stopping {
        pid: u32,
        kill_at: Option<Instant>,
    },
    Waiting {
        until: Instant,
    },
    Stopped,
    /// The unit file cannot be run; kept so the error is logged once per content.
    Broken,
}

#[derive(Debug)]
enum Then {
    Remove,
    Replace(Box<Result<Unit, String>>, Vec<u8>),
}

#[derive(Debug)]
struct Service {
    unit: Option<Unit>,
    /// The unit file's bytes; `None` for the init's own services (sshd, dockerd).
    content: Option<Vec<u8>>,
    state: State,
    starts: u32,
    last_exit: Option<ExitKind>,
    then: Option<Then>,
}

/// The services of one node.
#[derive(Debug, Default)]
pub struct Supervisor {
    services: BTreeMap<String, Service>,
    shutting_down: bool,
}

/// One service in the status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub state: &'static str,
    /// As seen inside the node.
    pub pid: Option<u32>,
    pub starts: u32,
    pub last_exit: Option<String>,
}

/// The file name suffix of units in the units directory.
pub const UNIT_SUFFIX: &str = ".service";

/// The log name of a service: `swarm-node.service` logs to `swarm-node.log`.
pub fn log_name(service: &str) -> &str {
    service.strip_suffix(UNIT_SUFFIX).unwrap_or(service)
}

pub fn describe_exit(exit: ExitKind) -> String {
    match exit {
        ExitKind::Code(c) => format!("exit code {c}"),
        ExitKind::Signal(s) => format!("signal {s}"),
        ExitKind::SpawnFailed => "failed to start".to_string(),
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one of the init's own services and starts it.
    pub fn add_builtin(&mut self, name: &str, unit: Unit) -> Vec<Action> {
        self.services.insert(
            name.to_string(),
            Service {
                unit: Some(unit.clone()),
                content: None,
                state: State::Starting,
                starts: 0,
                last_exit: None,
                then: None,
            },
        );
        vec![Action::Start {
            name: name.to_string(),
            unit: Box::new(unit),
        }]
    }

    /// Brings the unit services in line with the files now in the units directory
    /// (file name → content): new files start, changed ones restart, removed ones stop.
    pub fn sync_units(&mut self, files: &BTreeMap<String, Vec<u8>>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.shutting_down {
            return actions;
        }
        for (name, content) in files {
            match self.services.get_mut(name) {
                None => {
                    let parsed = parse_unit(name, content);
                    let mut service = Service {
                        unit: None,
                        content: Some(content.clone()),
                        state: State::Stopped,
                        starts: 0,
                        last_exit: None,
                        then: None,
                    };
                    apply_unit(name, &mut service, parsed, &mut actions);
                    self.services.insert(name.clone(), service);
                }
                // A unit named like a built-in service is not ours to replace.
                Some(service) if service.content.is_none() => {}
                Some(service) if service.content.as_ref() == Some(content) => {
                    if matches!(service.then, Some(Then::Remove)) {
                        // The file came back while its service was stopping.
                        service.then = Some(Then::Replace(
                            Box::new(parse_unit(name, content)),
                            content.clone(),
                        ));
                    }
                }
                Some(service) => {
                    let parsed = parse_unit(name, content);
                    match service.state {
                        State::Running { pid } => {
                            actions.push(log(name, "unit file changed, restarting"));
                            service.then = Some(Then::Replace(Box::new(parsed), content.clone()));
                            stop(name, service, pid, now, &mut actions);
                        }
                        State::Stopping { .. } | State::Starting => {
                            service.then = Some(Then::Replace(Box::new(parsed), content.clone()));
                        }
                        State::Waiting { .. } | State::Stopped | State::Broken => {
                            service.content = Some(content.clone());
                            apply_unit(name, service, parsed, &mut actions);
                        }
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .services
            .iter()
            .filter(|(name, s)| s.content.is_some() && !files.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let Some(service) = self.services.get_mut(&name) else {
                continue;
            };
            match service.state {
                State::Running { pid } => {
                    actions.push(log(&name, "unit file removed, stopping"));
                    service.then = Some(Then::Remove);
                    stop(&name, service, pid, now, &mut actions);
                }
                State::Stopping { .. } | State::Starting => service.then = Some(Then::Remove),
                State::Waiting { .. } | State::Stopped | State::Broken => {
                    actions.push(log(&name, "unit file removed"));
                    self.services.remove(&name);
                }
            }
        }
        actions
    }

    /// Reports the outcome of an [`Action::Start`].
    pub fn started(
        &mut self,
        name: &str,
        outcome: Result<u32, String>,
        now: Instant,
    ) -> Vec<Action> {
        let Some(service) = self.services.get_mut(name) else {
            return Vec::new();
        };
        service.starts += 1;
        match outcome {
            Ok(pid) => {
                service.state = State::Running { pid };
                let mut actions = vec![log(name, &format!("started (pid {pid})"))];
                if self.shutting_down {
                    stop(name, service, pid, now, &mut actions);
                }
                actions
            }
            Err(message) => {
                let mut actions = vec![log(name, &format!("cannot start: {message}"))];
                self.after_exit(name, ExitKind::SpawnFailed, now, &mut actions);
                actions
            }
        }
    }

    /// Reports that a process ended. Unknown PIDs (orphans the init reaped) are ignored.
    pub fn exited(&mut self, pid: u32, exit: ExitKind, now: Instant) -> Vec<Action> {
        let found = self.services.iter().find_map(|(name, s)| match s.state {
            State::Running { pid: p } | State::Stopping { pid: p, .. } if p == pid => {
                Some(name.clone())
            }
            _ => None,
        });
        let mut actions = Vec::new();
        if let Some(name) = found {
            self.after_exit(&name, exit, now, &mut actions);
        }
        actions
    }

    fn after_exit(&mut self, name: &str, exit: ExitKind, now: Instant, actions: &mut Vec<Action>) {
        let shutting_down = self.shutting_down;
        let Some(service) = self.services.get_mut(name) else {
            return;
        };
        let was_stopping = matches!(service.state, State::Stopping { .. });
        if let State::Running { pid } | State::Stopping { pid, .. } = service.state {
            if service
                .unit
                .as_ref()
                .is_some_and(|u| u.kill_mode == KillMode::Group)
            {
                // Leftovers of the group would otherwise outlive the service.
                actions.push(Action::Signal {
                    pid,
                    group: true,
                    kill: true,
                });
            }
        }
        service.last_exit = Some(exit);
        service.state = State::Stopped;
        actions.push(log(name, &format!("exited: {}", describe_exit(exit))));
        match service.then.take() {
            Some(Then::Remove) => {
                self.services.remove(name);
                return;
            }
            Some(Then::Replace(parsed, content)) if !shutting_down => {
                service.content = Some(content);
                apply_unit(name, service, *parsed, actions);
                return;
            }
            _ => {}
        }
        if was_stopping || shutting_down {
            return;
        }
        let Some(unit) = &service.unit else {
            return;
        };
        if unit.restart.restarts_after(exit, unit.ignore_failure) {
            service.state = State::Waiting {
                until: now + unit.restart_sec,
            };
            actions.push(log(
                name,
                &format!("restarting in {}", human(unit.restart_sec)),
            ));
        }
    }

    /// Starts services whose restart delay has passed and escalates stops that took too long.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (name, service) in &mut self.services {
            match service.state {
                State::Waiting { until } if until <= now && !self.shutting_down => {
                    if let Some(unit) = &service.unit {
                        service.state = State::Starting;
                        actions.push(Action::Start {
                            name: name.clone(),
                            unit: Box::new(unit.clone()),
                        });
                    }
                }
                State::Stopping {
                    pid,
                    kill_at: Some(at),
                } if at <= now => {
                    actions.push(log(name, "did not stop in time, killing"));
                    let group = service
                        .unit
                        .as_ref()
                        .is_some_and(|u| u.kill_mode == KillMode::Group);
                    actions.push(Action::Signal {
                        pid,
                        group,
                        kill: true,
                    });
                    service.state = State::Stopping { pid, kill_at: None };
                }
                _ => {}
            }
        }
        actions
    }

    /// Stops every service for good.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        self.shutting_down = true;
        let mut actions = Vec::new();
        for (name, service) in &mut self.services {
            match service.state {
                State::Running { pid } => stop(name, service, pid, now, &mut actions),
                State::Waiting { .. } => service.state = State::Stopped,
                _ => {}
            }
        }
        actions
    }

    /// Whether no service process is left.
    pub fn all_stopped(&self) -> bool {
        self.services.values().all(|s| {
            !matches!(
                s.state,
                State::Running { .. } | State::Stopping { .. } | State::Starting
            )
        })
    }

    /// When the next timed event is due, so the init can sleep until then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .values()
            .filter_map(|s| match s.state {
                State::Waiting { until } => Some(until),
                State::Stopping {
                    kill_at: Some(at), ..
                } => Some(at),
                _ => None,
            })
            .min()
    }

    pub fn status(&self) -> BTreeMap<String, ServiceStatus> {
        self.services
            .iter()
            .map(|(name, s)| {
                let (state, pid) = match s.state {
                    State::Starting => ("starting", None),
                    State::Running { pid } => ("running", Some(pid)),
                    State::Stopping { pid, .. } => ("stopping", Some(pid)),
                    State::Waiting { .. } => ("restarting", None),
                    State::Stopped => ("stopped", None),
                    State::Broken => ("invalid", None),
                };
                (
                    name.clone(),
                    ServiceStatus {
                        state,
                        pid,
                        starts: s.starts,
                        last_exit: s.last_exit.map(describe_exit),
                    },
                )
            })
            .collect()
    }
}

fn parse_unit(name: &str, content: &[u8]) -> Result<Unit, String> {
    let text = std::str::from_utf8(content).map_err(|_| format!("{name} is not UTF-8"))?;
    unit::parse(name, text).map_err(|e| e.to_string())
}

/// Installs a freshly parsed unit into a service that has no process and starts it.
fn apply_unit(
    name: &str,
    service: &mut Service,
    parsed: Result<Unit, String>,
    actions: &mut Vec<Action>,
) {
    match parsed {
        Ok(unit) => {
            for warning in &unit.warnings {
                actions.push(log(name, warning));
            }
            service.unit = Some(unit.clone());
            service.state = State::Starting;
            actions.push(Action::Start {
                name: name.to_string(),
                unit: Box::new(unit),
            });
        }
        Err(message) => {
            service.unit = None;
            service.state = State::Broken;
            actions.push(log(name, &format!("not started: {message}")));
        }
    }
}

fn stop(name: &str, service: &mut Service, pid: u32, now: Instant, actions: &mut Vec<Action>) {
    let (group, timeout) = match &service.unit {
        Some(u) => (u.kill_mode == KillMode::Group, u.timeout_stop),
        None => (false, Some(unit::DEFAULT_TIMEOUT_STOP)),
    };
    actions.push(log(name, "stopping"));
    actions.push(Action::Signal {
        pid,
        group,
        kill: false,
    });
    service.state = State::Stopping {
        pid,
        kill_at: timeout.map(|t| now + t),
    };
}

fn log(name: &str, line: &str) -> Action {
    Action::Log {
        name: name.to_string(),
        line: line.to_string(),
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        list.iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    fn starts(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    fn signals(actions: &[Action]) -> Vec<(u32, bool, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pid, group, kill } => Some((*pid, *group, *kill)),
                _ => None,
            })
            .collect()
    }

    const ALWAYS: &str = "[Service]\nExecStart=/bin/app\nRestart=always\nRestartSec=2\n";

    #[test]
    fn new_unit_starts_and_restarts_after_its_delay() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new();
        let a = sup.sync_units(&files(&[("app.service", ALWAYS)]), t0);
        assert_eq!(starts(&a), vec!["app.service"]);
        sup.started("app.service", Ok(40), t0);
        assert_eq!(sup.status()["app.service"].state, "running");
        // Same content again: nothing to do.
        assert!(sup
            .sync_units(&files(&[("app.service", ALWAYS)]), t0)
            .is_empty());

        let a = sup.exited(40, ExitKind::Signal(9), t0);
        assert!(signals(&a).contains(&(40, true, true)));
        assert_eq!(sup.status()["app.service"].state, "restarting");
        assert!(starts(&sup.tick(t0 + Duration::from_secs(1))).is_empty());
        assert_eq!(sup.next_deadline(), Some(t0 + Duration::from_secs(2)));
        let a = sup.tick(t0 + Duration::from_secs(2));
        assert_eq!(starts(&a), vec!["app.service"]);
        sup.started("app.service", Ok(41), t0);
        let status = &sup.status()["app.service"];
        assert_eq!((status.pid, status.starts), (Some(41), 2));
        assert_eq!(status.last_exit.as_deref(), Some("signal 9"));
    }

    #[test]
    fn on_failure_does_not_restart_a_clean_exit() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new();
        let unit = "[Service]\nExecStart=/bin/app\nRestart=on-failure\n";
        sup.sync_units(&files(&[("a.service", unit)]), t0);
        sup.started("a.service", Ok(7), t0);
        sup.exited(7, ExitKind::Code(0), t0);
        assert_eq!(sup.status()["a.service"].state, "stopped");
        assert!(sup.tick(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn removed_unit_is_stopped_then_killed_then_forgotten() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new();
        sup.sync_units(&files(&[("app.service", ALWAYS)]), t0);
        sup.started("app.service", Ok(50), t0);
        let a = sup.sync_units(&files(&[]), t0);
        assert_eq!(signals(&a), vec![(50, true, false)]);
        assert!(signals(&sup.tick(t0 + Duration::from_secs(9))).is_empty());
        let a = sup.tick(t0 + Duration::from_secs(10));
        assert_eq!(signals(&a), vec![(50, true, true)]);
        // No second SIGKILL.
        assert!(signals(&sup.tick(t0 + Duration::from_secs(11))).is_empty());
        sup.exited(50, ExitKind::Signal(9), t0 + Duration::from_secs(11));
        assert!(sup.status().is_empty());
        assert!(sup.all_stopped());
    }

    #[test]
    fn changed_unit_restarts_with_the_new_definition() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new();
        sup.sync_units(&files(&[("app.service", ALWAYS)]), t0);
        sup.started("app.service", Ok(60), t0);
        let changed = "[Service]\nExecStart=/bin/app --v2\n";
        let a = sup.sync_units(&files(&[("app.service", changed)]), t0);
        assert_eq!(signals(&a), vec![(60, true, false)]);
        let a = sup.exited(60, ExitKind::Signal(15), t0);
        let new_unit = a.iter().find_map(|a| match a {
            Action::Start { unit, .. } => Some(unit.exec_start.clone()),
            _ => None,
        });
        assert_eq!(
            new_unit,
            Some(vec!["/bin/app".to_string(), "--v2".to_string()])
        );
    }

    #[test]
    fn broken_unit_is_logged_once_and_fixed_by_a_new_version() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new();
        let a = sup.sync_units(&files(&[("bad.service", "[Service]\n")]), t0);
        assert!(starts(&a).is_empty());
        assert!(matches!(&a[0], Action::Log { line, .. } if line.contains("no ExecStart")));
        assert!(sup
            .sync_units(&files(&[("bad.service", "[Service]\n")]), t0)
            .is_empty());
        assert_eq!(sup.status()["bad.service"].state, "invalid");
        let a = sup.sync_units(&files(&[("bad.service", ALWAYS)]), t0);
        assert_eq!(starts(&a), vec!["bad.service"]);
    }

    #[test]
    fn spawn_failure_follows_the_restart_policy() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new();
        sup.sync_units(&files(&[("app.service", ALWAYS)]), t0);
        sup.started("app.service", Err("no such file".into()), t0);
        assert_eq!(sup.status()["app.service"].state, "restarting");
    }

    #[test]
    fn builtins_ignore_unit_files_and_stop_only_their_main_process() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new();
        let mut unit = unit::parse(
            "sshd",
            "[Service]\nExecStart=/usr/sbin/sshd -D\nRestart=always\nKillMode=process\n",
        )
        .unwrap();
        unit.restart_sec = Duration::from_secs(1);
        let a = sup.add_builtin("sshd", unit);
        assert_eq!(starts(&a), vec!["sshd"]);
        sup.started("sshd", Ok(5), t0);
        assert!(sup.sync_units(&files(&[("sshd", ALWAYS)]), t0).is_empty());
        assert!(sup.sync_units(&files(&[]), t0).is_empty());
        let a = sup.shutdown(t0);
        assert_eq!(signals(&a), vec![(5, false, false)]);
        assert!(!sup.all_stopped());
        sup.exited(5, ExitKind::Code(0), t0);
        assert!(sup.all_stopped());
        // No restart during shutdown.
        assert!(sup.tick(t0 + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn unknown_pids_are_ignored() {
        let mut sup = Supervisor::new();
        assert!(sup
            .exited(999, ExitKind::Code(0), Instant::now())
            .is_empty());
    }

    #[test]
    fn log_names_drop_the_suffix() {
        assert_eq!(log_name("swarm-node.service"), "swarm-node");
        assert_eq!(log_name("dockerd"), "dockerd");
    }
}
