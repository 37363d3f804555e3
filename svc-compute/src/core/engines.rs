//! Which engines can run guests on this host, found once at start-up.

use std::path::{Path, PathBuf};

use vireo_vmm::vstate::probe::{KvmProbe, probe_kvm};

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
pub const VMM_BINARY: &str = "vireo-vmm";

/// What one engine offers here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineFacts {
    pub available: bool,
    pub unavailable_reason: String,
    pub binary: Option<PathBuf>,
    pub version: String,
    pub accelerators: Vec<&'static str>,
    pub stock_guests_on_kvm: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Engines {
    pub kvm: KvmProbe,
    pub vmm: EngineFacts,
    pub qemu: EngineFacts,
}

/// The first `name` on PATH, or beside the running binary (how vireod finds vireo-vmm).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let beside_us = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)));
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside_us
        .into_iter()
        .chain(on_path)
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// "QEMU emulator version 7.2.19 (Debian ...)" -> "7.2.19".
pub fn parse_qemu_version(output: &str) -> Option<String> {
    let rest = output.lines().next()?.split("version").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

async fn qemu_version(binary: &Path) -> Result<String, String> {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .output()
        .await
        .map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            binary.display(),
            output.status
        ));
    }
    parse_qemu_version(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| format!("{} --version printed no version", binary.display()))
}

/// Probes KVM with ioctls and looks for the engine binaries.
pub async fn probe() -> Engines {
    let kvm = tokio::task::spawn_blocking(probe_kvm)
        .await
        .unwrap_or_else(|err| KvmProbe {
            unavailable_reason: format!("KVM probe failed: {err}"),
            ..Default::default()
        });
    let stock = kvm.runs_stock_guests();

    let vmm_binary = find_binary(VMM_BINARY);
    let vmm_unavailable = if !kvm.available {
        format!("vireo-vmm needs KVM: {}", kvm.unavailable_reason)
    } else if vmm_binary.is_none() {
        format!("{VMM_BINARY} is not installed next to this service or on PATH")
    } else {
        String::new()
    };
    let vmm = EngineFacts {
        available: vmm_unavailable.is_empty(),
        unavailable_reason: vmm_unavailable,
        binary: vmm_binary,
        version: env!("CARGO_PKG_VERSION").to_string(),
        accelerators: if kvm.available { vec!["kvm"] } else { vec![] },
        stock_guests_on_kvm: stock,
    };

    let qemu = match find_binary(QEMU_BINARY) {
        None => EngineFacts {
            unavailable_reason: format!(
                "{QEMU_BINARY} is not installed (Debian package qemu-system-x86)"
            ),
            ..Default::default()
        },
        Some(binary) => match qemu_version(&binary).await {
            Ok(version) => EngineFacts {
                available: true,
                unavailable_reason: String::new(),
                binary: Some(binary),
                version,
                accelerators: if kvm.available {
                    vec!["kvm", "tcg"]
                } else {
                    vec!["tcg"]
                },
                stock_guests_on_kvm: stock,
            },
            Err(reason) => EngineFacts {
                unavailable_reason: reason,
                binary: Some(binary),
                ..Default::default()
            },
        },
    };
    Engines { kvm, vmm, qemu }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_version_line() {
        let line = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright (c) 2003-2022\n";
        assert_eq!(parse_qemu_version(line).as_deref(), Some("7.2.19"));
        assert_eq!(parse_qemu_version("garbage"), None);
    }
}
