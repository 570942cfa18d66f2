//! Helpers for the network tests: a lab cluster driven by the stock docker CLI, with
//! commands run inside task containers through `swarmup ssh` and the node's own engine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{
    build_busybox_image, host_docker, run_bounded, swarmup_bin, wait_for, Cluster, COMMAND_TIMEOUT,
};

/// busybox-static plus the static `swarmup-probe` (UDP/HTTP echo with the peer's address,
/// timed DNS, TCP blaster).
pub const PROBE_IMAGE: &str = "swarmup-test/probe:latest";

pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

pub fn figure(what: &str, took: Duration) {
    println!("figure: {what}: {:.3}s", took.as_secs_f64());
}

pub struct NetLab {
    pub cluster: Cluster,
}

impl NetLab {
    pub fn new(prefix: &str) -> NetLab {
        NetLab {
            cluster: Cluster::new(prefix),
        }
    }

    pub fn docker(&mut self, args: &[&str]) -> String {
        self.cluster.docker_run(args).expect_ok()
    }

    pub fn node(&self, i: u32) -> String {
        format!("{}-node{i}", self.cluster.name)
    }

    /// Runs a shell script on `node` through `swarmup ssh`.
    pub fn ssh(&self, node: &str, script: &str) -> Result<String, String> {
        let run = self
            .cluster
            .sb()
            .run(&["ssh", &self.cluster.name, node, "--", script]);
        if run.ok() {
            Ok(run.stdout)
        } else {
            Err(format!("{}{}", run.stdout, run.stderr))
        }
    }

    /// Runs `sh -c CMD` in the (first) running container of `service` on `node`. `cmd`
    /// must not contain single quotes.
    pub fn exec(&self, node: &str, service: &str, cmd: &str) -> Result<String, String> {
        self.ssh(
            node,
            &format!(
                "c=$(docker ps -q --filter label=com.docker.swarm.service.name={service} | head -n1); \
                 [ -n \"$c\" ] || {{ echo no container of {service} >&2; exit 3; }}; \
                 docker exec \"$c\" sh -c '{cmd}'"
            ),
        )
    }

    /// `docker service create -d ARGS…`.
    pub fn service(&mut self, args: &[&str]) {
        let mut all = vec!["service", "create", "-d"];
        all.extend_from_slice(args);
        self.docker(&all);
    }

    /// Waits until `service` has `n` running tasks; returns their nodes (one per task).
    pub fn running(&mut self, service: &str, n: usize) -> Vec<String> {
        let (nodes, took) = wait_for(
            &format!("{n} running tasks of {service}"),
            CONVERGE_TIMEOUT,
            || {
                let tasks = self.cluster.docker_running_tasks(service)?;
                let on: Vec<String> = tasks
                    .iter()
                    .filter(|t| t.current.starts_with("Running"))
                    .map(|t| t.node.clone())
                    .collect();
                if on.len() == n {
                    Ok(on)
                } else {
                    Err(format!("{tasks:?}"))
                }
            },
        );
        figure(&format!("{service} running {n}/{n}"), took);
        nodes
    }

    /// The service's first VIP (`service inspect`), without the prefix length; empty for
    /// dnsrr.
    pub fn vip(&mut self, service: &str) -> String {
        let out = self.docker(&[
            "service",
            "inspect",
            service,
            "--format",
            "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}",
        ]);
        let vip = out.split_whitespace().next().unwrap_or_default();
        vip.split('/').next().unwrap_or_default().to_string()
    }

    /// The container's own address, as Docker wrote it into its /etc/hosts.
    pub fn address_of(&self, node: &str, service: &str) -> String {
        self.exec(node, service, "hostname -i")
            .unwrap_or_else(|e| panic!("address of {service} on {node}: {e}"))
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Asks with `ask` (run in `service` on `node`) until `streak` answers in a row pass
    /// `good`; returns how long it took. For "the VIP no longer sends to X" checks.
    pub fn until_streak(
        &self,
        what: &str,
        node: &str,
        service: &str,
        ask: &str,
        streak: usize,
        good: impl Fn(&str) -> bool,
    ) -> Duration {
        let start = Instant::now();
        let mut run = 0;
        wait_for(what, CONVERGE_TIMEOUT, || {
            match self.exec(node, service, ask) {
                Ok(out) if good(&out) => run += 1,
                other => {
                    run = 0;
                    return Err(format!("{other:?}"));
                }
            }
            if run >= streak {
                Ok(())
            } else {
                Err(format!("{run} good answers in a row"))
            }
        });
        start.elapsed()
    }

    /// Busybox's `wget -T` crashes: bound a request with `timeout N wget …` instead.
    ///
    /// Asks with `ask` until the set of answers that `answer` accepts holds `n` distinct
    /// values; returns them.
    pub fn until_distinct(
        &self,
        what: &str,
        node: &str,
        service: &str,
        ask: &str,
        n: usize,
        answer: impl Fn(&str) -> Result<String, String>,
    ) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let (_, took) = wait_for(what, CONVERGE_TIMEOUT, || {
            let out = self.exec(node, service, ask)?;
            seen.insert(answer(&out)?);
            if seen.len() >= n {
                Ok(())
            } else {
                Err(format!("answered by {seen:?} so far"))
            }
        });
        figure(what, took);
        seen
    }
}

/// The static probe, built with its own target directory so the static flags do not
/// rebuild the crates of the main build.
pub fn probe_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target_dir = Path::new(swarmup_bin())
                .parent()
                .and_then(Path::parent)
                .expect("swarmup sits in TARGET/PROFILE/")
                .join("probe-static");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "-p",
                    "swarmup-probe",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                    "--target-dir",
                ])
                .arg(&target_dir)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env_remove("CARGO_ENCODED_RUSTFLAGS");
            run_bounded(cmd, Duration::from_secs(1800)).expect_ok();
            let built = target_dir.join("x86_64-unknown-linux-gnu/release/swarmup-probe");
            assert!(built.is_file(), "{} was not built", built.display());
            built
        })
        .clone()
}

/// busybox-static plus the probe, built into the host's engine (a second under Docker's
/// cache, so always rebuilt to carry the current probe).
pub fn ensure_probe_image() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        build_busybox_image(PROBE_IMAGE, &[(&probe_binary(), "swarmup-probe")]);
    });
}

/// `docker save PROBE_IMAGE | swarmup image load NAME`.
pub fn load_probe_image(cluster: &Cluster) {
    ensure_probe_image();
    let mut save = host_docker();
    save.args(["save", PROBE_IMAGE]).stdout(Stdio::piped());
    let mut save = save.spawn().expect("run docker save");
    let mut load = cluster.sb().swarmup(&["image", "load", &cluster.name]);
    load.stdin(Stdio::from(save.stdout.take().expect("docker save stdout")));
    let loaded = run_bounded(load, COMMAND_TIMEOUT);
    assert!(
        save.wait().expect("docker save").success(),
        "docker save failed"
    );
    loaded.expect_ok();
}
