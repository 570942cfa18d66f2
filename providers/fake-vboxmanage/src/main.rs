//! `fake-vboxmanage`: a stand-in for VirtualBox's VBoxManage, for rehearsals and tests of
//! swarmup's VirtualBox provider on a host without VirtualBox (point SWARMUP_VBOXMANAGE at
//! it).
//!
//! It keeps VMs, host-only adapters and media in `SWARMUP_FAKE_VBOX_HOME` (state.json
//! behind a lock file), writes real VM folders, settings files, differencing disks and
//! logs under `HOME/VirtualBox VMs`, prints what VBoxManage prints for the subcommands
//! swarmup uses, with VirtualBox's error texts, and refuses anything else loudly. Every
//! started VM is a lab node on this host configured from its seed ISO (see `guest`).
//!
//! Environment:
//! - `SWARMUP_FAKE_VBOX_HOME` (required): the state directory.
//! - `SWARMUP_FAKE_VBOX_VERSION`: what `--version` prints (default 7.0.20r163906).
//! - `SWARMUP_FAKE_VBOX_FAULTS`: comma-separated faults: `vtx-disabled` (hostinfo says no,
//!   startvm fails), `kvm` (startvm fails with VERR_VMX_IN_VMX_ROOT_MODE), `not-ready=N`
//!   (the first N VM changes say "The object is not ready"), `error-exit-0` (the first
//!   storagectl prints an error but exits 0), `boot-abort` (guests die while booting).
//! - `SWARMUP_FAKE_VBOX_NETWORKS_CONF`: a file standing for /etc/vbox/networks.conf.
//! - `SWARMUP_FAKE_VBOX_LAB_ROOT`, `SWARMUP_FAKE_VBOX_NODE_INIT`, `SWARMUP_FAKE_VBOX_LAB_OFFLINE`:
//!   the lab behind the guests (see `guest::lab_config`).

mod guest;
mod state;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use state::{Attachment, HostOnlyIf, Locked, Medium, Nic, State, Vm};

const PROGRESS: &str = "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%";

/// A VBoxManage failure: the lines after `VBoxManage: error: `, and the exit status.
#[derive(Debug)]
struct Fail {
    lines: Vec<String>,
    status: u8,
}

fn fail(lines: &[&str]) -> Fail {
    Fail {
        lines: lines.iter().map(|s| s.to_string()).collect(),
        status: 1,
    }
}

fn syntax(text: &str) -> Fail {
    Fail {
        lines: vec![text.to_string()],
        status: 2,
    }
}

fn not_found(vm: &str, file: &str) -> Fail {
    fail(&[
        &format!("Could not find a registered machine named '{vm}'"),
        "Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface IVirtualBox, callee nsISupports",
        &format!("Context: \"FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())\" at line 2920 of file {file}"),
    ])
}

fn locked(vm: &str) -> Fail {
    fail(&[
        &format!("The machine '{vm}' is already locked by a session (or being locked or unlocked)"),
        "Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine, callee nsISupports",
    ])
}

fn io_fail(what: &str, e: impl std::fmt::Display) -> Fail {
    fail(&[&format!("{what}: {e}")])
}

type Out = Result<String, Fail>;

struct Ctx {
    home: PathBuf,
    faults: Vec<String>,
}

impl Ctx {
    fn fault(&self, name: &str) -> bool {
        self.faults.iter().any(|f| f == name)
    }
    fn not_ready_budget(&self) -> u32 {
        self.faults
            .iter()
            .find_map(|f| f.strip_prefix("not-ready=")?.parse().ok())
            .unwrap_or(0)
    }
    fn lock(&self) -> Result<Locked, Fail> {
        Locked::open(&self.home).map_err(|e| io_fail("cannot open the fake's state", e))
    }
    fn vms_dir(&self) -> PathBuf {
        self.home.join("VirtualBox VMs")
    }
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{:032x}", std::process::id()))
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{secs}")
}

/// `--flag value` pairs and bare words after the subcommand's fixed arguments.
fn opt<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Spends one "object is not ready" if the fault has some left.
fn not_ready(ctx: &Ctx, st: &mut Locked) -> Result<(), Fail> {
    if st.state.not_ready_served < ctx.not_ready_budget() {
        st.state.not_ready_served += 1;
        st.save().map_err(|e| io_fail("cannot save", e))?;
        return Err(fail(&[
            "The object is not ready",
            "Details: code E_ACCESSDENIED (0x80070005), component SessionMachine, interface IMachine, callee nsISupports",
        ]));
    }
    Ok(())
}

fn list(ctx: &Ctx, args: &[String]) -> Out {
    let what = args.first().map(String::as_str).unwrap_or("");
    let st = ctx.lock()?;
    let mut out = String::new();
    match what {
        "vms" | "runningvms" => {
            for vm in &st.state.vms {
                if what == "vms" || vm.state == "running" {
                    out.push_str(&format!("\"{}\" {{{}}}\n", vm.name, vm.uuid));
                }
            }
        }
        "hostonlyifs" => {
            for (i, h) in st.state.hostonlyifs.iter().enumerate() {
                out.push_str(&format!(
                    "Name:            {}\nGUID:            786f6276-656e-{i:04x}-8000-0a0027000000\nDHCP:            Disabled\nIPAddress:       {}\nNetworkMask:     {}\nIPV6Address:     fe80::800:27ff:fe00:{i:x}\nIPV6NetworkMaskPrefixLength: 64\nHardwareAddress: 0a:00:27:00:00:{i:02x}\nMediumType:      Ethernet\nWireless:        No\nStatus:          Up\nVBoxNetworkName: HostInterfaceNetworking-{}\n\n",
                    h.name, h.ip, h.mask, h.name
                ));
            }
        }
        "hostinfo" => {
            let hw = if ctx.fault("vtx-disabled") {
                "no"
            } else {
                "yes"
            };
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "6.1.0".into());
            out.push_str(&format!(
                "Host Information:\n\nHost time: {}\nProcessor online count: 2\nProcessor count: 2\nProcessor online core count: 2\nProcessor core count: 2\nProcessor supports HW virtualization: {hw}\nProcessor supports PAE: yes\nProcessor supports long mode: yes\nProcessor supports nested paging: yes\nProcessor supports unrestricted guest: yes\nProcessor supports nested HW virtualization: yes\nProcessor#0 speed: 2400 MHz\nMemory size: 7936 MByte\nMemory available: 4096 MByte\nOperating system: Linux\nOperating system version: {kernel}\n",
                now()
            ));
        }
        _ => return Err(syntax(&format!("Invalid parameter '{what}'"))),
    }
    Ok(out)
}

fn showvminfo(ctx: &Ctx, args: &[String]) -> Out {
    let name = args.first().ok_or_else(|| syntax("Missing VM name"))?;
    if !args.iter().any(|a| a == "--machinereadable") {
        return Err(syntax(
            "fake-vboxmanage prints showvminfo only with --machinereadable",
        ));
    }
    let st = ctx.lock()?;
    let vm = st
        .state
        .vm(name)
        .ok_or_else(|| not_found(name, "VBoxManageInfo.cpp"))?;
    let dir = vm.dir();
    let mut lines = vec![
        format!("name={}", quote(&vm.name)),
        format!("groups={}", quote(&vm.groups.join(","))),
        format!("ostype={}", quote("Ubuntu (64-bit)")),
        format!("UUID={}", quote(&vm.uuid)),
        format!("CfgFile={}", quote(&vm.cfg_file)),
        format!(
            "SnapFldr={}",
            quote(&dir.join("Snapshots").to_string_lossy())
        ),
        format!("LogFldr={}", quote(&dir.join("Logs").to_string_lossy())),
        format!("memory={}", vm.memory),
        format!("cpus={}", vm.cpus),
    ];
    for (k, v) in &vm.settings {
        lines.push(format!("{k}={}", quote(v)));
    }
    lines.push(format!("VMState={}", quote(&vm.state)));
    lines.push(format!("VMStateChangeTime={}", quote(&vm.state_change)));
    for (i, (ctl, kind)) in vm.controllers.iter().enumerate() {
        lines.push(format!("storagecontrollername{i}={}", quote(ctl)));
        lines.push(format!("storagecontrollertype{i}={}", quote(kind)));
    }
    for a in &vm.attachments {
        let key = format!("{}-{}-{}", a.controller, a.port, a.device);
        let shown = a.diff.as_deref().unwrap_or(&a.medium);
        lines.push(format!("{}={}", quote(&key), quote(shown)));
        lines.push(format!(
            "{}={}",
            quote(&format!(
                "{}-ImageUUID-{}-{}",
                a.controller, a.port, a.device
            )),
            quote(&a.uuid)
        ));
    }
    for n in 1..=8u8 {
        match vm.nics.get(&n) {
            Some(nic) => {
                lines.push(format!("nic{n}={}", quote(&nic.kind)));
                if nic.kind == "hostonly" {
                    lines.push(format!("hostonlyadapter{n}={}", quote(&nic.adapter)));
                }
                lines.push(format!("macaddress{n}={}", quote(&nic.mac)));
                lines.push(format!("cableconnected{n}={}", quote(&nic.cable)));
                lines.push(format!("nictype{n}={}", quote(&nic.nictype)));
            }
            None => lines.push(format!("nic{n}={}", quote("none"))),
        }
    }
    match (&vm.uart, &vm.uart_file) {
        (Some(u), Some(f)) => {
            lines.push(format!("uart1={}", quote(u)));
            lines.push(format!("uartmode1={}", quote(&format!("file,{f}"))));
        }
        _ => lines.push(format!("uart1={}", quote("off"))),
    }
    if !vm.description.is_empty() {
        lines.push(format!("description={}", quote(&vm.description)));
    }
    Ok(lines.join("\n") + "\n")
}

fn write_settings(vm: &Vm) -> Result<(), Fail> {
    let text = format!(
        "<?xml version=\"1.0\"?>\n<!-- fake-vboxmanage settings of {} -->\n<VirtualBox><Machine uuid=\"{{{}}}\" name=\"{}\"/></VirtualBox>\n",
        vm.name, vm.uuid, vm.name
    );
    std::fs::write(&vm.cfg_file, text).map_err(|e| io_fail("cannot write settings", e))
}

fn createvm(ctx: &Ctx, args: &[String]) -> Out {
    let name = opt(args, "--name").ok_or_else(|| syntax("Parameter --name is required"))?;
    if !args.iter().any(|a| a == "--register") {
        return Err(syntax(
            "fake-vboxmanage creates registered VMs only (--register)",
        ));
    }
    let groups: Vec<String> = opt(args, "--groups")
        .map(|g| g.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| vec!["/".into()]);
    let base = opt(args, "--basefolder")
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.vms_dir().join(groups[0].trim_start_matches('/')));
    let dir = base.join(name);
    let cfg = dir.join(format!("{name}.vbox"));
    let mut st = ctx.lock()?;
    if st.state.vm(name).is_some() || cfg.exists() {
        return Err(fail(&[
            &format!("Machine settings file '{}' already exists", cfg.display()),
            "Details: code VBOX_E_FILE_ERROR (0x80bb0004), component MachineWrap, interface IMachine, callee nsISupports",
        ]));
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_fail("cannot create the VM folder", e))?;
    let vm = Vm {
        name: name.to_string(),
        uuid: uuid(),
        groups,
        ostype: opt(args, "--ostype").unwrap_or("Other").to_string(),
        cfg_file: cfg.to_string_lossy().into_owned(),
        description: String::new(),
        cpus: 1,
        memory: 128,
        state: "poweroff".into(),
        state_change: now(),
        settings: Default::default(),
        nics: [(
            1u8,
            Nic {
                kind: "nat".into(),
                nictype: "82540EM".into(),
                mac: "080027000000".into(),
                adapter: String::new(),
                cable: "on".into(),
            },
        )]
        .into(),
        uart_file: None,
        uart: None,
        controllers: Vec::new(),
        attachments: Vec::new(),
        lab_node: None,
    };
    write_settings(&vm)?;
    let out = format!(
        "Virtual machine '{name}' is created and registered.\nUUID: {}\nSettings file: '{}'\n",
        vm.uuid, vm.cfg_file
    );
    st.state.vms.push(vm);
    st.save().map_err(|e| io_fail("cannot save", e))?;
    Ok(out)
}

fn modifyvm(ctx: &Ctx, args: &[String]) -> Out {
    let name = args.first().ok_or_else(|| syntax("Missing VM name"))?;
    let mut st = ctx.lock()?;
    not_ready(ctx, &mut st)?;
    let vm = st
        .state
        .vm_mut(name)
        .ok_or_else(|| not_found(name, "VBoxManageModifyVM.cpp"))?;
    // A running VM takes only a new description.
    if vm.state == "running" && !(args.len() == 3 && args[1] == "--description") {
        return Err(locked(name));
    }
    let mut i = 1;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = |k: usize| {
            args.get(i + k)
                .cloned()
                .ok_or_else(|| syntax(&format!("Missing argument to '{flag}'")))
        };
        let nic_no = |prefix: &str| -> Option<u8> { flag.strip_prefix(prefix)?.parse().ok() };
        if flag == "--cpus" {
            vm.cpus = value(1)?.parse().map_err(|_| syntax("Invalid --cpus"))?;
        } else if flag == "--memory" {
            vm.memory = value(1)?.parse().map_err(|_| syntax("Invalid --memory"))?;
        } else if flag == "--description" {
            vm.description = value(1)?;
        } else if flag == "--uart1" {
            vm.uart = Some(format!("{},{}", value(1)?.to_lowercase(), value(2)?));
            i += 1;
        } else if flag == "--uartmode1" {
            let mode = value(1)?;
            if mode != "file" {
                return Err(syntax(
                    "fake-vboxmanage supports --uartmode1 file PATH only",
                ));
            }
            vm.uart_file = Some(value(2)?);
            i += 1;
        } else if let Some(n) = nic_no("--nictype") {
            vm.nics.entry(n).or_default().nictype = value(1)?;
        } else if let Some(n) = nic_no("--nic") {
            vm.nics.entry(n).or_default().kind = value(1)?;
        } else if let Some(n) = nic_no("--macaddress") {
            vm.nics.entry(n).or_default().mac = value(1)?.to_uppercase();
        } else if let Some(n) = nic_no("--hostonlyadapter") {
            let adapter = value(1)?;
            if !st_has_adapter(&ctx.home, &adapter) {
                return Err(fail(&[&format!(
                    "Host-only adapter '{adapter}' does not exist"
                )]));
            }
            vm.nics.entry(n).or_default().adapter = adapter;
        } else if let Some(n) = nic_no("--cableconnected") {
            vm.nics.entry(n).or_default().cable = value(1)?;
        } else if [
            "--ioapic",
            "--rtcuseutc",
            "--boot1",
            "--boot2",
            "--boot3",
            "--boot4",
            "--firmware",
            "--acpi",
        ]
        .contains(&flag)
        {
            vm.settings
                .insert(flag.trim_start_matches("--").to_string(), value(1)?);
        } else {
            return Err(syntax(&format!(
                "fake-vboxmanage does not know modifyvm option '{flag}'"
            )));
        }
        i += 2;
    }
    st.save().map_err(|e| io_fail("cannot save", e))?;
    Ok(String::new())
}

/// The adapter list is read from the same state file (already locked by the caller, so
/// read the file without locking again).
fn st_has_adapter(home: &Path, adapter: &str) -> bool {
    std::fs::read(home.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .is_some_and(|s| s.hostonlyifs.iter().any(|h| h.name == adapter))
}

fn storagectl(ctx: &Ctx, args: &[String]) -> Out {
    let name = args.first().ok_or_else(|| syntax("Missing VM name"))?;
    let mut st = ctx.lock()?;
    not_ready(ctx, &mut st)?;
    if ctx.fault("error-exit-0") && !st.state.error_exit0_served {
        st.state.error_exit0_served = true;
        st.save().map_err(|e| io_fail("cannot save", e))?;
        // VBoxManage sometimes reports a failure on stderr and still exits 0.
        eprintln!("VBoxManage: error: Storage controller named 'SATA' could not be added (VERR_NO_MEMORY)");
        eprintln!("VBoxManage: error: Details: code NS_ERROR_FAILURE (0x80004005), component StorageControllerWrap, interface IStorageController");
        return Ok(String::new());
    }
    let vm = st
        .state
        .vm_mut(name)
        .ok_or_else(|| not_found(name, "VBoxManageStorageController.cpp"))?;
    let ctl = opt(args, "--name").ok_or_else(|| syntax("Parameter --name is required"))?;
    let kind = opt(args, "--controller").unwrap_or("IntelAhci");
    if vm.controllers.iter().any(|(c, _)| c == ctl) {
        return Err(fail(&[&format!(
            "Storage controller named '{ctl}' already exists"
        )]));
    }
    vm.controllers.push((ctl.to_string(), kind.to_string()));
    st.save().map_err(|e| io_fail("cannot save", e))?;
    Ok(String::new())
}

fn file_missing(path: &str) -> Fail {
    fail(&[
        &format!("Could not find file for the medium '{path}' (VERR_FILE_NOT_FOUND)"),
        "Details: code VBOX_E_FILE_ERROR (0x80bb0004), component MediumWrap, interface IMedium, callee nsISupports",
    ])
}

fn storageattach(ctx: &Ctx, args: &[String]) -> Out {
    let name = args.first().ok_or_else(|| syntax("Missing VM name"))?;
    let mut st = ctx.lock()?;
    not_ready(ctx, &mut st)?;
    let ctl =
        opt(args, "--storagectl").ok_or_else(|| syntax("Parameter --storagectl is required"))?;
    let port: u32 = opt(args, "--port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let device: u32 = opt(args, "--device")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let kind = opt(args, "--type").ok_or_else(|| syntax("Parameter --type is required"))?;
    let medium = opt(args, "--medium").ok_or_else(|| syntax("Parameter --medium is required"))?;
    let mtype = opt(args, "--mtype");
    if !Path::new(medium).is_file() {
        return Err(file_missing(medium));
    }
    if kind == "hdd" && mtype == Some("multiattach") {
        let registered = st.state.medium_mut(medium);
        match registered {
            Some(m) => m.kind = "multiattach".into(),
            None => st.state.media.push(Medium {
                uuid: uuid(),
                path: medium.to_string(),
                kind: "multiattach".into(),
                size_mb: 0,
            }),
        }
    }
    let vm = st
        .state
        .vm_mut(name)
        .ok_or_else(|| not_found(name, "VBoxManageStorageController.cpp"))?;
    if vm.state == "running" {
        return Err(locked(name));
    }
    if !vm.controllers.iter().any(|(c, _)| c == ctl) {
        return Err(fail(&[&format!(
            "Could not find a controller named '{ctl}'"
        )]));
    }
    let id = uuid();
    let diff = if kind == "hdd" && mtype == Some("multiattach") {
        // A linked clone: the VM writes to a differencing disk of its own.
        let snaps = vm.dir().join("Snapshots");
        std::fs::create_dir_all(&snaps).map_err(|e| io_fail("cannot create Snapshots", e))?;
        let path = snaps.join(format!("{{{id}}}.vdi"));
        std::fs::write(&path, format!("differencing image of {medium}\n"))
            .map_err(|e| io_fail("cannot write the differencing image", e))?;
        Some(path.to_string_lossy().into_owned())
    } else {
        None
    };
    vm.attachments
        .retain(|a| !(a.controller == ctl && a.port == port && a.device == device));
    vm.attachments.push(Attachment {
        controller: ctl.to_string(),
        port,
        device,
        kind: kind.to_string(),
        medium: medium.to_string(),
        diff,
        uuid: id,
    });
    st.save().map_err(|e| io_fail("cannot save", e))?;
    Ok(String::new())
}

fn medium_cmd(ctx: &Ctx, sub: &str, args: &[String]) -> Out {
    if args.first().map(String::as_str) != Some("disk") {
        return Err(syntax("fake-vboxmanage handles disk media only"));
    }
    let mut st = ctx.lock()?;
    match sub {
        "clonemedium" | "clonehd" => {
            let (src, dst) = match (args.get(1), args.get(2)) {
                (Some(s), Some(d)) => (s.clone(), d.clone()),
                _ => return Err(syntax("clonemedium disk SOURCE TARGET")),
            };
            if !Path::new(&src).is_file() {
                return Err(file_missing(&src));
            }
            if Path::new(&dst).exists() {
                return Err(fail(&[&format!(
                    "Cannot register the hard disk '{dst}' because a hard disk with UUID {{{}}} already exists",
                    uuid()
                )]));
            }
            std::fs::copy(&src, &dst).map_err(|e| io_fail("cannot clone", e))?;
            let id = uuid();
            st.state.media.push(Medium {
                uuid: id.clone(),
                path: dst,
                kind: "normal".into(),
                size_mb: 0,
            });
            st.save().map_err(|e| io_fail("cannot save", e))?;
            Ok(format!(
                "{PROGRESS}\nClone medium created in format 'VDI'. UUID: {id}\n"
            ))
        }
        "modifymedium" | "modifyhd" => {
            let path = args
                .get(1)
                .ok_or_else(|| syntax("modifymedium disk FILE"))?
                .clone();
            let in_use = st
                .state
                .vms
                .iter()
                .any(|v| v.attachments.iter().any(|a| a.medium == path));
            let m = st
                .state
                .medium_mut(&path)
                .ok_or_else(|| file_missing(&path))?;
            if let Some(kind) = opt(args, "--type") {
                if in_use {
                    return Err(fail(&[&format!(
                        "Cannot change the type of medium '{path}' because it is attached to virtual machines"
                    )]));
                }
                m.kind = kind.to_string();
            }
            let mut out = String::new();
            if let Some(size) = opt(args, "--resize") {
                m.size_mb = size.parse().map_err(|_| syntax("Invalid --resize"))?;
                out = format!("{PROGRESS}\n");
            }
            st.save().map_err(|e| io_fail("cannot save", e))?;
            Ok(out)
        }
        "closemedium" => {
            let path = args
                .get(1)
                .ok_or_else(|| syntax("closemedium disk FILE"))?
                .clone();
            if st
                .state
                .vms
                .iter()
                .any(|v| v.attachments.iter().any(|a| a.medium == path))
            {
                return Err(fail(&[&format!(
                    "Cannot close medium '{path}' because it has 1 child media"
                )]));
            }
            let before = st.state.media.len();
            st.state.media.retain(|m| m.path != path);
            if before == st.state.media.len() && !Path::new(&path).exists() {
                return Err(file_missing(&path));
            }
            let mut out = String::new();
            if args.iter().any(|a| a == "--delete") {
                let _ = std::fs::remove_file(&path);
                out = format!("{PROGRESS}\n");
            }
            st.save().map_err(|e| io_fail("cannot save", e))?;
            Ok(out)
        }
        _ => unreachable!(),
    }
}

fn console(vm: &Vm, line: &str) {
    if let Some(path) = &vm.uart_file {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn set_state(
    ctx: &Ctx,
    name: &str,
    state: &str,
    lab: Option<Option<(String, String)>>,
) -> Result<(), Fail> {
    let mut st = ctx.lock()?;
    if let Some(vm) = st.state.vm_mut(name) {
        vm.state = state.to_string();
        vm.state_change = now();
        if let Some(lab) = lab {
            vm.lab_node = lab;
        }
    }
    st.save().map_err(|e| io_fail("cannot save", e))
}

fn runtime() -> Result<tokio::runtime::Runtime, Fail> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io_fail("cannot start a runtime", e))
}

fn startvm(ctx: &Ctx, args: &[String]) -> Out {
    let name = args
        .first()
        .ok_or_else(|| syntax("Missing VM name"))?
        .clone();
    // The lock is held only while the state changes: several VMs boot at once.
    let (vm, boot) = {
        let mut st = ctx.lock()?;
        not_ready(ctx, &mut st)?;
        let adapters = st.state.hostonlyifs.clone();
        let vm = st
            .state
            .vm_mut(&name)
            .ok_or_else(|| not_found(&name, "VBoxManageMisc.cpp"))?;
        if vm.state == "running" || vm.state == "starting" {
            return Err(locked(&name));
        }
        if ctx.fault("kvm") {
            return Err(fail(&[
                "VT-x is being used by another hypervisor (VERR_VMX_IN_VMX_ROOT_MODE).",
                "VirtualBox can't operate in VMX root mode. Please disable the KVM kernel extension, recompile your kernel and reboot (VERR_VMX_IN_VMX_ROOT_MODE)",
                "Details: code NS_ERROR_FAILURE (0x80004005), component ConsoleWrap, interface IConsole",
            ]));
        }
        if ctx.fault("vtx-disabled") {
            return Err(fail(&[
                "VT-x is disabled in the BIOS for all CPU modes (VERR_VMX_MSR_ALL_VMX_DISABLED)",
                "Details: code NS_ERROR_FAILURE (0x80004005), component ConsoleWrap, interface IConsole",
            ]));
        }
        let iso = vm
            .attachments
            .iter()
            .find(|a| a.kind == "dvddrive")
            .map(|a| PathBuf::from(&a.medium));
        let nic = vm.nics.get(&2).filter(|n| n.kind == "hostonly").cloned();
        let adapter = nic
            .as_ref()
            .and_then(|n| adapters.iter().find(|h| h.name == n.adapter));
        let boot = match (iso, nic.as_ref(), adapter) {
            (Some(seed_iso), Some(nic), Some(adapter)) => Some(guest::Boot {
                lab_cluster: vm
                    .groups
                    .iter()
                    .find_map(|g| g.strip_prefix("/swarmup/"))
                    .unwrap_or("vms")
                    .to_string(),
                seed_iso,
                mac_host_only: nic.mac.clone(),
                host_ip: adapter.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                prefix: guest::mask_prefix(&adapter.mask),
            }),
            _ => None,
        };
        vm.state = "starting".into();
        vm.state_change = now();
        let snapshot = vm.clone();
        st.save().map_err(|e| io_fail("cannot save", e))?;
        (snapshot, boot)
    };
    let logs = vm.dir().join("Logs");
    let _ = std::fs::create_dir_all(&logs);
    let _ = std::fs::write(
        logs.join("VBox.log"),
        format!("fake VirtualBox VM {} started headless\n", vm.name),
    );
    console(
        &vm,
        "[    0.000000] Linux version 6.8.0-fake (fake-vboxmanage guest)",
    );
    console(
        &vm,
        "[    0.000000] Command line: console=tty1 console=ttyS0",
    );
    let started = format!(
        "Waiting for VM \"{name}\" to power on...\nVM \"{name}\" has been successfully started.\n"
    );
    if ctx.fault("boot-abort") {
        console(&vm, "[    2.318000] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)");
        set_state(ctx, &name, "aborted", None)?;
        return Ok(started);
    }
    let Some(boot) = boot else {
        console(
            &vm,
            "cloud-init: no NoCloud seed or host-only NIC: nothing to configure; the guest waits",
        );
        set_state(ctx, &name, "running", None)?;
        return Ok(started);
    };
    let config = guest::lab_config(&ctx.home);
    match runtime()?.block_on(guest::boot(&config, &boot)) {
        Ok(g) => {
            console(
                &vm,
                &format!(
                    "[   12.000000] cloud-init[812]: Cloud-init v. 24.1 finished; {} is up at {}",
                    g.hostname, g.address
                ),
            );
            set_state(
                ctx,
                &name,
                "running",
                Some(Some((boot.lab_cluster.clone(), g.hostname))),
            )?;
        }
        Err(e) => {
            console(&vm, &format!("[   30.000000] cloud-init[812]: failed: {e}"));
            console(&vm, "[   30.100000] reboot: Power down");
            set_state(ctx, &name, "aborted", None)?;
        }
    }
    Ok(started)
}

fn controlvm(ctx: &Ctx, args: &[String]) -> Out {
    let name = args
        .first()
        .ok_or_else(|| syntax("Missing VM name"))?
        .clone();
    let action = args.get(1).map(String::as_str).unwrap_or("");
    if !["acpipowerbutton", "poweroff"].contains(&action) {
        return Err(syntax(&format!(
            "fake-vboxmanage does not implement controlvm {action}"
        )));
    }
    let vm = {
        let st = ctx.lock()?;
        st.state
            .vm(&name)
            .cloned()
            .ok_or_else(|| not_found(&name, "VBoxManageControlVM.cpp"))?
    };
    if vm.state != "running" && vm.state != "starting" {
        return Err(fail(&[&format!(
            "Machine '{name}' is not currently running"
        )]));
    }
    if let Some((cluster, node)) = &vm.lab_node {
        let config = guest::lab_config(&ctx.home);
        runtime()?
            .block_on(guest::power_off(&config, cluster, node))
            .map_err(|e| io_fail("cannot stop the guest", e))?;
    }
    console(&vm, "[  100.000000] reboot: Power down");
    set_state(ctx, &name, "poweroff", None)?;
    Ok(if action == "poweroff" {
        format!("{PROGRESS}\n")
    } else {
        String::new()
    })
}

fn unregistervm(ctx: &Ctx, args: &[String]) -> Out {
    let name = args
        .first()
        .ok_or_else(|| syntax("Missing VM name"))?
        .clone();
    let delete = args.iter().any(|a| a == "--delete");
    let mut st = ctx.lock()?;
    let vm = st
        .state
        .vm(&name)
        .cloned()
        .ok_or_else(|| not_found(&name, "VBoxManageMisc.cpp"))?;
    if vm.state == "running" || vm.state == "starting" {
        return Err(fail(&[
            &format!("Cannot unregister the machine '{name}' while it is locked"),
            "Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine, callee nsISupports",
        ]));
    }
    if let Some((cluster, node)) = &vm.lab_node {
        let config = guest::lab_config(&ctx.home);
        runtime()?
            .block_on(guest::remove(&config, cluster, node))
            .map_err(|e| io_fail("cannot remove the guest", e))?;
    }
    st.state.vms.retain(|v| v.uuid != vm.uuid);
    st.save().map_err(|e| io_fail("cannot save", e))?;
    if delete {
        // Hard disks (the differencing children), settings and logs go; DVD images and
        // files VirtualBox did not make stay, as with VirtualBox.
        for a in &vm.attachments {
            if let Some(diff) = &a.diff {
                let _ = std::fs::remove_file(diff);
            }
        }
        let dir = vm.dir();
        let _ = std::fs::remove_file(&vm.cfg_file);
        let _ = std::fs::remove_dir_all(dir.join("Logs"));
        let _ = std::fs::remove_dir(dir.join("Snapshots"));
        let _ = std::fs::remove_dir(&dir);
        return Ok(format!("{PROGRESS}\n"));
    }
    Ok(String::new())
}

/// Whether VirtualBox's networks.conf rule lets an adapter use `ip`/`mask`.
fn network_allowed(ip: Ipv4Addr, mask: Ipv4Addr) -> bool {
    let ranges: Vec<(Ipv4Addr, u32)> = match std::env::var_os("SWARMUP_FAKE_VBOX_NETWORKS_CONF")
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        None => vec![(Ipv4Addr::new(192, 168, 56, 0), 21)],
        Some(text) => text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('*'))
            .flat_map(|r| r.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|r| {
                let (a, b) = r.split_once('/')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect(),
    };
    let bits = u32::from(mask).count_ones();
    ranges.iter().any(|(net, len)| {
        let m = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
        bits >= *len && u32::from(ip) & m == u32::from(*net) & m
    })
}

fn hostonlyif(ctx: &Ctx, args: &[String]) -> Out {
    let mut st = ctx.lock()?;
    match args.first().map(String::as_str) {
        Some("create") => {
            let n = (0..)
                .find(|n| {
                    !st.state
                        .hostonlyifs
                        .iter()
                        .any(|h| h.name == format!("vboxnet{n}"))
                })
                .unwrap_or(0);
            let name = format!("vboxnet{n}");
            st.state.hostonlyifs.push(HostOnlyIf {
                name: name.clone(),
                ip: format!("192.168.{}.1", 56 + n),
                mask: "255.255.255.0".into(),
            });
            st.save().map_err(|e| io_fail("cannot save", e))?;
            Ok(format!(
                "{PROGRESS}\nInterface '{name}' was successfully created\n"
            ))
        }
        Some("ipconfig") => {
            let name = args
                .get(1)
                .ok_or_else(|| syntax("Missing interface name"))?;
            let ip: Ipv4Addr = opt(args, "--ip")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| syntax("Parameter --ip is required"))?;
            let mask: Ipv4Addr = opt(args, "--netmask")
                .unwrap_or("255.255.255.0")
                .parse()
                .map_err(|_| syntax("Invalid --netmask"))?;
            if !network_allowed(ip, mask) {
                return Err(fail(&[
                    "Code E_ACCESSDENIED (0x80070005) - Access denied (extended info not available)",
                    "Context: \"EnableStaticIPConfig(Bstr(pszIp).raw(), Bstr(pszNetmask).raw())\" at line 242 of file VBoxManageHostonly.cpp",
                ]));
            }
            let h = st
                .state
                .hostonlyifs
                .iter_mut()
                .find(|h| &h.name == name)
                .ok_or_else(|| {
                    fail(&[&format!("Could not find a host interface named '{name}'")])
                })?;
            h.ip = ip.to_string();
            h.mask = mask.to_string();
            st.save().map_err(|e| io_fail("cannot save", e))?;
            Ok(String::new())
        }
        Some("remove") => {
            let name = args
                .get(1)
                .ok_or_else(|| syntax("Missing interface name"))?;
            let before = st.state.hostonlyifs.len();
            st.state.hostonlyifs.retain(|h| &h.name != name);
            if before == st.state.hostonlyifs.len() {
                return Err(fail(&[&format!(
                    "Could not find a host interface named '{name}'"
                )]));
            }
            st.save().map_err(|e| io_fail("cannot save", e))?;
            Ok(format!("{PROGRESS}\n"))
        }
        other => Err(syntax(&format!(
            "fake-vboxmanage does not implement hostonlyif {}",
            other.unwrap_or("")
        ))),
    }
}

fn dispatch(ctx: &Ctx, args: &[String]) -> Out {
    let Some((sub, rest)) = args.split_first() else {
        return Err(syntax("No command given"));
    };
    match sub.as_str() {
        "--version" | "-v" | "-version" => Ok(format!(
            "{}\n",
            std::env::var("SWARMUP_FAKE_VBOX_VERSION").unwrap_or_else(|_| "7.0.20r163906".into())
        )),
        "list" => list(ctx, rest),
        "showvminfo" => showvminfo(ctx, rest),
        "createvm" => createvm(ctx, rest),
        "modifyvm" => modifyvm(ctx, rest),
        "storagectl" => storagectl(ctx, rest),
        "storageattach" => storageattach(ctx, rest),
        "clonemedium" | "clonehd" | "modifymedium" | "modifyhd" | "closemedium" => {
            medium_cmd(ctx, sub, rest)
        }
        "startvm" => startvm(ctx, rest),
        "controlvm" => controlvm(ctx, rest),
        "unregistervm" => unregistervm(ctx, rest),
        "hostonlyif" => hostonlyif(ctx, rest),
        other => Err(syntax(&format!(
            "Invalid command '{other}' (fake-vboxmanage implements only what swarmup uses)"
        ))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(home) = std::env::var_os("SWARMUP_FAKE_VBOX_HOME").filter(|h| !h.is_empty()) else {
        eprintln!(
            "VBoxManage: error: fake-vboxmanage needs SWARMUP_FAKE_VBOX_HOME (its state directory)"
        );
        return ExitCode::from(1);
    };
    let ctx = Ctx {
        home: PathBuf::from(home),
        faults: std::env::var("SWARMUP_FAKE_VBOX_FAULTS")
            .unwrap_or_default()
            .split(',')
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect(),
    };
    match dispatch(&ctx, &args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            for line in &f.lines {
                if f.status == 2 {
                    eprintln!("Syntax error: {line}");
                } else {
                    eprintln!("VBoxManage: error: {line}");
                }
            }
            ExitCode::from(f.status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_conf_rules() {
        let m = Ipv4Addr::new(255, 255, 255, 0);
        std::env::remove_var("SWARMUP_FAKE_VBOX_NETWORKS_CONF");
        assert!(network_allowed(Ipv4Addr::new(192, 168, 56, 1), m));
        assert!(network_allowed(Ipv4Addr::new(192, 168, 63, 1), m));
        assert!(!network_allowed(Ipv4Addr::new(192, 168, 99, 1), m));
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn a_vm_goes_through_its_life_in_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx {
            home: dir.path().to_path_buf(),
            faults: vec!["not-ready=1".into()],
        };
        let a = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        let out = dispatch(
            &ctx,
            &a("createvm --name n1 --groups /swarmup/c1 --ostype Ubuntu_64 --register"),
        )
        .unwrap();
        assert!(
            out.starts_with("Virtual machine 'n1' is created and registered.\nUUID: "),
            "{out}"
        );
        let cfg = swarmup_providers::virtualbox::parse::settings_file(&out).unwrap();
        assert!(
            cfg.ends_with("VirtualBox VMs/swarmup/c1/n1/n1.vbox"),
            "{cfg}"
        );
        assert!(Path::new(&cfg).is_file());
        let busy = dispatch(&ctx, &a("modifyvm n1 --cpus 2")).unwrap_err();
        assert_eq!(busy.lines[0], "The object is not ready");
        dispatch(&ctx, &a("modifyvm n1 --cpus 2 --memory 2048")).unwrap();
        let info = swarmup_providers::virtualbox::parse::machinereadable(
            &dispatch(&ctx, &a("showvminfo n1 --machinereadable")).unwrap(),
        );
        assert_eq!(info["cpus"], "2");
        assert_eq!(info["VMState"], "poweroff");
        assert_eq!(info["groups"], "/swarmup/c1");
        let gone = dispatch(&ctx, &a("showvminfo n2 --machinereadable")).unwrap_err();
        assert_eq!(
            gone.lines[0],
            "Could not find a registered machine named 'n2'"
        );
        let listed = dispatch(&ctx, &a("list vms")).unwrap();
        assert!(listed.starts_with("\"n1\" {"), "{listed}");
        dispatch(&ctx, &a("unregistervm n1 --delete")).unwrap();
        assert!(!Path::new(&cfg).exists());
        assert_eq!(dispatch(&ctx, &a("list vms")).unwrap(), "");
        let made = dispatch(&ctx, &a("hostonlyif create")).unwrap();
        assert!(made.ends_with("Interface 'vboxnet0' was successfully created\n"));
        assert!(dispatch(&ctx, &a("frobnicate")).is_err());
    }
}
