//! The scale harness in a small configuration, so it keeps working: three managers and
//! twenty agents on loopback in this process (no root, no Docker), a service of 200
//! replicas brought to Running, a lost node's tasks run elsewhere, and the API answers
//! meanwhile. Asserts outcomes only, never timings: `cargo bench -p swarm-node --bench
//! scale` prints the figures.

#[path = "support/scale.rs"]
mod scale;

use std::collections::HashSet;
use std::time::Duration;

use scale::*;

#[test]
fn twenty_nodes_run_two_hundred_tasks_and_replace_a_lost_node() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("scale-nodes")
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut options = ScaleOptions::new(20);
        options.start_delay = Duration::from_millis(10);
        // A short period, so the lost node is noticed in seconds.
        options.heartbeat_ms = 500;
        let cluster = ScaleCluster::start(options).await;
        let id = cluster.create_service("smoke", 200).await.unwrap();
        let services: HashSet<String> = [id].into();
        let done = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            let p = progress(&cluster.leader_state(), &services);
            p.desired == 200 && p.running == 200
        })
        .await;
        assert!(
            done.is_some(),
            "200 Running: {:?}",
            progress(&cluster.leader_state(), &services)
        );
        // Spread over the workers, none on the drained managers.
        let per_node = count_by_node(&cluster.leader_state());
        for m in &cluster.managers {
            assert!(
                !per_node.contains_key(&m.node_id),
                "task on manager {}",
                m.name
            );
        }
        assert_eq!(per_node.len(), 20, "{per_node:?}");
        cluster.timed_get("/services").await.unwrap();
        cluster.timed_get("/nodes").await.unwrap();

        let lost = &cluster.nodes[0];
        lost.kill();
        let lost_id = lost.node_id.clone();
        let replaced = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            let state = cluster.leader_state();
            let p = progress(&state, &services);
            running_on(&state, &lost_id).is_empty() && p.running == 200
        })
        .await;
        assert!(
            replaced.is_some(),
            "the lost node's tasks run elsewhere: {:?}",
            progress(&cluster.leader_state(), &services)
        );
    });
}
