//! A workshop's clusters through `create_many` against the fake, on loopback only, with
//! the in-memory backend (no machines behind the droplets) and DigitalOcean's real rate
//! limits. Latencies are scaled down; the provider runs on the real clock so that its own
//! count of requests per minute and the fake's agree.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use fake_digitalocean::{ApiCall, FakeDo, FakeOptions, Faults, ServerErrorFault};
use swarmup_providers::digitalocean::{DigitalOceanOptions, DigitalOceanProvider};
use swarmup_providers::workshop::{expires_tag, workshop_tag};
use swarmup_providers::{
    ClusterPlan, HostKey, MachinePlan, Progress, Provider, ProviderError, Role,
};

const MINUTE: Duration = Duration::from_secs(60);

async fn fake(boot: Duration, latency: Duration, droplet_limit: u32) -> FakeDo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    FakeDo::start(
        listener,
        FakeOptions {
            boot_delay: boot,
            api_latency: latency,
            droplet_limit,
            ..FakeOptions::default()
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

fn provider(fake: &FakeDo, poll: Duration) -> DigitalOceanProvider {
    let mut options = DigitalOceanOptions::new(fake.token());
    options.api_url = fake.url();
    options.workshop_poll_interval = poll;
    options.boot_timeout = Duration::from_secs(120);
    DigitalOceanProvider::new(options, Arc::new(user_data)).unwrap()
}

/// An OpenSSH public key line of its own for every `seed`: the fake and the provider only
/// look at its blob's fingerprint.
fn login_key(seed: u8) -> String {
    let blob = base64::engine::general_purpose::STANDARD.encode([seed; 51]);
    format!("ssh-ed25519 {blob} teacher@host")
}

/// Workshop `name`'s plans: `students` clusters `NAME-sNN` of `nodes`, the first a manager.
fn workshop(name: &str, students: usize, nodes: usize, key: &str) -> Vec<ClusterPlan> {
    (1..=students)
        .map(|s| {
            let cluster = format!("{name}-s{s:02}");
            ClusterPlan {
                machines: (1..=nodes)
                    .map(|i| MachinePlan {
                        name: format!("{cluster}-node{i}"),
                        role: if i == 1 { Role::Manager } else { Role::Worker },
                        host_key: HostKey {
                            private_openssh: "unused in these tests".into(),
                            public_openssh: "ssh-ed25519 AAAA unused".into(),
                        },
                    })
                    .collect(),
                cluster,
                login_public_key: key.to_string(),
                tags: vec![workshop_tag(name), expires_tag(1_796_540_400)],
            }
        })
        .collect()
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

#[tokio::test]
async fn thirty_students_of_three_nodes_stay_within_the_rate_limit() {
    let fake = fake(Duration::from_secs(2), Duration::from_millis(20), 200).await;
    let p = provider(&fake, Duration::from_millis(500));
    let plans = workshop("dec", 30, 3, &login_key(1));
    let started = std::time::Instant::now();
    let results = p.create_many(&plans, &Lines::default()).await;
    let took = started.elapsed();

    assert_eq!(results.len(), 30);
    for (plan, result) in plans.iter().zip(&results) {
        let machines = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", plan.cluster));
        let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
        let want: Vec<String> = (1..=3)
            .map(|i| format!("{}-node{i}", plan.cluster))
            .collect();
        assert_eq!(names, want);
        assert_eq!(machines[0].role, Role::Manager);
        assert!(machines[1..].iter().all(|m| m.role == Role::Worker));
        assert!(machines.iter().all(|m| !m.ssh.host.is_unspecified()));
    }
    for d in fake.droplets() {
        let cluster = d.name.rsplit_once("-node").unwrap().0;
        let role = if d.name.ends_with("-node1") {
            "swarmup-role:manager"
        } else {
            "swarmup-role:worker"
        };
        for tag in [
            "swarmup".to_string(),
            format!("swarmup:{cluster}"),
            role.to_string(),
            workshop_tag("dec"),
            expires_tag(1_796_540_400),
        ] {
            assert!(
                d.tags.contains(&tag),
                "{} lacks {tag}: {:?}",
                d.name,
                d.tags
            );
        }
    }
    assert_eq!(fake.droplets().len(), 90);

    let calls = fake.api_calls();
    let max = fake.max_calls_in(MINUTE);
    println!(
        "30 x 3 in {:.1} s: {} requests ({}), at most {max} in any minute, {} answered 429",
        took.as_secs_f64(),
        calls.len(),
        p.api_calls(),
        fake.rate_limited_calls()
    );
    assert!(max <= 250, "{max} requests in one minute");
    assert_eq!(fake.rate_limited_calls(), 0);
    // One manager call and one worker call per cluster, ten names at most each.
    assert_eq!(count(&calls, "POST", "/v2/droplets"), 60);
    // One key for the whole workshop, one firewall, the workshop polled by its tag.
    assert_eq!(count(&calls, "POST", "/v2/account/keys"), 1);
    assert_eq!(count(&calls, "POST", "/v2/firewalls"), 1);
    let firewalls = fake.firewalls();
    assert_eq!(firewalls.len(), 1, "{firewalls:?}");
    assert_eq!(firewalls[0].name, "swarmup-workshop-dec");
    assert_eq!(firewalls[0].tags, vec![workshop_tag("dec")]);
    let polls: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.method == "GET" && c.path == "/v2/droplets")
        .filter(|c| {
            c.query
                .as_deref()
                .is_some_and(|q| q.contains("tag_name=swarmup-workshop:dec"))
        })
        .collect();
    assert!(!polls.is_empty());
    assert!(polls
        .iter()
        .all(|c| c.query.as_deref().unwrap().contains("per_page=200")));
    assert!(calls.len() < 120, "{} requests", calls.len());

    // A second run resumes: nothing is created again.
    fake.clear_api_calls();
    let again = p.create_many(&plans, &Lines::default()).await;
    assert!(again.iter().all(Result::is_ok));
    assert_eq!(count(&fake.api_calls(), "POST", "/v2/droplets"), 0);
    assert_eq!(fake.droplets().len(), 90);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_failed_create_call_fails_its_cluster_only() {
    let fake = fake(Duration::from_millis(300), Duration::ZERO, 100).await;
    let p = provider(&fake, Duration::from_millis(100));
    // Managers only: one create call per cluster, so the fault hits one cluster whole.
    let mut plans = workshop("feb", 5, 2, &login_key(2));
    for plan in &mut plans {
        for m in &mut plan.machines {
            m.role = Role::Manager;
        }
    }
    fake.set_faults(Faults {
        server_error: Some(ServerErrorFault {
            count: 1,
            status: 500,
            on: fake_digitalocean::Matcher {
                method: Some("POST".into()),
                path_prefix: Some("/v2/droplets".into()),
            },
        }),
        ..Faults::default()
    });
    let results = p.create_many(&plans, &Lines::default()).await;
    let failed: Vec<(&ClusterPlan, &ProviderError)> = plans
        .iter()
        .zip(&results)
        .filter_map(|(p, r)| r.as_ref().err().map(|e| (p, e)))
        .collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    let (plan, err) = failed[0];
    println!("{}: {err}", plan.cluster);
    assert!(
        err.to_string()
            .contains(&format!("of cluster {}", plan.cluster)),
        "{err}"
    );
    for (p, r) in plans.iter().zip(&results) {
        if p.cluster != plan.cluster {
            assert_eq!(r.as_ref().unwrap().len(), 2, "{}", p.cluster);
        }
    }
    // Running it again makes the missing cluster and leaves the others alone.
    fake.clear_api_calls();
    let again = p.create_many(&plans, &Lines::default()).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(count(&fake.api_calls(), "POST", "/v2/droplets"), 1);
    assert_eq!(fake.droplets().len(), 10);
    fake.shutdown().await;
}

#[tokio::test]
async fn tags_find_workshops_and_destroy_takes_one_workshop_only() {
    let fake = fake(Duration::from_millis(200), Duration::ZERO, 100).await;
    let p = provider(&fake, Duration::from_millis(100));
    let a = workshop("wa", 3, 2, &login_key(3));
    let b = workshop("wb", 2, 2, &login_key(4));
    assert!(p
        .create_many(&a, &Lines::default())
        .await
        .iter()
        .all(Result::is_ok));
    assert!(p
        .create_many(&b, &Lines::default())
        .await
        .iter()
        .all(Result::is_ok));
    // Plans without a workshop tag are made cluster by cluster, with their own firewall.
    let mut plain = workshop("solo", 1, 1, &login_key(5));
    plain[0].tags.clear();
    assert!(p.create_many(&plain, &Lines::default()).await[0].is_ok());
    assert!(fake
        .firewalls()
        .iter()
        .any(|f| f.name == "swarmup-solo-s01"));

    let tags = p.cluster_tags().await.unwrap();
    println!("{tags:?}");
    assert_eq!(tags.len(), 6);
    for plan in &a {
        let t = &tags[&plan.cluster];
        assert!(t.contains(&workshop_tag("wa")), "{t:?}");
        assert!(t.contains(&expires_tag(1_796_540_400)), "{t:?}");
    }
    assert_eq!(tags["solo-s01"], Vec::<String>::new());

    let report = p.destroy_tagged(&workshop_tag("wa")).await.unwrap();
    println!("{}", report.removed.join("\n"));
    let droplets = fake.droplets();
    assert!(droplets
        .iter()
        .all(|d| !d.tags.contains(&workshop_tag("wa"))));
    assert_eq!(
        droplets
            .iter()
            .filter(|d| d.tags.contains(&workshop_tag("wb")))
            .count(),
        4
    );
    let firewalls: Vec<String> = fake.firewalls().into_iter().map(|f| f.name).collect();
    assert!(!firewalls.contains(&"swarmup-workshop-wa".to_string()));
    assert!(firewalls.contains(&"swarmup-workshop-wb".to_string()));
    let keys: Vec<String> = fake.ssh_keys().into_iter().map(|k| k.name).collect();
    assert!(
        !keys.contains(&"swarmup-workshop-wa".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"swarmup-workshop-wb".to_string()),
        "{keys:?}"
    );
    assert_eq!(report.removed.len(), 6 + 2);
    let left = p.cluster_tags().await.unwrap();
    assert!(a.iter().all(|plan| !left.contains_key(&plan.cluster)));
    assert_eq!(left.len(), 3);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_workshop_beyond_the_droplet_limit_is_refused_before_anything_is_made() {
    let fake = fake(Duration::from_millis(100), Duration::ZERO, 10).await;
    let p = provider(&fake, Duration::from_millis(100));
    let plans = workshop("big", 4, 3, &login_key(6));

    let dry = p
        .workshop_dry_run(&plans, Duration::from_secs(8 * 3600))
        .await
        .unwrap();
    let details: Vec<String> = dry
        .details
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!("{}", details.join("\n"));
    assert_eq!(dry.machines.len(), 12);
    assert!(details.iter().any(|d| d.starts_with("api calls: about")));
    assert!(details.iter().any(|d| d.contains("does not fit")));
    assert!(details.iter().any(|d| d.contains("for the 8.0 h ttl")));
    assert!(dry.warnings.iter().any(|w| w.contains("needs 12")));

    let refused = p.workshop_preflight(&plans).await.unwrap_err().to_string();
    assert!(refused.contains("needs 12"), "{refused}");

    let results = p.create_many(&plans, &Lines::default()).await;
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert!(matches!(err, ProviderError::Prerequisite(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("can create 10 more droplets but workshop big needs 12"),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));
    }
    assert!(fake.droplets().is_empty());
    assert!(fake.ssh_keys().is_empty());
    assert!(fake.firewalls().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn the_fake_answers_429_beyond_the_per_minute_limit_as_digitalocean_does() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = FakeDo::start(
        listener,
        FakeOptions {
            rate_per_minute: 5,
            ..FakeOptions::default()
        },
    )
    .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = || {
        http.get(format!("{}/v2/account", fake.url()))
            .bearer_auth(fake.token())
            .send()
    };
    for n in 1..=5u64 {
        let resp = get().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["ratelimit-limit"], "5000");
        assert_eq!(
            resp.headers()["ratelimit-remaining"],
            (5000 - n).to_string().as_str()
        );
    }
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 429);
    let h = refused.headers().clone();
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // A refused request is not counted against the hour.
    assert_eq!(h["ratelimit-remaining"], "4995");
    let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!(reset > 1_700_000_000);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["id"], "too_many_requests");
    assert_eq!(fake.max_calls_in(MINUTE), 6);
    assert_eq!(fake.rate_limited_calls(), 1);
    fake.shutdown().await;
}

#[test]
fn the_busiest_window_is_counted() {
    use fake_digitalocean::max_in_window;
    let at = [0, 10, 59_999, 60_000, 61_000, 200_000];
    assert_eq!(max_in_window(&at, MINUTE), 3);
    assert_eq!(max_in_window(&at, Duration::from_secs(61)), 4);
    assert_eq!(max_in_window(&[], MINUTE), 0);
    assert_eq!(max_in_window(&[5, 5, 5], Duration::from_millis(1)), 3);
}
