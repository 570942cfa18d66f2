//! `swarmup --provider virtualbox` end to end through `fake-vboxmanage`, the stand-in for
//! VBoxManage: the CLI runs it as VBoxManage (SWARMUP_VBOXMANAGE), and every VM it starts
//! is a lab node on this host configured from the VM's seed ISO, so the built binary goes
//! from `create` to a Ready swarm and `destroy` must leave no VM, lab node or record. The
//! image is a small local OVA (`--image PATH`), so nothing is downloaded.
//!
//! Each failure the provider diagnoses (VBoxManage missing, too old, VT-x disabled, KVM
//! holding VT-x, the host-only range refused by networks.conf, a download that cannot
//! happen, an error printed with exit status 0, a guest that dies booting) has a test that
//! sees its one-line message and that nothing is left half-made.
//!
//! Needs SWARMUP_E2E=1 (root, dockerd, sshd, iproute2 for the full path); without it
//! every test prints `skipped: …`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod support;

use support::{assert_nothing_created, assert_refused, e2e_enabled, run_bounded, Run, Sandbox};

/// The fake VBoxManage, built next to swarmup once per run.
fn fake_vboxmanage() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        if let Some(p) = std::env::var_os("SWARMUP_FAKE_VBOXMANAGE") {
            return PathBuf::from(p);
        }
        let exe = Path::new(support::swarmup_bin());
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "-p",
            "fake-vboxmanage",
        ]);
        if exe.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
            cmd.arg("--release");
        }
        let out = run_bounded(cmd, Duration::from_secs(1800));
        assert!(out.ok(), "{out}");
        let built = exe.with_file_name("fake-vboxmanage");
        assert!(built.is_file(), "{} is missing", built.display());
        built
    })
}

/// A sandbox whose VirtualBox is a fresh fake, with a small OVA to boot.
struct VboxEnv {
    sb: Sandbox,
    fake_home: PathBuf,
    image: PathBuf,
    /// Extra environment for swarmup (and through it, the fake).
    env: Vec<(String, String)>,
    /// Clusters to destroy if a test stops halfway.
    clusters: Vec<String>,
}

impl VboxEnv {
    fn new() -> VboxEnv {
        let sb = Sandbox::new();
        let fake_home = sb.dir.path().join("virtualbox");
        let parts = sb.dir.path().join("ova");
        std::fs::create_dir_all(&parts).unwrap();
        std::fs::write(parts.join("ubuntu-noble.ovf"), "<Envelope/>\n").unwrap();
        std::fs::write(
            parts.join("ubuntu-noble-disk001.vmdk"),
            "# Disk DescriptorFile (stand-in)\n",
        )
        .unwrap();
        let image = sb.dir.path().join("ubuntu-24.04-test.ova");
        let tar = Command::new("tar")
            .arg("-cf")
            .arg(&image)
            .arg("-C")
            .arg(&parts)
            .args(["ubuntu-noble.ovf", "ubuntu-noble-disk001.vmdk"])
            .status()
            .expect("run tar");
        assert!(tar.success(), "tar failed");
        VboxEnv {
            sb,
            fake_home,
            image,
            env: Vec::new(),
            clusters: Vec::new(),
        }
    }

    fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    fn swarmup(&self, args: &[&str]) -> Command {
        let mut cmd = self.sb.swarmup(args);
        cmd.env("SWARMUP_VBOXMANAGE", fake_vboxmanage())
            .env("SWARMUP_FAKE_VBOX_HOME", &self.fake_home)
            .env("SWARMUP_FAKE_VBOX_LAB_ROOT", &self.sb.lab_root)
            .env(
                "SWARMUP_FAKE_VBOX_NODE_INIT",
                format!("{} lab-node", support::swarmup_bin()),
            )
            .env("XDG_CACHE_HOME", self.sb.dir.path().join("cache"))
            .env_remove("SWARMUP_FAKE_VBOX_FAULTS")
            .env_remove("SWARMUP_FAKE_VBOX_VERSION")
            .env_remove("SWARMUP_FAKE_VBOX_NETWORKS_CONF");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        run_bounded(self.swarmup(args), Duration::from_secs(300))
    }

    fn create(&mut self, name: &str, extra: &[&str]) -> Run {
        self.clusters.push(name.to_string());
        let image = self.image.to_string_lossy().into_owned();
        let mut args = vec![
            "create",
            "--provider",
            "virtualbox",
            "--name",
            name,
            "--image",
            &image,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// The fake itself, for what VirtualBox would show.
    fn vboxmanage(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(fake_vboxmanage());
        cmd.args(args)
            .env("SWARMUP_FAKE_VBOX_HOME", &self.fake_home);
        run_bounded(cmd, Duration::from_secs(60)).expect_ok()
    }

    fn vm_names(&self) -> Vec<String> {
        swarmup_providers::virtualbox::parse::list_vms(&self.vboxmanage(&["list", "vms"]))
            .into_iter()
            .map(|v| v.name)
            .collect()
    }

    fn vm_state(&self, vm: &str) -> String {
        let info = swarmup_providers::virtualbox::parse::machinereadable(&self.vboxmanage(&[
            "showvminfo",
            vm,
            "--machinereadable",
        ]));
        info.get("VMState").cloned().unwrap_or_default()
    }

    /// After a failed create: nothing of it in VirtualBox; the record goes with destroy.
    fn assert_rolled_back(&mut self, name: &str) {
        assert!(
            self.vm_names().is_empty(),
            "VMs left: {:?}",
            self.vm_names()
        );
        let out = self.run(&["destroy", name, "--yes"]);
        assert!(out.ok(), "{out}");
        self.clusters.retain(|c| c != name);
        assert_nothing_created(&self.sb, name);
    }
}

impl Drop for VboxEnv {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.clusters) {
            if !self.sb.record_dir(&name).exists() {
                continue;
            }
            match self.swarmup(&["destroy", &name, "--yes"]).output() {
                Ok(o) if o.status.success() => eprintln!("cleanup: destroyed {name}"),
                Ok(o) => eprintln!(
                    "cleanup: destroy {name} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup: cannot run destroy {name}: {e}"),
            }
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:x}", std::process::id() & 0xffff)
}

/// `node ls --output json`: hostname and state of every node.
fn node_states(env: &VboxEnv, name: &str) -> Result<Vec<(String, String)>, String> {
    let run = env.run(&["node", "ls", "--cluster", name, "--output", "json"]);
    if !run.ok() {
        return Err(run.stderr);
    }
    let v: serde_json::Value =
        serde_json::from_str(run.stdout.trim()).map_err(|e| format!("{e}: {}", run.stdout))?;
    let mut out: Vec<(String, String)> = v
        .as_array()
        .ok_or("not a list")?
        .iter()
        .map(|n| {
            (
                n["Description"]["Hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                n["Status"]["State"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

#[test]
fn three_vms_become_a_ready_swarm_and_destroy_leaves_nothing() {
    if !e2e_enabled("three_vms_become_a_ready_swarm_and_destroy_leaves_nothing") {
        return;
    }
    let _serial = support::serial();
    support::ensure_swarm_node();
    let mut env = VboxEnv::new();
    // VBoxSVC being busy now and then must not show.
    env.set("SWARMUP_FAKE_VBOX_FAULTS", "not-ready=3");
    let name = unique("vb");
    let started = Instant::now();
    let out = env.create(&name, &["--nodes", "3", "--output", "json"]);
    let took = started.elapsed();
    assert!(out.ok(), "{out}");
    println!(
        "figure: 3-node VirtualBox create (fake VBoxManage, lab guests): {:.1} s",
        took.as_secs_f64()
    );
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("create printed no JSON ({e}): {out}"));
    assert!(
        report.to_string().contains(&format!("{name}-node3")),
        "{report}"
    );

    let vms = env.vm_names();
    assert_eq!(
        vms,
        (1..=3)
            .map(|i| format!("{name}-node{i}"))
            .collect::<Vec<_>>()
    );
    let info = swarmup_providers::virtualbox::parse::machinereadable(&env.vboxmanage(&[
        "showvminfo",
        &vms[0],
        "--machinereadable",
    ]));
    assert_eq!(info["groups"], format!("/swarmup/{name}"));
    assert_eq!(info["VMState"], "running");
    assert_eq!(info["nic1"], "nat");
    assert_eq!(info["nic2"], "hostonly");
    assert!(info["uartmode1"].starts_with("file,"), "{info:?}");
    assert!(
        info["SATA-0-0"].contains("/Snapshots/"),
        "a linked clone: {info:?}"
    );
    assert!(
        info["description"].contains("address=192.168.56.10"),
        "{info:?}"
    );
    assert!(
        env.vboxmanage(&["list", "hostonlyifs"])
            .contains("IPAddress:       192.168.56.1\n"),
        "one host-only adapter on 192.168.56.0/24"
    );

    let (nodes, waited) = support::wait_for("three Ready nodes", Duration::from_secs(120), || {
        let nodes = node_states(&env, &name)?;
        if nodes.len() == 3 && nodes.iter().all(|(_, s)| s == "ready") {
            Ok(nodes)
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    println!(
        "nodes Ready {:.1} s after create: {nodes:?}",
        waited.as_secs_f64()
    );
    let ls = env.run(&["ls", "--output", "json"]).expect_ok();
    assert!(ls.contains(&format!("\"{name}\"")), "{ls}");

    // Power: the ACPI button, then the plug only if needed; start boots it again.
    let node3 = format!("{name}-node3");
    env.run(&["stop", &name, &node3]).expect_ok();
    assert_eq!(env.vm_state(&node3), "poweroff");
    env.run(&["start", &name, &node3]).expect_ok();
    assert_eq!(env.vm_state(&node3), "running");

    let footprint = support::Footprint::of(&env.sb, &name);
    let out = env.run(&["destroy", &name, "--yes"]).expect_ok();
    assert!(out.contains(&format!("Cluster {name} destroyed")), "{out}");
    env.clusters.clear();
    footprint.assert_gone(&env.sb);
    assert!(env.vm_names().is_empty(), "VMs left: {:?}", env.vm_names());
    let group_dir = env.fake_home.join("VirtualBox VMs/swarmup").join(&name);
    let left: Vec<_> = std::fs::read_dir(&group_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM folders left: {left:?}");
}

#[test]
fn a_missing_vboxmanage_is_one_line() {
    if !e2e_enabled("a_missing_vboxmanage_is_one_line") {
        return;
    }
    let mut env = VboxEnv::new();
    let name = unique("vbmiss");
    let mut cmd = env.swarmup(&[
        "create",
        "--provider",
        "virtualbox",
        "--name",
        &name,
        "--nodes",
        "1",
        "--quiet",
    ]);
    cmd.env("SWARMUP_VBOXMANAGE", "/nonexistent/VBoxManage");
    let run = run_bounded(cmd, Duration::from_secs(60));
    assert_refused(
        &run,
        "VBoxManage not found at /nonexistent/VBoxManage (SWARMUP_VBOXMANAGE)",
    );
    assert_nothing_created(&env.sb, &name);

    let mut cmd = env.swarmup(&[
        "create",
        "--provider",
        "virtualbox",
        "--name",
        &name,
        "--nodes",
        "1",
        "--quiet",
    ]);
    cmd.env_remove("SWARMUP_VBOXMANAGE")
        .env("PATH", "/usr/bin:/bin");
    let run = run_bounded(cmd, Duration::from_secs(60));
    assert_refused(
        &run,
        "VBoxManage not found on PATH: install VirtualBox 6.1 or later",
    );
    assert_nothing_created(&env.sb, &name);
    env.clusters.clear();
}

#[test]
fn preflight_refusals_are_one_line_and_make_nothing() {
    if !e2e_enabled("preflight_refusals_are_one_line_and_make_nothing") {
        return;
    }
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "SWARMUP_FAKE_VBOX_VERSION",
            "6.0.24r139119",
            "",
            "VirtualBox 6.0.24 is too old: swarmup needs 6.1 or later",
        ),
        (
            "SWARMUP_FAKE_VBOX_FAULTS",
            "vtx-disabled",
            "",
            "VT-x/AMD-V is disabled on this host",
        ),
        (
            "",
            "",
            "ubuntu-24.04",
            "cannot download the ubuntu-24.04 image from https://cloud-images.ubuntu.com/",
        ),
    ];
    for (key, value, image, expect) in cases {
        let mut env = VboxEnv::new();
        if !key.is_empty() {
            env.set(key, *value);
        }
        if !image.is_empty() {
            // The download goes nowhere but loopback, where nothing answers.
            env.set("HTTPS_PROXY", "http://127.0.0.1:9");
            env.set("https_proxy", "http://127.0.0.1:9");
        }
        let name = unique("vbpre");
        let run = if image.is_empty() {
            env.create(&name, &["--nodes", "1", "--quiet"])
        } else {
            env.run(&[
                "create",
                "--provider",
                "virtualbox",
                "--name",
                &name,
                "--image",
                image,
                "--nodes",
                "1",
                "--quiet",
            ])
        };
        assert_refused(&run, expect);
        assert_nothing_created(&env.sb, &name);
        assert!(env.vm_names().is_empty());
        env.clusters.clear();
    }
}

#[test]
fn host_failures_during_create_are_one_line_and_roll_back() {
    if !e2e_enabled("host_failures_during_create_are_one_line_and_roll_back") {
        return;
    }
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), "* 10.0.0.0/8\n").unwrap();
    let conf_path = conf.path().to_string_lossy().into_owned();
    let cases: &[(&str, &str, &str)] = &[
        (
            "SWARMUP_FAKE_VBOX_FAULTS",
            "kvm",
            "VirtualBox cannot use VT-x/AMD-V because KVM holds it (VERR_VMX_IN_VMX_ROOT_MODE)",
        ),
        (
            "SWARMUP_FAKE_VBOX_NETWORKS_CONF",
            &conf_path,
            "VirtualBox does not allow the host-only network 192.168.56.0/24 (E_ACCESSDENIED)",
        ),
        (
            "SWARMUP_FAKE_VBOX_FAULTS",
            "error-exit-0",
            "VBoxManage storagectl",
        ),
        (
            "SWARMUP_FAKE_VBOX_FAULTS",
            "boot-abort",
            "stopped while booting (VMState aborted); last lines of",
        ),
    ];
    for (key, value, expect) in cases {
        let mut env = VboxEnv::new();
        env.set(key, *value);
        let name = unique("vbfail");
        let run = env.create(&name, &["--nodes", "2", "--quiet"]);
        assert_refused(&run, expect);
        if *value == "boot-abort" {
            assert!(run.stderr.contains("Kernel panic"), "{run}");
        }
        if key.ends_with("NETWORKS_CONF") {
            assert_eq!(
                env.vboxmanage(&["list", "hostonlyifs"]),
                "",
                "the refused adapter is removed"
            );
        }
        env.assert_rolled_back(&name);
    }
}
