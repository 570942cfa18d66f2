//! The `virtualbox` provider: every machine is a VirtualBox VM on this host, driven
//! through VBoxManage alone.
//!
//! Per image version one base disk (from Ubuntu's cloud image, pinned and checksummed,
//! cached under the user's cache directory) is made `multiattach`, so each VM boots a
//! linked clone of it. Each VM has NIC1 on NAT (the internet) and NIC2 on a host-only
//! adapter on 192.168.56.0/24 (one that exists is reused), a serial port logging to
//! `console.log` in its folder (cloud images hang without one), and a NoCloud seed ISO
//! with the login key, the host key swarmup generated and a static address for NIC2, so
//! the address is known before boot and no guest additions are needed. A cluster's VMs
//! are in the VirtualBox group `/swarmup/CLUSTER`; their description (written last, so a
//! VM without it was never finished) records the role and address.

pub mod image;
pub mod iso;
pub mod parse;
pub mod plan;
pub mod seed;
pub mod vbox;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::digitalocean::UserData;
use crate::lab::system::{LabSystem, RealSystem};
use crate::{
    ClusterPlan, DestroyReport, DryRun, Machine, MachinePlan, PowerState, Progress, Provider,
    ProviderError, SshEndpoint,
};
use image::ImageChoice;
use plan::{Description, VmSpec};
use vbox::{FailureKind, ProcessVBoxManage, Vbox, VboxError};

/// The program's name on PATH.
pub const PROGRAM: &str = "VBoxManage";
const INSTALL_HINT: &str =
    "install VirtualBox 6.1 or later (https://www.virtualbox.org/wiki/Downloads)";

/// How the VirtualBox provider is set up.
#[derive(Debug, Clone)]
pub struct VirtualBoxOptions {
    /// VBoxManage as configured (`SWARMUP_VBOXMANAGE`); else looked up on PATH.
    pub vboxmanage: Option<PathBuf>,
    pub cpus: u32,
    pub memory_mb: u32,
    /// A catalog name or a local file.
    pub image: String,
    /// Downloaded images and base disks.
    pub cache_dir: PathBuf,
    /// How long a VM may take from `startvm` to answering SSH.
    pub boot_timeout: Duration,
    /// How long an ACPI shutdown may take before the power is cut.
    pub stop_timeout: Duration,
    /// Checked by preflight on Linux hosts.
    pub networks_conf: PathBuf,
    pub proc_modules: PathBuf,
}

impl VirtualBoxOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        VirtualBoxOptions {
            vboxmanage: None,
            cpus: 2,
            memory_mb: 2048,
            image: image::DEFAULT_IMAGE.to_string(),
            cache_dir,
            boot_timeout: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(60),
            networks_conf: PathBuf::from("/etc/vbox/networks.conf"),
            proc_modules: PathBuf::from("/proc/modules"),
        }
    }
}

/// A VM as `showvminfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VmInfo {
    name: String,
    uuid: String,
    state: String,
    cluster: Option<String>,
    description: Option<Description>,
    cfg_file: String,
    console_log: Option<String>,
}

impl VmInfo {
    fn is_running(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "starting" | "paused" | "restoring" | "stuck"
        )
    }

    fn power(&self) -> PowerState {
        match self.state.as_str() {
            "running" => PowerState::Running,
            "poweroff" | "aborted" | "saved" => PowerState::Off,
            _ => PowerState::Pending,
        }
    }

    fn machine(&self) -> Option<Machine> {
        let d = self.description.as_ref()?;
        let addr = IpAddr::V4(d.address);
        Some(Machine {
            name: self.name.clone(),
            role: d.role,
            provider_id: self.uuid.clone(),
            private_addr: addr,
            ssh: SshEndpoint {
                host: addr,
                port: 22,
                user: "root".into(),
            },
            power: self.power(),
        })
    }
}

/// The VirtualBox provider.
pub struct VirtualBoxProvider {
    options: VirtualBoxOptions,
    user_data: Arc<dyn UserData>,
    /// VMs this process made, by cluster: what `rollback_run` removes.
    made: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for VirtualBoxProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualBoxProvider")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where VBoxManage is: the configured path, else PATH (and VirtualBox's macOS folder).
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, ProviderError> {
    if let Some(path) = configured {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(ProviderError::Prerequisite(format!(
                "VBoxManage not found at {} (SWARMUP_VBOXMANAGE): {INSTALL_HINT}, or point SWARMUP_VBOXMANAGE at VBoxManage",
                path.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(PROGRAM))
        .chain([PathBuf::from(
            "/Applications/VirtualBox.app/Contents/MacOS/VBoxManage",
        )])
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            ProviderError::Prerequisite(format!(
                "VBoxManage not found on PATH: {INSTALL_HINT}, or set SWARMUP_VBOXMANAGE to its path"
            ))
        })
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ProviderError {
    move |source| ProviderError::Io { what, source }
}

fn network_not_allowed(conf: &Path) -> ProviderError {
    ProviderError::Prerequisite(format!(
        "VirtualBox does not allow the host-only network 192.168.56.0/24 (E_ACCESSDENIED): add the line `* 192.168.56.0/21` to {}, then try again",
        conf.display()
    ))
}

impl VirtualBoxProvider {
    pub fn new(options: VirtualBoxOptions, user_data: Arc<dyn UserData>) -> Self {
        VirtualBoxProvider {
            options,
            user_data,
            made: Mutex::new(Vec::new()),
        }
    }

    pub fn options(&self) -> &VirtualBoxOptions {
        &self.options
    }

    fn vbox(&self) -> Result<Vbox, ProviderError> {
        let program = locate(self.options.vboxmanage.as_deref())?;
        Ok(Vbox::new(Arc::new(ProcessVBoxManage::new(program))))
    }

    fn validate(&self, plan: &ClusterPlan) -> Result<ImageChoice, ProviderError> {
        crate::lab::naming::validate_cluster(&plan.cluster)?;
        for m in &plan.machines {
            crate::lab::naming::validate_machine(&m.name)?;
        }
        if self.options.cpus == 0 || self.options.cpus > 64 {
            return Err(ProviderError::InvalidRequest(format!(
                "--cpus {} is out of range: give 1 to 64",
                self.options.cpus
            )));
        }
        if self.options.memory_mb < 1024 {
            return Err(ProviderError::InvalidRequest(format!(
                "--memory {} is too small: Docker on Ubuntu needs at least 1024 MB",
                self.options.memory_mb
            )));
        }
        if plan.machines.len() > usize::from(plan::LAST_HOST - plan::FIRST_HOST) + 1 {
            return Err(ProviderError::InvalidRequest(format!(
                "a VirtualBox host-only network holds at most {} swarmup VMs",
                plan::LAST_HOST - plan::FIRST_HOST + 1
            )));
        }
        ImageChoice::parse(&self.options.image)
    }

    /// Every registered VM with what swarmup reads of it.
    async fn vms(&self, vbox: &Vbox) -> Result<Vec<VmInfo>, ProviderError> {
        let listed = parse::list_vms(&vbox.call(&["list", "vms"]).await?);
        let mut out = Vec::new();
        for vm in listed {
            match self.vm_info(vbox, &vm.uuid).await {
                Ok(info) => out.push(info),
                // Unregistered since the list: not there.
                Err(e) if e.kind() == Some(FailureKind::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn vm_info(&self, vbox: &Vbox, vm: &str) -> Result<VmInfo, VboxError> {
        let m = parse::machinereadable(&vbox.call(&["showvminfo", vm, "--machinereadable"]).await?);
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        Ok(VmInfo {
            name: get("name"),
            uuid: get("UUID"),
            state: get("VMState"),
            cluster: plan::cluster_of_groups(&get("groups")),
            description: Description::parse(&get("description")),
            cfg_file: get("CfgFile"),
            console_log: m
                .get("uartmode1")
                .and_then(|v| v.strip_prefix("file,"))
                .map(str::to_string),
        })
    }

    async fn cluster_vms(&self, vbox: &Vbox, cluster: &str) -> Result<Vec<VmInfo>, ProviderError> {
        let mut vms: Vec<VmInfo> = self
            .vms(vbox)
            .await?
            .into_iter()
            .filter(|v| v.cluster.as_deref() == Some(cluster))
            .collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    /// The host-only adapter on 192.168.56.0/24: an existing one, or a new one (then also
    /// returned as made, for a rollback).
    async fn ensure_adapter(&self, vbox: &Vbox) -> Result<(String, bool), ProviderError> {
        let ifs = parse::hostonlyifs(&vbox.call(&["list", "hostonlyifs"]).await?);
        if let Some(name) = plan::choose_adapter(&ifs) {
            return Ok((name, false));
        }
        let out = vbox.call(&["hostonlyif", "create"]).await?;
        let name = parse::created_interface(&out).ok_or_else(|| {
            ProviderError::Api(format!(
                "VBoxManage hostonlyif create did not name the adapter it made: {}",
                out.trim()
            ))
        })?;
        let host = plan::HOST_ONLY_HOST.to_string();
        if let Err(e) = vbox
            .call(&[
                "hostonlyif",
                "ipconfig",
                &name,
                "--ip",
                &host,
                "--netmask",
                plan::HOST_ONLY_NETMASK,
            ])
            .await
        {
            let _ = vbox.call(&["hostonlyif", "remove", &name]).await;
            if e.kind() == Some(FailureKind::NetworkNotAllowed) {
                return Err(network_not_allowed(&self.options.networks_conf));
            }
            return Err(e.into());
        }
        Ok((name, true))
    }

    /// The image's base disk, made once per image version.
    async fn ensure_base(
        &self,
        vbox: &Vbox,
        source: &image::SourceDisk,
    ) -> Result<PathBuf, ProviderError> {
        let base = self
            .options
            .cache_dir
            .join(format!("base-{}.vdi", source.key));
        let done = base.with_extension("vdi.ready");
        if tokio::fs::try_exists(&done).await.unwrap_or(false) {
            return Ok(base);
        }
        let base_text = base.to_string_lossy().into_owned();
        if tokio::fs::try_exists(&base).await.unwrap_or(false) {
            // Left by a run that stopped halfway: start again.
            let _ = vbox
                .call(&["closemedium", "disk", &base_text, "--delete"])
                .await;
            let _ = tokio::fs::remove_file(&base).await;
        }
        let source_text = source.disk.to_string_lossy().into_owned();
        for cmd in plan::base_disk_plan(&source_text, &base_text) {
            if let Err(e) = vbox.call(&cmd).await {
                let _ = vbox
                    .call(&["closemedium", "disk", &base_text, "--delete"])
                    .await;
                let _ = tokio::fs::remove_file(&base).await;
                return Err(e.into());
            }
        }
        tokio::fs::write(&done, format!("{}\n", source.disk.display()))
            .await
            .map_err(io_err(format!("cannot write {}", done.display())))?;
        Ok(base)
    }

    /// Makes one VM, complete or not at all.
    async fn make_vm(
        &self,
        vbox: &Vbox,
        plan: &ClusterPlan,
        machine: &MachinePlan,
        address: Ipv4Addr,
        adapter: &str,
        base: &Path,
    ) -> Result<(), ProviderError> {
        let out = vbox
            .call(&plan::createvm(&machine.name, &plan.cluster))
            .await?;
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((plan.cluster.clone(), machine.name.clone()));
        let result = async {
            let cfg = parse::settings_file(&out).ok_or_else(|| {
                ProviderError::Api(format!(
                    "VBoxManage createvm did not say where {} lives: {}",
                    machine.name,
                    out.trim()
                ))
            })?;
            let vm_dir = Path::new(&cfg)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spec = VmSpec {
                name: machine.name.clone(),
                cpus: self.options.cpus,
                memory_mb: self.options.memory_mb,
                mac_nat: plan::mac_for(&plan.cluster, &machine.name, 1),
                mac_host_only: plan::mac_for(&plan.cluster, &machine.name, 2),
                adapter: adapter.to_string(),
                vm_dir,
                base_disk: base.to_string_lossy().into_owned(),
                description: Description {
                    cluster: plan.cluster.clone(),
                    role: machine.role,
                    address,
                },
            };
            let user_data = self.user_data.render(plan, std::slice::from_ref(machine))?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let meta = seed::meta_data(&machine.name, &format!("swarmup-{}-{nanos}", machine.name));
            let net = seed::network_config(&spec.mac_nat, &spec.mac_host_only, address);
            let iso = seed::seed_iso(&user_data, &meta, &net);
            tokio::fs::write(spec.seed_iso(), iso)
                .await
                .map_err(io_err(format!("cannot write {}", spec.seed_iso())))?;
            for cmd in plan::configure_plan(&spec) {
                vbox.call(&cmd).await?;
            }
            Ok::<_, ProviderError>(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.delete_vm(vbox, &machine.name).await;
            return Err(e);
        }
        Ok(())
    }

    /// Powers a VM off hard and removes it with its disks and folder.
    async fn delete_vm(&self, vbox: &Vbox, name: &str) -> Result<bool, ProviderError> {
        let info = match self.vm_info(vbox, name).await {
            Ok(i) => i,
            Err(e) if e.kind() == Some(FailureKind::NotFound) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if info.is_running() {
            match vbox.call(&["controlvm", name, "poweroff"]).await {
                Ok(_) => {}
                Err(e) if e.kind() == Some(FailureKind::InvalidState) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The session of a VM just powered off may still be closing.
        let mut attempt = 0;
        loop {
            match vbox.call(&["unregistervm", name, "--delete"]).await {
                Ok(_) => break,
                Err(e) if e.kind() == Some(FailureKind::NotFound) => break,
                Err(e) if e.kind() == Some(FailureKind::InvalidState) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // `--delete` takes the disks and settings; the seed and console log are ours.
        if let Some(dir) = Path::new(&info.cfg_file).parent() {
            if dir.file_name().is_some_and(|n| n == name) {
                match tokio::fs::remove_dir_all(dir).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("cannot remove {}", dir.display()))(e)),
                }
            }
        }
        Ok(true)
    }

    async fn read_console(&self, vm: &VmInfo) -> String {
        let Some(path) = &vm.console_log else {
            return "no serial console configured".into();
        };
        match tokio::fs::read_to_string(path).await {
            Ok(text) if !text.trim().is_empty() => {
                format!("last lines of {path}: {}", plan::log_tail(&text, 5))
            }
            Ok(_) => format!("{path} is empty"),
            Err(e) => format!("cannot read {path}: {e}"),
        }
    }

    /// Waits until a started VM answers SSH on its static address.
    async fn wait_boot(
        &self,
        vbox: &Vbox,
        name: &str,
        address: Ipv4Addr,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let ssh = SocketAddr::new(IpAddr::V4(address), 22);
        let started = Instant::now();
        let deadline = started + self.options.boot_timeout;
        let mut next_check = started;
        loop {
            if RealSystem.ssh_answers(ssh).await {
                progress.machine(
                    name,
                    &format!("ssh answering in {:.1} s", started.elapsed().as_secs_f64()),
                );
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_check || now >= deadline {
                next_check = now + Duration::from_secs(2);
                let info = self.vm_info(vbox, name).await?;
                if !info.is_running() {
                    return Err(ProviderError::Api(format!(
                        "VM {name} stopped while booting (VMState {}); {}",
                        info.state,
                        self.read_console(&info).await
                    )));
                }
                if now >= deadline {
                    return Err(ProviderError::Api(format!(
                        "VM {name} did not boot within {} s (no SSH on {ssh}); {}",
                        self.options.boot_timeout.as_secs(),
                        self.read_console(&info).await
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn start_and_wait(
        &self,
        vbox: &Vbox,
        name: &str,
        address: Ipv4Addr,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        vbox.call(&plan::startvm(name)).await?;
        progress.machine(name, "booting");
        self.wait_boot(vbox, name, address, progress).await
    }

    async fn create_in(
        &self,
        vbox: &Vbox,
        plan: &ClusterPlan,
        adapter: &str,
        base: &Path,
        made_now: &Mutex<Vec<String>>,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let all = self.vms(vbox).await?;
        let mut used: BTreeSet<Ipv4Addr> = all
            .iter()
            .filter_map(|v| v.description.as_ref().map(|d| d.address))
            .collect();
        used.insert(plan::HOST_ONLY_HOST);
        let mut complete = BTreeSet::new();
        for vm in all
            .iter()
            .filter(|v| v.cluster.as_deref() == Some(&plan.cluster))
        {
            if vm.description.is_some() {
                complete.insert(vm.name.clone());
            } else {
                // A VM a stopped run left unfinished: made again below.
                progress.machine(&vm.name, "removing an unfinished VM");
                self.delete_vm(vbox, &vm.name).await?;
            }
        }
        let missing: Vec<&MachinePlan> = plan
            .machines
            .iter()
            .filter(|m| !complete.contains(&m.name))
            .collect();
        if let Some(vm) = all.iter().find(|v| {
            missing.iter().any(|m| m.name == v.name) && v.cluster.as_deref() != Some(&plan.cluster)
        }) {
            return Err(ProviderError::InvalidRequest(format!(
                "a VirtualBox VM named {} already exists outside cluster {}: rename or remove it, or choose another cluster name",
                vm.name, plan.cluster
            )));
        }
        let addresses = plan::pick_addresses(&used, missing.len()).ok_or_else(|| {
            ProviderError::InvalidRequest(format!(
                "no free address left on the host-only network for {} more VMs",
                missing.len()
            ))
        })?;
        for (m, address) in missing.iter().zip(&addresses) {
            made_now
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(m.name.clone());
            self.make_vm(vbox, plan, m, *address, adapter, base).await?;
            progress.machine(&m.name, &format!("VM made ({address})"));
        }
        // Start whatever of the plan is not running, all at once.
        let vms = self.cluster_vms(vbox, &plan.cluster).await?;
        let to_start: Vec<(String, Ipv4Addr)> = vms
            .iter()
            .filter(|v| plan.machines.iter().any(|m| m.name == v.name))
            .filter(|v| !v.is_running())
            .filter_map(|v| Some((v.name.clone(), v.description.as_ref()?.address)))
            .collect();
        let results = join_all(
            to_start
                .iter()
                .map(|(name, addr)| self.start_and_wait(vbox, name, *addr, progress)),
        )
        .await;
        // The first failure, in plan order, is the one to tell.
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provider for VirtualBoxProvider {
    fn name(&self) -> &'static str {
        "virtualbox"
    }

    async fn preflight(&self, plan: &ClusterPlan) -> Result<(), ProviderError> {
        let image = self.validate(plan)?;
        let vbox = self.vbox()?;
        let version_text = vbox.call(&["--version"]).await?;
        let version = parse::version(&version_text).ok_or_else(|| {
            ProviderError::Prerequisite(format!(
                "cannot read VirtualBox's version from `{} --version`: {}",
                vbox.program().display(),
                version_text.trim()
            ))
        })?;
        if !plan::version_ok(version) {
            return Err(ProviderError::Prerequisite(format!(
                "VirtualBox {}.{}.{} is too old: swarmup needs {}.{} or later; {INSTALL_HINT}",
                version.0,
                version.1,
                version.2,
                plan::MIN_VERSION.0,
                plan::MIN_VERSION.1
            )));
        }
        let host = parse::hostinfo(&vbox.call(&["list", "hostinfo"]).await?);
        if host.hw_virtualization == Some(false) {
            return Err(ProviderError::Prerequisite(vbox::MSG_VTX_DISABLED.into()));
        }
        if host.os.eq_ignore_ascii_case("linux") {
            if let Ok(modules) = tokio::fs::read_to_string(&self.options.proc_modules).await {
                if plan::kvm_holds_vtx(&modules, &host.os_version) {
                    return Err(ProviderError::Prerequisite(vbox::MSG_VTX_IN_USE.into()));
                }
            }
            let conf = tokio::fs::read_to_string(&self.options.networks_conf)
                .await
                .ok();
            if !plan::networks_conf_allows(conf.as_deref()) {
                return Err(network_not_allowed(&self.options.networks_conf));
            }
        }
        // Downloaded and checked before anything is made.
        image::ensure(&image, &self.options.cache_dir).await?;
        Ok(())
    }

    async fn create(
        &self,
        plan: &ClusterPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        let image = self.validate(plan)?;
        let vbox = self.vbox()?;
        let source = image::ensure(&image, &self.options.cache_dir).await?;
        let base = self.ensure_base(&vbox, &source).await?;
        let (adapter, new_adapter) = self.ensure_adapter(&vbox).await?;
        let made_now = Mutex::new(Vec::new());
        let result = self
            .create_in(&vbox, plan, &adapter, &base, &made_now, progress)
            .await;
        if let Err(e) = result {
            // Never half-made: what this call made goes again.
            let made: Vec<String> = made_now.into_inner().unwrap_or_else(|e| e.into_inner());
            let mut left = Vec::new();
            for name in &made {
                if let Err(de) = self.delete_vm(&vbox, name).await {
                    left.push(format!("{name} ({de})"));
                }
            }
            if new_adapter {
                let _ = vbox.call(&["hostonlyif", "remove", &adapter]).await;
            }
            if !left.is_empty() {
                return Err(ProviderError::Api(format!(
                    "{e}; removing the VMs this run made failed too: {}",
                    left.join(", ")
                )));
            }
            return Err(e);
        }
        self.list(&plan.cluster).await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, ProviderError> {
        let vbox = self.vbox()?;
        Ok(self
            .cluster_vms(&vbox, cluster)
            .await?
            .iter()
            .filter_map(VmInfo::machine)
            .collect())
    }

    async fn clusters(&self) -> Result<Vec<String>, ProviderError> {
        let vbox = self.vbox()?;
        let set: BTreeSet<String> = self
            .vms(&vbox)
            .await?
            .into_iter()
            .filter_map(|v| v.cluster)
            .collect();
        Ok(set.into_iter().collect())
    }

    async fn destroy(&self, cluster: &str) -> Result<DestroyReport, ProviderError> {
        let vbox = self.vbox()?;
        let mut report = DestroyReport::default();
        for vm in self.cluster_vms(&vbox, cluster).await? {
            if self.delete_vm(&vbox, &vm.name).await? {
                let addr = vm
                    .description
                    .as_ref()
                    .map(|d| format!(" ({})", d.address))
                    .unwrap_or_default();
                report.removed.push(format!("VM {}{addr}", vm.name));
            }
        }
        Ok(report)
    }

    async fn power_off(&self, cluster: &str, machine: &str) -> Result<(), ProviderError> {
        let vbox = self.vbox()?;
        let vm = self.find(&vbox, cluster, machine).await?;
        if !vm.is_running() {
            return Ok(());
        }
        // A clean shutdown first, as the power button does; then the plug.
        match vbox.call(&["controlvm", machine, "acpipowerbutton"]).await {
            Ok(_) => {}
            Err(e) if e.kind() == Some(FailureKind::InvalidState) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let deadline = Instant::now() + self.options.stop_timeout;
        while Instant::now() < deadline {
            if !self.vm_info(&vbox, machine).await?.is_running() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match vbox.call(&["controlvm", machine, "poweroff"]).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == Some(FailureKind::InvalidState) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn power_on(&self, cluster: &str, machine: &str) -> Result<Machine, ProviderError> {
        let vbox = self.vbox()?;
        let vm = self.find(&vbox, cluster, machine).await?;
        let address = vm.description.as_ref().map(|d| d.address).ok_or_else(|| {
            ProviderError::Api(format!(
                "VM {machine} was never finished: run the same create again"
            ))
        })?;
        if !vm.is_running() {
            self.start_and_wait(&vbox, machine, address, &crate::NoProgress)
                .await?;
        }
        self.vm_info(&vbox, machine)
            .await?
            .machine()
            .ok_or_else(|| ProviderError::Api(format!("VM {machine} lost its description")))
    }

    async fn dry_run(&self, plan: &ClusterPlan) -> Result<DryRun, ProviderError> {
        let image = self.validate(plan)?;
        let mut dry = DryRun::plain("VirtualBox", plan);
        dry.columns = vec!["CPUS".into(), "MEMORY".into()];
        for m in &mut dry.machines {
            m.cells = vec![
                self.options.cpus.to_string(),
                format!("{} MB", self.options.memory_mb),
            ];
            m.json
                .insert("cpus".into(), serde_json::json!(self.options.cpus));
            m.json.insert(
                "memory_mb".into(),
                serde_json::json!(self.options.memory_mb),
            );
        }
        dry.details = vec![
            ("image".into(), image.describe()),
            (
                "network".into(),
                "NIC1 NAT, NIC2 host-only 192.168.56.0/24 (static .10-.99)".into(),
            ),
        ];
        Ok(dry)
    }

    async fn rollback_run(
        &self,
        cluster: &str,
        new_cluster: bool,
    ) -> Result<DestroyReport, ProviderError> {
        if new_cluster {
            return self.destroy(cluster).await;
        }
        let vbox = self.vbox()?;
        let made: Vec<String> = self
            .made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(c, _)| c == cluster)
            .map(|(_, n)| n.clone())
            .collect();
        let mut report = DestroyReport::default();
        for name in made {
            if self.delete_vm(&vbox, &name).await? {
                report.removed.push(format!("VM {name}"));
            }
        }
        Ok(report)
    }
}

impl VirtualBoxProvider {
    async fn find(
        &self,
        vbox: &Vbox,
        cluster: &str,
        machine: &str,
    ) -> Result<VmInfo, ProviderError> {
        self.cluster_vms(vbox, cluster)
            .await?
            .into_iter()
            .find(|v| v.name == machine)
            .ok_or_else(|| ProviderError::UnknownMachine {
                cluster: cluster.to_string(),
                machine: machine.to_string(),
            })
    }
}
