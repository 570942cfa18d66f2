//! The subset of systemd service files that lab nodes run.
//!
//! Lab nodes have no systemd; their init reads `NAME.service` files from the node's units
//! directory. The subset is what a long-running daemon needs: `ExecStart`, `Environment`,
//! `EnvironmentFile`, `WorkingDirectory`, `Restart`, `RestartSec`, `TimeoutStopSec`,
//! `KillMode`. Everything else is ignored with a warning so that a unit written for a real
//! machine still runs here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// When a service is started again after its main process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    Always,
    OnSuccess,
    OnFailure,
    OnAbnormal,
}

/// How a service's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
    /// The program could not be started at all.
    SpawnFailed,
}

/// Signals systemd counts as a clean end for `on-failure`: SIGHUP, SIGINT, SIGTERM, SIGPIPE.
const CLEAN_SIGNALS: [i32; 4] = [1, 2, 15, 13];

impl RestartPolicy {
    /// Whether an exit of kind `exit` calls for a restart; `ignore_failure` is the `-`
    /// prefix of `ExecStart`, which makes every exit code count as success.
    pub fn restarts_after(self, exit: ExitKind, ignore_failure: bool) -> bool {
        let clean = match exit {
            ExitKind::Code(0) => true,
            ExitKind::Code(_) => ignore_failure,
            ExitKind::Signal(sig) => CLEAN_SIGNALS.contains(&sig),
            ExitKind::SpawnFailed => false,
        };
        let by_signal = matches!(exit, ExitKind::Signal(s) if !CLEAN_SIGNALS.contains(&s));
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnSuccess => clean,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::OnAbnormal => by_signal,
        }
    }
}

/// Which processes a stop signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// The main process and its process group (the closest a node has to a cgroup).
    Group,
    /// The main process only.
    Process,
}

/// systemd's mask for services without `UMask=`.
pub const DEFAULT_UMASK: u32 = 0o022;

/// The command that starts the service with its `UMask=`: the init cannot change a
/// child's mask between fork and exec without unsafe code, so a shell sets it and execs
/// the service in its place.
pub fn with_umask(argv: Vec<String>, umask: u32) -> Vec<String> {
    if umask == DEFAULT_UMASK {
        return argv;
    }
    let mut out = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("umask {umask:04o} && exec \"$@\""),
        "sh".to_string(),
    ];
    out.extend(argv);
    out
}

/// A parsed service file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// `ExecStart` split into words, before `$VAR` expansion.
    pub exec_start: Vec<String>,
    /// `@` prefix: the second word is argv[0].
    pub argv0: Option<String>,
    /// `-` prefix: a non-zero exit code counts as success.
    pub ignore_failure: bool,
    /// `:` prefix: no `$VAR` expansion.
    pub no_expand: bool,
    pub environment: Vec<(String, String)>,
    /// Files of `KEY=VALUE` lines, read at each start; `true` if missing is fine (`-` prefix).
    pub environment_files: Vec<(PathBuf, bool)>,
    pub working_directory: Option<(PathBuf, bool)>,
    pub restart: RestartPolicy,
    pub restart_sec: Duration,
    /// `None` is `infinity`: never escalate to SIGKILL.
    pub timeout_stop: Option<Duration>,
    pub kill_mode: KillMode,
    /// `UMask=`: the file mode creation mask the service starts with (systemd's default
    /// is 0022).
    pub umask: u32,
    /// Lines the node cannot honour, for the service's log.
    pub warnings: Vec<String>,
}

/// A service file the node cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{unit} line {line}: {message}")]
pub struct UnitError {
    pub unit: String,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub message: String,
}

/// systemd's defaults.
pub const DEFAULT_RESTART_SEC: Duration = Duration::from_millis(100);
pub const DEFAULT_TIMEOUT_STOP: Duration = Duration::from_secs(10);

/// Parses the text of the service file named `unit` (e.g. `swarm-node.service`).
pub fn parse(unit: &str, text: &str) -> Result<Unit, UnitError> {
    let err = |line: usize, message: String| UnitError {
        unit: unit.to_string(),
        line,
        message,
    };
    let mut out = Unit {
        exec_start: Vec::new(),
        argv0: None,
        ignore_failure: false,
        no_expand: false,
        environment: Vec::new(),
        environment_files: Vec::new(),
        working_directory: None,
        restart: RestartPolicy::No,
        restart_sec: DEFAULT_RESTART_SEC,
        timeout_stop: Some(DEFAULT_TIMEOUT_STOP),
        kill_mode: KillMode::Group,
        umask: DEFAULT_UMASK,
        warnings: Vec::new(),
    };
    let mut exec_starts = 0usize;
    let mut section = String::new();
    for (number, line) in logical_lines(text) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']') else {
                return Err(err(number, format!("unclosed section header {line:?}")));
            };
            section = name.trim().to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(number, format!("expected KEY=VALUE, found {line:?}")));
        };
        let key = key.trim();
        let value = specifiers(value.trim(), unit);
        if section != "Service" {
            continue;
        }
        match key {
            "ExecStart" => {
                if value.is_empty() {
                    exec_starts = 0;
                    out.exec_start.clear();
                    continue;
                }
                exec_starts += 1;
                let mut rest = value.as_str();
                let mut at = false;
                (out.ignore_failure, out.no_expand) = (false, false);
                while let Some(c) = rest.chars().next().filter(|c| "-@:+!".contains(*c)) {
                    match c {
                        '-' => out.ignore_failure = true,
                        '@' => at = true,
                        ':' => out.no_expand = true,
                        _ => {}
                    }
                    rest = &rest[1..];
                }
                let mut words = split_words(rest).map_err(|m| err(number, m))?;
                if at {
                    if words.len() < 2 {
                        return Err(err(
                            number,
                            "ExecStart=@ needs a program and an argv[0]".into(),
                        ));
                    }
                    out.argv0 = Some(words.remove(1));
                } else {
                    out.argv0 = None;
                }
                if words.is_empty() {
                    return Err(err(number, "ExecStart= names no program".into()));
                }
                out.exec_start = words;
            }
            "Environment" => {
                if value.is_empty() {
                    out.environment.clear();
                    continue;
                }
                for word in split_words(&value).map_err(|m| err(number, m))? {
                    let Some((k, v)) = word.split_once('=') else {
                        return Err(err(
                            number,
                            format!("Environment entry {word:?} is not KEY=VALUE"),
                        ));
                    };
                    if !valid_env_name(k) {
                        return Err(err(number, format!("invalid variable name {k:?}")));
                    }
                    out.environment.push((k.to_string(), v.to_string()));
                }
            }
            "EnvironmentFile" => {
                if value.is_empty() {
                    out.environment_files.clear();
                    continue;
                }
                let (path, optional) = optional_path(&value);
                out.environment_files.push((path, optional));
            }
            "WorkingDirectory" => {
                out.working_directory = if value.is_empty() {
                    None
                } else {
                    let (path, optional) = optional_path(&value);
                    let path = if path.as_os_str() == "~" {
                        PathBuf::from("/root")
                    } else {
                        path
                    };
                    Some((path, optional))
                };
            }
            "Restart" => {
                out.restart = match value.as_str() {
                    "no" | "" => RestartPolicy::No,
                    "always" => RestartPolicy::Always,
                    "on-success" => RestartPolicy::OnSuccess,
                    "on-failure" => RestartPolicy::OnFailure,
                    "on-abnormal" | "on-abort" | "on-watchdog" => RestartPolicy::OnAbnormal,
                    other => {
                        return Err(err(
                            number,
                            format!("Restart={other} is not one of no, always, on-success, on-failure, on-abnormal"),
                        ))
                    }
                };
            }
            "RestartSec" => {
                out.restart_sec = timespan(&value)
                    .map_err(|m| err(number, format!("RestartSec: {m}")))?
                    .unwrap_or(DEFAULT_RESTART_SEC);
            }
            "TimeoutStopSec" | "TimeoutSec" => {
                out.timeout_stop =
                    timespan(&value).map_err(|m| err(number, format!("{key}: {m}")))?;
            }
            "KillMode" => {
                out.kill_mode = match value.as_str() {
                    "process" | "none" => KillMode::Process,
                    "control-group" | "mixed" | "" => KillMode::Group,
                    other => {
                        return Err(err(
                            number,
                            format!(
                            "KillMode={other} is not one of control-group, mixed, process, none"
                        ),
                        ))
                    }
                };
            }
            "Type" => match value.as_str() {
                "simple" | "exec" | "notify" | "notify-reload" | "idle" | "oneshot" | "" => {}
                other => out.warnings.push(format!(
                    "line {number}: Type={other} is not supported, the service runs as Type=simple"
                )),
            },
            "UMask" => {
                out.umask = match u32::from_str_radix(&value, 8) {
                    Ok(m) if m <= 0o777 => m,
                    _ => {
                        return Err(err(
                            number,
                            format!("UMask={value} is not an octal mode such as 0077"),
                        ))
                    }
                };
            }
            "User" | "Group" => {
                if !matches!(value.as_str(), "" | "root" | "0") {
                    out.warnings.push(format!(
                        "line {number}: {key}={value} is ignored, lab services run as root"
                    ));
                }
            }
            _ => out.warnings.push(format!(
                "line {number}: {key}= is not supported and is ignored"
            )),
        }
    }
    if out.umask != DEFAULT_UMASK && out.argv0.is_some() {
        out.warnings.push(
            "UMask= with an @ prefix on ExecStart=: the umask is applied, argv[0] is not".into(),
        );
    }
    match exec_starts {
        0 => Err(err(0, "no ExecStart= in [Service]".into())),
        1 => Ok(out),
        _ => Err(err(
            0,
            "more than one ExecStart= (a long-running service takes exactly one)".into(),
        )),
    }
}

/// Lines with systemd's backslash continuation joined, numbered by their first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_end();
        let is_comment =
            pending.is_none() && matches!(trimmed.trim_start().chars().next(), Some('#' | ';'));
        let (continues, body) = match trimmed.strip_suffix('\\') {
            Some(body) if !is_comment => (true, body),
            _ => (false, trimmed),
        };
        let entry = pending.get_or_insert_with(|| (i + 1, String::new()));
        if !entry.1.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(body);
        if !continues {
            out.extend(pending.take());
        }
    }
    out.extend(pending);
    out
}

fn optional_path(value: &str) -> (PathBuf, bool) {
    match value.strip_prefix('-') {
        Some(rest) => (PathBuf::from(rest.trim()), true),
        None => (PathBuf::from(value), false),
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Resolves the specifiers a lab can answer: `%%`, `%n`, `%N`, `%h`. Others stay as written.
fn specifiers(value: &str, unit: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('n') => out.push_str(unit),
            Some('N') => out.push_str(unit.strip_suffix(".service").unwrap_or(unit)),
            Some('h') => out.push_str("/root"),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Splits a value into words the way systemd does for `ExecStart` and `Environment`:
/// whitespace separates, single and double quotes group, backslash escapes.
pub fn split_words(value: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                in_word = true;
                let Some(next) = chars.next() else {
                    return Err("trailing backslash".into());
                };
                match next {
                    'n' => word.push('\n'),
                    't' => word.push('\t'),
                    'r' => word.push('\r'),
                    's' => word.push(' '),
                    'x' => {
                        let hex: String = chars.by_ref().take(2).collect();
                        let byte = u8::from_str_radix(&hex, 16)
                            .map_err(|_| format!("bad escape \\x{hex}"))?;
                        word.push(char::from(byte));
                    }
                    other => word.push(other),
                }
            }
            (_, c) => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unbalanced quote {q}"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses a systemd time span (`5`, `5s`, `500ms`, `1min 30s`, `infinity`). `None` is infinity.
pub fn timespan(value: &str) -> Result<Option<Duration>, String> {
    let value = value.trim();
    if value == "infinity" {
        return Ok(None);
    }
    if value.is_empty() {
        return Err("empty time span".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad time span {value:?}"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_len] {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 0.001,
            "us" | "usec" => 0.000_001,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            other => return Err(format!("unknown time unit {other:?} in {value:?}")),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(number * seconds_per);
    }
    Ok(Some(total))
}

/// Expands `$NAME` (a whole word, split at whitespace), `${NAME}` (anywhere, one word) and
/// `$$` (a literal dollar) in the command line, as systemd does.
pub fn expand(words: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for word in words {
        if let Some(name) = word.strip_prefix('$').filter(|n| valid_env_name(n)) {
            if let Some(value) = env.get(name) {
                out.extend(value.split_whitespace().map(str::to_string));
            }
            continue;
        }
        let mut expanded = String::with_capacity(word.len());
        let mut rest = word.as_str();
        while let Some(pos) = rest.find('$') {
            expanded.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                expanded.push('$');
                rest = tail;
            } else if let Some((name, tail)) = after
                .strip_prefix('{')
                .and_then(|a| a.split_once('}'))
                .filter(|(n, _)| valid_env_name(n))
            {
                expanded.push_str(env.get(name).map(String::as_str).unwrap_or(""));
                rest = tail;
            } else {
                expanded.push('$');
                rest = after;
            }
        }
        expanded.push_str(rest);
        out.push(expanded);
    }
    out
}

/// Parses an `EnvironmentFile`: `KEY=VALUE` lines, `#`/`;` comments, optional quotes.
pub fn parse_environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let k = k.trim();
            if !valid_env_name(k) {
                return None;
            }
            let v = v.trim();
            let v = [('"', '"'), ('\'', '\'')]
                .iter()
                .find_map(|(a, b)| v.strip_prefix(*a).and_then(|x| x.strip_suffix(*b)))
                .unwrap_or(v);
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWARM_NODE: &str = r#"
[Unit]
Description=swarm-node
After=network-online.target docker.service

[Service]
Type=notify
ExecStart=/usr/local/bin/swarm-node \
    --listen 0.0.0.0:2377 \
    --data "/var/lib/swarm node" --name %N
Environment=RUST_LOG=info "SWARM_OPTS=a b"
Environment=EMPTY=
EnvironmentFile=-/etc/default/swarm-node
Restart=on-failure
RestartSec=2s
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
"#;

    #[test]
    fn parses_a_realistic_unit() {
        let unit = parse("swarm-node.service", SWARM_NODE).unwrap();
        assert_eq!(
            unit.exec_start,
            vec![
                "/usr/local/bin/swarm-node",
                "--listen",
                "0.0.0.0:2377",
                "--data",
                "/var/lib/swarm node",
                "--name",
                "swarm-node"
            ]
        );
        assert_eq!(
            unit.environment,
            vec![
                ("RUST_LOG".into(), "info".into()),
                ("SWARM_OPTS".into(), "a b".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        assert_eq!(
            unit.environment_files,
            vec![(PathBuf::from("/etc/default/swarm-node"), true)]
        );
        assert_eq!(unit.restart, RestartPolicy::OnFailure);
        assert_eq!(unit.restart_sec, Duration::from_secs(2));
        assert_eq!(unit.timeout_stop, Some(DEFAULT_TIMEOUT_STOP));
        assert_eq!(unit.kill_mode, KillMode::Group);
        assert_eq!(unit.warnings.len(), 1, "{:?}", unit.warnings);
        assert!(unit.warnings[0].contains("LimitNOFILE"));
    }

    #[test]
    fn defaults_follow_systemd() {
        let unit = parse("a.service", "[Service]\nExecStart=/bin/true\n").unwrap();
        assert_eq!(unit.restart, RestartPolicy::No);
        assert_eq!(unit.restart_sec, DEFAULT_RESTART_SEC);
        assert!(unit.warnings.is_empty());
    }

    #[test]
    fn exec_prefixes_and_resets() {
        let unit = parse(
            "a.service",
            "[Service]\nExecStart=/bin/false\nExecStart=\nExecStart=-@/bin/sleep sleeper 5\n",
        )
        .unwrap();
        assert!(unit.ignore_failure);
        assert_eq!(unit.argv0.as_deref(), Some("sleeper"));
        assert_eq!(unit.exec_start, vec!["/bin/sleep", "5"]);
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let e = parse("a.service", "[Service]\nRestart=always\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.service line 0: no ExecStart= in [Service]"
        );
        let e = parse("a.service", "[Service]\nExecStart=/a\nExecStart=/b\n").unwrap_err();
        assert!(e.message.contains("more than one"), "{e}");
        let e = parse("a.service", "[Service]\nExecStart=/a\nRestart=sometimes\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("a.service", "[Service]\nExecStart=/bin/sh -c 'oops\n").unwrap_err();
        assert!(e.message.contains("unbalanced quote"), "{e}");
        let e = parse("a.service", "[Service\nExecStart=/a\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse(
            "a.service",
            "[Service]\nExecStart=/a\nRestartSec=5 fortnights\n",
        )
        .unwrap_err();
        assert!(e.message.contains("fortnights"), "{e}");
        // ExecStart outside [Service] does not count.
        assert!(parse("a.service", "[Unit]\nExecStart=/a\n").is_err());
    }

    #[test]
    fn word_splitting_and_escapes() {
        assert_eq!(
            split_words(r#"a "b c" 'd "e"' f\ g h\x41 "i\"j""#).unwrap(),
            vec!["a", "b c", "d \"e\"", "f g", "hA", "i\"j"]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("''").unwrap(), vec![""]);
    }

    #[test]
    fn time_spans() {
        assert_eq!(timespan("5").unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(timespan("250ms").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(timespan("1min 30s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(timespan("1.5s").unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(timespan("2h").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(timespan("infinity").unwrap(), None);
        assert!(timespan("").is_err());
        assert!(timespan("s").is_err());
    }

    #[test]
    fn variable_expansion() {
        let env: BTreeMap<String, String> = [
            ("OPTS".to_string(), "--a  --b".to_string()),
            ("DIR".to_string(), "/var/lib/x y".to_string()),
        ]
        .into_iter()
        .collect();
        let words: Vec<String> = [
            "prog",
            "$OPTS",
            "--dir=${DIR}",
            "$MISSING",
            "cost: $$5",
            "$5",
            "${",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expand(&words, &env),
            vec![
                "prog",
                "--a",
                "--b",
                "--dir=/var/lib/x y",
                "cost: $5",
                "$5",
                "${"
            ]
        );
    }

    #[test]
    fn restart_decisions() {
        use ExitKind::*;
        use RestartPolicy::*;
        assert!(Always.restarts_after(Code(0), false));
        assert!(!No.restarts_after(Signal(9), false));
        assert!(OnFailure.restarts_after(Code(1), false));
        assert!(!OnFailure.restarts_after(Code(1), true));
        assert!(OnFailure.restarts_after(Signal(9), false));
        assert!(!OnFailure.restarts_after(Signal(15), false));
        assert!(!OnFailure.restarts_after(Code(0), false));
        assert!(OnFailure.restarts_after(SpawnFailed, false));
        assert!(OnSuccess.restarts_after(Code(0), false));
        assert!(!OnSuccess.restarts_after(Code(3), false));
        assert!(OnAbnormal.restarts_after(Signal(6), false));
        assert!(!OnAbnormal.restarts_after(Code(1), false));
    }

    #[test]
    fn environment_files() {
        let vars =
            parse_environment_file("# c\nA=1\nexport B=\"two words\"\n bad-name=x\nC='3'\n\n");
        assert_eq!(
            vars,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "3".into())
            ]
        );
    }

    #[test]
    fn comments_are_not_continued() {
        let unit = parse("a.service", "[Service]\n# note \\\nExecStart=/bin/true\n").unwrap();
        assert_eq!(unit.exec_start, vec!["/bin/true"]);
    }

    #[test]
    fn umask_is_applied_through_a_shell() {
        let unit = parse("u", "[Service]\nExecStart=/bin/true a\nUMask=0077\n").unwrap();
        assert_eq!(unit.umask, 0o077);
        assert!(unit.warnings.is_empty(), "{:?}", unit.warnings);
        assert_eq!(
            with_umask(vec!["/bin/true".into(), "a".into()], unit.umask),
            [
                "/bin/sh",
                "-c",
                "umask 0077 && exec \"$@\"",
                "sh",
                "/bin/true",
                "a"
            ]
        );
        assert_eq!(
            with_umask(vec!["/bin/true".into()], DEFAULT_UMASK),
            ["/bin/true"]
        );
        assert!(parse("u", "[Service]\nExecStart=/bin/true\nUMask=999\n").is_err());
    }
}
