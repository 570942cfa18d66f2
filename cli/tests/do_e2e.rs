//! `swarmup --provider digitalocean` end to end against the fake DigitalOcean API on
//! loopback. In the lab tests every droplet is a real machine: a lab node on this host
//! (its own sshd and dockerd), so the built binary goes from an API token to a working
//! swarm, and `destroy` must leave no droplet, firewall, key or lab node behind. Faults
//! come through the fake: the droplet limit, a partial multi-create, a 429.
//!
//! The lab tests need SWARMUP_E2E=1, root, dockerd, sshd and iproute2; without it they
//! print `skipped: …`. The tests that make no machine (dry run, droplet limit) always run.
//! Each test has its own fake, records, SSH config, config dir and lab root; one runs at a
//! time, and a guard destroys whatever a failing test leaves.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod support;

use support::{run_bounded, Run};

use fake_digitalocean::{ApiCall, DropletBackend, FakeDo, FakeOptions, Faults, MemoryBackend};

/// A key already on the account in the `--ssh-key` tests, and its MD5 fingerprint.
const USER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9TrNgtf2VHeJloTqTQuEJUMkGMnCSK25Vx/l+zhH0c user@host";
const USER_KEY_MD5: &str = "f5:a4:be:64:6f:c9:df:3f:cb:41:f7:72:42:27:92:81";

/// Bounds every command: a hang fails the test instead of stalling the suite.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn e2e_enabled(test: &str) -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: {test} needs SWARMUP_E2E=1, root, dockerd, sshd and iproute2");
        false
    }
}

fn swarmup_bin() -> &'static str {
    env!("CARGO_BIN_EXE_swarmup")
}

/// The swarm-node binary `create` installs: built next to swarmup if it is not there yet.
fn ensure_swarm_node() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARMUP_SWARM_NODE_BINARY") {
        return PathBuf::from(p);
    }
    let exe = Path::new(swarmup_bin());
    let built = exe.with_file_name("swarm-node");
    if !built.is_file() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "-p",
            "swarm-node",
            "--bin",
            "swarm-node",
        ]);
        if exe.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
            cmd.arg("--release");
        }
        let out = run_bounded(cmd, Duration::from_secs(1800));
        assert!(out.ok(), "{out}");
    }
    assert!(built.is_file(), "{} is missing", built.display());
    built
}

/// What stands behind the fake's droplets.
enum Machines {
    Memory,
    #[cfg(target_os = "linux")]
    Lab(Arc<fake_digitalocean::LabBackend>),
}

/// A fake DigitalOcean and a private swarmup environment. Dropping it destroys every lab
/// node the fake made and stops the fake, whatever the test got to.
struct Env {
    rt: tokio::runtime::Runtime,
    fake: Option<FakeDo>,
    machines: Machines,
    dir: tempfile::TempDir,
    /// Records of `swarmup` runs (SWARMUP_HOME); [`Env::other_home`] switches to another.
    home: PathBuf,
    swarm_node: Option<PathBuf>,
}

impl Env {
    fn new(lab: bool) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::Builder::new()
            .prefix("swarmup-do-e2e-")
            .tempdir()
            .expect("temp dir");
        let (machines, backend): (Machines, Arc<dyn DropletBackend>) = if lab {
            #[cfg(target_os = "linux")]
            {
                // Offline: nothing the droplets send can leave the lab.
                let b = Arc::new(fake_digitalocean::LabBackend::new(
                    swarmup_providers::lab::LabConfig {
                        root: dir.path().join("droplets"),
                        init: swarmup_providers::lab::NodeInit {
                            program: swarmup_bin().into(),
                            args: vec!["lab-node".into()],
                        },
                        offline: true,
                        ..swarmup_providers::lab::LabConfig::default()
                    },
                ));
                (Machines::Lab(b.clone()), b)
            }
            #[cfg(not(target_os = "linux"))]
            unreachable!("lab tests run on Linux only")
        } else {
            (Machines::Memory, Arc::new(MemoryBackend::default()))
        };
        let fake = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            FakeDo::start(
                listener,
                FakeOptions {
                    boot_delay: Duration::from_millis(300),
                    action_delay: Duration::from_millis(100),
                    backend,
                    ..FakeOptions::default()
                },
            )
            .expect("start the fake")
        });
        let home = dir.path().join("home");
        Env {
            rt,
            fake: Some(fake),
            machines,
            swarm_node: None,
            home,
            dir,
        }
    }

    fn fake(&self) -> &FakeDo {
        self.fake.as_ref().expect("fake running")
    }

    /// Swarmup as another machine would run it: no records, only the token.
    fn other_home(&mut self, name: &str) {
        self.home = self.dir.path().join(name);
    }

    fn swarmup(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(swarmup_bin());
        cmd.args(args)
            .env("SWARMUP_HOME", &self.home)
            .env("SWARMUP_SSH_CONFIG", d.join("ssh_config"))
            .env("SWARMUP_LAB_ROOT", d.join("lab"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("DIGITALOCEAN_API_URL", self.fake().url())
            .env("DIGITALOCEAN_TOKEN", self.fake().token())
            .stdin(Stdio::null());
        for var in [
            "DIGITALOCEAN_ACCESS_TOKEN",
            "SWARMUP_CLUSTER",
            "SWARMUP_LOG",
            "DOCKER_HOST",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
        ] {
            cmd.env_remove(var);
        }
        if let Some(b) = &self.swarm_node {
            cmd.env("SWARMUP_SWARM_NODE_BINARY", b);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        run_bounded(self.swarmup(args), COMMAND_TIMEOUT)
    }

    fn faults(&self, json: serde_json::Value) {
        self.fake()
            .set_faults(serde_json::from_value::<Faults>(json).expect("faults"));
    }

    /// Puts `USER_KEY` on the account, as the user did in the control panel, and writes
    /// it to a `.pub` file; returns the file.
    fn upload_user_key(&self) -> PathBuf {
        let url = format!("{}/v2/account/keys", self.fake().url());
        let token = self.fake().token().to_string();
        let status = self.rt.block_on(async {
            reqwest::Client::new()
                .post(&url)
                .bearer_auth(token)
                .json(&serde_json::json!({"name": "laptop", "public_key": USER_KEY}))
                .send()
                .await
                .map(|r| r.status())
        });
        assert_eq!(status.expect("upload key").as_u16(), 201);
        let path = self.dir.path().join("laptop.pub");
        std::fs::write(&path, format!("{USER_KEY}\n")).expect("key file");
        path
    }

    fn calls(&self) -> Vec<ApiCall> {
        self.fake().api_calls()
    }

    /// Lab clusters the fake's droplets live in.
    fn lab_clusters(&self) -> Vec<String> {
        match &self.machines {
            Machines::Memory => Vec::new(),
            #[cfg(target_os = "linux")]
            Machines::Lab(b) => {
                use swarmup_providers::Provider;
                self.rt.block_on(b.lab().clusters()).expect("lab clusters")
            }
        }
    }

    /// Nothing of `cluster` on the account, in the lab or on this host's network, and no
    /// local record.
    fn assert_nothing_left(&self, cluster: &str) {
        let fake = self.fake();
        assert!(fake.droplets().is_empty(), "{:?}", fake.droplets());
        assert!(fake.firewalls().is_empty(), "{:?}", fake.firewalls());
        // The user's own key stays; swarmup's are gone.
        let keys: Vec<_> = fake
            .ssh_keys()
            .into_iter()
            .filter(|k| k.fingerprint != USER_KEY_MD5)
            .collect();
        assert!(keys.is_empty(), "{keys:?}");
        assert!(self.lab_clusters().is_empty(), "{:?}", self.lab_clusters());
        #[cfg(target_os = "linux")]
        if let Machines::Lab(b) = &self.machines {
            let names =
                swarmup_providers::lab::naming::ClusterNames::new(&b.lab().config().root, cluster);
            let netns = std::fs::read_dir("/run/netns")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| names.owns_netns(n))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            assert!(netns.is_empty(), "network namespaces left: {netns:?}");
            let bridge = Path::new("/sys/class/net").join(&names.bridge);
            assert!(!bridge.exists(), "bridge {} left", names.bridge);
        }
        let record = self.home.join("clusters").join(cluster);
        assert!(!record.exists(), "{} left", record.display());
        let ssh = std::fs::read_to_string(self.dir.path().join("ssh_config")).unwrap_or_default();
        assert!(!ssh.contains(&format!("{cluster}-node1")), "{ssh}");
    }

    /// Waits until the fake's droplets of one create turned active and the lab settled.
    fn wait_until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Machines::Lab(b) = &self.machines {
            if let Err(e) = self.rt.block_on(b.destroy_all()) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Some(fake) = self.fake.take() {
            self.rt.block_on(fake.shutdown());
        }
    }
}

fn count(calls: &[ApiCall], method: &str, path: &str) -> usize {
    calls
        .iter()
        .filter(|c| c.method == method && c.path == path)
        .count()
}

/// A stand-in for the swarm-node binary where no machine is ever bootstrapped.
fn dummy_binary(env: &Env) -> PathBuf {
    let p = env.dir.path().join("swarm-node");
    std::fs::write(&p, b"not used").expect("dummy binary");
    p
}

#[test]
fn dry_run_prices_the_plan_and_creates_nothing() {
    let _serial = serial();
    let mut env = Env::new(false);
    env.swarm_node = Some(dummy_binary(&env));
    let out = env
        .run(&[
            "create",
            "--provider",
            "digitalocean",
            "--name",
            "dry",
            "--nodes",
            "3",
            "--region",
            "ams3",
            "--dry-run",
        ])
        .expect_ok();
    for want in [
        "dry-node1",
        "dry-node3",
        "ams3",
        "s-1vcpu-1gb",
        "$0.00893",
        "$6.00",
        "TOTAL",
        "$0.02679",
        "$18.00",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let calls = env.calls();
    assert!(
        calls.iter().all(|c| c.method == "GET"),
        "a dry run only reads: {calls:?}"
    );
    assert!(env.fake().droplets().is_empty());
    assert!(env.fake().ssh_keys().is_empty());
    assert!(
        !env.home.join("clusters/dry").exists(),
        "a dry run writes no record or key"
    );
    let json = env
        .run(&[
            "create",
            "--provider",
            "digitalocean",
            "--name",
            "dry",
            "--nodes",
            "2",
            "--dry-run",
            "--output",
            "json",
        ])
        .expect_ok();
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["plan"]["to_create"].as_array().map(Vec::len), Some(2));
    assert!((v["plan"]["total_monthly"].as_f64().unwrap() - 12.0).abs() < 1e-9);

    // The example cluster file, as a user would try it first.
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra-examples/digitalocean-cluster.yaml")
        .display()
        .to_string();
    let out = env
        .run(&["create", "-f", &example, "--dry-run"])
        .expect_ok();
    for want in [
        "web-node3",
        "fra1",
        "s-1vcpu-2gb",
        "$36.00",
        "203.0.113.7/32",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    assert!(env.fake().droplets().is_empty());
}

#[test]
fn ssh_key_names_a_key_on_the_account_by_its_fingerprint() {
    let _serial = serial();
    let env = Env::new(false);
    let key = env.dir.path().join("laptop.pub");
    std::fs::write(&key, format!("{USER_KEY}\n")).unwrap();
    let key = key.display().to_string();
    let dry = |key: &str| {
        env.run(&[
            "create",
            "--provider",
            "digitalocean",
            "--name",
            "keys",
            "--nodes",
            "1",
            "--ssh-key",
            key,
            "--dry-run",
        ])
    };
    let err = dry(&key).expect_err();
    assert!(
        err.contains(&format!("no ssh key with fingerprint {USER_KEY_MD5}")),
        "{err}"
    );
    env.upload_user_key();
    let out = dry(&key).expect_ok();
    assert!(
        out.contains(&format!("existing key {USER_KEY_MD5}")),
        "{out}"
    );
    let private = env.dir.path().join("id_ed25519");
    std::fs::write(
        &private,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = dry(&private.display().to_string()).expect_err();
    assert!(err.contains("is a private key"), "{err}");
}

#[test]
fn the_droplet_limit_is_refused_before_anything_is_created() {
    let _serial = serial();
    let mut env = Env::new(false);
    env.swarm_node = Some(dummy_binary(&env));
    env.faults(serde_json::json!({"droplet_limit": 2}));
    let err = env
        .run(&[
            "create",
            "--provider",
            "digitalocean",
            "--name",
            "limit",
            "--nodes",
            "3",
        ])
        .expect_err();
    assert!(err.contains("can create 2 more droplets"), "{err}");
    assert!(err.contains("needs 3"), "{err}");
    assert_eq!(count(&env.calls(), "POST", "/v2/droplets"), 0);
    assert_eq!(count(&env.calls(), "POST", "/v2/account/keys"), 0);
    env.assert_nothing_left("limit");
}

#[test]
fn a_token_from_the_config_file_works_and_a_missing_one_is_explained() {
    let _serial = serial();
    let env = Env::new(false);
    let mut cmd = env.swarmup(&["create", "--provider", "digitalocean", "--nodes", "1"]);
    cmd.env_remove("DIGITALOCEAN_TOKEN");
    cmd.env("SWARMUP_SWARM_NODE_BINARY", dummy_binary(&env));
    let err = run_bounded(cmd, COMMAND_TIMEOUT).expect_err();
    assert!(err.contains("no DigitalOcean token"), "{err}");
    assert!(err.contains("config.yaml"), "{err}");

    let config = env.dir.path().join("config/swarmup");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.yaml"),
        format!("digitalocean:\n  token: {}\n", env.fake().token()),
    )
    .unwrap();
    let mut cmd = env.swarmup(&[
        "create",
        "--provider",
        "digitalocean",
        "--name",
        "cfg",
        "--nodes",
        "1",
        "--dry-run",
    ]);
    cmd.env_remove("DIGITALOCEAN_TOKEN");
    cmd.env("SWARMUP_SWARM_NODE_BINARY", dummy_binary(&env));
    let out = run_bounded(cmd, COMMAND_TIMEOUT).expect_ok();
    assert!(out.contains("cfg-node1"), "{out}");
}

/// The scenario: token → 3 droplets → swarm Ready, seen by `ls` here and, by its
/// tags, from a machine with no record; destroyed from there; nothing left. A 429 on the
/// way is waited out.
#[cfg(target_os = "linux")]
#[test]
fn create_a_swarm_from_a_token_then_destroy_leaves_nothing() {
    if !e2e_enabled("create_a_swarm_from_a_token_then_destroy_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let mut env = Env::new(true);
    env.swarm_node = Some(ensure_swarm_node());
    let name = "doe2e";
    env.faults(serde_json::json!({
        "rate_limit": {"count": 1, "retry_after_secs": 2, "method": "GET", "path_prefix": "/v2/account"}
    }));
    let started = Instant::now();
    let run = env.run(&[
        "create",
        "--provider",
        "digitalocean",
        "--name",
        name,
        "--nodes",
        "3",
        "--output",
        "json",
    ]);
    let took = started.elapsed();
    let stderr = run.stderr.clone();
    let report: serde_json::Value = serde_json::from_str(&run.expect_ok()).expect("json report");
    println!("figure: {name}: create --provider digitalocean --nodes 3: {took:.1?}");
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{report}");
    assert!(nodes.iter().all(|n| n["status"] == "ready"), "{report}");
    assert_eq!(report["provider"], "digitalocean");
    // The 429 came and was waited out for as long as retry-after said.
    let calls = env.calls();
    let account: Vec<_> = calls
        .iter()
        .filter(|c| c.path == "/v2/account")
        .map(|c| c.status)
        .collect();
    assert_eq!(account.first(), Some(&Some(429)), "{calls:?}");
    assert!(account.contains(&Some(200)), "{calls:?}");
    let preflight = report["timings"]["preflight"].as_f64().expect("timing");
    assert!(
        preflight >= 2.0,
        "retry-after 2 s not honoured: {preflight}"
    );
    let api = &report["api_calls"];
    println!("figure: {name}: api calls for create: {api}");
    assert!(api["calls"].as_u64().expect("calls") <= 12, "{api}");
    // No --ssh-from: warned, and SSH and the Docker API are open, the API also to peers.
    assert!(stderr.contains("is open to 0.0.0.0/0"), "{stderr}");
    let fw = env.fake().firewalls();
    assert_eq!(fw.len(), 1);
    let api_rule = fw[0]
        .inbound_rules
        .iter()
        .find(|r| r["ports"] == "2377")
        .expect("2377 rule");
    assert_eq!(
        api_rule["sources"]["addresses"],
        serde_json::json!(["0.0.0.0/0", "::/0"])
    );
    assert_eq!(
        api_rule["sources"]["tags"],
        serde_json::json!([format!("swarmup:{name}")])
    );
    // Each droplet is a lab node that got its own host key: SSH through the pinned
    // known_hosts works on every one.
    assert_eq!(env.lab_clusters(), vec![name.to_string()]);
    for node in ["node1", "node2", "node3"] {
        let out = env.run(&["ssh", name, node, "--", "hostname"]).expect_ok();
        assert_eq!(out.trim(), format!("{name}-{node}"));
    }

    let ls = env.run(&["node", "ls", "--cluster", name]).expect_ok();
    assert_eq!(ls.matches("Ready").count(), 3, "{ls}");
    let ls = env.run(&["ls"]).expect_ok();
    assert!(
        ls.contains(name) && ls.contains("digitalocean") && ls.contains("3/3"),
        "{ls}"
    );

    // The docker CLI reaches the Docker API on 2377 with the cluster's client certificate.
    let envs: serde_json::Value =
        serde_json::from_str(&env.run(&["env", name, "--output", "json"]).expect_ok())
            .expect("env json");
    let docker = if Path::new("/usr/local/bin/docker").exists() {
        "/usr/local/bin/docker"
    } else {
        "docker"
    };
    let mut cmd = Command::new(docker);
    cmd.args(["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
        .env("DOCKER_HOST", envs["DOCKER_HOST"].as_str().unwrap())
        .env("DOCKER_TLS_VERIFY", "1")
        .env(
            "DOCKER_CERT_PATH",
            envs["DOCKER_CERT_PATH"].as_str().unwrap(),
        )
        .env("DOCKER_CONFIG", env.dir.path().join("docker"));
    let out = run_bounded(cmd, COMMAND_TIMEOUT);
    assert!(out.ok(), "docker node ls through swarmup env failed: {out}");
    assert_eq!(out.stdout.matches("Ready").count(), 3, "{out}");

    // Cluster verbs need no token: the record has the addresses.
    for args in [vec!["env", name], vec!["node", "ls", "--cluster", name]] {
        let mut cmd = env.swarmup(&args);
        cmd.env_remove("DIGITALOCEAN_TOKEN")
            .env("DIGITALOCEAN_API_URL", "http://127.0.0.1:9");
        let out = run_bounded(cmd, COMMAND_TIMEOUT);
        assert!(out.ok(), "swarmup {args:?} without a token: {out}");
    }

    published_ports_open_and_close_the_cloud_firewall(&env, name);

    // Another machine with only the token: `ls` finds the cluster by its tags and
    // `destroy` removes it.
    env.other_home("home-elsewhere");
    let ls = env.run(&["ls"]).expect_ok();
    assert!(ls.contains(name) && ls.contains("3/3"), "{ls}");
    let destroyed = env.run(&["destroy", name, "--yes"]).expect_ok();
    for what in ["droplet", "firewall", "ssh key"] {
        assert!(destroyed.contains(what), "{destroyed}");
    }
    env.assert_nothing_left(name);
}

/// A service published on 9200 opens 9200/tcp in the cloud firewall from anywhere;
/// `firewall sync --publish-from` narrows it and is remembered; removing the service
/// closes it again, and swarmup's own rules never change.
fn published_ports_open_and_close_the_cloud_firewall(env: &Env, name: &str) {
    // The nodes have no registry: the service's image comes from this host.
    support::ensure_test_image();
    let mut save = support::host_docker();
    save.args(["save", support::IMAGE]).stdout(Stdio::piped());
    let mut save = save.spawn().expect("run docker save");
    let mut load = env.swarmup(&["image", "load", name]);
    load.stdin(Stdio::from(save.stdout.take().expect("docker save stdout")));
    run_bounded(load, COMMAND_TIMEOUT).expect_ok();
    assert!(
        save.wait().expect("docker save").success(),
        "docker save failed"
    );

    let own = env.fake().firewalls()[0].inbound_rules.clone();
    let fw_path = format!("/v2/firewalls/{}", env.fake().firewalls()[0].id);
    let rule_9200 = || {
        let fw = env.fake().firewalls();
        let rules: Vec<_> = fw[0]
            .inbound_rules
            .iter()
            .filter(|r| r["ports"] == "9200")
            .cloned()
            .collect();
        assert!(rules.len() <= 1, "{rules:?}");
        rules.into_iter().next()
    };
    assert!(rule_9200().is_none());

    let created = env.run(&[
        "service",
        "create",
        "--cluster",
        name,
        "--name",
        "es",
        "-p",
        "9200:9200",
        support::IMAGE,
        "sleep",
        "3600",
    ]);
    let stderr = created.stderr.clone();
    created.expect_ok();
    assert!(
        stderr.contains("opened 9200/tcp from 0.0.0.0/0, ::/0"),
        "{stderr}"
    );
    let rule = rule_9200().expect("a 9200 rule after service create");
    assert_eq!(rule["protocol"], "tcp");
    assert_eq!(
        rule["sources"]["addresses"],
        serde_json::json!(["0.0.0.0/0", "::/0"])
    );
    assert_eq!(
        env.fake().firewalls()[0].inbound_rules[..own.len()],
        own[..]
    );

    // In sync already: nothing is sent.
    env.fake().clear_api_calls();
    let out = env.run(&["firewall", "sync", name]).expect_ok();
    assert!(
        out.contains("already allows exactly the published ports"),
        "{out}"
    );
    assert_eq!(count(&env.calls(), "PUT", &fw_path), 0);

    let out = env
        .run(&["firewall", "sync", name, "--publish-from", "192.0.2.0/24"])
        .expect_ok();
    assert!(out.contains("opened 9200/tcp from 192.0.2.0/24"), "{out}");
    assert!(
        out.contains("closed 9200/tcp from 0.0.0.0/0, ::/0"),
        "{out}"
    );
    let rule = rule_9200().expect("the 9200 rule, narrowed");
    assert_eq!(
        rule["sources"]["addresses"],
        serde_json::json!(["192.0.2.0/24"])
    );
    // Remembered: a plain sync keeps the narrow source.
    let out = env.run(&["firewall", "sync", name]).expect_ok();
    assert!(out.contains("already allows"), "{out}");

    let bad = env.run(&["firewall", "sync", name, "--publish-from", "192.0.2.0/33"]);
    assert!(!bad.ok(), "{bad}");
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{bad}");
    assert!(bad.stderr.contains("invalid --publish-from"), "{bad}");
    assert!(rule_9200().is_some());

    let removed = env.run(&["service", "rm", "--cluster", name, "es"]);
    let stderr = removed.stderr.clone();
    removed.expect_ok();
    assert!(
        stderr.contains("closed 9200/tcp from 192.0.2.0/24"),
        "{stderr}"
    );
    assert!(rule_9200().is_none());
    assert_eq!(env.fake().firewalls()[0].inbound_rules, own);
}

/// A multi-create that makes one droplet of three fails; the same create run again
/// makes the other two, and the swarm comes up.
#[cfg(target_os = "linux")]
#[test]
fn a_partial_create_is_resumed_by_running_create_again() {
    if !e2e_enabled("a_partial_create_is_resumed_by_running_create_again") {
        return;
    }
    let _serial = serial();
    let mut env = Env::new(true);
    env.swarm_node = Some(ensure_swarm_node());
    let name = "doresume";
    // The user's own key goes on the droplets; swarmup uploads none and never deletes it.
    let key = env.upload_user_key().display().to_string();
    env.faults(serde_json::json!({"partial_create": {"count": 1, "succeed": 1, "status": 500}}));
    let args = [
        "create",
        "--provider",
        "digitalocean",
        "--name",
        name,
        "--nodes",
        "3",
        "--region",
        "fra1",
        "--ssh-key",
        &key,
        "--ssh-from",
        "10.0.0.0/8",
    ];
    let err = env.run(&args).expect_err();
    assert!(err.contains("run the same create again"), "{err}");
    assert_eq!(env.fake().droplets().len(), 1);
    // The record keeps the choices: a resumed create without them stays in fra1, with
    // the user's key and the same firewall.
    let out = env.run(&args[..7]).expect_ok();
    assert!(out.contains("is ready (3 nodes"), "{out}");
    let droplets = env.fake().droplets();
    assert_eq!(droplets.len(), 3, "{droplets:?}");
    let mut names: Vec<_> = droplets.iter().map(|d| d.name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        (1..=3)
            .map(|i| format!("{name}-node{i}"))
            .collect::<Vec<_>>()
    );
    let url = format!("{}/_fake/state", env.fake().url());
    let state: serde_json::Value = env
        .rt
        .block_on(async { reqwest::get(&url).await?.json().await })
        .expect("fake state");
    for d in state["droplets"].as_array().expect("droplets") {
        assert_eq!(d["region"]["slug"], "fra1", "{d}");
    }
    for d in env.fake().droplets() {
        assert_eq!(d.ssh_public_keys, vec![USER_KEY.to_string()], "{d:?}");
    }
    let keys = env.fake().ssh_keys();
    assert_eq!(keys.len(), 1, "no key of swarmup's own: {keys:?}");
    let rule = env.fake().firewalls()[0]
        .inbound_rules
        .iter()
        .find(|r| r["ports"] == "2377")
        .cloned()
        .expect("2377 rule");
    assert_eq!(
        rule["sources"]["addresses"],
        serde_json::json!(["10.0.0.0/8"])
    );
    let ls = env.run(&["node", "ls", "--cluster", name]).expect_ok();
    assert_eq!(ls.matches("Ready").count(), 3, "{ls}");
    env.run(&["destroy", name, "--yes"]).expect_ok();
    env.assert_nothing_left(name);
    assert_eq!(env.fake().ssh_keys().len(), 1, "the user's key stays");
}

/// With --rollback-on-failure a failed create removes what it made: the droplet the
/// partial multi-create made, the key it uploaded, the local record.
#[cfg(target_os = "linux")]
#[test]
fn rollback_on_failure_removes_what_the_run_made() {
    if !e2e_enabled("rollback_on_failure_removes_what_the_run_made") {
        return;
    }
    let _serial = serial();
    let mut env = Env::new(true);
    env.swarm_node = Some(ensure_swarm_node());
    let name = "dorollback";
    env.faults(serde_json::json!({"partial_create": {"count": 1, "succeed": 1, "status": 500}}));
    let err = env
        .run(&[
            "create",
            "--provider",
            "digitalocean",
            "--name",
            name,
            "--nodes",
            "3",
            "--rollback-on-failure",
        ])
        .expect_err();
    assert!(err.contains("--rollback-on-failure removed"), "{err}");
    assert!(err.contains("droplet"), "{err}");
    assert!(err.contains("ssh key"), "{err}");
    assert_eq!(count(&env.calls(), "DELETE", "/v2/droplets/3164444"), 1);
    // The droplet may have been booting when it was deleted; its lab node goes too.
    env.wait_until("the lab to be empty", || {
        env.lab_clusters().is_empty().then_some(())
    });
    env.assert_nothing_left(name);
}

/// A workshop of 3 students x 2 nodes on DigitalOcean, every droplet a lab node: the dry
/// run tells the calls, quota and cost and creates nothing; the create shares one budget
/// (one workshop firewall, droplets by the workshop tag, polls by that tag); every
/// student's swarm works; `workshop destroy` from a machine with only the token leaves
/// nothing.
#[cfg(target_os = "linux")]
#[test]
fn a_workshop_on_digitalocean_shares_one_budget_and_is_destroyed_by_tag() {
    if !e2e_enabled("a_workshop_on_digitalocean_shares_one_budget_and_is_destroyed_by_tag") {
        return;
    }
    let _serial = serial();
    let mut env = Env::new(true);
    env.swarm_node = Some(ensure_swarm_node());
    let name = "dows";
    let clusters = ["dows-s01", "dows-s02", "dows-s03"];
    let base = [
        "workshop",
        "create",
        "--provider",
        "digitalocean",
        "--name",
        name,
        "--students",
        "3",
        "--nodes",
        "2",
        "--ttl",
        "4h",
    ];

    let mut dry: Vec<&str> = base.to_vec();
    dry.push("--dry-run");
    let plan = env.run(&dry).expect_ok();
    for what in [
        "api calls",
        "droplet quota",
        "fits",
        "dows-s03-node2",
        "Cost:",
    ] {
        assert!(plan.contains(what), "dry run lacks {what:?}: {plan}");
    }
    assert!(
        env.fake().droplets().is_empty(),
        "a dry run created droplets"
    );
    assert_eq!(count(&env.calls(), "POST", "/v2/droplets"), 0);

    let started = Instant::now();
    let mut create: Vec<&str> = base.to_vec();
    create.extend(["--output", "json"]);
    let report: serde_json::Value =
        serde_json::from_str(&env.run(&create).expect_ok()).expect("json report");
    println!(
        "figure: {name}: workshop create --provider digitalocean 3 x 2: {:.1?}",
        started.elapsed()
    );
    assert_eq!(report["ready"], 3, "{report}");

    // Every droplet carries the workshop and its expiry; one firewall serves them all.
    let droplets = env.fake().droplets();
    assert_eq!(droplets.len(), 6, "{droplets:?}");
    for d in &droplets {
        let tags = &d.tags;
        assert!(
            tags.contains(&format!("swarmup-workshop:{name}")),
            "{tags:?}"
        );
        assert!(
            tags.iter().any(|t| t.starts_with("swarmup-expires:")),
            "{tags:?}"
        );
    }
    assert_eq!(
        env.fake().firewalls().len(),
        1,
        "{:?}",
        env.fake().firewalls()
    );
    let calls = env.calls();
    let per_cluster_polls = calls
        .iter()
        .filter(|c| c.method == "GET" && c.path == "/v2/droplets")
        .filter(|c| {
            c.query.as_deref().is_some_and(|q| {
                q.contains("tag_name=swarmup%3Adows-s") || q.contains("tag_name=swarmup:dows-s")
            })
        })
        .count();
    println!(
        "figure: {name}: api calls for the workshop: {} ({} polls by a cluster's tag)",
        calls.len(),
        per_cluster_polls
    );

    for cluster in clusters {
        let ls = env.run(&["node", "ls", "--cluster", cluster]).expect_ok();
        assert_eq!(ls.matches("Ready").count(), 2, "{cluster}: {ls}");
    }
    let status = env.run(&["workshop", "status", name]).expect_ok();
    assert_eq!(status.matches("2/2").count(), 3, "{status}");
    let exec = env
        .run(&["workshop", "exec", name, "--", "true"])
        .expect_ok();
    assert!(exec.contains("6 of 6"), "{exec}");

    // Another machine with only the token: the workshop is found and destroyed by tag.
    env.other_home("home-elsewhere");
    let ls = env.run(&["workshop", "ls"]).expect_ok();
    assert!(ls.contains(name), "{ls}");
    env.run(&[
        "workshop",
        "destroy",
        name,
        "--yes",
        "--provider",
        "digitalocean",
    ])
    .expect_ok();
    for cluster in clusters {
        env.assert_nothing_left(cluster);
    }
}
