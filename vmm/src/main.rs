//! The `vireo-vmm` binary: one process per guest. Today it answers `probe` (what KVM offers here);
//! booting guests arrives with issue #3, and until then it refuses to pretend.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("probe") => {
            let probe = vireo_vmm::vstate::probe::probe_kvm();
            if probe.available {
                println!(
                    "kvm: available, API {}, module {}, max vCPUs {}, extensions {}",
                    probe.api_version,
                    if probe.module.is_empty() {
                        "unknown"
                    } else {
                        &probe.module
                    },
                    probe.max_vcpus,
                    probe.extensions.join(",")
                );
                ExitCode::SUCCESS
            } else {
                eprintln!("vireo-vmm: {}", probe.unavailable_reason);
                ExitCode::FAILURE
            }
        }
        Some("--version" | "-V") => {
            println!("vireo-vmm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "vireo-vmm: booting guests is not implemented yet (issue #3); usage: vireo-vmm probe | --version"
            );
            ExitCode::from(2)
        }
    }
}
