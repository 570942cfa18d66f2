//! Secrets, configs and stacks end to end: a 3-node lab cluster made by `swarmup create`,
//! driven by the stock docker CLI.
//!
//! - `docker secret` / `docker config`: create (file and stdin), ls with filters, inspect
//!   (a secret never shows its data), Docker's 400s for limits and bad base64, `rm`
//!   refused while a service uses it;
//! - a task reads its secret at `/run/secrets/NAME` with the mode and owner asked for, and
//!   its config at the target; the value is on no disk of any node (state, Raft journal,
//!   Docker's data), not on a node without a task using it, and gone from the task's node
//!   once the task is;
//! - rotation by `service update --secret-rm OLD --secret-add source=NEW,target=OLD`;
//! - `docker stack deploy` of a compose file with 3 services on 2 networks, a file secret,
//!   an external secret and a config: it comes up, answers by service name, a changed
//!   file updates only the changed service, and `stack rm` leaves nothing.
//!
//! Needs SWARMUP_E2E=1 and root, like lab_e2e.rs.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use support::net::{NetLab, CONVERGE_TIMEOUT};
use support::{e2e_enabled, ensure_swarm_node, run_bounded, serial, wait_for, IMAGE};

const VALUE: &str = "s3cr3t-7f9c2a-only-in-memory";
const ROTATED: &str = "s3cr3t-rotated-41d8e0";

/// A value's traces on a node's disks: what swarm-node and Docker keep, and the node's
/// /run outside the tasks' secret mounts (tmpfs, memory only).
fn traces_on(lab: &NetLab, node: &str, value: &str) -> String {
    lab.ssh(
        node,
        &format!(
            "grep -rl -D skip --exclude-dir=secrets '{value}' /var/lib/swarm-node /var/lib/docker /run 2>/dev/null; true"
        ),
    )
    .unwrap_or_else(|e| panic!("grep on {node}: {e}"))
    .trim()
    .to_string()
}

/// The secret mounts (tmpfs) a node holds for its tasks.
fn secret_mounts(lab: &NetLab, node: &str) -> Vec<String> {
    lab.ssh(
        node,
        "awk '$5 ~ \"^/run/swarm-node/secrets/[^/]+$\" {print $5}' /proc/self/mountinfo",
    )
    .unwrap_or_else(|e| panic!("mounts on {node}: {e}"))
    .lines()
    .map(str::to_string)
    .collect()
}

/// The stock docker CLI pointed at the cluster, with `input` on its standard input.
fn docker_with_input(lab: &mut NetLab, args: &[&str], input: &str) -> support::Run {
    let mut cmd: Command = lab.cluster.docker(args);
    // Fed from a file: run_bounded spawns the command itself.
    let file = lab.cluster.sb().dir.path().join("stdin");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(input.as_bytes()))
        .expect("write stdin file");
    cmd.stdin(Stdio::from(std::fs::File::open(&file).expect("stdin file")));
    run_bounded(cmd, std::time::Duration::from_secs(60))
}

/// A raw Docker API call with the administrator's certificate: for what the docker CLI
/// never sends (bad base64).
fn api(lab: &mut NetLab, method: &str, path: &str, body: &str) -> (u16, String) {
    let env = lab.cluster.docker_env();
    let host = env["DOCKER_HOST"].trim_start_matches("tcp://").to_string();
    let certs = std::path::PathBuf::from(&env["DOCKER_CERT_PATH"]);
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "-H", "Content-Type: application/json"])
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("cert.pem"))
        .arg("--key")
        .arg(certs.join("key.pem"))
        .args(["-d", body, "-w", "\n%{http_code}"])
        .arg(format!("https://{host}/v1.41{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn write(lab: &NetLab, name: &str, content: &str) -> String {
    let path = lab.cluster.sb().dir.path().join(name);
    std::fs::write(&path, content).expect("write file");
    path.display().to_string()
}

#[test]
fn secrets_configs_and_stacks_on_a_lab_cluster() {
    if !e2e_enabled("secrets_configs_and_stacks_on_a_lab_cluster") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let mut lab = NetLab::new("sec");
    lab.cluster.create(&["--nodes", "3"]);
    lab.cluster.load_test_image();
    let (n1, n2, n3) = (lab.node(1), lab.node(2), lab.node(3));

    // --- The objects, as Docker's CLI shows them.
    let from_file = write(&lab, "value", VALUE);
    lab.docker(&["secret", "create", "--label", "app=db", "db_pw", &from_file]);
    docker_with_input(&mut lab, &["secret", "create", "db_pw_v2", "-"], ROTATED).expect_ok();
    let conf = write(&lab, "app.conf", "listen 8080\n");
    lab.docker(&["config", "create", "app_conf", &conf]);
    let ls = lab.docker(&["secret", "ls", "--format", "{{.Name}}"]);
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        ["db_pw", "db_pw_v2"],
        "{ls}"
    );
    let by_prefix = lab.docker(&[
        "secret",
        "ls",
        "--filter",
        "name=db_pw_",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(by_prefix.trim(), "db_pw_v2", "name filters by prefix");
    let by_label = lab.docker(&[
        "secret",
        "ls",
        "--filter",
        "label=app=db",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(by_label.trim(), "db_pw");
    let inspect = lab.docker(&["secret", "inspect", "db_pw"]);
    assert!(
        !inspect.contains("Data"),
        "a secret's data is never shown: {inspect}"
    );
    let conf_inspect = lab.docker(&["config", "inspect", "--pretty", "app_conf"]);
    assert!(conf_inspect.contains("listen 8080"), "{conf_inspect}");

    // Docker's refusals.
    let again = lab
        .cluster
        .docker_run(&["secret", "create", "db_pw", &from_file])
        .expect_err();
    assert!(again.contains("secret db_pw already exists"), "{again}");
    let big = write(&lab, "big", &"x".repeat(500 * 1024));
    let too_big = lab
        .cluster
        .docker_run(&["secret", "create", "big", &big])
        .expect_err();
    assert!(
        too_big.contains("secret data must be larger than 0 and less than 512000 bytes"),
        "{too_big}"
    );
    let (code, body) = api(
        &mut lab,
        "POST",
        "/secrets/create",
        r#"{"Name":"bad","Data":"aGk!"}"#,
    );
    assert_eq!(code, 400, "bad base64: {body}");
    assert!(
        body.contains("illegal base64 data at input byte 3"),
        "{body}"
    );
    let (code, body) = api(
        &mut lab,
        "POST",
        "/secrets/create",
        r#"{"Name":"urlsafe","Data":"aGk_Pz8"}"#,
    );
    assert_eq!(code, 201, "URL-safe base64 is accepted: {body}");
    lab.docker(&["secret", "rm", "urlsafe"]);

    // --- A task reads its secret and config; nothing reaches a disk or another node.
    lab.service(&[
        "--name",
        "db",
        "--constraint",
        &format!("node.hostname=={n2}"),
        "--secret",
        "source=db_pw,target=db_pw,uid=1000,gid=1001,mode=0400",
        "--config",
        "source=app_conf,target=/etc/app.conf",
        IMAGE,
        "sleep",
        "3600",
    ]);
    lab.running("db", 1);
    let read = lab
        .exec(&n2, "db", "cat /run/secrets/db_pw")
        .expect("read the secret");
    assert_eq!(read, VALUE);
    let stat = lab
        .exec(&n2, "db", "stat -c %a.%u.%g /run/secrets/db_pw")
        .expect("stat the secret");
    assert_eq!(stat.trim(), "400.1000.1001");
    let conf_read = lab
        .exec(&n2, "db", "cat /etc/app.conf")
        .expect("read the config");
    assert_eq!(conf_read, "listen 8080\n");
    let write_attempt = lab.exec(&n2, "db", "echo x > /run/secrets/db_pw 2>&1; echo rc=$?");
    let refused = write_attempt.as_deref().unwrap_or_default();
    assert!(
        refused.contains("rc=") && !refused.contains("rc=0"),
        "the secret is read-only: {write_attempt:?}"
    );
    assert_eq!(
        secret_mounts(&lab, &n2).len(),
        1,
        "one tmpfs for the task on {n2}"
    );
    for node in [&n1, &n2, &n3] {
        let traces = traces_on(&lab, node, VALUE);
        assert!(
            traces.is_empty(),
            "the secret's value is on {node}'s disk: {traces}"
        );
    }
    for node in [&n1, &n3] {
        assert!(
            secret_mounts(&lab, node).is_empty(),
            "{node} runs no task using it"
        );
    }

    // In use: refused with SwarmKit's words.
    let in_use = lab
        .cluster
        .docker_run(&["secret", "rm", "db_pw"])
        .expect_err();
    assert!(
        in_use.contains("secret 'db_pw' is in use by the following service: db"),
        "{in_use}"
    );

    // --- Rotation: a new secret under the old target, by a rolling update.
    lab.docker(&[
        "service",
        "update",
        "-d",
        "--secret-rm",
        "db_pw",
        "--secret-add",
        "source=db_pw_v2,target=db_pw",
        "db",
    ]);
    wait_for(
        "the rotated secret in the new task",
        CONVERGE_TIMEOUT,
        || match lab.exec(&n2, "db", "cat /run/secrets/db_pw") {
            Ok(v) if v == ROTATED => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    wait_for(
        "the old task's secret mount to go",
        CONVERGE_TIMEOUT,
        || match secret_mounts(&lab, &n2).len() {
            1 => Ok(()),
            n => Err(format!("{n} mounts")),
        },
    );
    lab.docker(&["secret", "rm", "db_pw"]);

    // Removed with its task.
    lab.docker(&["service", "rm", "db"]);
    wait_for("no secret mount left on the node", CONVERGE_TIMEOUT, || {
        let left = secret_mounts(&lab, &n2);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    lab.docker(&["secret", "rm", "db_pw_v2"]);
    lab.docker(&["config", "rm", "app_conf"]);

    // --- A stack from a compose file.
    stack(&mut lab);
}

const COMPOSE: &str = r#"version: "3.8"
services:
  db:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www && cat /run/secrets/db_password /run/secrets/external_pw > /www/index.html && exec httpd -f -p 5432 -h /www"]
    networks: [back]
    secrets:
      - db_password
      - source: external
        target: external_pw
        mode: 0400
    environment:
      ROLE: db
    deploy:
      restart_policy:
        condition: on-failure
  web:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www && cat /etc/app.conf > /www/index.html && exec httpd -f -p 80 -h /www"]
    networks: [front, back]
    ports:
      - "8080:80"
    configs:
      - source: app_conf
        target: /etc/app.conf
    deploy:
      replicas: 2
      update_config:
        parallelism: 1
        delay: 1s
      placement:
        constraints: [node.role == manager]
  client:
    image: IMAGE
    command: ["sleep", "3600"]
    networks: [front]
networks:
  front:
  back:
secrets:
  db_password:
    file: ./db_password.txt
  external:
    external: true
configs:
  app_conf:
    file: ./app.conf
"#;

/// The running tasks of a stack: task id → service name.
fn stack_tasks(lab: &mut NetLab) -> Result<BTreeMap<String, String>, String> {
    let run = lab.cluster.docker_run(&[
        "stack",
        "ps",
        "app",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}} {{.Name}} {{.CurrentState}}",
    ]);
    if !run.ok() {
        return Err(run.stderr);
    }
    let mut tasks = BTreeMap::new();
    for line in run.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[2] != "Running" {
            return Err(format!("not running yet: {line}"));
        }
        let service = f[1].rsplit_once('.').map_or(f[1], |(s, _)| s);
        tasks.insert(f[0].to_string(), service.to_string());
    }
    Ok(tasks)
}

fn stack(lab: &mut NetLab) {
    // The example users copy is a valid compose file for the stock CLI.
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra-examples/drupal-postgres/compose.yml"
    );
    lab.docker(&["stack", "config", "-c", example]);
    let dir = lab.cluster.sb().dir.path().join("stack");
    std::fs::create_dir_all(&dir).expect("stack dir");
    std::fs::write(dir.join("db_password.txt"), "from-a-file\n").expect("secret file");
    std::fs::write(dir.join("app.conf"), "served by web\n").expect("config file");
    let compose = dir.join("compose.yml");
    std::fs::write(&compose, COMPOSE.replace("IMAGE", IMAGE)).expect("compose file");
    docker_with_input(
        lab,
        &["secret", "create", "external", "-"],
        "from-outside\n",
    )
    .expect_ok();
    let compose_path = compose.display().to_string();
    let deploy = |lab: &mut NetLab| {
        // Offline nodes cannot ask a registry for a digest; `never` keeps the deploy quiet.
        lab.docker(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            &compose_path,
            "app",
        ])
    };
    deploy(lab);

    let ls = lab.docker(&["stack", "ls", "--format", "{{.Name}} {{.Services}}"]);
    assert_eq!(ls.trim(), "app 3", "{ls}");
    let services = lab.docker(&["stack", "services", "app", "--format", "{{.Name}}"]);
    let mut names: Vec<&str> = services.split_whitespace().collect();
    names.sort();
    assert_eq!(names, ["app_client", "app_db", "app_web"]);
    let (first, _) = wait_for("the stack's 4 tasks running", CONVERGE_TIMEOUT, || {
        let tasks = stack_tasks(lab)?;
        if tasks.len() == 4 {
            Ok(tasks)
        } else {
            Err(format!("{tasks:?}"))
        }
    });

    // By service name across the stack's networks: web reaches db on `back`, the client
    // reaches web on `front`; the client shares no network with db.
    let web_node = lab.running("app_web", 2)[0].clone();
    let client_node = lab.running("app_client", 1)[0].clone();
    wait_for(
        "web reads db's secrets through db's name",
        CONVERGE_TIMEOUT,
        || {
            let out = lab.exec(
                &web_node,
                "app_web",
                "timeout 3 wget -q -O - http://db:5432/",
            )?;
            if out == "from-a-file\nfrom-outside\n" {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    wait_for("the client reaches web by name", CONVERGE_TIMEOUT, || {
        let out = lab.exec(
            &client_node,
            "app_client",
            "timeout 3 wget -q -O - http://web/",
        )?;
        if out == "served by web\n" {
            Ok(())
        } else {
            Err(out)
        }
    });
    let isolated = lab
        .exec(&client_node, "app_client", "nslookup db 2>&1; true")
        .unwrap_or_default();
    assert!(
        !isolated.contains("Name:"),
        "db is not on the client's network: {isolated}"
    );

    // The same file again changes nothing; a changed service is the only one updated.
    deploy(lab);
    let same = stack_tasks(lab).expect("stack ps");
    assert_eq!(same, first, "an unchanged deploy replaces no task");
    let changed = COMPOSE
        .replace("IMAGE", IMAGE)
        .replace("ROLE: db", "ROLE: db2");
    std::fs::write(&compose, changed).expect("compose file");
    deploy(lab);
    let (after, _) = wait_for("db's task replaced", CONVERGE_TIMEOUT, || {
        let tasks = stack_tasks(lab)?;
        let db_same = tasks
            .iter()
            .any(|(id, s)| s == "app_db" && first.contains_key(id));
        if tasks.len() == 4 && !db_same {
            Ok(tasks)
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    for (id, service) in &first {
        if service != "app_db" {
            assert!(after.contains_key(id), "{service}'s task {id} was replaced");
        }
    }

    // `stack rm` leaves nothing of the stack.
    lab.docker(&["stack", "rm", "app"]);
    let label = "label=com.docker.stack.namespace=app";
    wait_for("nothing of the stack left", CONVERGE_TIMEOUT, || {
        let mut left = String::new();
        for kind in ["service", "network", "secret", "config"] {
            let out = lab.docker(&[kind, "ls", "-q", "--filter", label]);
            left.push_str(&out);
        }
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    let stacks = lab.docker(&["stack", "ls", "--format", "{{.Name}}"]);
    assert!(stacks.trim().is_empty(), "{stacks}");
    let secrets = lab.docker(&["secret", "ls", "--format", "{{.Name}}"]);
    assert_eq!(
        secrets.trim(),
        "external",
        "an external secret is the user's to remove"
    );
    lab.docker(&["secret", "rm", "external"]);
    lab.cluster.destroy_and_check();
}
