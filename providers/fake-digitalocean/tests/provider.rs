//! The DigitalOcean provider against the fake, on loopback only. Waits go through a
//! `ScaledClock`, so a 3 s poll or a 7 s retry-after takes a few milliseconds while the
//! provider still believes the full time passed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_digitalocean::{ApiCall, FakeDo, FakeOptions, Faults};
use serde_json::json;
use swarmup_providers::digitalocean::{
    DigitalOceanOptions, DigitalOceanProvider, ScaledClock, SshKeyChoice,
};
use swarmup_providers::{
    ClusterPlan, HostKey, MachinePlan, PowerState, Progress, Provider, ProviderError, Role,
};

const LOGIN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9TrNgtf2VHeJloTqTQuEJUMkGMnCSK25Vx/l+zhH0c user@host";
const LOGIN_KEY_MD5: &str = "f5:a4:be:64:6f:c9:df:3f:cb:41:f7:72:42:27:92:81";
/// Real sleeps are this many times shorter than the waits asked for.
const SPEED: u32 = 50;

async fn fake() -> FakeDo {
    fake_with(FakeOptions::default()).await
}

async fn fake_with(options: FakeOptions) -> FakeDo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    FakeDo::start(
        listener,
        FakeOptions {
            boot_delay: Duration::from_millis(150),
            action_delay: Duration::from_millis(40),
            ..options
        },
    )
    .unwrap()
}

fn user_data(plan: &ClusterPlan, machines: &[MachinePlan]) -> Result<String, ProviderError> {
    let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    Ok(format!(
        "#cloud-config\n# {} {}\n",
        plan.cluster,
        names.join(" ")
    ))
}

fn provider_with(
    fake: &FakeDo,
    tweak: impl FnOnce(&mut DigitalOceanOptions),
) -> (DigitalOceanProvider, Arc<ScaledClock>) {
    let clock = Arc::new(ScaledClock::new(SPEED));
    let mut options = DigitalOceanOptions::new(fake.token());
    options.api_url = fake.url();
    tweak(&mut options);
    let p = DigitalOceanProvider::with_clock(options, Arc::new(user_data), clock.clone()).unwrap();
    (p, clock)
}

fn provider(fake: &FakeDo) -> DigitalOceanProvider {
    provider_with(fake, |_| {}).0
}

fn plan(cluster: &str, nodes: usize, managers: usize) -> ClusterPlan {
    ClusterPlan {
        cluster: cluster.to_string(),
        machines: (1..=nodes)
            .map(|i| MachinePlan {
                name: format!("{cluster}-node{i}"),
                role: if i <= managers {
                    Role::Manager
                } else {
                    Role::Worker
                },
                host_key: HostKey {
                    private_openssh: "unused in these tests".into(),
                    public_openssh: "ssh-ed25519 AAAA unused".into(),
                },
            })
            .collect(),
        login_public_key: LOGIN_KEY.to_string(),
        tags: Vec::new(),
    }
}

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Progress for Lines {
    fn machine(&self, machine: &str, message: &str) {
        self.0.lock().unwrap().push(format!("{machine}: {message}"));
    }
}

fn count(calls: &[ApiCall], method: &str, path: &str) -> usize {
    calls
        .iter()
        .filter(|c| c.method == method && c.path == path)
        .count()
}

fn report(what: &str, p: &DigitalOceanProvider, fake: &FakeDo) {
    println!(
        "{what}: {} (fake saw {} requests)",
        p.api_calls(),
        fake.api_calls().len()
    );
}

#[tokio::test]
async fn three_nodes_create_list_destroy_leaves_nothing() {
    let fake = fake().await;
    let p = provider(&fake);
    let plan = plan("c1", 3, 3);
    let lines = Lines::default();

    p.preflight(&plan).await.unwrap();
    let machines = p.create(&plan, &lines).await.unwrap();
    let calls = p.api_calls();
    report("create 3 nodes (3 managers)", &p, &fake);
    assert!(calls.calls <= 12, "{calls}");
    assert_eq!(calls.retries, 0);

    assert_eq!(machines.len(), 3);
    for (i, m) in machines.iter().enumerate() {
        assert_eq!(m.name, format!("c1-node{}", i + 1));
        assert_eq!(m.role, Role::Manager);
        assert_eq!(m.power, PowerState::Running);
        assert!(m.private_addr.to_string().starts_with("10."), "{m:?}");
        assert!(m.ssh.host.to_string().starts_with("203.0.113."), "{m:?}");
        assert_eq!((m.ssh.port, m.ssh.user.as_str()), (22, "root"));
    }
    let api = fake.api_calls();
    assert_eq!(
        count(&api, "POST", "/v2/droplets"),
        1,
        "one multi-create call"
    );
    for d in fake.droplets() {
        for tag in ["swarmup", "swarmup:c1", "swarmup-role:manager"] {
            assert!(d.tags.contains(&tag.to_string()), "{d:?}");
        }
        assert_eq!(d.ssh_public_keys, vec![LOGIN_KEY.to_string()]);
        assert!(d.user_data.as_deref().unwrap().starts_with("#cloud-config"));
    }
    let fw = fake.firewalls();
    assert_eq!(fw.len(), 1);
    assert_eq!(
        (fw[0].name.as_str(), fw[0].tags.clone()),
        ("swarmup-c1", vec!["swarmup:c1".to_string()])
    );
    assert_eq!(fake.ssh_keys()[0].name, "swarmup-c1");
    let text = lines.0.lock().unwrap().join("\n");
    assert!(text.contains("ssh (22/tcp) is open to 0.0.0.0/0"), "{text}");

    // Another machine with only the token sees the cluster.
    let elsewhere = provider(&fake);
    assert_eq!(elsewhere.clusters().await.unwrap(), vec!["c1"]);
    assert_eq!(elsewhere.list("c1").await.unwrap(), machines);

    let report = elsewhere.destroy("c1").await.unwrap();
    println!("destroy removed: {}", report.removed.join("; "));
    assert_eq!(report.removed.len(), 5, "{report:?}");
    assert!(report.removed.iter().any(|r| r.starts_with("firewall ")));
    assert!(report.removed.iter().any(|r| r.starts_with("ssh key ")));
    assert!(fake.droplets().is_empty());
    assert!(fake.firewalls().is_empty());
    assert!(fake.ssh_keys().is_empty());
    assert!(elsewhere.list("c1").await.unwrap().is_empty());
    assert!(elsewhere.clusters().await.unwrap().is_empty());
    assert!(elsewhere.destroy("c1").await.unwrap().removed.is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn api_calls_for_three_nodes_with_one_manager() {
    let fake = fake().await;
    let p = provider(&fake);
    let plan = plan("c2", 3, 1);
    p.preflight(&plan).await.unwrap();
    let machines = p.create(&plan, &Lines::default()).await.unwrap();
    report("create 3 nodes (1 manager, 2 workers)", &p, &fake);
    assert!(p.api_calls().calls <= 12);
    assert_eq!(
        count(&fake.api_calls(), "POST", "/v2/droplets"),
        2,
        "one call per role"
    );
    let roles: Vec<Role> = machines.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::Manager, Role::Worker, Role::Worker]);
    fake.shutdown().await;
}

#[tokio::test]
async fn create_again_keeps_what_exists_and_never_duplicates() {
    let fake = fake().await;
    let p = provider(&fake);
    let first = p
        .create(&plan("c3", 2, 1), &Lines::default())
        .await
        .unwrap();
    fake.clear_api_calls();
    let before = p.api_calls();

    let again = p
        .create(&plan("c3", 2, 1), &Lines::default())
        .await
        .unwrap();
    let after = p.api_calls();
    println!(
        "create again, nothing to do: {} api calls, {} polls",
        after.calls - before.calls,
        after.polls - before.polls
    );
    assert_eq!(again, first);
    let api = fake.api_calls();
    assert_eq!(count(&api, "POST", "/v2/droplets"), 0);
    assert_eq!(count(&api, "POST", "/v2/firewalls"), 0);
    assert_eq!(count(&api, "POST", "/v2/account/keys"), 0);

    let grown = p
        .create(&plan("c3", 3, 1), &Lines::default())
        .await
        .unwrap();
    assert_eq!(grown.len(), 3);
    assert_eq!(&grown[..2], &first[..]);
    assert_eq!(fake.droplets().len(), 3);
    assert_eq!(count(&fake.api_calls(), "POST", "/v2/droplets"), 1);
    p.destroy("c3").await.unwrap();
    fake.shutdown().await;
}

#[tokio::test]
async fn an_existing_key_is_reused_by_fingerprint_and_kept_on_destroy() {
    let fake = fake().await;
    let (p, _) = provider_with(&fake, |o| {
        o.ssh_key = SshKeyChoice::Existing {
            fingerprint: LOGIN_KEY_MD5.to_string(),
        }
    });
    // Nothing is created when the key is missing.
    let err = p
        .create(&plan("c4", 2, 1), &Lines::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no ssh key with fingerprint"),
        "{err}"
    );
    assert!(fake.droplets().is_empty());

    let uploaded = p
        .client()
        .create_ssh_key("my laptop", LOGIN_KEY)
        .await
        .unwrap();
    fake.clear_api_calls();
    p.create(&plan("c4", 2, 1), &Lines::default())
        .await
        .unwrap();
    assert_eq!(count(&fake.api_calls(), "POST", "/v2/account/keys"), 0);
    assert!(fake
        .droplets()
        .iter()
        .all(|d| d.ssh_public_keys == [LOGIN_KEY]));

    // A per-cluster key that the account already holds is used as is and left alone.
    let q = provider(&fake);
    q.create(&plan("c5", 1, 1), &Lines::default())
        .await
        .unwrap();
    assert_eq!(fake.ssh_keys().len(), 1);

    let removed = p.destroy("c4").await.unwrap().removed;
    assert!(
        !removed.iter().any(|r| r.starts_with("ssh key")),
        "{removed:?}"
    );
    q.destroy("c5").await.unwrap();
    assert_eq!(fake.ssh_keys()[0].id, uploaded.id);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_429_is_waited_out_for_as_long_as_retry_after_says() {
    let fake = fake().await;
    let (p, clock) = provider_with(&fake, |_| {});
    fake.set_faults(
        serde_json::from_value(json!({"rate_limit": {"count": 2, "retry_after_secs": 7}})).unwrap(),
    );
    p.plan(&plan("c6", 3, 3)).await.unwrap();
    let sleeps = clock.sleeps();
    assert_eq!(sleeps, [Duration::from_secs(7), Duration::from_secs(7)]);
    assert_eq!(
        fake.api_calls()
            .iter()
            .filter(|c| c.status == Some(429))
            .count(),
        2
    );
    assert_eq!(p.api_calls().retries, 2);

    // A create call refused with 429 was not carried out, so it is sent again, once.
    fake.set_faults(
        serde_json::from_value(json!({"rate_limit": {"count": 1, "retry_after_secs": 2,
            "method": "POST", "path_prefix": "/v2/droplets"}}))
        .unwrap(),
    );
    p.create(&plan("c6", 3, 3), &Lines::default())
        .await
        .unwrap();
    assert_eq!(fake.droplets().len(), 3);
    assert!(clock.sleeps().contains(&Duration::from_secs(2)));
    println!("429 twice then once on create: {}", p.api_calls());
    p.destroy("c6").await.unwrap();
    fake.shutdown().await;
}

#[tokio::test]
async fn server_errors_back_off_exponentially_and_give_up() {
    let fake = fake().await;
    let (p, clock) = provider_with(&fake, |_| {});
    fake.set_faults(
        serde_json::from_value(
            json!({"server_error": {"count": 3, "status": 503, "method": "GET", "path_prefix": "/v2/account"}}),
        )
        .unwrap(),
    );
    p.plan(&plan("c7", 3, 3)).await.unwrap();
    let secs: Vec<u64> = clock.sleeps().iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [1, 2, 4]);

    fake.set_faults(
        serde_json::from_value(
            json!({"server_error": {"count": 50, "status": 502, "method": "GET"}}),
        )
        .unwrap(),
    );
    let err = p.plan(&plan("c7", 3, 3)).await.unwrap_err().to_string();
    println!("gave up: {err}");
    assert!(err.contains("502") && err.contains("6 attempts"), "{err}");
    assert!(!err.contains('\n'));

    // A create call that failed with a 5xx is not repeated blindly.
    let fake2 = fake_with(FakeOptions::default()).await;
    let (p2, _) = provider_with(&fake2, |_| {});
    fake2.set_faults(
        serde_json::from_value(json!({"server_error": {"count": 1, "status": 500, "method": "POST", "path_prefix": "/v2/droplets"}})).unwrap(),
    );
    let err = p2
        .create(&plan("c7", 2, 1), &Lines::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(count(&fake2.api_calls(), "POST", "/v2/droplets"), 1);
    p2.create(&plan("c7", 2, 1), &Lines::default())
        .await
        .unwrap();
    assert_eq!(fake2.droplets().len(), 2);
    fake.shutdown().await;
    fake2.shutdown().await;
}

#[tokio::test]
async fn the_droplet_limit_is_refused_before_anything_is_created() {
    let fake = fake_with(FakeOptions {
        droplet_limit: 2,
        ..FakeOptions::default()
    })
    .await;
    let p = provider(&fake);
    let err = p
        .create(&plan("c8", 3, 3), &Lines::default())
        .await
        .unwrap_err();
    println!("limit: {err}");
    assert!(matches!(err, ProviderError::Prerequisite(_)));
    assert!(
        err.to_string().contains(
            "your DigitalOcean account can create 2 more droplets but the cluster needs 3"
        ),
        "{err}"
    );
    assert!(
        fake.api_calls().iter().all(|c| c.method == "GET"),
        "only looked"
    );
    assert!(fake.droplets().is_empty() && fake.ssh_keys().is_empty());

    // When the limit shrinks between the check and the create, DigitalOcean's own 422
    // is reported the same way.
    fake.set_faults(Faults {
        droplet_limit: Some(5),
        ..Faults::default()
    });
    p.preflight(&plan("c8", 3, 3)).await.unwrap();
    fake.set_faults(Faults {
        droplet_limit: Some(1),
        ..Faults::default()
    });
    let err = p
        .create(&plan("c8", 3, 3), &Lines::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("exceed your droplet limit"),
        "{err}"
    );
    assert!(err.to_string().contains("use fewer nodes"), "{err}");
    assert!(fake.droplets().is_empty());
    p.destroy("c8").await.unwrap();
    assert!(fake.ssh_keys().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn a_partial_multi_create_fails_then_create_resumes_and_destroy_cleans() {
    let fake = fake().await;
    let p = provider(&fake);
    fake.set_faults(
        serde_json::from_value(json!({"partial_create": {"succeed": 1, "status": 500}})).unwrap(),
    );
    let err = p
        .create(&plan("c9", 3, 3), &Lines::default())
        .await
        .unwrap_err();
    println!("partial: {err}");
    assert!(err.to_string().contains("run create again"), "{err}");
    let made = fake.droplets();
    assert_eq!(made.len(), 1);
    assert_eq!(p.created_ids("c9"), vec![made[0].id.to_string()]);

    let machines = p
        .create(&plan("c9", 3, 3), &Lines::default())
        .await
        .unwrap();
    assert_eq!(machines.len(), 3);
    assert_eq!(
        machines[0].provider_id,
        made[0].id.to_string(),
        "the first droplet was kept"
    );
    assert_eq!(fake.droplets().len(), 3);

    let removed = p.destroy("c9").await.unwrap().removed;
    assert_eq!(removed.len(), 5, "{removed:?}");
    assert!(
        fake.droplets().is_empty() && fake.firewalls().is_empty() && fake.ssh_keys().is_empty()
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn rollback_removes_what_a_failed_create_made() {
    let fake = fake().await;
    let p = provider(&fake);
    fake.set_faults(
        serde_json::from_value(json!({"partial_create": {"succeed": 2, "status": 500}})).unwrap(),
    );
    p.create(&plan("c10", 3, 3), &Lines::default())
        .await
        .unwrap_err();
    let ids = p.created_ids("c10");
    assert_eq!(ids.len(), 2);
    let report = p.rollback("c10", &ids).await.unwrap();
    println!("rollback removed: {}", report.removed.join("; "));
    assert_eq!(
        report.removed.len(),
        3,
        "2 droplets and the generated key: {report:?}"
    );
    assert!(fake.droplets().is_empty() && fake.ssh_keys().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn lost_connections_are_retried_for_reads_and_resumed_for_creates() {
    let fake = fake().await;
    let p = provider(&fake);
    fake.set_faults(
        serde_json::from_value(json!({"drop_connection": {"count": 2, "method": "GET"}})).unwrap(),
    );
    p.plan(&plan("c11", 3, 3)).await.unwrap();
    assert_eq!(p.api_calls().retries, 2);
    assert_eq!(fake.api_calls().iter().filter(|c| c.dropped).count(), 2);

    // DigitalOcean made the droplets but the answer was lost: the error says so, and the
    // next create finds them instead of making three more.
    fake.set_faults(
        serde_json::from_value(json!({"drop_connection": {"count": 1, "method": "POST",
            "path_prefix": "/v2/droplets", "after_handling": true}}))
        .unwrap(),
    );
    let err = p
        .create(&plan("c11", 3, 3), &Lines::default())
        .await
        .unwrap_err();
    println!("lost answer: {err}");
    assert!(err.to_string().contains("lost the connection"), "{err}");
    assert_eq!(fake.droplets().len(), 3);
    assert_eq!(p.created_ids("c11").len(), 3);
    fake.clear_api_calls();
    let machines = p
        .create(&plan("c11", 3, 3), &Lines::default())
        .await
        .unwrap();
    assert_eq!(machines.len(), 3);
    assert_eq!(count(&fake.api_calls(), "POST", "/v2/droplets"), 0);
    assert_eq!(fake.droplets().len(), 3);
    p.destroy("c11").await.unwrap();
    fake.shutdown().await;
}

#[tokio::test]
async fn plan_prices_the_cluster_and_checks_size_and_region() {
    let fake = fake().await;
    let p = provider(&fake);
    let dry = p.plan(&plan("c12", 3, 1)).await.unwrap();
    println!("{dry}");
    assert_eq!(dry.to_create.len(), 3);
    assert_eq!(dry.create_calls, 2);
    assert!(
        (dry.total_monthly - 18.0).abs() < 1e-9,
        "{}",
        dry.total_monthly
    );
    assert!(
        (dry.total_hourly - 3.0 * 0.00893).abs() < 1e-9,
        "{}",
        dry.total_hourly
    );
    assert_eq!((dry.droplet_limit, dry.droplets_in_account), (25, 0));
    assert!(fake.api_calls().iter().all(|c| c.method == "GET"));

    let err_for = |tweak: fn(&mut DigitalOceanOptions)| {
        let (p, _) = provider_with(&fake, tweak);
        async move { p.plan(&plan("c12", 3, 1)).await.unwrap_err().to_string() }
    };
    let e = err_for(|o| o.size = "s-99vcpu".into()).await;
    assert!(e.contains("unknown droplet size s-99vcpu"), "{e}");
    let e = err_for(|o| o.size = "c-2".into()).await;
    assert!(e.contains("not available now"), "{e}");
    let e = err_for(|o| o.size = "s-1vcpu-512mb-10gb".into()).await;
    assert!(e.contains("not offered in region nyc3"), "{e}");
    let e = err_for(|o| o.region = "mars1".into()).await;
    assert!(e.contains("unknown region mars1"), "{e}");
    let e = err_for(|o| o.region = "nyc2".into()).await;
    assert!(e.contains("does not take new droplets"), "{e}");
    assert!(!e.contains('\n'));
    assert!(fake.droplets().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn machines_power_off_and_on() {
    let fake = fake().await;
    let p = provider(&fake);
    p.create(&plan("c13", 2, 1), &Lines::default())
        .await
        .unwrap();
    p.power_off("c13", "c13-node2").await.unwrap();
    let listed = p.list("c13").await.unwrap();
    assert_eq!(listed[1].power, PowerState::Off);
    assert_eq!(listed[0].power, PowerState::Running);
    p.power_off("c13", "c13-node2").await.unwrap();
    let m = p.power_on("c13", "c13-node2").await.unwrap();
    assert_eq!(m.power, PowerState::Running);
    assert_eq!(m, listed[1].clone().with_power(PowerState::Running));
    let err = p.power_on("c13", "c13-node9").await.unwrap_err();
    assert!(matches!(err, ProviderError::UnknownMachine { .. }), "{err}");
    p.destroy("c13").await.unwrap();
    fake.shutdown().await;
}

trait WithPower {
    fn with_power(self, power: PowerState) -> Self;
}

impl WithPower for swarmup_providers::Machine {
    fn with_power(mut self, power: PowerState) -> Self {
        self.power = power;
        self
    }
}

#[tokio::test]
async fn a_wrong_token_is_a_prerequisite_error() {
    let fake = fake().await;
    let (p, _) = provider_with(&fake, |o| o.token = "not-the-token".into());
    let err = p.plan(&plan("c14", 1, 1)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Prerequisite(_)), "{err:?}");
    assert!(err.to_string().contains("token was rejected"), "{err}");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_nearly_spent_rate_limit_slows_requests_down() {
    let fake = fake().await;
    let (p, clock) = provider_with(&fake, |_| {});
    fake.set_faults(Faults {
        ratelimit_remaining: Some(4),
        ..Faults::default()
    });
    p.list("c15").await.unwrap();
    p.list("c15").await.unwrap();
    let sleeps = clock.sleeps();
    assert!(
        sleeps.contains(&Duration::from_secs(2)),
        "paused: {sleeps:?}"
    );
    fake.set_faults(Faults {
        ratelimit_remaining: Some(1),
        ..Faults::default()
    });
    p.list("c15").await.unwrap();
    p.list("c15").await.unwrap();
    let waited = clock.sleeps().into_iter().max().unwrap();
    assert!(
        waited >= Duration::from_secs(30),
        "waited for the window to move: {waited:?}"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn listings_follow_pagination() {
    let fake = fake_with(FakeOptions {
        max_per_page: 2,
        ..FakeOptions::default()
    })
    .await;
    let p = provider(&fake);
    let machines = p
        .create(&plan("c16", 5, 3), &Lines::default())
        .await
        .unwrap();
    assert_eq!(machines.len(), 5);
    assert_eq!(p.list("c16").await.unwrap().len(), 5);
    assert!(fake
        .api_calls()
        .iter()
        .any(|c| c.query.as_deref().is_some_and(|q| q.contains("page=3"))));
    p.destroy("c16").await.unwrap();
    assert!(fake.droplets().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn every_wait_has_a_deadline() {
    let fake = fake().await;
    let (p, clock) = provider_with(&fake, |o| o.retry.deadline = Duration::from_secs(5));
    fake.set_faults(
        serde_json::from_value(json!({"rate_limit": {"count": 1, "retry_after_secs": 7}})).unwrap(),
    );
    let err = p.plan(&plan("c17", 1, 1)).await.unwrap_err().to_string();
    println!("deadline: {err}");
    assert!(err.contains("would pass the 5 s deadline"), "{err}");
    assert!(clock.sleeps().is_empty(), "gave up without waiting");

    // Droplets that never boot end the wait at the boot timeout, and destroy still cleans.
    let slow = fake_with(FakeOptions::default()).await;
    slow.set_faults(Faults {
        boot_delay_ms: Some(60_000),
        ..Faults::default()
    });
    let (p, _) = provider_with(&slow, |o| o.boot_timeout = Duration::from_secs(30));
    let err = p
        .create(&plan("c17", 2, 1), &Lines::default())
        .await
        .unwrap_err()
        .to_string();
    println!("boot timeout: {err}");
    assert!(
        err.contains("not active within the 30 s boot timeout") && err.contains("c17-node1 (new)"),
        "{err}"
    );
    assert_eq!(p.list("c17").await.unwrap()[0].power, PowerState::Pending);
    assert_eq!(p.destroy("c17").await.unwrap().removed.len(), 4);
    assert!(slow.droplets().is_empty());
    fake.shutdown().await;
    slow.shutdown().await;
}

#[tokio::test]
async fn published_ports_are_synced_into_the_firewall_with_one_update_at_most() {
    use swarmup_providers::{FirewallSync, PortProtocol, PublishedPort};
    let fake = fake().await;
    let p = provider_with(&fake, |o| o.ssh_from = vec!["198.51.100.7/32".into()]).0;
    p.create(&plan("fw", 1, 1), &Lines::default())
        .await
        .unwrap();
    let own = fake.firewalls()[0].inbound_rules.clone();
    let fw_path = format!("/v2/firewalls/{}", fake.firewalls()[0].id);
    let es = [PublishedPort {
        port: 9200,
        protocol: PortProtocol::Tcp,
    }];
    let rule_9200 = || {
        fake.firewalls()[0]
            .inbound_rules
            .iter()
            .find(|r| r["ports"] == "9200")
            .cloned()
    };

    fake.clear_api_calls();
    let sync = p.sync_published_ports("fw", &es, &[]).await.unwrap();
    let FirewallSync::Synced { opened, closed, .. } = &sync else {
        panic!("{sync:?}");
    };
    assert_eq!(opened, &["9200/tcp from 0.0.0.0/0, ::/0"]);
    assert!(closed.is_empty());
    assert_eq!(count(&fake.api_calls(), "PUT", &fw_path), 1);
    let rule = rule_9200().expect("9200 rule");
    assert_eq!(rule["protocol"], "tcp");
    assert_eq!(rule["sources"]["addresses"], json!(["0.0.0.0/0", "::/0"]));
    // swarmup's own rules are untouched.
    assert_eq!(fake.firewalls()[0].inbound_rules[..own.len()], own[..]);

    // Already in sync: nothing is sent.
    fake.clear_api_calls();
    let sync = p.sync_published_ports("fw", &es, &[]).await.unwrap();
    assert!(
        matches!(&sync, FirewallSync::Synced { opened, closed, .. } if opened.is_empty() && closed.is_empty()),
        "{sync:?}"
    );
    assert_eq!(count(&fake.api_calls(), "PUT", &fw_path), 0);

    // Narrowed, then the create run again must not close the port.
    p.sync_published_ports("fw", &es, &["192.0.2.0/24".into()])
        .await
        .unwrap();
    assert_eq!(
        rule_9200().expect("9200 rule")["sources"]["addresses"],
        json!(["192.0.2.0/24"])
    );
    p.create(&plan("fw", 1, 1), &Lines::default())
        .await
        .unwrap();
    assert!(rule_9200().is_some());

    // Nothing published any more: back to swarmup's own rules.
    let sync = p.sync_published_ports("fw", &[], &[]).await.unwrap();
    let FirewallSync::Synced { closed, .. } = &sync else {
        panic!("{sync:?}");
    };
    assert_eq!(closed, &["9200/tcp from 192.0.2.0/24"]);
    assert_eq!(fake.firewalls()[0].inbound_rules, own);

    // A bad source is refused before any call; an unknown cluster has no firewall.
    let e = p
        .sync_published_ports("fw", &es, &["192.0.2.0/33".into()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--publish-from"), "{e}");
    let e = p.sync_published_ports("nope", &es, &[]).await.unwrap_err();
    assert!(e.to_string().contains("no firewall"), "{e}");
    p.destroy("fw").await.unwrap();
    fake.shutdown().await;
}
