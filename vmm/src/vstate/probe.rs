//! Probing KVM with ioctls, never with cpuinfo flags: a paravirtual nested KVM has no vmx/svm
//! flag yet works, and a flag does not prove the device is usable.

use kvm_ioctls::{Cap, Kvm};

/// What the probe learned about /dev/kvm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvmProbe {
    /// /dev/kvm opened, reported API 12 and created a VM.
    pub available: bool,
    /// Why not, when unavailable.
    pub unavailable_reason: String,
    pub api_version: u32,
    pub max_vcpus: u32,
    /// Names of the probed capabilities KVM reports.
    pub extensions: Vec<&'static str>,
    /// The KVM module loaded on the host ("kvm_intel", "kvm_amd", "kvm_pvm"), if known.
    pub module: String,
}

impl KvmProbe {
    /// Whether this KVM runs stock guest kernels natively. A paravirtual nested KVM (kvm_pvm)
    /// emulates guest kernel mode and cannot; an unknown module is not assumed to.
    pub fn runs_stock_guests(&self) -> bool {
        self.available && matches!(self.module.as_str(), "kvm_intel" | "kvm_amd")
    }
}

/// The KVM API version every supported kernel reports.
const KVM_API_VERSION: i32 = 12;

const PROBED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "IRQCHIP"),
    (Cap::Pit2, "PIT2"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::Ioeventfd, "IOEVENTFD"),
    (Cap::SignalMsi, "SIGNAL_MSI"),
    (Cap::Xsave, "XSAVE"),
    (Cap::Xcrs, "XCRS"),
    (Cap::MpState, "MP_STATE"),
    (Cap::VcpuEvents, "VCPU_EVENTS"),
    (Cap::DirtyLogRing, "DIRTY_LOG_RING"),
    (Cap::KvmclockCtrl, "KVMCLOCK_CTRL"),
    (Cap::X86UserSpaceMsr, "X86_USER_SPACE_MSR"),
];

fn loaded_kvm_module(sys_module: &std::path::Path) -> String {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|name| sys_module.join(name).exists())
        .unwrap_or_default()
        .to_string()
}

/// Opens /dev/kvm and asks it what it can do.
pub fn probe_kvm() -> KvmProbe {
    let module = loaded_kvm_module(std::path::Path::new("/sys/module"));
    let unavailable = |reason: String| KvmProbe {
        unavailable_reason: reason,
        module: module.clone(),
        ..Default::default()
    };
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(err) => {
            let reason = match err.errno() {
                libc::ENOENT => {
                    "/dev/kvm does not exist (KVM is not enabled in this kernel)".to_string()
                }
                libc::EACCES | libc::EPERM => "no permission to open /dev/kvm".to_string(),
                _ => format!("cannot open /dev/kvm: {err}"),
            };
            return unavailable(reason);
        }
    };
    let api_version = kvm.get_api_version();
    if api_version != KVM_API_VERSION {
        return unavailable(format!(
            "/dev/kvm reports API version {api_version}, expected {KVM_API_VERSION}"
        ));
    }
    if let Err(err) = kvm.create_vm() {
        return unavailable(format!("/dev/kvm cannot create a VM: {err}"));
    }
    let extensions = PROBED_CAPS
        .iter()
        .filter(|(cap, _)| kvm.check_extension(*cap))
        .map(|(_, name)| *name)
        .collect();
    KvmProbe {
        available: true,
        unavailable_reason: String::new(),
        api_version: KVM_API_VERSION.unsigned_abs(),
        max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
        extensions,
        module,
    }
}
