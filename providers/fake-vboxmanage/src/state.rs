//! What the fake VirtualBox remembers between calls: one JSON file in its home
//! directory, read and written under an exclusive lock, as VBoxSVC serialises the calls
//! of every VBoxManage process.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// `nat`, `hostonly`, `none`.
    pub kind: String,
    pub nictype: String,
    pub mac: String,
    pub adapter: String,
    pub cable: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub controller: String,
    pub port: u32,
    pub device: u32,
    /// `hdd` or `dvddrive`.
    pub kind: String,
    /// What was attached (the base disk, the ISO).
    pub medium: String,
    /// A multiattach disk's differencing child, in the VM's Snapshots folder.
    pub diff: Option<String>,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub uuid: String,
    pub groups: Vec<String>,
    pub ostype: String,
    pub cfg_file: String,
    pub description: String,
    pub cpus: u32,
    pub memory: u32,
    pub state: String,
    pub state_change: String,
    pub settings: BTreeMap<String, String>,
    pub nics: BTreeMap<u8, Nic>,
    /// `--uartmode1 file PATH`.
    pub uart_file: Option<String>,
    pub uart: Option<String>,
    pub controllers: Vec<(String, String)>,
    pub attachments: Vec<Attachment>,
    /// The lab node standing for the running guest: (lab cluster, node).
    pub lab_node: Option<(String, String)>,
}

impl Vm {
    pub fn dir(&self) -> PathBuf {
        Path::new(&self.cfg_file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOnlyIf {
    pub name: String,
    pub ip: String,
    pub mask: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Medium {
    pub uuid: String,
    pub path: String,
    /// `normal` or `multiattach`.
    pub kind: String,
    pub size_mb: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub vms: Vec<Vm>,
    pub hostonlyifs: Vec<HostOnlyIf>,
    pub media: Vec<Medium>,
    /// Faults already served (`not-ready=N` counts down, one-shot faults are spent).
    pub not_ready_served: u32,
    pub error_exit0_served: bool,
}

impl State {
    pub fn vm(&self, name_or_uuid: &str) -> Option<&Vm> {
        self.vms
            .iter()
            .find(|v| v.name == name_or_uuid || v.uuid == name_or_uuid)
    }

    pub fn vm_mut(&mut self, name_or_uuid: &str) -> Option<&mut Vm> {
        self.vms
            .iter_mut()
            .find(|v| v.name == name_or_uuid || v.uuid == name_or_uuid)
    }

    pub fn medium_mut(&mut self, path: &str) -> Option<&mut Medium> {
        self.media
            .iter_mut()
            .find(|m| m.path == path || m.uuid == path)
    }
}

/// The state file, locked for as long as this value lives.
#[derive(Debug)]
pub struct Locked {
    _lock: nix::fcntl::Flock<std::fs::File>,
    path: PathBuf,
    pub state: State,
}

impl Locked {
    pub fn open(home: &Path) -> io::Result<Locked> {
        std::fs::create_dir_all(home)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(home.join(".lock"))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e))?;
        let path = home.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::other(format!("{} is damaged: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        Ok(Locked {
            _lock: lock,
            path,
            state,
        })
    }

    pub fn save(&self) -> io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}
