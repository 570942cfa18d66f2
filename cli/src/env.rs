//! Every environment variable swarmup reads, named once, read here and nowhere else in
//! the CLI: a reader finds what the environment can change in one place.

use std::ffi::OsString;
use std::path::PathBuf;

/// Where swarmup keeps its records (default `$XDG_DATA_HOME/swarmup`).
pub const SWARMUP_HOME: &str = "SWARMUP_HOME";
/// The SSH config file swarmup manages (default `~/.ssh/config`).
pub const SWARMUP_SSH_CONFIG: &str = "SWARMUP_SSH_CONFIG";
/// Where the lab provider keeps its machines (default `/var/lib/swarmup/lab`).
pub const SWARMUP_LAB_ROOT: &str = "SWARMUP_LAB_ROOT";
/// DigitalOcean's API token, under doctl's and Terraform's names.
pub const DIGITALOCEAN_TOKEN: &str = "DIGITALOCEAN_TOKEN";
pub const DIGITALOCEAN_ACCESS_TOKEN: &str = "DIGITALOCEAN_ACCESS_TOKEN";
/// DigitalOcean's API base URL (tests point it at a fake).
pub const DIGITALOCEAN_API_URL: &str = "DIGITALOCEAN_API_URL";
pub const HOME: &str = "HOME";
pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
/// Where downloaded images live (the VirtualBox provider's base disks).
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// The VBoxManage the VirtualBox provider runs (default: VBoxManage on PATH).
pub const SWARMUP_VBOXMANAGE: &str = "SWARMUP_VBOXMANAGE";

/// A variable's value as text, if set.
pub fn text(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A variable's value as a path, if set and not empty.
pub fn path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v: &OsString| !v.is_empty())
        .map(PathBuf::from)
}

/// An XDG base directory: the variable if it holds an absolute path, else `~/fallback`.
pub fn xdg_dir(name: &str, fallback: &str) -> Option<PathBuf> {
    path(name)
        .filter(|p| p.is_absolute())
        .or_else(|| path(HOME).map(|h| h.join(fallback)))
}
