//! libvirt capabilities XML (`virsh capabilities`): the host's CPU and NUMA cells, the guests it
//! can run, and, in Vireo's namespace, which engines can run here and why not.

use vireo_proto::compute::v1::{Capabilities, Engine, FreeCell, NodeInfo};

use crate::VIREO_XML_NAMESPACE;
use crate::xml::{XmlError, XmlWriter};

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn engine_name(engine: i32) -> &'static str {
    match Engine::try_from(engine) {
        Ok(Engine::Vmm) => "vmm",
        Ok(Engine::Qemu) => "qemu",
        _ => "unknown",
    }
}

/// Formats the host's capabilities. `cells` gives each NUMA cell's memory.
pub fn format(
    caps: &Capabilities,
    node: &NodeInfo,
    cells: &[FreeCell],
) -> Result<String, XmlError> {
    let mut xml = XmlWriter::new();
    xml.open("capabilities", &[])?;

    xml.open("host", &[])?;
    xml.text("uuid", &[], &caps.host_uuid)?;
    xml.open("cpu", &[])?;
    xml.text("arch", &[], &node.arch)?;
    xml.text("model", &[], &node.cpu_model_name)?;
    let sockets = (node.sockets_per_cell * node.numa_cells.max(1)).to_string();
    let cores = node.cores_per_socket.to_string();
    let threads = node.threads_per_core.to_string();
    xml.empty(
        "topology",
        &[
            ("sockets", &sockets),
            ("dies", "1"),
            ("cores", &cores),
            ("threads", &threads),
        ],
    )?;
    xml.close("cpu")?;
    xml.open("topology", &[])?;
    let cell_count = cells.len().to_string();
    xml.open("cells", &[("num", &cell_count)])?;
    for cell in cells {
        let id = cell.cell.to_string();
        xml.open("cell", &[("id", &id)])?;
        xml.text("memory", &[("unit", "KiB")], &cell.total_kib.to_string())?;
        xml.close("cell")?;
    }
    xml.close("cells")?;
    xml.close("topology")?;
    xml.close("host")?;

    let kvm_available = caps.kvm.as_ref().is_some_and(|kvm| kvm.available);
    let qemu = caps
        .engines
        .iter()
        .find(|engine| engine.engine == Engine::Qemu as i32);
    xml.open("guest", &[])?;
    xml.text("os_type", &[], "hvm")?;
    xml.open("arch", &[("name", &node.arch)])?;
    xml.text("wordsize", &[], "64")?;
    if let Some(qemu) = qemu.filter(|qemu| qemu.available) {
        xml.text("emulator", &[], &qemu.binary)?;
        xml.empty("domain", &[("type", "qemu")])?;
    }
    if kvm_available {
        xml.empty("domain", &[("type", "kvm")])?;
    }
    xml.close("arch")?;
    xml.open("features", &[])?;
    xml.empty("acpi", &[("default", "on"), ("toggle", "yes")])?;
    xml.empty("apic", &[("default", "on"), ("toggle", "no")])?;
    xml.close("features")?;
    xml.close("guest")?;

    xml.open("vireo:engines", &[("xmlns:vireo", VIREO_XML_NAMESPACE)])?;
    if let Some(kvm) = &caps.kvm {
        let api = kvm.api_version.to_string();
        let max_vcpus = kvm.max_vcpus.to_string();
        let mut attrs = vec![("available", yes_no(kvm.available)), ("api", api.as_str())];
        if !kvm.module.is_empty() {
            attrs.push(("module", kvm.module.as_str()));
        }
        attrs.push(("max_vcpus", max_vcpus.as_str()));
        if !kvm.available {
            attrs.push(("reason", kvm.unavailable_reason.as_str()));
        }
        xml.empty("vireo:kvm", &attrs)?;
    }
    for engine in &caps.engines {
        let accelerators = engine.accelerators.join(",");
        let mut attrs = vec![
            ("name", engine_name(engine.engine)),
            ("available", yes_no(engine.available)),
        ];
        if !engine.binary.is_empty() {
            attrs.push(("binary", engine.binary.as_str()));
        }
        if !engine.version.is_empty() {
            attrs.push(("version", engine.version.as_str()));
        }
        if !accelerators.is_empty() {
            attrs.push(("accelerators", accelerators.as_str()));
        }
        attrs.push(("stock_guests_on_kvm", yes_no(engine.stock_guests_on_kvm)));
        if !engine.available {
            attrs.push(("reason", engine.unavailable_reason.as_str()));
        }
        xml.empty("vireo:engine", &attrs)?;
    }
    xml.close("vireo:engines")?;

    xml.close("capabilities")?;
    Ok(xml.finish())
}

#[cfg(test)]
mod tests {
    use vireo_proto::compute::v1::{EngineInfo, KvmInfo};

    use super::*;

    #[test]
    fn matches_golden() {
        let caps = Capabilities {
            host_uuid: "5f0c3e4a-1b2c-4d5e-8f90-123456789abc".into(),
            arch: "x86_64".into(),
            cpu_model_name: "AMD EPYC 7B13".into(),
            kvm: Some(KvmInfo {
                available: true,
                api_version: 12,
                module: "kvm_pvm".into(),
                max_vcpus: 1024,
                ..Default::default()
            }),
            engines: vec![
                EngineInfo {
                    engine: Engine::Vmm as i32,
                    available: true,
                    binary: "/usr/local/bin/vireo-vmm".into(),
                    accelerators: vec!["kvm".into()],
                    ..Default::default()
                },
                EngineInfo {
                    engine: Engine::Qemu as i32,
                    available: true,
                    binary: "/usr/bin/qemu-system-x86_64".into(),
                    version: "7.2.0".into(),
                    accelerators: vec!["tcg".into()],
                    ..Default::default()
                },
            ],
            xml: String::new(),
        };
        let node = NodeInfo {
            arch: "x86_64".into(),
            cpu_model_name: "AMD EPYC 7B13".into(),
            cpus: 2,
            cpu_mhz: 2449,
            numa_cells: 1,
            sockets_per_cell: 1,
            cores_per_socket: 2,
            threads_per_core: 1,
            memory_kib: 24_567_932,
        };
        let cells = [FreeCell {
            cell: 0,
            free_kib: 1,
            total_kib: 24_567_932,
        }];
        let xml = format(&caps, &node, &cells).unwrap();
        let golden = include_str!("../tests/golden/capabilities.xml");
        assert_eq!(xml, golden, "got:\n{xml}");
    }
}
