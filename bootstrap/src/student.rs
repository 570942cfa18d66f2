//! A workshop student's access to their cluster, over SSH like every other step: on every
//! node a `student` user who logs in with a generated password (allowed for that user
//! alone through an sshd `Match User student` block; root stays key-only) or with a
//! generated key, and whose docker CLI reaches the swarm: the cluster's admin client
//! certificate in the student's home and a docker context `swarmup` pointing at the
//! manager's control port (`tcp://MANAGER:2377`), made current for the student.
//!
//! Root's CLI uses swarm-node's unix socket, which is root-only; the student comes in
//! through the same mutual-TLS door as `swarmup env` on the administrator's machine,
//! which the node firewall already opens between the cluster's own nodes (and on `lo`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;
use swarmup_machine::{Machine, Progress, CONTROL_PORT};

use crate::error::{BootstrapError, Step};
use crate::shell::{quote, RemoteShell};
use crate::ssh::{Connector, SshConnector, SshOptions};
use crate::steps::{ClientCert, DOCKER_CONTEXT, LAB_MARKER};

/// The login every student has on their nodes.
pub const STUDENT_USER: &str = "student";
/// On a lab node the sshd config (written by the node's init) includes this directory;
/// it lies in the node's own /var/lib.
pub const LAB_SSHD_DROPIN_DIR: &str = "/var/lib/swarmup-lab/sshd_config.d";
/// The node's sshd config as the lab node init writes it.
pub const LAB_SSHD_CONFIG: &str = "/run/swarmup-lab/sshd_config";
/// On other machines: Debian's and Ubuntu's sshd_config include this directory first.
pub const SSHD_DROPIN_DIR: &str = "/etc/ssh/sshd_config.d";
/// The drop-in file with the student's `Match` block.
pub const DROPIN_NAME: &str = "50-swarmup-student.conf";
/// The student's home on a lab node: /home is the host's own there, /var/lib the node's.
pub const LAB_STUDENT_HOME: &str = "/var/lib/swarmup-student";
/// Where the client certificate goes, under the student's home.
pub const CERT_DIR: &str = ".docker/swarmup";

const QUICK: Duration = Duration::from_secs(60);

/// How a student logs in.
#[derive(Clone, PartialEq, Eq)]
pub enum StudentLogin {
    /// A generated password, for sshd's password authentication of this user alone.
    Password(String),
    /// The public half of a generated key pair (`ssh-ed25519 AAAA… comment`).
    Key(String),
}

impl std::fmt::Debug for StudentLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StudentLogin::Password(_) => f.write_str("Password(..)"),
            StudentLogin::Key(k) => f.debug_tuple("Key").field(k).finish(),
        }
    }
}

/// Everything one cluster's student access needs.
#[derive(Debug, Clone)]
pub struct StudentAccess {
    pub login: StudentLogin,
    /// The cluster's admin client certificate (the `client/` bundle `create` fetched).
    pub client: ClientCert,
    /// The manager the student's docker CLI talks to: its advertise address.
    pub manager: IpAddr,
}

/// Letters and digits that cannot be mistaken for one another on a printed card (no
/// 0/O, 1/l/I).
const PASSWORD_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A password for a printed card: three groups of four, `k7dq-m2xe-9hfa` (about 74 bits;
/// the dashes make it easy to read aloud and type).
pub fn generate_password() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..3)
        .map(|_| {
            (0..4)
                .map(|_| PASSWORD_ALPHABET[rng.gen_range(0..PASSWORD_ALPHABET.len())] as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The sshd drop-in for the student. With a password, password authentication is
/// allowed for this user alone; everyone else, root included, keeps the global
/// `PasswordAuthentication no`. `MaxAuthTries` is raised because a student's ssh client
/// offers every key of its agent before the password, and six tries run out fast.
pub fn sshd_dropin(login: &StudentLogin) -> String {
    let password = match login {
        StudentLogin::Password(_) => "yes",
        StudentLogin::Key(_) => "no",
    };
    format!(
        "# Written by swarmup for the workshop's student; root stays key-only.\n\
         Match User {STUDENT_USER}\n\
         \tPasswordAuthentication {password}\n\
         \tKbdInteractiveAuthentication no\n\
         \tMaxAuthTries 20\n"
    )
}

/// The script that makes the user (or keeps it), the sshd drop-in and the student's
/// authorized key, and prints `home=PATH`. Idempotent: a second run changes nothing and
/// reloads nothing.
pub fn user_script(login: &StudentLogin) -> String {
    let dropin = sshd_dropin(login);
    let key_line = match login {
        StudentLogin::Key(k) => k.trim().to_string(),
        StudentLogin::Password(_) => String::new(),
    };
    format!(
        r#"set -e
u={user}
if [ -e {marker} ]; then
  lab=1
  # The node's /etc is its own copy-on-write layer; a user added to the host's /etc
  # would appear on the host and on every other node.
  grep -q ' /etc .* - overlay ' /proc/self/mountinfo || {{ echo "this lab node shares /etc with its host: cannot add a user" >&2; exit 3; }}
  grep -q {lab_dir} {lab_config} || {{ echo "this lab node's sshd reads no drop-ins (it was booted by an older swarmup): swarmup stop and start the node" >&2; exit 3; }}
  home={lab_home}; dropin_dir={lab_dir}; config={lab_config}
else
  lab=0; home=/home/$u; dropin_dir={dropin_dir}; config=/etc/ssh/sshd_config
  grep -qiE '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/' $config || {{ echo "$config does not include {dropin_dir}/*.conf: add that Include line first" >&2; exit 3; }}
fi
if ! id -u $u >/dev/null 2>&1; then
  shell=$(command -v bash || echo /bin/sh)
  useradd --create-home --home-dir $home --shell $shell $u
fi
home=$(getent passwd $u | cut -d: -f6)
g=$(id -gn $u)
mkdir -p $home
chown $u:$g $home
chmod 750 $home
mkdir -p $dropin_dir
new=$dropin_dir/{dropin}.swarmup-new
printf '%s' {dropin_text} > $new
if cmp -s $new $dropin_dir/{dropin}; then rm -f $new; else
  chmod 644 $new; mv -f $new $dropin_dir/{dropin}
  sshd -t -f $config
  if [ $lab = 1 ]; then kill -HUP "$(cat /run/sshd.pid)"; else systemctl reload ssh 2>/dev/null || systemctl reload sshd; fi
fi
key={key_line}
if [ -n "$key" ]; then
  usermod -p '*' $u
  install -d -m 700 -o $u -g $g $home/.ssh
  printf '%s\n' "$key" > $home/.ssh/authorized_keys
  chown $u:$g $home/.ssh/authorized_keys; chmod 600 $home/.ssh/authorized_keys
fi
echo home=$home
"#,
        user = STUDENT_USER,
        marker = LAB_MARKER,
        lab_dir = LAB_SSHD_DROPIN_DIR,
        lab_config = LAB_SSHD_CONFIG,
        lab_home = LAB_STUDENT_HOME,
        dropin_dir = SSHD_DROPIN_DIR,
        dropin = DROPIN_NAME,
        dropin_text = quote(&dropin),
        key_line = quote(&key_line),
    )
}

/// The script that points the student's docker CLI at the manager, once the client
/// certificate is in `HOME/CERT_DIR`: a docker context made current for the student,
/// everything under `~/.docker` the student's alone.
pub fn docker_script(home: &str, manager: IpAddr) -> String {
    let host = format!("tcp://{}", SocketAddr::new(manager, CONTROL_PORT));
    format!(
        r#"set -e
u={user}
home={home}
certs=$home/{cert_dir}
export DOCKER_CONFIG=$home/.docker
tls="ca=$certs/ca.pem,cert=$certs/cert.pem,key=$certs/key.pem"
if docker context inspect {ctx} >/dev/null 2>&1; then
  docker context update --docker "host={host},$tls" {ctx} >/dev/null
else
  docker context create --description 'the workshop swarm' --docker "host={host},$tls" {ctx} >/dev/null
fi
docker context use {ctx} >/dev/null
chown -R $u:$(id -gn $u) $home/.docker
chmod -R go-rwx $home/.docker
"#,
        user = STUDENT_USER,
        home = quote(home),
        cert_dir = CERT_DIR,
        ctx = DOCKER_CONTEXT,
        host = host,
    )
}

fn fail(machine: &Machine, message: impl Into<String>) -> BootstrapError {
    BootstrapError::step(&machine.name, Step::Student, message)
}

/// Gives one node the student's access.
pub async fn ensure_student(
    shell: &dyn RemoteShell,
    machine: &Machine,
    access: &StudentAccess,
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    let run = |script: String| async move {
        shell
            .run(&script, QUICK)
            .await
            .map_err(|e| fail(machine, e.to_string()))
    };
    let out = run(user_script(&access.login)).await?;
    if !out.success() {
        return Err(fail(
            machine,
            format!("adding the student failed: {}", out.failure_summary()),
        ));
    }
    let home = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("home="))
        .unwrap_or_default()
        .trim()
        .to_string();
    if !home.starts_with('/') {
        return Err(fail(
            machine,
            format!("cannot tell the student's home: {home:?}"),
        ));
    }
    for (name, pem) in [
        ("ca.pem", &access.client.ca_pem),
        ("cert.pem", &access.client.cert_pem),
        ("key.pem", &access.client.key_pem),
    ] {
        let path = format!("{home}/{CERT_DIR}/{name}");
        let out = shell
            .upload(&path, pem.as_bytes(), 0o600, QUICK)
            .await
            .map_err(|e| fail(machine, e.to_string()))?;
        if !out.success() {
            return Err(fail(
                machine,
                format!("writing {path} failed: {}", out.failure_summary()),
            ));
        }
    }
    let out = run(docker_script(&home, access.manager)).await?;
    if !out.success() {
        return Err(fail(
            machine,
            format!(
                "pointing the student's docker CLI at the swarm failed: {}",
                out.failure_summary()
            ),
        ));
    }
    if let StudentLogin::Password(password) = &access.login {
        // On stdin, never on a command line another process could read.
        let out = shell
            .run_with_stdin(
                "chpasswd",
                format!("{STUDENT_USER}:{password}\n").as_bytes(),
                QUICK,
            )
            .await
            .map_err(|e| fail(machine, e.to_string()))?;
        if !out.success() {
            return Err(fail(
                machine,
                format!(
                    "setting the student's password failed: {}",
                    out.failure_summary()
                ),
            ));
        }
    }
    progress.machine(&machine.name, "student login ready");
    Ok(())
}

/// [`ensure_student`] on every machine of a cluster, in parallel.
pub async fn ensure_students(
    machines: &[Machine],
    ssh: &SshOptions,
    access: &StudentAccess,
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    ensure_students_with(&SshConnector::new(ssh.clone()), machines, access, progress).await
}

/// [`ensure_students`] with any [`Connector`].
pub async fn ensure_students_with(
    connector: &dyn Connector,
    machines: &[Machine],
    access: &StudentAccess,
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    let results = join_all(machines.iter().map(|m| async move {
        let shell = connector
            .connect(m, Duration::from_secs(20))
            .await
            .map_err(|e| fail(m, e.to_string()))?;
        let result = ensure_student(&*shell, m, access, progress).await;
        shell.close().await;
        result
    }))
    .await;
    match BootstrapError::collect(results.into_iter().filter_map(Result::err).collect()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_printable_and_unambiguous() {
        for _ in 0..50 {
            let p = generate_password();
            assert_eq!(p.len(), 14, "{p}");
            assert_eq!(p.matches('-').count(), 2, "{p}");
            assert!(
                p.chars()
                    .all(|c| c == '-' || PASSWORD_ALPHABET.contains(&(c as u8))),
                "{p}"
            );
        }
        assert_ne!(generate_password(), generate_password());
    }

    #[test]
    fn only_the_student_may_use_a_password() {
        let text = sshd_dropin(&StudentLogin::Password("x".into()));
        assert!(text.contains("Match User student\n\tPasswordAuthentication yes\n"));
        assert!(!text.contains("PermitRootLogin"));
        let keys = sshd_dropin(&StudentLogin::Key("ssh-ed25519 AAAA k".into()));
        assert!(keys.contains("\tPasswordAuthentication no\n"), "{keys}");
    }

    #[test]
    fn the_scripts_point_the_context_at_the_manager_and_keep_the_password_out() {
        let manager: IpAddr = "10.247.3.11".parse().unwrap();
        let script = user_script(&StudentLogin::Password("secret-pw".into()));
        assert!(!script.contains("secret-pw"));
        assert!(script.contains("key=''\n"), "no key in password mode");
        assert!(script.ends_with("echo home=$home\n"), "{script}");
        let keyed = user_script(&StudentLogin::Key("ssh-ed25519 AAAA w-s01".into()));
        assert!(keyed.contains("key='ssh-ed25519 AAAA w-s01'\n"), "{keyed}");
        let docker = docker_script("/home/student", manager);
        assert!(
            docker.contains("host=tcp://10.247.3.11:2377,$tls"),
            "{docker}"
        );
        assert!(docker.contains("docker context use swarmup"));
        assert!(docker.contains("chmod -R go-rwx $home/.docker"));
        let debug = format!("{:?}", StudentLogin::Password("secret-pw".into()));
        assert!(!debug.contains("secret"));
    }

    /// The drop-in as sshd itself reads it: a password for the student only, when the
    /// host has an sshd to ask (`sshd -T` only parses; it starts nothing).
    #[test]
    fn sshd_accepts_the_dropin_and_applies_it_to_the_student_only() {
        let Some(sshd) = ["/usr/sbin/sshd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            println!("skipped: no sshd on this host");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let dropins = dir.path().join("d");
        std::fs::create_dir(&dropins).unwrap();
        std::fs::write(
            dropins.join(DROPIN_NAME),
            sshd_dropin(&StudentLogin::Password("x".into())),
        )
        .unwrap();
        let key = crate::keys::generate_host_key("t").unwrap();
        let host_key = dir.path().join("host_key");
        std::fs::write(&host_key, &key.private_openssh).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&host_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "HostKey {}\nPasswordAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nInclude {}/*.conf\n",
                host_key.display(),
                dropins.display()
            ),
        )
        .unwrap();
        let effective = |user: &str| {
            let out = std::process::Command::new(sshd)
                .arg("-T")
                .arg("-f")
                .arg(&config)
                .arg("-C")
                .arg(format!("user={user},host=h,addr=192.0.2.1"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "sshd -T: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        if !nix_is_root() {
            println!("skipped: sshd -T needs root to read the host key");
            return;
        }
        // sshd -T refuses to run without its privilege separation directory, which the
        // ssh service makes when it starts: a host where none has run since boot has none.
        std::fs::create_dir_all("/run/sshd").unwrap();
        assert!(effective("student").contains("\npasswordauthentication yes\n"));
        let root = effective("root");
        assert!(root.contains("\npasswordauthentication no\n"));
        assert!(root.contains("\npermitrootlogin without-password\n"));
    }

    fn nix_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }
}
