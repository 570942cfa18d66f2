//! Every VBoxManage call goes through [`VBoxManage`]: the real implementation runs the
//! program (tests configure `fake-vboxmanage` as that program), and [`Vbox`] adds what
//! docker-machine and Vagrant learned: `error:` on stderr is a failure whatever the exit
//! status, "The object is not ready" is retried a few times, and the well-known failures
//! become one line that says what to do.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::ProviderError;

/// What one run of VBoxManage printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs VBoxManage with arguments.
#[async_trait::async_trait]
pub trait VBoxManage: Send + Sync + fmt::Debug {
    async fn run(&self, args: &[String]) -> io::Result<RawOutput>;
    /// The program, for messages.
    fn program(&self) -> &Path;
}

/// The VBoxManage program on this host.
#[derive(Debug, Clone)]
pub struct ProcessVBoxManage {
    program: PathBuf,
}

impl ProcessVBoxManage {
    pub fn new(program: PathBuf) -> Self {
        ProcessVBoxManage { program }
    }
}

/// How long one VBoxManage call may take: clones of large disks take minutes.
const CALL_TIMEOUT: Duration = Duration::from_secs(1200);

#[async_trait::async_trait]
impl VBoxManage for ProcessVBoxManage {
    async fn run(&self, args: &[String]) -> io::Result<RawOutput> {
        let child = tokio::process::Command::new(&self.program)
            .args(args)
            // English messages: the classifier reads them.
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(CALL_TIMEOUT, child)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
                )
            })??;
        Ok(RawOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn program(&self) -> &Path {
        &self.program
    }
}

/// What went wrong in a VBoxManage call, as far as swarmup acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// "The object is not ready": VBoxSVC is busy with the object; worth a retry.
    NotReady,
    /// The VM, medium or adapter does not exist.
    NotFound,
    /// KVM (or another hypervisor) holds VT-x / AMD-V.
    VtxInUse,
    /// VT-x / AMD-V is off or missing.
    VtxDisabled,
    /// The host-only address is not allowed by /etc/vbox/networks.conf.
    NetworkNotAllowed,
    /// The host-only network driver is not loaded.
    NoNetworkDriver,
    /// The VM is locked or in the wrong state for the request.
    InvalidState,
    Other,
}

/// A failed VBoxManage call, with the line to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct VboxFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// The one-line explanations of the failures users meet most.
pub const MSG_VTX_IN_USE: &str = "VirtualBox cannot use VT-x/AMD-V because KVM holds it (VERR_VMX_IN_VMX_ROOT_MODE): unload KVM (sudo modprobe -r kvm_intel kvm_amd) or boot Linux with kvm.enable_virt_at_load=0, then try again";
pub const MSG_VTX_DISABLED: &str = "VT-x/AMD-V is disabled on this host, so VirtualBox cannot run 64-bit VMs: enable virtualization (Intel VT-x or AMD-V) in the firmware (BIOS/UEFI) settings, then try again";
pub const MSG_NO_NETWORK_DRIVER: &str = "VirtualBox's host-only network driver is not loaded (/dev/vboxnetctl missing): reinstall VirtualBox or load its kernel modules (sudo modprobe vboxnetadp vboxnetflt), then try again";

/// The message of the first `VBoxManage: error:` line (the others are details).
fn first_error_line(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("VBoxManage: error: ")
            .or_else(|| l.strip_prefix("VBoxManage.exe: error: "))
            .or_else(|| l.strip_prefix("error: "))
    })
}

/// Decides whether a call failed, and how. Pure: from the exit status and the text.
pub fn classify(args: &[String], out: &RawOutput) -> Result<(), VboxFailure> {
    let has_error = out.stderr.lines().any(|l| l.contains("error:"));
    let started = args.first().map(String::as_str) == Some("startvm")
        && out.stdout.contains("has been successfully started");
    if !has_error && (out.success || started) {
        return Ok(());
    }
    let all = format!("{}\n{}", out.stderr, out.stdout);
    let has = |needle: &str| all.contains(needle);
    let command = args
        .iter()
        .take(2)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let detail = first_error_line(&out.stderr)
        .map(str::to_string)
        .or_else(|| {
            out.stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "failed without a message".to_string());
    let (kind, message) = if has("VERR_VMX_IN_VMX_ROOT_MODE") || has("VERR_SVM_IN_USE") {
        (FailureKind::VtxInUse, MSG_VTX_IN_USE.to_string())
    } else if has("VERR_VMX_MSR_ALL_VMX_DISABLED")
        || has("VERR_VMX_MSR_VMX_DISABLED")
        || has("VERR_VMX_NO_VMX")
        || has("VERR_SVM_DISABLED")
        || has("VERR_SVM_NO_SVM")
    {
        (FailureKind::VtxDisabled, MSG_VTX_DISABLED.to_string())
    } else if has("/dev/vboxnetctl") {
        (
            FailureKind::NoNetworkDriver,
            MSG_NO_NETWORK_DRIVER.to_string(),
        )
    } else if has("E_ACCESSDENIED") && has("EnableStaticIPConfig") {
        (
            FailureKind::NetworkNotAllowed,
            format!("VBoxManage {command}: {detail}"),
        )
    } else if has("The object is not ready") {
        (
            FailureKind::NotReady,
            format!("VBoxManage {command}: {detail}"),
        )
    } else if has("VBOX_E_OBJECT_NOT_FOUND") || has("Could not find a registered machine") {
        (
            FailureKind::NotFound,
            format!("VBoxManage {command}: {detail}"),
        )
    } else if has("VBOX_E_INVALID_OBJECT_STATE") || has("is not currently running") {
        (
            FailureKind::InvalidState,
            format!("VBoxManage {command}: {detail}"),
        )
    } else {
        (
            FailureKind::Other,
            format!("VBoxManage {command}: {detail}"),
        )
    };
    Err(VboxFailure { kind, message })
}

/// How often "The object is not ready" is retried, and how long apart.
pub const NOT_READY_ATTEMPTS: u32 = 5;
pub const NOT_READY_PAUSE: Duration = Duration::from_millis(200);

/// VBoxManage with the classifier and retries.
#[derive(Debug, Clone)]
pub struct Vbox {
    inner: Arc<dyn VBoxManage>,
}

/// A VBoxManage call that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum VboxError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Failed(#[from] VboxFailure),
}

impl VboxError {
    pub fn kind(&self) -> Option<FailureKind> {
        match self {
            VboxError::Failed(f) => Some(f.kind),
            VboxError::Spawn { .. } => None,
        }
    }
}

impl From<VboxError> for ProviderError {
    fn from(e: VboxError) -> Self {
        match e.kind() {
            Some(
                FailureKind::VtxInUse | FailureKind::VtxDisabled | FailureKind::NoNetworkDriver,
            ) => ProviderError::Prerequisite(e.to_string()),
            _ => ProviderError::Api(e.to_string()),
        }
    }
}

impl Vbox {
    pub fn new(inner: Arc<dyn VBoxManage>) -> Self {
        Vbox { inner }
    }

    pub fn program(&self) -> &Path {
        self.inner.program()
    }

    /// Runs one call; its standard output on success.
    pub async fn call<S: AsRef<str>>(&self, args: &[S]) -> Result<String, VboxError> {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let mut attempt = 1;
        loop {
            let out = self
                .inner
                .run(&args)
                .await
                .map_err(|source| VboxError::Spawn {
                    program: self.inner.program().display().to_string(),
                    source,
                })?;
            match classify(&args, &out) {
                Ok(()) => return Ok(out.stdout),
                Err(f) if f.kind == FailureKind::NotReady && attempt < NOT_READY_ATTEMPTS => {
                    tracing::debug!(attempt, args = ?args, "VBoxManage: object not ready, retrying");
                    attempt += 1;
                    tokio::time::sleep(NOT_READY_PAUSE).await;
                }
                Err(f) => return Err(f.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn out(success: bool, stdout: &str, stderr: &str) -> RawOutput {
        RawOutput {
            success,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn an_error_line_fails_even_with_exit_status_zero() {
        let e = classify(
            &args(&["modifyvm", "x"]),
            &out(true, "", "VBoxManage: error: Invalid NIC number 9\n"),
        )
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Other);
        assert_eq!(e.message, "VBoxManage modifyvm x: Invalid NIC number 9");
        assert!(classify(&args(&["list", "vms"]), &out(true, "", "")).is_ok());
    }

    #[test]
    fn startvm_that_says_started_succeeded_whatever_its_status() {
        let said = "Waiting for VM \"x\" to power on...\nVM \"x\" has been successfully started.\n";
        assert!(classify(&args(&["startvm", "x"]), &out(false, said, "")).is_ok());
        assert!(classify(&args(&["createvm"]), &out(false, said, "")).is_err());
    }

    #[test]
    fn known_failures_get_their_line() {
        let kvm = "VBoxManage: error: VT-x is being used by another hypervisor (VERR_VMX_IN_VMX_ROOT_MODE).\nVBoxManage: error: VirtualBox can't operate in VMX root mode. Please disable the KVM kernel extension, recompile your kernel and reboot (VERR_VMX_IN_VMX_ROOT_MODE)\nVBoxManage: error: Details: code NS_ERROR_FAILURE (0x80004005), component ConsoleWrap, interface IConsole\n";
        let e = classify(&args(&["startvm", "x"]), &out(false, "", kvm)).unwrap_err();
        assert_eq!(e.kind, FailureKind::VtxInUse);
        assert_eq!(e.message, MSG_VTX_IN_USE);
        let off = "VBoxManage: error: VT-x is disabled in the BIOS for all CPU modes (VERR_VMX_MSR_ALL_VMX_DISABLED)\n";
        assert_eq!(
            classify(&args(&["startvm", "x"]), &out(false, "", off))
                .unwrap_err()
                .kind,
            FailureKind::VtxDisabled
        );
        let denied = "VBoxManage: error: Code E_ACCESSDENIED (0x80070005) - Access denied (extended info not available)\nVBoxManage: error: Context: \"EnableStaticIPConfig(Bstr(pszIp).raw(), Bstr(pszNetmask).raw())\" at line 242 of file VBoxManageHostonly.cpp\n";
        assert_eq!(
            classify(&args(&["hostonlyif", "ipconfig"]), &out(false, "", denied))
                .unwrap_err()
                .kind,
            FailureKind::NetworkNotAllowed
        );
        let gone = "VBoxManage: error: Could not find a registered machine named 'x'\nVBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface IVirtualBox, callee nsISupports\n";
        let e = classify(&args(&["showvminfo", "x"]), &out(false, "", gone)).unwrap_err();
        assert_eq!(e.kind, FailureKind::NotFound);
        assert_eq!(
            e.message,
            "VBoxManage showvminfo x: Could not find a registered machine named 'x'"
        );
        let busy = "VBoxManage: error: The object is not ready\n";
        assert_eq!(
            classify(&args(&["modifyvm", "x"]), &out(false, "", busy))
                .unwrap_err()
                .kind,
            FailureKind::NotReady
        );
        let ctl = "VBoxManage: error: Failed to create the host-only adapter\nVBoxManage: error: VBoxNetAdpCtl: Error while adding new interface: failed to open /dev/vboxnetctl: No such file or directory\n";
        assert_eq!(
            classify(&args(&["hostonlyif", "create"]), &out(false, "", ctl))
                .unwrap_err()
                .kind,
            FailureKind::NoNetworkDriver
        );
    }

    #[derive(Debug)]
    struct Scripted {
        answers: std::sync::Mutex<Vec<RawOutput>>,
        calls: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl VBoxManage for Scripted {
        async fn run(&self, _args: &[String]) -> io::Result<RawOutput> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.answers.lock().unwrap().remove(0))
        }
        fn program(&self) -> &Path {
            Path::new("VBoxManage")
        }
    }

    #[tokio::test]
    async fn not_ready_is_retried_then_given_up() {
        let busy = out(false, "", "VBoxManage: error: The object is not ready\n");
        let script = Arc::new(Scripted {
            answers: std::sync::Mutex::new(vec![busy.clone(), busy.clone(), out(true, "ok", "")]),
            calls: Default::default(),
        });
        let vbox = Vbox::new(script.clone());
        assert_eq!(vbox.call(&["modifyvm", "x"]).await.unwrap(), "ok");
        assert_eq!(script.calls.load(std::sync::atomic::Ordering::SeqCst), 3);

        let script = Arc::new(Scripted {
            answers: std::sync::Mutex::new(vec![busy; NOT_READY_ATTEMPTS as usize]),
            calls: Default::default(),
        });
        let e = Vbox::new(script.clone())
            .call(&["modifyvm", "x"])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(FailureKind::NotReady));
        assert_eq!(
            script.calls.load(std::sync::atomic::Ordering::SeqCst),
            NOT_READY_ATTEMPTS
        );
    }
}
