//! The provider's orchestration against a simulated host (no root, no namespaces).

use std::sync::Arc;

use super::system::fake::FakeSystem;
use super::*;
use crate::{HostKey, NoProgress, Role};

fn plan(cluster: &str, n: usize) -> ClusterPlan {
    ClusterPlan {
        cluster: cluster.into(),
        machines: (1..=n)
            .map(|i| MachinePlan {
                name: format!("{cluster}-node{i}"),
                role: if i == 1 { Role::Manager } else { Role::Worker },
                host_key: HostKey {
                    private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n".into(),
                    public_openssh: format!("ssh-ed25519 AAAAC3Nz{i} host"),
                },
            })
            .collect(),
        login_public_key: "ssh-ed25519 AAAAlogin swarmup".into(),
        tags: Vec::new(),
    }
}

fn provider(root: &Path) -> (LabProvider, Arc<FakeSystem>) {
    provider_with(root, false, false)
}

fn provider_with(root: &Path, registry: bool, offline: bool) -> (LabProvider, Arc<FakeSystem>) {
    let fake = Arc::new(FakeSystem::default());
    let config = LabConfig {
        root: root.to_path_buf(),
        lock_file: root.join("lock"),
        pool: DEFAULT_POOL,
        init: NodeInit {
            program: PathBuf::from("/opt/swarmup"),
            args: vec!["lab-node".into()],
        },
        boot_timeout: Duration::from_secs(5),
        registry,
        offline,
    };
    (LabProvider::with_system(config, fake.clone()), fake)
}

#[tokio::test]
async fn create_wires_nodes_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider(dir.path());
    let machines = lab.create(&plan("web", 2), &NoProgress).await.unwrap();
    assert_eq!(machines.len(), 2);
    assert!(machines.iter().all(|m| m.power == PowerState::Running));
    let names = ClusterNames::new(dir.path(), "web");
    {
        let st = fake.state();
        assert!(st.links.contains_key(&names.bridge));
        assert_eq!(st.netns.len(), 2);
        assert_eq!(st.rules.len(), 1);
        assert_eq!(st.spawned.len(), 2);
        // Nodes start concurrently, in no fixed order.
        let net = format!("--net=/run/netns/{}", names.netns("web-node1"));
        let argv = st
            .spawned
            .iter()
            .find(|a| a[1] == net)
            .expect("node1 started");
        assert_eq!(argv[0], "nsenter");
        let at = argv.iter().position(|a| a == "/opt/swarmup").unwrap();
        assert_eq!(argv[at + 1], "lab-node");
        assert!(argv.contains(&"--pid".to_string()) && argv.contains(&"--fork".to_string()));
        assert!(argv.ends_with(&[
            "--hosts".to_string(),
            dir.path().join("web/hosts").to_string_lossy().into_owned()
        ]));
    }
    let first = &machines[0];
    let IpAddr::V4(addr) = first.private_addr else {
        panic!("lab addresses are IPv4");
    };
    assert_eq!(addr.octets()[0..2], [10, 247]);
    assert_eq!(addr.octets()[3], 11);
    assert_eq!(first.ssh.user, "root");
    assert_eq!(first.role, Role::Manager);
    assert_eq!(
        machines[1].private_addr,
        IpAddr::V4(with_last_octet(addr, 12))
    );

    let node_dir = dir.path().join("web/web-node1");
    let keys = std::fs::read_to_string(node_dir.join("root/.ssh/authorized_keys")).unwrap();
    assert_eq!(keys, "ssh-ed25519 AAAAlogin swarmup\n");
    assert!(node_dir
        .join("var-lib/swarmup-lab/ssh_host_ed25519_key")
        .is_file());
    assert!(node_dir.join("var-lib/swarmup-lab/units").is_dir());
    let hosts = std::fs::read_to_string(dir.path().join("web/hosts")).unwrap();
    assert!(hosts.contains(&format!("{addr}\tweb-node1\n")));

    // Again with one more node: the two running nodes are kept, one is added.
    let machines = lab.create(&plan("web", 3), &NoProgress).await.unwrap();
    assert_eq!(machines.len(), 3);
    assert_eq!(
        machines[2].private_addr,
        IpAddr::V4(with_last_octet(addr, 13))
    );
    assert_eq!(fake.state().spawned.len(), 3);
    assert_eq!(fake.state().rules.len(), 1);
    let keys = std::fs::read_to_string(node_dir.join("root/.ssh/authorized_keys")).unwrap();
    assert_eq!(keys.lines().count(), 1);

    // A node whose init died is started again.
    let pid = lab
        .node("web", "web-node2")
        .await
        .unwrap()
        .init_pid
        .unwrap();
    fake.state().procs.remove(&pid);
    assert_eq!(lab.list("web").await.unwrap()[1].power, PowerState::Off);
    lab.create(&plan("web", 3), &NoProgress).await.unwrap();
    assert_eq!(fake.state().spawned.len(), 4);
    assert_eq!(lab.clusters().await.unwrap(), vec!["web".to_string()]);
}

#[tokio::test]
async fn power_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider(dir.path());
    lab.create(&plan("db", 2), &NoProgress).await.unwrap();
    let before = lab.node("db", "db-node2").await.unwrap();
    assert!(before
        .docker_socket()
        .unwrap()
        .ends_with("root/run/docker.sock"));

    lab.power_off("db", "db-node2").await.unwrap();
    let powers: Vec<PowerState> = lab
        .list("db")
        .await
        .unwrap()
        .iter()
        .map(|m| m.power)
        .collect();
    assert_eq!(powers, vec![PowerState::Running, PowerState::Off]);
    assert!(!fake.state().procs.contains_key(&before.init_pid.unwrap()));
    assert!(fake
        .state()
        .calls
        .contains(&format!("ip link set {} down", before.veth)));

    let machine = lab.power_on("db", "db-node2").await.unwrap();
    assert_eq!(machine.power, PowerState::Running);
    let after = lab.node("db", "db-node2").await.unwrap();
    assert_ne!(after.init_pid, before.init_pid);
    // Powering on a running node changes nothing.
    lab.power_on("db", "db-node2").await.unwrap();
    assert_eq!(
        lab.node("db", "db-node2").await.unwrap().init_pid,
        after.init_pid
    );

    let err = lab.power_off("db", "db-node9").await.unwrap_err();
    assert_eq!(err.to_string(), "no machine db-node9 in cluster db");
}

#[tokio::test]
async fn destroy_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider(dir.path());
    lab.create(&plan("web", 2), &NoProgress).await.unwrap();
    let report = lab.destroy("web").await.unwrap();
    {
        let st = fake.state();
        assert!(st.procs.is_empty());
        assert!(st.netns.is_empty());
        assert!(st.links.is_empty(), "{:?}", st.links);
        assert!(st.rules.is_empty());
        assert!(!dir.path().join("web").exists());
        let text = report.removed.join("\n");
        for expected in [
            "init process",
            "network namespace",
            "bridge web-",
            "iptables rule",
            "state directory",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
    }
    // Nothing left: a second destroy is a no-op.
    assert!(lab.destroy("web").await.unwrap().removed.is_empty());
}

#[tokio::test]
async fn destroy_cleans_up_after_a_crashed_create() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider(dir.path());
    let names = ClusterNames::new(dir.path(), "web");
    {
        let mut st = fake.state();
        st.netns.insert(names.netns("web-node1"));
        st.links.insert(names.bridge.clone(), None);
        st.links.insert(names.veth(11), None);
        st.links.insert("eth0".into(), None);
        st.rules
            .insert(format!("-i {0} -o {0} -j ACCEPT", names.bridge));
    }
    std::fs::create_dir_all(dir.path().join("web/web-node1/var-lib")).unwrap();
    let report = lab.destroy("web").await.unwrap();
    let st = fake.state();
    assert!(st.netns.is_empty());
    assert_eq!(st.links.keys().collect::<Vec<_>>(), vec!["eth0"]);
    assert!(st.rules.is_empty());
    assert!(!dir.path().join("web").exists());
    assert!(report.removed.iter().any(|r| r.starts_with("veth ")));
}

#[tokio::test]
async fn clusters_get_distinct_subnets() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, _fake) = provider(dir.path());
    let mut subnets = BTreeSet::new();
    for name in ["a", "b", "c", "d"] {
        let m = lab.create(&plan(name, 1), &NoProgress).await.unwrap();
        let IpAddr::V4(addr) = m[0].private_addr else {
            panic!("lab addresses are IPv4");
        };
        assert!(subnets.insert(addr.octets()[2]), "subnet reused for {name}");
    }
}

#[tokio::test]
async fn preflight_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider(dir.path());
    lab.preflight(&plan("web", 1)).await.unwrap();
    fake.state().not_root = true;
    fake.state().missing.insert("dockerd".into());
    let err = lab.preflight(&plan("web", 1)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ProviderError::Prerequisite(_)));
    assert!(
        text.starts_with("the lab provider needs root and Docker's binaries"),
        "{text}"
    );
    assert!(
        text.contains("not running as root") && text.contains("dockerd not found"),
        "{text}"
    );
    assert!(!text.contains('\n'));

    let fake_ok = FakeSystem::default();
    fake_ok.state().missing.insert("swarmup".into());
    let lab = LabProvider::with_system(lab.config().clone(), Arc::new(fake_ok));
    let err = lab
        .preflight(&plan("web", 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/opt/swarmup"), "{err}");
}

#[tokio::test]
async fn bad_plans_are_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider(dir.path());
    let mut p = plan("web", 2);
    p.machines[1].name = p.machines[0].name.clone();
    let err = lab.create(&p, &NoProgress).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "machine web-node1 appears twice in the plan for cluster web"
    );
    let mut p = plan("web", 1);
    p.login_public_key = "".into();
    assert!(lab.create(&p, &NoProgress).await.is_err());
    let mut p = plan("web", 1);
    p.machines[0].host_key.private_openssh = "not a key".into();
    assert!(lab.create(&p, &NoProgress).await.is_err());
    assert!(lab.create(&plan("../x", 1), &NoProgress).await.is_err());
    assert!(fake.state().calls.is_empty());
    assert!(lab.list("nothing-here").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_registry_runs_on_the_bridge_trusted_by_every_node_and_goes_with_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider_with(dir.path(), true, false);
    lab.create(&plan("reg", 2), &NoProgress).await.unwrap();
    let addr = lab.registry("reg").await.unwrap().expect("a registry");
    assert!(
        addr.starts_with("10.247.") && addr.ends_with(".1:5000"),
        "{addr}"
    );
    {
        let st = fake.state();
        assert_eq!(st.daemons.len(), 1, "{:?}", st.daemons);
        let argv = &st.daemons[0];
        assert!(
            argv[0].ends_with("docker-registry") && argv[1] == "serve",
            "{argv:?}"
        );
        let config = std::fs::read_to_string(&argv[2]).unwrap();
        assert!(config.contains(&format!("addr: {addr}\n")), "{config}");
    }
    for node in ["reg-node1", "reg-node2"] {
        let path = dir
            .path()
            .join("reg")
            .join(node)
            .join("etc-docker/daemon.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(json["insecure-registries"], serde_json::json!([addr]));
    }
    // Running again, or powering a node on, starts no second registry.
    lab.create(&plan("reg", 2), &NoProgress).await.unwrap();
    lab.power_off("reg", "reg-node2").await.unwrap();
    lab.power_on("reg", "reg-node2").await.unwrap();
    assert_eq!(fake.state().daemons.len(), 1);

    let report = lab.destroy("reg").await.unwrap().removed.join("\n");
    assert!(report.contains("lab registry process"), "{report}");
    assert!(fake.state().procs.is_empty());
    assert_eq!(lab.registry("reg").await.unwrap(), None);
}

#[tokio::test]
async fn a_registry_is_not_added_under_running_engines() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider(dir.path());
    lab.create(&plan("late", 1), &NoProgress).await.unwrap();
    let config = LabConfig {
        registry: true,
        ..lab.config().clone()
    };
    let again = LabProvider::with_system(config, fake);
    let err = again
        .create(&plan("late", 1), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("create it again with --registry"),
        "{err}"
    );
    assert_eq!(again.registry("late").await.unwrap(), None);
}

#[tokio::test]
async fn an_offline_cluster_has_its_drop_table_from_create_to_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider_with(dir.path(), false, true);
    lab.create(&plan("off", 1), &NoProgress).await.unwrap();
    let names = ClusterNames::new(dir.path(), "off");
    let table = offline::table_name(&names.tag);
    {
        let st = fake.state();
        assert!(st.nft_tables.contains(&table), "{:?}", st.nft_tables);
        // The rules are in place before the node is wired to the bridge.
        let nft = st
            .calls
            .iter()
            .position(|c| c.starts_with("nft -f"))
            .unwrap();
        let wired = st
            .calls
            .iter()
            .position(|c| c.contains(" master "))
            .unwrap();
        assert!(nft < wired, "{:?}", st.calls);
    }
    let rules = std::fs::read_to_string(dir.path().join("off/offline.nft")).unwrap();
    assert!(rules.contains(&format!("iifname \"{}\" ip daddr != ", names.bridge)));
    // A later run without the flag keeps the cluster offline.
    let plain = LabProvider::with_system(
        LabConfig {
            offline: false,
            ..lab.config().clone()
        },
        fake.clone(),
    );
    lab.power_off("off", "off-node1").await.unwrap();
    fake.state().nft_tables.clear();
    plain.power_on("off", "off-node1").await.unwrap();
    assert!(fake.state().nft_tables.contains(&table));

    let report = lab.destroy("off").await.unwrap().removed.join("\n");
    assert!(
        report.contains(&format!("nftables table inet {table}")),
        "{report}"
    );
    assert!(fake.state().nft_tables.is_empty());
}

#[tokio::test]
async fn preflight_names_the_packages_of_registry_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, fake) = provider_with(dir.path(), true, true);
    fake.state().missing.insert("docker-registry".into());
    let err = lab.preflight(&plan("p", 1)).await.unwrap_err().to_string();
    assert!(err.contains("apt-get install -y docker-registry"), "{err}");
    fake.state().missing.clear();
    fake.state().missing.insert("nft".into());
    let err = lab.preflight(&plan("p", 1)).await.unwrap_err().to_string();
    assert!(err.contains("apt-get install -y nftables"), "{err}");
}
