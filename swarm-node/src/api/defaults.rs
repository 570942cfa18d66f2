//! Docker's defaults, written into a service spec when it is created or updated, as
//! SwarmKit stores them: `docker service inspect` then shows every section (`--pretty`
//! prints them), and the orchestrator reads values instead of guessing. A value the
//! client sent is never changed; only missing ones (or the CLI's empty enum `""`) are
//! filled. The figures are SwarmKit's `api/defaults` (see ../reference in the docs).

use swarm_state::models::{
    self, EndpointSpecModeEnum, ServiceSpec, ServiceSpecRollbackConfigFailureActionEnum,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpecRestartPolicyConditionEnum,
};

const SECOND_NS: i64 = 1_000_000_000;
/// Restart policy: condition any, 5 s between restarts, no attempt limit.
pub const RESTART_DELAY_NS: i64 = 5 * SECOND_NS;
/// How long a container gets between SIGTERM and SIGKILL.
pub const STOP_GRACE_PERIOD_NS: i64 = 10 * SECOND_NS;
/// Update and rollback: one task at a time, watched for 5 s, pause on failure.
pub const UPDATE_MONITOR_NS: i64 = 5 * SECOND_NS;

/// Parses a service spec as dockerd would. dockerd decodes JSON with Go's
/// case-insensitive field matching, and the docker CLI writes `Healthcheck` where the API's
/// schema (and so these models) says `HealthCheck`: a strict parse would drop the health
/// check silently.
pub fn parse_service_spec(body: &[u8]) -> Result<ServiceSpec, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(body)?;
    if let Some(container) = value
        .get_mut("TaskTemplate")
        .and_then(|t| t.get_mut("ContainerSpec"))
        .and_then(|c| c.as_object_mut())
    {
        if let Some(health) = container.remove("Healthcheck") {
            container.entry("HealthCheck").or_insert(health);
        }
    }
    serde_json::from_value(value)
}

/// Fills what the client left out, in place.
pub fn fill_service_defaults(spec: &mut ServiceSpec) {
    let mode = spec.mode.get_or_insert_with(Default::default);
    let no_mode = mode.replicated.is_none()
        && mode.global.is_none()
        && mode.replicated_job.is_none()
        && mode.global_job.is_none();
    if no_mode {
        mode.replicated = Some(Default::default());
    }
    if let Some(replicated) = mode.replicated.as_mut() {
        // `docker service create` without --replicas sends `"Replicated": {}`.
        replicated.replicas.get_or_insert(1);
    }
    if let Some(job) = mode.replicated_job.as_mut() {
        let total = *job.total_completions.get_or_insert(1);
        job.max_concurrent.get_or_insert(total);
    }

    let task = spec.task_template.get_or_insert_with(Default::default);
    let restart = task.restart_policy.get_or_insert_with(Default::default);
    if matches!(
        restart.condition,
        None | Some(TaskSpecRestartPolicyConditionEnum::EMPTY)
    ) {
        restart.condition = Some(TaskSpecRestartPolicyConditionEnum::ANY);
    }
    restart.delay.get_or_insert(RESTART_DELAY_NS);
    restart.max_attempts.get_or_insert(0);
    if let Some(container) = task.container_spec.as_mut() {
        container
            .stop_grace_period
            .get_or_insert(STOP_GRACE_PERIOD_NS);
    }
    task.force_update.get_or_insert(0);

    let update = spec.update_config.get_or_insert_with(Default::default);
    update.parallelism.get_or_insert(1);
    update.delay.get_or_insert(0);
    update.monitor.get_or_insert(UPDATE_MONITOR_NS);
    update.max_failure_ratio.get_or_insert(0.0);
    if matches!(
        update.failure_action,
        None | Some(ServiceSpecUpdateConfigFailureActionEnum::EMPTY)
    ) {
        update.failure_action = Some(ServiceSpecUpdateConfigFailureActionEnum::PAUSE);
    }
    if matches!(
        update.order,
        None | Some(ServiceSpecUpdateConfigOrderEnum::EMPTY)
    ) {
        update.order = Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST);
    }

    let rollback = spec.rollback_config.get_or_insert_with(Default::default);
    rollback.parallelism.get_or_insert(1);
    rollback.delay.get_or_insert(0);
    rollback.monitor.get_or_insert(UPDATE_MONITOR_NS);
    rollback.max_failure_ratio.get_or_insert(0.0);
    if matches!(
        rollback.failure_action,
        None | Some(ServiceSpecRollbackConfigFailureActionEnum::EMPTY)
    ) {
        rollback.failure_action = Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE);
    }
    if matches!(
        rollback.order,
        None | Some(ServiceSpecRollbackConfigOrderEnum::EMPTY)
    ) {
        rollback.order = Some(ServiceSpecRollbackConfigOrderEnum::STOP_FIRST);
    }

    let endpoint = spec
        .endpoint_spec
        .get_or_insert_with(models::EndpointSpec::default);
    if matches!(endpoint.mode, None | Some(EndpointSpecModeEnum::EMPTY)) {
        endpoint.mode = Some(EndpointSpecModeEnum::VIP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::models::{ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec};

    fn minimal() -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "Name": "web",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
            "Mode": {"Replicated": {}}
        }))
        .unwrap()
    }

    #[test]
    fn the_first_command_of_docker_s_tutorial_gets_one_replica_and_every_section() {
        let mut spec = minimal();
        fill_service_defaults(&mut spec);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["Mode"]["Replicated"]["Replicas"], 1);
        let rp = &v["TaskTemplate"]["RestartPolicy"];
        assert_eq!(
            (&rp["Condition"], &rp["Delay"], &rp["MaxAttempts"]),
            (&"any".into(), &RESTART_DELAY_NS.into(), &0.into())
        );
        assert_eq!(
            v["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"],
            STOP_GRACE_PERIOD_NS
        );
        for section in ["UpdateConfig", "RollbackConfig"] {
            let c = &v[section];
            assert_eq!(c["Parallelism"], 1, "{section}");
            assert_eq!(c["FailureAction"], "pause", "{section}");
            assert_eq!(c["Monitor"], UPDATE_MONITOR_NS, "{section}");
            assert_eq!(c["Order"], "stop-first", "{section}");
            assert_eq!(c["MaxFailureRatio"], 0.0, "{section}");
        }
        assert_eq!(v["EndpointSpec"]["Mode"], "vip");
    }

    #[test]
    fn the_cli_s_healthcheck_key_is_read() {
        let spec = parse_service_spec(
            br#"{"Name":"h","TaskTemplate":{"ContainerSpec":{"Image":"b","Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":7000000000}}}}"#,
        )
        .unwrap();
        let health = spec
            .task_template
            .unwrap()
            .container_spec
            .unwrap()
            .health_check
            .unwrap();
        assert_eq!(health.interval, Some(7_000_000_000));
    }

    #[test]
    fn what_the_client_sent_is_kept() {
        let mut spec = minimal();
        spec.mode = Some(ServiceSpecMode {
            global: Some(Default::default()),
            ..Default::default()
        });
        spec.update_config = Some(models::ServiceSpecUpdateConfig {
            parallelism: Some(3),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            order: Some(ServiceSpecUpdateConfigOrderEnum::EMPTY),
            ..Default::default()
        });
        let task: &mut TaskSpec = spec.task_template.as_mut().unwrap();
        task.restart_policy = Some(models::TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
            delay: Some(SECOND_NS),
            ..Default::default()
        });
        fill_service_defaults(&mut spec);
        let mode = spec.mode.as_ref().unwrap();
        assert!(mode.global.is_some() && mode.replicated.is_none());
        let update = spec.update_config.as_ref().unwrap();
        assert_eq!(update.parallelism, Some(3));
        assert_eq!(
            update.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        assert_eq!(
            update.order,
            Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST)
        );
        let rp = spec
            .task_template
            .as_ref()
            .unwrap()
            .restart_policy
            .as_ref()
            .unwrap();
        assert_eq!(
            (rp.condition, rp.delay, rp.max_attempts),
            (
                Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                Some(SECOND_NS),
                Some(0)
            )
        );
        // Filling twice changes nothing (an update re-sends what inspect showed).
        let once = spec.clone();
        fill_service_defaults(&mut spec);
        assert_eq!(spec, once);
        let mut zero = minimal();
        zero.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
            ..Default::default()
        });
        fill_service_defaults(&mut zero);
        assert_eq!(zero.mode.unwrap().replicated.unwrap().replicas, Some(0));
    }
}
