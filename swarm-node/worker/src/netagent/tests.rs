use std::time::Instant;

use swarm_net::FakeKernel;
use swarm_state::netmap::{LocalTask, NetView, RemoteEndpoint, ServiceView};
use swarm_state::network::EndpointMode;
use tokio::sync::oneshot;

use super::*;
use crate::fake::{Call, FakeRuntime};

const NODE: &str = "node-a";

/// A manager stand-in: answers the latest map once it is newer than the caller's, else
/// after a short hold, as the real long poll does.
#[derive(Debug)]
struct Canned {
    map: watch::Sender<NetMap>,
    fetches: std::sync::Mutex<u32>,
}

impl Canned {
    fn new(map: NetMap) -> Arc<Self> {
        Arc::new(Canned {
            map: watch::channel(map).0,
            fetches: std::sync::Mutex::new(0),
        })
    }

    fn publish(&self, mut map: NetMap) {
        map.index = self.map.borrow().index + 1;
        self.map.send_replace(map);
    }

    fn fetches(&self) -> u32 {
        *self.fetches.lock().unwrap()
    }
}

#[async_trait]
impl NetmapSource for Canned {
    async fn fetch(&self, since: u64) -> Result<NetMap, NetmapError> {
        *self.fetches.lock().unwrap() += 1;
        let mut rx = self.map.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(300), rx.wait_for(|m| m.index > since))
            .await;
        let map = rx.borrow().clone();
        Ok(map)
    }
}

fn view() -> NetView {
    NetView {
        id: "net1".into(),
        name: "front".into(),
        vni: 4097,
        subnet: "10.0.1.0/24".parse().unwrap(),
        gateway: "10.0.1.1".parse().unwrap(),
        mtu: None,
        encrypted: false,
        internal: false,
        ingress: false,
        local_addr: Some("10.0.1.241".parse().unwrap()),
        remote: vec![RemoteEndpoint {
            addr: "10.0.1.20".parse().unwrap(),
            vtep: "192.0.2.20".parse().unwrap(),
        }],
        services: vec![ServiceView {
            id: "svc1".into(),
            name: "web".into(),
            aliases: vec![],
            mode: EndpointMode::Vip,
            vip: Some("10.0.1.254".parse().unwrap()),
            backends: vec!["10.0.1.5".parse().unwrap(), "10.0.1.20".parse().unwrap()],
        }],
    }
}

fn map_with_task() -> NetMap {
    NetMap {
        tunnel: None,
        index: 1,
        node_id: NODE.into(),
        local_vtep: Some("192.0.2.10".parse().unwrap()),
        data_path_port: 4789,
        networks: vec![view()],
        local_tasks: vec![LocalTask {
            task_id: "t1".into(),
            service_id: "svc1".into(),
            addrs: vec![("net1".into(), "10.0.1.5".parse().unwrap())],
        }],
        ..Default::default()
    }
}

fn empty_map() -> NetMap {
    NetMap {
        index: 1,
        node_id: NODE.into(),
        local_vtep: Some("192.0.2.10".parse().unwrap()),
        data_path_port: 4789,
        ..Default::default()
    }
}

fn attachment() -> TaskNetwork {
    TaskNetwork {
        docker_network: "front".into(),
        addr: "10.0.1.5".parse().unwrap(),
        prefix_len: 24,
        gateway: "10.0.1.1".parse().unwrap(),
    }
}

struct Running {
    rt: Arc<FakeRuntime>,
    kernel: Arc<FakeKernel>,
    source: Arc<Canned>,
    maps: watch::Receiver<Arc<NetMap>>,
    ready: watch::Receiver<Arc<ReadyNetworks>>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(map: NetMap) -> Self {
        let rt = Arc::new(FakeRuntime::new());
        let kernel = Arc::new(FakeKernel::new());
        Self::start_on(rt, kernel, map)
    }

    fn start_on(rt: Arc<FakeRuntime>, kernel: Arc<FakeKernel>, map: NetMap) -> Self {
        let dataplane = Arc::new(Dataplane::new(kernel.clone()));
        let agent = NetAgent::new(NODE, rt.clone(), dataplane, 7953)
            .with_resync(Duration::from_millis(100));
        let (maps, ready) = (agent.maps(), agent.ready());
        let source = Canned::new(map);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(agent.run(source.clone(), async {
            let _ = stop_rx.await;
        }));
        Running {
            rt,
            kernel,
            source,
            maps,
            ready,
            stop: Some(stop),
            handle,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap();
    }
}

/// Waits up to 5 s for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_task_is_ready_once_its_docker_network_and_data_plane_are_in_place() {
    let r = Running::start(map_with_task());
    // Docker creates the kernel bridge with the network; the fake engine does not, so
    // the data plane reports it missing and the task must wait.
    eventually("the docker network", || {
        r.rt.network_list().iter().any(|n| n.name == "front")
    })
    .await;
    let net =
        r.rt.network_list()
            .into_iter()
            .find(|n| n.name == "front")
            .unwrap();
    let spec = net.spec.unwrap();
    assert_eq!(spec.bridge, "swb4097");
    assert_eq!(spec.mtu, 1450, "the underlay's 1500 minus VXLAN's 50");
    assert_eq!(spec.network_id, "net1");
    eventually("the map for DNS", || r.maps.borrow().index == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.ready.borrow().is_empty(), "{:?}", r.ready.borrow());

    // The bridge appears: the next retry applies the data plane and the task is ready.
    r.kernel
        .add_bridge("swb4097", "10.0.1.1/24".parse().unwrap());
    let mut ready = r.ready.clone();
    eventually("the task to be ready", || {
        ready.borrow_and_update().get("t1") == Some(&vec![attachment()])
    })
    .await;
    let state = r.kernel.state();
    assert!(
        state.links.contains_key("swv4097"),
        "{:?}",
        state.links.keys()
    );
    assert!(r.kernel.nft_table().is_some());
    r.stop().await;
}

#[tokio::test]
async fn a_foreign_network_of_the_same_name_is_refused_until_it_goes() {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_foreign_network("front");
    let kernel = Arc::new(FakeKernel::new());
    kernel.add_bridge("swb4097", "10.0.1.1/24".parse().unwrap());
    let r = Running::start_on(rt.clone(), kernel, map_with_task());
    eventually("the map", || r.maps.borrow().index == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.ready.borrow().is_empty());
    let foreign = rt.network_list();
    assert_eq!(foreign.len(), 1);
    assert!(
        foreign[0].spec.is_none(),
        "the user's network is left alone"
    );

    rt.remove_network("front").await.unwrap();
    let ready = r.ready.clone();
    eventually("the task to be ready", || ready.borrow().contains_key("t1")).await;
    r.stop().await;
}

#[tokio::test]
async fn networks_no_longer_wanted_are_removed_once_unused_and_a_restart_is_repaired() {
    let kernel = Arc::new(FakeKernel::new());
    kernel.add_bridge("swb4097", "10.0.1.1/24".parse().unwrap());
    let rt = Arc::new(FakeRuntime::new());
    let r = Running::start_on(rt.clone(), kernel, map_with_task());
    let ready = r.ready.clone();
    eventually("the task to be ready", || ready.borrow().contains_key("t1")).await;

    // The engine loses the network (say, a restart of dockerd with its state wiped):
    // the periodic resync makes it again.
    rt.remove_network("front").await.unwrap();
    eventually("the network again", || {
        rt.network_list().iter().any(|n| n.name == "front")
    })
    .await;

    // A network the map no longer names goes, and the task is no longer ready.
    r.source.publish(empty_map());
    eventually("the network to go", || rt.network_list().is_empty()).await;
    eventually("nothing ready", || ready.borrow().is_empty()).await;
    assert!(rt
        .calls()
        .iter()
        .any(|c| *c == Call::RemoveNetwork("front".into())));
    assert!(
        !r.kernel.state().links.contains_key("swv4097"),
        "the data plane follows"
    );
    r.stop().await;
}

#[tokio::test]
async fn a_network_in_use_is_kept_until_its_container_stops() {
    let kernel = Arc::new(FakeKernel::new());
    kernel.add_bridge("swb4097", "10.0.1.1/24".parse().unwrap());
    let rt = Arc::new(FakeRuntime::new());
    let r = Running::start_on(rt.clone(), kernel, map_with_task());
    let ready = r.ready.clone();
    eventually("the task to be ready", || ready.borrow().contains_key("t1")).await;
    // A running container on the network.
    let mut spec = crate::spec::container_spec(&swarm_state::models::Task {
        id: Some("t1".into()),
        node_id: Some(NODE.into()),
        spec: Some(swarm_state::models::TaskSpec {
            container_spec: Some(swarm_state::models::TaskSpecContainerSpec {
                image: Some("busybox".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    crate::spec::attach(&mut spec, &[attachment()]);
    let id = rt.create(&spec).await.unwrap();
    rt.start(&id).await.unwrap();

    r.source.publish(empty_map());
    eventually("nothing ready", || ready.borrow().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rt.network_list().len(), 1, "still in use");
    rt.stop(&id, None).await.unwrap();
    eventually("the network to go", || rt.network_list().is_empty()).await;
    r.stop().await;
}

#[tokio::test]
async fn the_long_poll_never_spins() {
    let r = Running::start(empty_map());
    eventually("the map", || r.maps.borrow().index == 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Each fetch is held 300 ms by the stand-in when nothing changes.
    assert!(r.source.fetches() <= 6, "{} fetches", r.source.fetches());
    r.stop().await;
}

#[tokio::test]
async fn forget_removes_the_data_plane_and_our_networks_only() {
    let kernel = Arc::new(FakeKernel::new());
    kernel.add_bridge("swb4097", "10.0.1.1/24".parse().unwrap());
    let rt = Arc::new(FakeRuntime::new());
    rt.add_foreign_network("users");
    let r = Running::start_on(rt.clone(), kernel.clone(), map_with_task());
    let ready = r.ready.clone();
    eventually("the task to be ready", || ready.borrow().contains_key("t1")).await;
    r.stop().await;
    // Another node's network on the same engine stays too.
    let other = swarm_net::BridgeSpec {
        network_id: "net9".into(),
        network_name: "others".into(),
        bridge: "swb4200".into(),
        subnet: "10.0.9.0/24".parse().unwrap(),
        gateway: "10.0.9.1".parse().unwrap(),
        mtu: 1450,
        internal: false,
    };
    rt.ensure_network(&other, "node-b").await.unwrap();
    forget(rt.as_ref(), &Dataplane::new(kernel.clone()), NODE).await;
    let left: Vec<String> = rt.network_list().into_iter().map(|n| n.name).collect();
    assert_eq!(left, vec!["others".to_string(), "users".to_string()]);
    assert!(kernel.nft_table().is_none());
    assert!(!kernel.state().links.contains_key("swv4097"));
}

#[test]
fn a_task_is_ready_only_when_all_its_networks_are() {
    let mut map = map_with_task();
    let mut second = view();
    second.id = "net2".into();
    second.name = "back".into();
    second.vni = 4098;
    second.subnet = "10.0.2.0/24".parse().unwrap();
    second.gateway = "10.0.2.1".parse().unwrap();
    map.networks.push(second);
    map.local_tasks[0]
        .addrs
        .push(("net2".into(), "10.0.2.7".parse().unwrap()));
    map.local_tasks.push(LocalTask {
        task_id: "t2".into(),
        service_id: "svc2".into(),
        addrs: vec![("net2".into(), "10.0.2.8".parse().unwrap())],
    });
    let desired = swarm_net::plan(
        &map,
        &LocalFacts {
            underlay_mtu: 1500,
            dns_port: 7953,
            mesh_snat: false,
        },
    );
    let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    let ready = ready_tasks(&map, &desired, &set(&["net1", "net2"]), &set(&["net2"]));
    assert_eq!(ready.keys().collect::<Vec<_>>(), vec!["t2"]);
    let ready = ready_tasks(&map, &desired, &set(&["net1"]), &set(&["net1", "net2"]));
    assert!(ready.is_empty());
    let ready = ready_tasks(
        &map,
        &desired,
        &set(&["net1", "net2"]),
        &set(&["net1", "net2"]),
    );
    let t1 = &ready["t1"];
    assert_eq!(t1[0], attachment(), "the service's order is kept");
    assert_eq!(t1[1].docker_network, "back");
    assert_eq!(t1[1].gateway, "10.0.2.1".parse::<Ipv4Addr>().unwrap());
}

#[test]
fn maps_differing_only_in_index_are_the_same() {
    let a = map_with_task();
    let mut b = a.clone();
    b.index = 9;
    assert!(same_content(&a, &b));
    b.local_tasks.clear();
    assert!(!same_content(&a, &b));
}

#[test]
fn a_map_differing_only_in_published_ports_is_new_content() {
    let a = map_with_task();
    let mut b = map_with_task();
    b.index = 7;
    assert!(super::same_content(&a, &b), "the index alone is no change");
    b.ingress_ports.push(swarm_state::netmap::IngressPort {
        service_id: "svc1".into(),
        service: "web".into(),
        protocol: swarm_state::network::Protocol::Tcp,
        published: 9200,
        target: 80,
        backends: vec!["10.0.0.5".parse().unwrap()],
    });
    assert!(!super::same_content(&a, &b));
}
