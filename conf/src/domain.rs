//! libvirt domain XML <-> `DomainDefinition`: parse (every element and attribute is either
//! understood or refused by name), fill libvirt's defaults, validate, format in libvirt's layout.

use vireo_proto::compute::v1 as pb;

use crate::VIREO_XML_NAMESPACE;
use crate::dom::{self, ConfError, Element};
use crate::xml::XmlWriter;

/// The largest guest memory Vireo accepts: 16 TiB.
pub const MAX_MEMORY_KIB: u64 = 16 << 30;
/// The most vCPUs a definition may ask for.
pub const MAX_VCPUS: u32 = 255;

/// A libvirt keyword table: the XML word and the typed value.
pub type Table<T> = &'static [(&'static str, T)];

const DOMAIN_TYPES: Table<pb::DomainType> =
    &[("qemu", pb::DomainType::Qemu), ("kvm", pb::DomainType::Kvm)];
const ENGINES: Table<pb::Engine> = &[("vmm", pb::Engine::Vmm), ("qemu", pb::Engine::Qemu)];
const ACTIONS: Table<pb::DomainLifecycleAction> = &[
    ("destroy", pb::DomainLifecycleAction::Destroy),
    ("restart", pb::DomainLifecycleAction::Restart),
    ("preserve", pb::DomainLifecycleAction::Preserve),
    ("rename-restart", pb::DomainLifecycleAction::RenameRestart),
    (
        "coredump-destroy",
        pb::DomainLifecycleAction::CoredumpDestroy,
    ),
    (
        "coredump-restart",
        pb::DomainLifecycleAction::CoredumpRestart,
    ),
];
const PLACEMENTS: Table<pb::VcpuPlacement> = &[
    ("static", pb::VcpuPlacement::Static),
    ("auto", pb::VcpuPlacement::Auto),
];
const CPU_MODES: Table<pb::CpuMode> = &[
    ("custom", pb::CpuMode::Custom),
    ("host-model", pb::CpuMode::HostModel),
    ("host-passthrough", pb::CpuMode::HostPassthrough),
    ("maximum", pb::CpuMode::Maximum),
];
const CPU_MATCHES: Table<pb::CpuMatch> = &[
    ("minimum", pb::CpuMatch::Minimum),
    ("exact", pb::CpuMatch::Exact),
    ("strict", pb::CpuMatch::Strict),
];
const FEATURE_POLICIES: Table<pb::CpuFeaturePolicy> = &[
    ("force", pb::CpuFeaturePolicy::Force),
    ("require", pb::CpuFeaturePolicy::Require),
    ("optional", pb::CpuFeaturePolicy::Optional),
    ("disable", pb::CpuFeaturePolicy::Disable),
    ("forbid", pb::CpuFeaturePolicy::Forbid),
];
const BOOT_DEVICES: Table<pb::BootDevice> = &[
    ("hd", pb::BootDevice::Hd),
    ("cdrom", pb::BootDevice::Cdrom),
    ("network", pb::BootDevice::Network),
    ("fd", pb::BootDevice::Fd),
];
const LOADER_TYPES: Table<pb::LoaderType> = &[
    ("rom", pb::LoaderType::Rom),
    ("pflash", pb::LoaderType::Pflash),
];
const FIRMWARES: Table<pb::Firmware> = &[("bios", pb::Firmware::Bios), ("efi", pb::Firmware::Efi)];
const CLOCK_OFFSETS: Table<pb::ClockOffset> = &[
    ("utc", pb::ClockOffset::Utc),
    ("localtime", pb::ClockOffset::Localtime),
    ("timezone", pb::ClockOffset::Timezone),
    ("variable", pb::ClockOffset::Variable),
];
const TIMER_NAMES: Table<pb::TimerName> = &[
    ("platform", pb::TimerName::Platform),
    ("pit", pb::TimerName::Pit),
    ("rtc", pb::TimerName::Rtc),
    ("hpet", pb::TimerName::Hpet),
    ("tsc", pb::TimerName::Tsc),
    ("kvmclock", pb::TimerName::Kvmclock),
];
const TICK_POLICIES: Table<pb::TimerTickPolicy> = &[
    ("delay", pb::TimerTickPolicy::Delay),
    ("catchup", pb::TimerTickPolicy::Catchup),
    ("merge", pb::TimerTickPolicy::Merge),
    ("discard", pb::TimerTickPolicy::Discard),
];
const DISK_TYPES: Table<pb::DiskType> = &[
    ("file", pb::DiskType::File),
    ("block", pb::DiskType::Block),
    ("volume", pb::DiskType::Volume),
];
pub const DISK_DEVICES: Table<pb::DiskDevice> = &[
    ("disk", pb::DiskDevice::Disk),
    ("cdrom", pb::DiskDevice::Cdrom),
    ("floppy", pb::DiskDevice::Floppy),
];
pub const DISK_FORMATS: Table<pb::DiskFormat> = &[
    ("raw", pb::DiskFormat::Raw),
    ("qcow2", pb::DiskFormat::Qcow2),
];
pub const DISK_CACHES: Table<pb::DiskCache> = &[
    ("default", pb::DiskCache::Default),
    ("none", pb::DiskCache::None),
    ("writethrough", pb::DiskCache::Writethrough),
    ("writeback", pb::DiskCache::Writeback),
    ("directsync", pb::DiskCache::Directsync),
    ("unsafe", pb::DiskCache::Unsafe),
];
const DISK_IOS: Table<pb::DiskIo> = &[
    ("threads", pb::DiskIo::Threads),
    ("native", pb::DiskIo::Native),
    ("io_uring", pb::DiskIo::IoUring),
];
const DISK_DISCARDS: Table<pb::DiskDiscard> = &[
    ("ignore", pb::DiskDiscard::Ignore),
    ("unmap", pb::DiskDiscard::Unmap),
];
pub const DISK_BUSES: Table<pb::DiskBus> = &[
    ("virtio", pb::DiskBus::Virtio),
    ("ide", pb::DiskBus::Ide),
    ("sata", pb::DiskBus::Sata),
    ("scsi", pb::DiskBus::Scsi),
    ("fdc", pb::DiskBus::Fdc),
    ("usb", pb::DiskBus::Usb),
];
const CONTROLLER_TYPES: Table<pb::ControllerType> = &[
    ("ide", pb::ControllerType::Ide),
    ("fdc", pb::ControllerType::Fdc),
    ("scsi", pb::ControllerType::Scsi),
    ("sata", pb::ControllerType::Sata),
    ("usb", pb::ControllerType::Usb),
    ("virtio-serial", pb::ControllerType::VirtioSerial),
    ("pci", pb::ControllerType::Pci),
];
const CONTROLLER_MODELS: Table<pb::ControllerModel> = &[
    ("piix3-uhci", pb::ControllerModel::Piix3Uhci),
    ("piix4-uhci", pb::ControllerModel::Piix4Uhci),
    ("ich9-ehci1", pb::ControllerModel::Ich9Ehci1),
    ("qemu-xhci", pb::ControllerModel::QemuXhci),
    ("nec-xhci", pb::ControllerModel::NecXhci),
    ("none", pb::ControllerModel::None),
    ("virtio-scsi", pb::ControllerModel::VirtioScsi),
    ("lsilogic", pb::ControllerModel::Lsilogic),
    ("lsisas1068", pb::ControllerModel::Lsisas1068),
    ("pci-root", pb::ControllerModel::PciRoot),
    ("pcie-root", pb::ControllerModel::PcieRoot),
    ("pci-bridge", pb::ControllerModel::PciBridge),
    ("dmi-to-pci-bridge", pb::ControllerModel::DmiToPciBridge),
    ("pcie-root-port", pb::ControllerModel::PcieRootPort),
    (
        "pcie-switch-upstream-port",
        pb::ControllerModel::PcieSwitchUpstreamPort,
    ),
    (
        "pcie-switch-downstream-port",
        pb::ControllerModel::PcieSwitchDownstreamPort,
    ),
    ("pcie-to-pci-bridge", pb::ControllerModel::PcieToPciBridge),
];
pub const INTERFACE_TYPES: Table<pb::InterfaceType> = &[
    ("network", pb::InterfaceType::Network),
    ("bridge", pb::InterfaceType::Bridge),
    ("direct", pb::InterfaceType::Direct),
    ("user", pb::InterfaceType::User),
    ("ethernet", pb::InterfaceType::Ethernet),
];
const DIRECT_MODES: Table<pb::DirectMode> = &[
    ("vepa", pb::DirectMode::Vepa),
    ("bridge", pb::DirectMode::Bridge),
    ("private", pb::DirectMode::Private),
    ("passthrough", pb::DirectMode::Passthrough),
];
pub const INTERFACE_MODELS: Table<pb::InterfaceModel> = &[
    ("virtio", pb::InterfaceModel::Virtio),
    ("e1000", pb::InterfaceModel::E1000),
    ("e1000e", pb::InterfaceModel::E1000e),
    ("rtl8139", pb::InterfaceModel::Rtl8139),
    ("ne2k_pci", pb::InterfaceModel::Ne2kPci),
    ("pcnet", pb::InterfaceModel::Pcnet),
];
const CHAR_TYPES: Table<pb::CharSourceType> = &[
    ("pty", pb::CharSourceType::Pty),
    ("file", pb::CharSourceType::File),
    ("unix", pb::CharSourceType::Unix),
    ("tcp", pb::CharSourceType::Tcp),
];
const CHAR_MODES: Table<pb::CharSourceMode> = &[
    ("bind", pb::CharSourceMode::Bind),
    ("connect", pb::CharSourceMode::Connect),
];
const CHAR_PROTOCOLS: Table<pb::CharTcpProtocol> = &[
    ("raw", pb::CharTcpProtocol::Raw),
    ("telnet", pb::CharTcpProtocol::Telnet),
];
const CHAR_TARGETS: Table<pb::CharTargetType> = &[
    ("isa-serial", pb::CharTargetType::IsaSerial),
    ("pci-serial", pb::CharTargetType::PciSerial),
    ("usb-serial", pb::CharTargetType::UsbSerial),
    ("serial", pb::CharTargetType::Serial),
    ("virtio", pb::CharTargetType::Virtio),
];
const GRAPHICS_TYPES: Table<pb::GraphicsType> = &[
    ("vnc", pb::GraphicsType::Vnc),
    ("spice", pb::GraphicsType::Spice),
];
const VIDEO_MODELS: Table<pb::VideoModel> = &[
    ("vga", pb::VideoModel::Vga),
    ("cirrus", pb::VideoModel::Cirrus),
    ("qxl", pb::VideoModel::Qxl),
    ("virtio", pb::VideoModel::Virtio),
    ("bochs", pb::VideoModel::Bochs),
    ("ramfb", pb::VideoModel::Ramfb),
    ("none", pb::VideoModel::None),
];
const INPUT_TYPES: Table<pb::InputType> = &[
    ("mouse", pb::InputType::Mouse),
    ("tablet", pb::InputType::Tablet),
    ("keyboard", pb::InputType::Keyboard),
];
const INPUT_BUSES: Table<pb::InputBus> = &[
    ("ps2", pb::InputBus::Ps2),
    ("usb", pb::InputBus::Usb),
    ("virtio", pb::InputBus::Virtio),
];
const BALLOON_MODELS: Table<pb::MemballoonModel> = &[
    ("virtio", pb::MemballoonModel::Virtio),
    ("none", pb::MemballoonModel::None),
];
const RNG_MODELS: Table<pb::RngModel> = &[("virtio", pb::RngModel::Virtio)];
const RNG_BACKENDS: Table<pb::RngBackendModel> = &[
    ("random", pb::RngBackendModel::Random),
    ("builtin", pb::RngBackendModel::Builtin),
];
const PANIC_MODELS: Table<pb::PanicModel> = &[
    ("isa", pb::PanicModel::Isa),
    ("pvpanic", pb::PanicModel::Pvpanic),
    ("hyperv", pb::PanicModel::Hyperv),
];
const HOSTDEV_TYPES: Table<pb::HostdevType> = &[
    ("pci", pb::HostdevType::Pci),
    ("usb", pb::HostdevType::Usb),
    ("scsi", pb::HostdevType::Scsi),
];

fn word<T: Copy + PartialEq>(table: Table<T>, value: T) -> Option<&'static str> {
    table.iter().find(|(_, v)| *v == value).map(|(w, _)| *w)
}

/// The value of an XML word; the error names `field` and the words it could have been.
pub fn lookup<T: Copy>(table: Table<T>, text: &str, field: String) -> Result<T, ConfError> {
    table
        .iter()
        .find(|(w, _)| *w == text)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let known: Vec<&str> = table.iter().map(|(w, _)| *w).collect();
            ConfError::new(
                field,
                format!(
                    "'{text}' is not supported by Vireo (supported: {})",
                    known.join(", ")
                ),
            )
        })
}

fn keyword<T: Copy>(el: &mut Element, attr: &str, table: Table<T>) -> Result<Option<T>, ConfError> {
    match el.attr(attr) {
        None => Ok(None),
        Some(text) => lookup(table, &text, el.field(attr)).map(Some),
    }
}

pub(crate) fn enum_attr<T: Copy + Into<i32>>(
    el: &mut Element,
    attr: &str,
    table: Table<T>,
) -> Result<i32, ConfError> {
    Ok(keyword(el, attr, table)?.map_or(0, Into::into))
}

pub(crate) fn yes_no(el: &mut Element, attr: &str) -> Result<Option<bool>, ConfError> {
    match el.attr(attr).as_deref() {
        None => Ok(None),
        Some("yes" | "on") => Ok(Some(true)),
        Some("no" | "off") => Ok(Some(false)),
        Some(other) => Err(el.attr_error(attr, format!("'{other}' is not yes or no"))),
    }
}

/// A number in decimal or 0x hexadecimal.
pub(crate) fn number<T: TryFrom<u64>>(text: &str, field: &str) -> Result<T, ConfError> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse::<u64>(),
    };
    parsed
        .ok()
        .and_then(|value| T::try_from(value).ok())
        .ok_or_else(|| ConfError::new(field, format!("'{text}' is not a valid number here")))
}

pub(crate) fn number_attr<T: TryFrom<u64>>(
    el: &mut Element,
    attr: &str,
) -> Result<Option<T>, ConfError> {
    match el.attr(attr) {
        None => Ok(None),
        Some(text) => number(&text, &el.field(attr)).map(Some),
    }
}

fn signed_text(el: &mut Element) -> Result<i64, ConfError> {
    let text = el.text();
    text.parse()
        .map_err(|_| el.error(format!("'{text}' is not a valid number")))
}

/// A size with libvirt's unit= (default KiB), in KiB, rounded up.
fn size_kib(el: &mut Element) -> Result<u64, ConfError> {
    let unit = el.attr("unit");
    let text = el.text();
    let value: u64 = number(&text, &el.path)?;
    let unit_word = unit.as_deref().unwrap_or("KiB");
    // An explicit but empty unit='' is a mistake, not a request for the default.
    let scale = Some(unit_word)
        .filter(|word| !word.is_empty())
        .and_then(|word| crate::units::scale_of(word, 1024))
        .ok_or_else(|| el.attr_error("unit", format!("unknown unit '{unit_word}'")))?;
    let kib = (u128::from(value) * u128::from(scale)).div_ceil(1024);
    u64::try_from(kib)
        .ok()
        .filter(|kib| *kib <= MAX_MEMORY_KIB)
        .ok_or_else(|| {
            el.error(format!(
                "{value} {} is more than Vireo supports (at most {} KiB, 16 TiB)",
                unit.as_deref().unwrap_or("KiB"),
                MAX_MEMORY_KIB
            ))
        })
}

fn memory_limit(el: &mut Element) -> Result<pb::MemoryLimit, ConfError> {
    let text = el.text();
    if text == "unlimited" {
        return Ok(pb::MemoryLimit {
            value: Some(pb::memory_limit::Value::Unlimited(true)),
        });
    }
    el.set_text(text);
    Ok(pb::MemoryLimit {
        value: Some(pb::memory_limit::Value::Kib(size_kib(el)?)),
    })
}

/// Parses libvirt domain XML. Defaults are not filled and nothing is validated beyond syntax
/// and support: see `fill_defaults` and `validate`.
pub fn parse(xml: &str) -> Result<pb::DomainDefinition, ConfError> {
    let mut root = dom::parse(xml)?;
    if root.name != "domain" {
        return Err(root.error(format!(
            "the root element must be <domain>, not <{}>",
            root.name
        )));
    }
    let mut def = pb::DomainDefinition {
        r#type: enum_attr(&mut root, "type", DOMAIN_TYPES)?,
        ..Default::default()
    };
    if def.r#type == 0 {
        return Err(root.attr_error("type", "is required (kvm or qemu)"));
    }
    // A live dump's runtime id and our namespace declaration are accepted and not kept.
    let _ = root.attr("id");
    if let Some(ns) = root.attr("xmlns:vireo")
        && ns != VIREO_XML_NAMESPACE
    {
        return Err(root.attr_error("xmlns:vireo", format!("must be {VIREO_XML_NAMESPACE}")));
    }
    def.name = root.child_text("name")?.unwrap_or_default();
    def.uuid = root.child_text("uuid")?.unwrap_or_default();
    def.title = root.child_text("title")?.unwrap_or_default();
    def.description = root.child_text("description")?.unwrap_or_default();
    if let Some(mut metadata) = root.child("metadata") {
        let mut xml = String::new();
        for child in metadata.all_children() {
            child.to_xml(&mut xml);
        }
        def.metadata_xml = xml;
        metadata.finish()?;
    }
    if let Some(mut el) = root.child("memory") {
        def.memory_kib = size_kib(&mut el)?;
        el.finish()?;
    }
    if let Some(mut el) = root.child("currentMemory") {
        def.current_memory_kib = size_kib(&mut el)?;
        el.finish()?;
    }
    if let Some(el) = root.child("memtune") {
        def.memtune = Some(parse_memtune(el)?);
    }
    if let Some(el) = root.child("memoryBacking") {
        def.memory_backing = Some(parse_memory_backing(el)?);
    }
    if let Some(mut el) = root.child("vcpu") {
        let placement = enum_attr(&mut el, "placement", PLACEMENTS)?;
        let cpuset = el.attr("cpuset").unwrap_or_default();
        let current = number_attr(&mut el, "current")?;
        let text = el.text();
        let count = number(&text, &el.path)?;
        def.vcpu = Some(pb::DomainVcpus {
            count,
            current,
            placement,
            cpuset,
        });
        el.finish()?;
    }
    if let Some(el) = root.child("cputune") {
        def.cputune = Some(parse_cputune(el)?);
    }
    if let Some(el) = root.child("cpu") {
        def.cpu = Some(parse_cpu(el)?);
    }
    if let Some(el) = root.child("os") {
        def.os = Some(parse_os(el)?);
    }
    if let Some(mut el) = root.child("features") {
        let mut features = pb::DomainFeatures::default();
        for (name, flag) in [
            ("acpi", &mut features.acpi),
            ("apic", &mut features.apic),
            ("pae", &mut features.pae),
        ] {
            if let Some(child) = el.child(name) {
                *flag = true;
                child.finish()?;
            }
        }
        def.features = Some(features);
        el.finish()?;
    }
    if let Some(el) = root.child("clock") {
        def.clock = Some(parse_clock(el)?);
    }
    for (name, action) in [
        ("on_poweroff", &mut def.on_poweroff),
        ("on_reboot", &mut def.on_reboot),
        ("on_crash", &mut def.on_crash),
    ] {
        if let Some(mut el) = root.child(name) {
            let text = el.text();
            *action = lookup(ACTIONS, &text, el.path.clone())? as i32;
            el.finish()?;
        }
    }
    if let Some(el) = root.child("devices") {
        def.devices = Some(parse_devices(el)?);
    }
    if let Some(mut el) = root.child("vireo:engine") {
        if let Some(ns) = el.attr("xmlns:vireo")
            && ns != VIREO_XML_NAMESPACE
        {
            return Err(el.attr_error("xmlns:vireo", format!("must be {VIREO_XML_NAMESPACE}")));
        }
        let text = el.text();
        def.engine = lookup(ENGINES, &text, el.path.clone())? as i32;
        el.finish()?;
    }
    root.finish()?;
    Ok(def)
}

fn parse_memtune(mut el: Element) -> Result<pb::MemoryTune, ConfError> {
    let mut tune = pb::MemoryTune::default();
    for (name, limit) in [
        ("hard_limit", &mut tune.hard_limit),
        ("soft_limit", &mut tune.soft_limit),
        ("swap_hard_limit", &mut tune.swap_hard_limit),
        ("min_guarantee", &mut tune.min_guarantee),
    ] {
        if let Some(mut child) = el.child(name) {
            *limit = Some(memory_limit(&mut child)?);
            child.finish()?;
        }
    }
    el.finish()?;
    Ok(tune)
}

fn parse_memory_backing(mut el: Element) -> Result<pb::MemoryBacking, ConfError> {
    let mut backing = pb::MemoryBacking::default();
    if let Some(mut huge) = el.child("hugepages") {
        backing.hugepages = true;
        if let Some(mut page) = huge.child("page") {
            let size = page.required_attr("size")?;
            let unit = page.attr("unit");
            let mut sized = Element::default();
            sized.path = page.path.clone();
            sized.set_text(size);
            if let Some(unit) = unit {
                sized.set_attr("unit", unit);
            }
            backing.hugepage_size_kib = size_kib(&mut sized)?;
            page.finish()?;
        }
        huge.finish()?;
    }
    for (name, flag) in [
        ("nosharepages", &mut backing.nosharepages),
        ("locked", &mut backing.locked),
    ] {
        if let Some(child) = el.child(name) {
            *flag = true;
            child.finish()?;
        }
    }
    el.finish()?;
    Ok(backing)
}

fn parse_cputune(mut el: Element) -> Result<pb::CpuTune, ConfError> {
    let mut tune = pb::CpuTune::default();
    for mut pin in el.children("vcpupin") {
        tune.vcpupins.push(pb::VcpuPin {
            vcpu: number(&pin.required_attr("vcpu")?, &pin.field("vcpu"))?,
            cpuset: pin.required_attr("cpuset")?,
        });
        pin.finish()?;
    }
    if let Some(mut child) = el.child("shares") {
        let text = child.text();
        tune.shares = Some(number(&text, &child.path)?);
        child.finish()?;
    }
    if let Some(mut child) = el.child("period") {
        let text = child.text();
        tune.period_us = Some(number(&text, &child.path)?);
        child.finish()?;
    }
    if let Some(mut child) = el.child("quota") {
        tune.quota_us = Some(signed_text(&mut child)?);
        child.finish()?;
    }
    el.finish()?;
    Ok(tune)
}

fn parse_cpu(mut el: Element) -> Result<pb::DomainCpu, ConfError> {
    let mut cpu = pb::DomainCpu {
        mode: enum_attr(&mut el, "mode", CPU_MODES)?,
        r#match: enum_attr(&mut el, "match", CPU_MATCHES)?,
        ..Default::default()
    };
    let _ = el.attr("check");
    if let Some(mut model) = el.child("model") {
        let _ = model.attr("fallback");
        cpu.model = model.text();
        model.finish()?;
    }
    if let Some(mut topology) = el.child("topology") {
        cpu.topology = Some(pb::CpuTopology {
            sockets: number_attr(&mut topology, "sockets")?.unwrap_or(0),
            dies: number_attr(&mut topology, "dies")?.unwrap_or(0),
            cores: number_attr(&mut topology, "cores")?.unwrap_or(0),
            threads: number_attr(&mut topology, "threads")?.unwrap_or(0),
        });
        topology.finish()?;
    }
    for mut feature in el.children("feature") {
        cpu.features.push(pb::CpuFeature {
            policy: enum_attr(&mut feature, "policy", FEATURE_POLICIES)?,
            name: feature.required_attr("name")?,
        });
        feature.finish()?;
    }
    el.finish()?;
    Ok(cpu)
}

fn parse_os(mut el: Element) -> Result<pb::DomainOs, ConfError> {
    let mut os = pb::DomainOs {
        firmware: enum_attr(&mut el, "firmware", FIRMWARES)?,
        ..Default::default()
    };
    if let Some(mut ty) = el.child("type") {
        os.arch = ty.attr("arch").unwrap_or_default();
        os.machine = ty.attr("machine").unwrap_or_default();
        let text = ty.text();
        if text != "hvm" {
            return Err(ty.error(format!(
                "'{text}' is not supported by Vireo (supported: hvm)"
            )));
        }
        os.r#type = pb::OsType::Hvm as i32;
        ty.finish()?;
    }
    if let Some(mut loader) = el.child("loader") {
        os.loader = Some(pb::Loader {
            readonly: yes_no(&mut loader, "readonly")?.unwrap_or(false),
            r#type: enum_attr(&mut loader, "type", LOADER_TYPES)?,
            secure: yes_no(&mut loader, "secure")?.unwrap_or(false),
            path: loader.text(),
        });
        loader.finish()?;
    }
    if let Some(mut nvram) = el.child("nvram") {
        os.nvram_template = nvram.attr("template").unwrap_or_default();
        os.nvram = nvram.text();
        nvram.finish()?;
    }
    os.kernel = el.child_text("kernel")?.unwrap_or_default();
    os.initrd = el.child_text("initrd")?.unwrap_or_default();
    os.cmdline = el.child_text("cmdline")?.unwrap_or_default();
    for mut boot in el.children("boot") {
        os.boot
            .push(lookup(BOOT_DEVICES, &boot.required_attr("dev")?, boot.field("dev"))? as i32);
        boot.finish()?;
    }
    if let Some(mut menu) = el.child("bootmenu") {
        os.bootmenu = yes_no(&mut menu, "enable")?;
        os.bootmenu_timeout_ms = number_attr(&mut menu, "timeout")?;
        menu.finish()?;
    }
    el.finish()?;
    Ok(os)
}

fn parse_clock(mut el: Element) -> Result<pb::DomainClock, ConfError> {
    let mut clock = pb::DomainClock {
        offset: enum_attr(&mut el, "offset", CLOCK_OFFSETS)?,
        timezone: el.attr("timezone").unwrap_or_default(),
        ..Default::default()
    };
    if let Some(adjustment) = el.attr("adjustment") {
        clock.adjustment_s = adjustment
            .parse()
            .map_err(|_| el.attr_error("adjustment", "is not a number of seconds"))?;
    }
    for mut timer in el.children("timer") {
        clock.timers.push(pb::Timer {
            name: lookup(
                TIMER_NAMES,
                &timer.required_attr("name")?,
                timer.field("name"),
            )? as i32,
            tickpolicy: enum_attr(&mut timer, "tickpolicy", TICK_POLICIES)?,
            present: yes_no(&mut timer, "present")?,
            ..Default::default()
        });
        timer.finish()?;
    }
    el.finish()?;
    Ok(clock)
}

fn parse_address(el: &mut Element) -> Result<Option<pb::DeviceAddress>, ConfError> {
    let Some(mut address) = el.child("address") else {
        return Ok(None);
    };
    let kind = match address.required_attr("type")?.as_str() {
        "pci" => pb::device_address::Kind::Pci(pci_address(&mut address)?),
        "drive" => pb::device_address::Kind::Drive(pb::DriveAddress {
            controller: number_attr(&mut address, "controller")?.unwrap_or(0),
            bus: number_attr(&mut address, "bus")?.unwrap_or(0),
            target: number_attr(&mut address, "target")?.unwrap_or(0),
            unit: number_attr(&mut address, "unit")?.unwrap_or(0),
        }),
        other => {
            return Err(address.attr_error(
                "type",
                format!("'{other}' is not supported by Vireo (supported: pci, drive)"),
            ));
        }
    };
    address.finish()?;
    Ok(Some(pb::DeviceAddress { kind: Some(kind) }))
}

pub(crate) fn pci_address(el: &mut Element) -> Result<pb::PciAddress, ConfError> {
    Ok(pb::PciAddress {
        domain: number_attr(el, "domain")?.unwrap_or(0),
        bus: number_attr(el, "bus")?.unwrap_or(0),
        slot: number_attr(el, "slot")?.unwrap_or(0),
        function: number_attr(el, "function")?.unwrap_or(0),
        multifunction: yes_no(el, "multifunction")?.unwrap_or(false),
    })
}

/// `<alias name=.../>` belongs to the live definition; accepted and dropped on input.
fn skip_alias(el: &mut Element) -> Result<(), ConfError> {
    if let Some(mut alias) = el.child("alias") {
        let _ = alias.attr("name");
        alias.finish()?;
    }
    Ok(())
}

fn boot_order(el: &mut Element) -> Result<Option<u32>, ConfError> {
    match el.child("boot") {
        None => Ok(None),
        Some(mut boot) => {
            let order = number(&boot.required_attr("order")?, &boot.field("order"))?;
            boot.finish()?;
            Ok(Some(order))
        }
    }
}

/// One device element by its name, as attach-device receives it.
pub fn parse_device(xml: &str) -> Result<pb::DomainDevice, ConfError> {
    use pb::domain_device::Kind;
    let el = dom::parse(xml)?;
    let kind = match el.name.as_str() {
        "disk" => Kind::Disk(parse_disk(el)?),
        "controller" => Kind::Controller(parse_controller(el)?),
        "interface" => Kind::Interface(parse_interface(el)?),
        "serial" => Kind::Serial(parse_char(el)?),
        "console" => Kind::Console(parse_char(el)?),
        "graphics" => Kind::Graphics(parse_graphics(el)?),
        "video" => Kind::Video(parse_video(el)?),
        "input" => Kind::Input(parse_input(el)?),
        "memballoon" => Kind::Memballoon(parse_memballoon(el)?),
        "rng" => Kind::Rng(parse_rng(el)?),
        "hostdev" => Kind::Hostdev(parse_hostdev(el)?),
        "panic" => Kind::Panic(parse_panic(el)?),
        other => return Err(el.error(format!("<{other}> is not a device Vireo supports"))),
    };
    Ok(pb::DomainDevice { kind: Some(kind) })
}

fn parse_devices(mut el: Element) -> Result<pb::DomainDevices, ConfError> {
    let mut devices = pb::DomainDevices {
        emulator: el.child_text("emulator")?.unwrap_or_default(),
        ..Default::default()
    };
    for disk in el.children("disk") {
        devices.disks.push(parse_disk(disk)?);
    }
    for controller in el.children("controller") {
        devices.controllers.push(parse_controller(controller)?);
    }
    for interface in el.children("interface") {
        devices.interfaces.push(parse_interface(interface)?);
    }
    for serial in el.children("serial") {
        devices.serials.push(parse_char(serial)?);
    }
    for console in el.children("console") {
        devices.consoles.push(parse_char(console)?);
    }
    for graphics in el.children("graphics") {
        devices.graphics.push(parse_graphics(graphics)?);
    }
    for video in el.children("video") {
        devices.videos.push(parse_video(video)?);
    }
    for input in el.children("input") {
        devices.inputs.push(parse_input(input)?);
    }
    if let Some(balloon) = el.child("memballoon") {
        devices.memballoon = Some(parse_memballoon(balloon)?);
    }
    for rng in el.children("rng") {
        devices.rngs.push(parse_rng(rng)?);
    }
    for hostdev in el.children("hostdev") {
        devices.hostdevs.push(parse_hostdev(hostdev)?);
    }
    for panic in el.children("panic") {
        devices.panics.push(parse_panic(panic)?);
    }
    el.finish()?;
    Ok(devices)
}

fn parse_disk(mut el: Element) -> Result<pb::Disk, ConfError> {
    let mut disk = pb::Disk {
        r#type: lookup(DISK_TYPES, &el.required_attr("type")?, el.field("type"))? as i32,
        device: enum_attr(&mut el, "device", DISK_DEVICES)?,
        ..Default::default()
    };
    if let Some(mut driver) = el.child("driver") {
        let name = driver.attr("name");
        if let Some(name) = name.as_deref()
            && name != "qemu"
        {
            return Err(driver.attr_error("name", format!("'{name}' is not supported (qemu)")));
        }
        disk.driver = Some(pb::DiskDriver {
            name: if name.is_some() {
                pb::DiskDriverName::Qemu as i32
            } else {
                0
            },
            r#type: enum_attr(&mut driver, "type", DISK_FORMATS)?,
            cache: enum_attr(&mut driver, "cache", DISK_CACHES)?,
            io: enum_attr(&mut driver, "io", DISK_IOS)?,
            discard: enum_attr(&mut driver, "discard", DISK_DISCARDS)?,
        });
        driver.finish()?;
    }
    if let Some(mut source) = el.child("source") {
        disk.source = Some(pb::DiskSource {
            file: source.attr("file").unwrap_or_default(),
            dev: source.attr("dev").unwrap_or_default(),
            pool: source.attr("pool").unwrap_or_default(),
            volume: source.attr("volume").unwrap_or_default(),
            ..Default::default()
        });
        source.finish()?;
    }
    if let Some(backing) = el.child("backingStore") {
        // An empty <backingStore/> (libvirt's "no backing") carries nothing to keep.
        backing.finish()?;
    }
    if let Some(mut target) = el.child("target") {
        disk.target = Some(pb::DiskTarget {
            dev: target.required_attr("dev")?,
            bus: enum_attr(&mut target, "bus", DISK_BUSES)?,
        });
        target.finish()?;
    }
    for (name, flag) in [
        ("readonly", &mut disk.readonly),
        ("shareable", &mut disk.shareable),
    ] {
        if let Some(child) = el.child(name) {
            *flag = true;
            child.finish()?;
        }
    }
    disk.serial = el.child_text("serial")?.unwrap_or_default();
    disk.boot_order = boot_order(&mut el)?;
    disk.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(disk)
}

fn parse_controller(mut el: Element) -> Result<pb::Controller, ConfError> {
    let mut controller = pb::Controller {
        r#type: lookup(
            CONTROLLER_TYPES,
            &el.required_attr("type")?,
            el.field("type"),
        )? as i32,
        index: number_attr(&mut el, "index")?.unwrap_or(0),
        model: enum_attr(&mut el, "model", CONTROLLER_MODELS)?,
        ports: number_attr(&mut el, "ports")?,
        vectors: number_attr(&mut el, "vectors")?,
        ..Default::default()
    };
    if let Some(mut driver) = el.child("driver") {
        controller.queues = number_attr(&mut driver, "queues")?;
        driver.finish()?;
    }
    controller.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(controller)
}

fn parse_interface(mut el: Element) -> Result<pb::Interface, ConfError> {
    let mut interface = pb::Interface {
        r#type: lookup(
            INTERFACE_TYPES,
            &el.required_attr("type")?,
            el.field("type"),
        )? as i32,
        ..Default::default()
    };
    if let Some(mut source) = el.child("source") {
        interface.source = Some(pb::InterfaceSource {
            network: source.attr("network").unwrap_or_default(),
            bridge: source.attr("bridge").unwrap_or_default(),
            dev: source.attr("dev").unwrap_or_default(),
            mode: enum_attr(&mut source, "mode", DIRECT_MODES)?,
        });
        source.finish()?;
    }
    if let Some(mut mac) = el.child("mac") {
        interface.mac = mac.required_attr("address")?.to_ascii_lowercase();
        mac.finish()?;
    }
    if let Some(mut model) = el.child("model") {
        interface.model = lookup(
            INTERFACE_MODELS,
            &model.required_attr("type")?,
            model.field("type"),
        )? as i32;
        model.finish()?;
    }
    if let Some(mut target) = el.child("target") {
        interface.target_dev = target.required_attr("dev")?;
        target.finish()?;
    }
    if let Some(mut bandwidth) = el.child("bandwidth") {
        let mut limit = |name: &str| -> Result<Option<pb::BandwidthLimit>, ConfError> {
            let Some(mut direction) = bandwidth.child(name) else {
                return Ok(None);
            };
            let parsed = pb::BandwidthLimit {
                average_kbytes_s: number_attr(&mut direction, "average")?.ok_or_else(|| {
                    direction.attr_error("average", "is required (kilobytes per second)")
                })?,
                peak_kbytes_s: number_attr(&mut direction, "peak")?,
                burst_kbytes: number_attr(&mut direction, "burst")?,
                floor_kbytes_s: number_attr(&mut direction, "floor")?,
            };
            direction.finish()?;
            Ok(Some(parsed))
        };
        let inbound = limit("inbound")?;
        let outbound = limit("outbound")?;
        interface.bandwidth = Some(pb::InterfaceBandwidth { inbound, outbound });
        bandwidth.finish()?;
    }
    interface.boot_order = boot_order(&mut el)?;
    interface.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(interface)
}

fn parse_char(mut el: Element) -> Result<pb::CharDevice, ConfError> {
    let mut device = pb::CharDevice {
        r#type: lookup(CHAR_TYPES, &el.required_attr("type")?, el.field("type"))? as i32,
        ..Default::default()
    };
    // A live dump's tty= repeats the pty path of <source path=...>.
    let _ = el.attr("tty");
    if let Some(mut source) = el.child("source") {
        device.source = Some(pb::CharSource {
            path: source.attr("path").unwrap_or_default(),
            mode: enum_attr(&mut source, "mode", CHAR_MODES)?,
            host: source.attr("host").unwrap_or_default(),
            port: number_attr(&mut source, "service")?.unwrap_or(0),
            append: yes_no(&mut source, "append")?.unwrap_or(false),
            ..Default::default()
        });
        source.finish()?;
    }
    if let Some(mut protocol) = el.child("protocol") {
        let protocol_type = enum_attr(&mut protocol, "type", CHAR_PROTOCOLS)?;
        device.source.get_or_insert_default().protocol = protocol_type;
        protocol.finish()?;
    }
    if let Some(mut target) = el.child("target") {
        device.target = Some(pb::CharTarget {
            r#type: enum_attr(&mut target, "type", CHAR_TARGETS)?,
            port: number_attr(&mut target, "port")?,
            name: target.attr("name").unwrap_or_default(),
        });
        if let Some(mut model) = target.child("model") {
            // <model name='isa-serial'/> restates the target type.
            let _ = model.attr("name");
            model.finish()?;
        }
        target.finish()?;
    }
    device.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(device)
}

fn parse_graphics(mut el: Element) -> Result<pb::Graphics, ConfError> {
    let mut graphics = pb::Graphics {
        r#type: lookup(GRAPHICS_TYPES, &el.required_attr("type")?, el.field("type"))? as i32,
        autoport: yes_no(&mut el, "autoport")?.unwrap_or(false),
        listen: el.attr("listen").unwrap_or_default(),
        passwd: el.attr("passwd").unwrap_or_default(),
        keymap: el.attr("keymap").unwrap_or_default(),
        ..Default::default()
    };
    if let Some(port) = el.attr("port") {
        graphics.port = port
            .parse()
            .map_err(|_| el.attr_error("port", format!("'{port}' is not a port")))?;
    }
    for mut listen in el.children("listen") {
        match listen.required_attr("type")?.as_str() {
            "address" => {
                if let Some(address) = listen.attr("address") {
                    graphics.listen = address;
                }
            }
            "socket" => graphics.socket = listen.attr("socket").unwrap_or_default(),
            other => {
                return Err(listen.attr_error(
                    "type",
                    format!("'{other}' is not supported (address, socket)"),
                ));
            }
        }
        listen.finish()?;
    }
    el.finish()?;
    Ok(graphics)
}

fn parse_video(mut el: Element) -> Result<pb::Video, ConfError> {
    let mut video = pb::Video::default();
    if let Some(mut model) = el.child("model") {
        video.model = lookup(
            VIDEO_MODELS,
            &model.required_attr("type")?,
            model.field("type"),
        )? as i32;
        video.vram_kib = number_attr(&mut model, "vram")?;
        video.heads = number_attr(&mut model, "heads")?;
        video.primary = yes_no(&mut model, "primary")?.unwrap_or(false);
        model.finish()?;
    }
    video.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(video)
}

fn parse_input(mut el: Element) -> Result<pb::Input, ConfError> {
    let mut input = pb::Input {
        r#type: lookup(INPUT_TYPES, &el.required_attr("type")?, el.field("type"))? as i32,
        bus: enum_attr(&mut el, "bus", INPUT_BUSES)?,
        ..Default::default()
    };
    input.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(input)
}

fn parse_memballoon(mut el: Element) -> Result<pb::Memballoon, ConfError> {
    let mut balloon = pb::Memballoon {
        model: lookup(
            BALLOON_MODELS,
            &el.required_attr("model")?,
            el.field("model"),
        )? as i32,
        autodeflate: yes_no(&mut el, "autodeflate")?.unwrap_or(false),
        ..Default::default()
    };
    if let Some(mut stats) = el.child("stats") {
        balloon.stats_period_s = number_attr(&mut stats, "period")?;
        stats.finish()?;
    }
    balloon.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(balloon)
}

fn parse_rng(mut el: Element) -> Result<pb::Rng, ConfError> {
    let mut rng = pb::Rng {
        model: lookup(RNG_MODELS, &el.required_attr("model")?, el.field("model"))? as i32,
        ..Default::default()
    };
    if let Some(mut backend) = el.child("backend") {
        rng.backend_model = lookup(
            RNG_BACKENDS,
            &backend.required_attr("model")?,
            backend.field("model"),
        )? as i32;
        rng.backend_path = backend.text();
        backend.finish()?;
    }
    if let Some(mut rate) = el.child("rate") {
        rng.rate_bytes = number_attr(&mut rate, "bytes")?;
        rng.rate_period_ms = number_attr(&mut rate, "period")?;
        rate.finish()?;
    }
    rng.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(rng)
}

fn parse_panic(mut el: Element) -> Result<pb::Panic, ConfError> {
    let mut panic = pb::Panic {
        model: enum_attr(&mut el, "model", PANIC_MODELS)?,
        ..Default::default()
    };
    panic.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(panic)
}

fn parse_hostdev(mut el: Element) -> Result<pb::Hostdev, ConfError> {
    let mode = el.required_attr("mode")?;
    if mode != "subsystem" {
        return Err(el.attr_error("mode", format!("'{mode}' is not supported (subsystem)")));
    }
    let mut hostdev = pb::Hostdev {
        mode: pb::HostdevMode::Subsystem as i32,
        r#type: lookup(HOSTDEV_TYPES, &el.required_attr("type")?, el.field("type"))? as i32,
        managed: yes_no(&mut el, "managed")?.unwrap_or(false),
        ..Default::default()
    };
    if let Some(mut source) = el.child("source") {
        use pb::hostdev::Source;
        hostdev.source = Some(match hostdev.r#type() {
            pb::HostdevType::Pci => {
                let mut address = source
                    .child("address")
                    .ok_or_else(|| source.error("a PCI host device needs <address>"))?;
                let pci = pci_address(&mut address)?;
                address.finish()?;
                Source::Pci(pci)
            }
            pb::HostdevType::Usb => {
                let mut usb = pb::HostdevUsbSource::default();
                if let Some(mut vendor) = source.child("vendor") {
                    usb.vendor_id = number(&vendor.required_attr("id")?, &vendor.field("id"))?;
                    vendor.finish()?;
                }
                if let Some(mut product) = source.child("product") {
                    usb.product_id = number(&product.required_attr("id")?, &product.field("id"))?;
                    product.finish()?;
                }
                if let Some(mut address) = source.child("address") {
                    usb.bus = number_attr(&mut address, "bus")?.unwrap_or(0);
                    usb.device = number_attr(&mut address, "device")?.unwrap_or(0);
                    address.finish()?;
                }
                Source::Usb(usb)
            }
            _ => {
                let mut scsi = pb::HostdevScsiSource::default();
                if let Some(mut adapter) = source.child("adapter") {
                    scsi.adapter = adapter.required_attr("name")?;
                    adapter.finish()?;
                }
                if let Some(mut address) = source.child("address") {
                    scsi.bus = number_attr(&mut address, "bus")?.unwrap_or(0);
                    scsi.target = number_attr(&mut address, "target")?.unwrap_or(0);
                    scsi.unit = number_attr(&mut address, "unit")?.unwrap_or(0);
                    address.finish()?;
                }
                Source::Scsi(scsi)
            }
        });
        source.finish()?;
    }
    if let Some(mut driver) = el.child("driver") {
        let name = driver.required_attr("name")?;
        if name != "vfio" {
            return Err(driver.attr_error(
                "name",
                format!("'{name}' is not supported: host devices are assigned through vfio"),
            ));
        }
        hostdev.driver = name;
        driver.finish()?;
    }
    if let Some(mut rom) = el.child("rom") {
        hostdev.rom_bar = yes_no(&mut rom, "bar")?;
        hostdev.rom_file = rom.attr("file").unwrap_or_default();
        rom.finish()?;
    }
    hostdev.boot_order = boot_order(&mut el)?;
    for (name, flag) in [
        ("readonly", &mut hostdev.readonly),
        ("shareable", &mut hostdev.shareable),
    ] {
        if let Some(child) = el.child(name) {
            *flag = true;
            child.finish()?;
        }
    }
    hostdev.address = parse_address(&mut el)?;
    skip_alias(&mut el)?;
    el.finish()?;
    Ok(hostdev)
}

// ============================================================================================
// Defaults and validation
// ============================================================================================

/// 16 random bytes from the kernel.
fn random_bytes() -> [u8; 16] {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut bytes);
    }
    bytes
}

/// A random (version 4) UUID in dashed form.
pub fn random_uuid() -> String {
    let mut b = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random MAC in QEMU's locally administered 52:54:00 range, as libvirt generates.
pub fn random_mac() -> String {
    let b = random_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// The bus a target name implies, as libvirt infers it (vdX virtio, hdX ide, sdX scsi, fdX fdc).
fn bus_of_target(dev: &str) -> pb::DiskBus {
    match dev.get(..2) {
        Some("hd") => pb::DiskBus::Ide,
        Some("sd") => pb::DiskBus::Scsi,
        Some("fd") => pb::DiskBus::Fdc,
        _ => pb::DiskBus::Virtio,
    }
}

/// Fills what libvirt fills when a definition leaves it out.
pub fn fill_defaults(def: &mut pb::DomainDefinition) {
    if def.uuid.is_empty() {
        def.uuid = random_uuid();
    }
    def.uuid = def.uuid.to_ascii_lowercase();
    if def.current_memory_kib == 0 || def.current_memory_kib > def.memory_kib {
        def.current_memory_kib = def.memory_kib;
    }
    let vcpu = def.vcpu.get_or_insert(pb::DomainVcpus {
        count: 1,
        ..Default::default()
    });
    if vcpu.placement == 0 {
        vcpu.placement = pb::VcpuPlacement::Static as i32;
    }
    let os = def.os.get_or_insert_default();
    os.r#type = pb::OsType::Hvm as i32;
    if os.arch.is_empty() {
        os.arch = "x86_64".to_string();
    }
    if os.kernel.is_empty() && os.boot.is_empty() && os.firmware == 0 {
        os.boot.push(pb::BootDevice::Hd as i32);
    }
    for (action, default) in [
        (&mut def.on_poweroff, pb::DomainLifecycleAction::Destroy),
        (&mut def.on_reboot, pb::DomainLifecycleAction::Restart),
        (&mut def.on_crash, pb::DomainLifecycleAction::Destroy),
    ] {
        if *action == 0 {
            *action = default as i32;
        }
    }
    let devices = def.devices.get_or_insert_default();
    for disk in &mut devices.disks {
        if disk.device == 0 {
            disk.device = pb::DiskDevice::Disk as i32;
        }
        let is_volume = disk.r#type() == pb::DiskType::Volume;
        let driver = disk.driver.get_or_insert_default();
        driver.name = pb::DiskDriverName::Qemu as i32;
        // A volume's own format decides when it is resolved at start.
        if driver.r#type == 0 && !is_volume {
            driver.r#type = pb::DiskFormat::Raw as i32;
        }
        if let Some(target) = disk.target.as_mut()
            && target.bus == 0
        {
            target.bus = bus_of_target(&target.dev) as i32;
        }
        // libvirt makes every CD-ROM read-only.
        if disk.device == pb::DiskDevice::Cdrom as i32 {
            disk.readonly = true;
        }
    }
    for interface in &mut devices.interfaces {
        if interface.mac.is_empty() {
            interface.mac = random_mac();
        }
        if interface.model == 0 {
            interface.model = pb::InterfaceModel::Virtio as i32;
        }
    }
    for (port, serial) in (0u32..).zip(devices.serials.iter_mut()) {
        let target = serial.target.get_or_insert_default();
        if target.r#type == 0 {
            target.r#type = pb::CharTargetType::IsaSerial as i32;
        }
        target.port.get_or_insert(port);
    }
    for console in &mut devices.consoles {
        let target = console.target.get_or_insert_default();
        if target.r#type == 0 {
            target.r#type = pb::CharTargetType::Serial as i32;
        }
        target.port.get_or_insert(0);
    }
    // libvirt gives a guest with a serial port a console on it.
    if devices.consoles.is_empty()
        && let Some(serial) = devices.serials.first()
    {
        devices.consoles.push(pb::CharDevice {
            r#type: serial.r#type,
            source: serial.source.clone(),
            target: Some(pb::CharTarget {
                r#type: pb::CharTargetType::Serial as i32,
                port: Some(0),
                name: String::new(),
            }),
            ..Default::default()
        });
    }
    if devices.memballoon.is_none() {
        devices.memballoon = Some(pb::Memballoon {
            model: pb::MemballoonModel::Virtio as i32,
            ..Default::default()
        });
    }
    for graphics in &mut devices.graphics {
        if graphics.port == 0 && !graphics.autoport {
            graphics.autoport = true;
            graphics.port = -1;
        }
    }
}

/// libvirt's defaults for one device given on its own (attach-device, attach-disk, ...): a
/// disk's driver and bus, an interface's MAC and model.
pub fn fill_device_defaults(device: &mut pb::DomainDevice) {
    use pb::domain_device::Kind;
    let mut def = pb::DomainDefinition::default();
    let devices = def.devices.get_or_insert_default();
    match device.kind.take() {
        Some(Kind::Disk(disk)) => devices.disks.push(disk),
        Some(Kind::Interface(interface)) => devices.interfaces.push(interface),
        other => {
            device.kind = other;
            return;
        }
    }
    fill_defaults(&mut def);
    let devices = def.devices.unwrap_or_default();
    device.kind = devices
        .disks
        .into_iter()
        .next()
        .map(Kind::Disk)
        .or_else(|| devices.interfaces.into_iter().next().map(Kind::Interface));
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !name.starts_with(['.', '-'])
}

/// A domain name, as Vireo accepts it in definitions and requests.
pub fn check_name(name: &str, field: &str) -> Result<(), ConfError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!(
                "'{}' is not a valid name: use 1-64 letters, digits, '_', '.', '-', not starting with '.' or '-'",
                name.escape_debug()
            ),
        ))
    }
}

pub(crate) fn valid_uuid(uuid: &str) -> bool {
    let bytes = uuid.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A host path from a definition: absolute, without `..`, without control characters.
pub fn check_host_path(path: &str, field: &str) -> Result<(), ConfError> {
    let problem = if !path.starts_with('/') {
        Some("must be an absolute path")
    } else if path.split('/').any(|part| part == "..") {
        Some("must not contain '..'")
    } else if path.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if path.len() > 4096 {
        Some("is longer than 4096 bytes")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfError::new(
            field,
            format!("'{}' {problem}", path.escape_debug()),
        )),
        None => Ok(()),
    }
}

/// libvirt's CPU list syntax: "0-3,^2,6".
pub fn parse_cpuset(text: &str, field: &str) -> Result<Vec<u32>, ConfError> {
    let bad = || {
        ConfError::new(
            field,
            format!("'{text}' is not a CPU list such as 0-3,^2,6"),
        )
    };
    let mut cpus = std::collections::BTreeSet::new();
    for part in text.split(',').map(str::trim) {
        let (exclude, range) = match part.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        let (low, high) = match range.split_once('-') {
            Some((low, high)) => (low, high),
            None => (range, range),
        };
        let low: u32 = low.trim().parse().map_err(|_| bad())?;
        let high: u32 = high.trim().parse().map_err(|_| bad())?;
        if low > high || high >= 4096 {
            return Err(bad());
        }
        for cpu in low..=high {
            if exclude {
                cpus.remove(&cpu);
            } else {
                cpus.insert(cpu);
            }
        }
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    Ok(cpus.into_iter().collect())
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|first| first & 1 == 0)
}

fn valid_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a definition after defaults are filled: every value names its field when wrong.
pub fn validate(def: &pb::DomainDefinition) -> Result<(), ConfError> {
    check_name(&def.name, "domain/name")?;
    if !valid_uuid(&def.uuid) {
        return Err(ConfError::new(
            "domain/uuid",
            format!("'{}' is not a UUID", def.uuid),
        ));
    }
    if def.memory_kib < 1024 {
        return Err(ConfError::new(
            "domain/memory",
            "is required and must be at least 1 MiB",
        ));
    }
    if def.memory_kib > MAX_MEMORY_KIB {
        return Err(ConfError::new(
            "domain/memory",
            format!(
                "{} KiB is more than Vireo supports (at most 16 TiB)",
                def.memory_kib
            ),
        ));
    }
    let vcpu = def.vcpu.clone().unwrap_or_default();
    if vcpu.count == 0 || vcpu.count > MAX_VCPUS {
        return Err(ConfError::new(
            "domain/vcpu",
            format!("{} vCPUs: must be 1-{MAX_VCPUS}", vcpu.count),
        ));
    }
    if vcpu
        .current
        .is_some_and(|current| current == 0 || current > vcpu.count)
    {
        return Err(ConfError::new(
            "domain/vcpu@current",
            format!("must be 1-{} (the vcpu count)", vcpu.count),
        ));
    }
    if !vcpu.cpuset.is_empty() {
        parse_cpuset(&vcpu.cpuset, "domain/vcpu@cpuset")?;
    }
    if let Some(tune) = &def.cputune {
        for pin in &tune.vcpupins {
            if pin.vcpu >= vcpu.count {
                return Err(ConfError::new(
                    "domain/cputune/vcpupin@vcpu",
                    format!(
                        "vCPU {} does not exist (the domain has {})",
                        pin.vcpu, vcpu.count
                    ),
                ));
            }
            parse_cpuset(&pin.cpuset, "domain/cputune/vcpupin@cpuset")?;
        }
        if tune
            .shares
            .is_some_and(|shares| shares == 0 || shares > 262_144)
        {
            return Err(ConfError::new("domain/cputune/shares", "must be 1-262144"));
        }
        if tune
            .period_us
            .is_some_and(|period| !(1000..=1_000_000).contains(&period))
        {
            return Err(ConfError::new(
                "domain/cputune/period",
                "must be 1000-1000000 µs",
            ));
        }
        if tune
            .quota_us
            .is_some_and(|quota| quota != -1 && !(1000..=17_592_186_044_415).contains(&quota))
        {
            return Err(ConfError::new(
                "domain/cputune/quota",
                "must be -1 (unlimited) or at least 1000 µs",
            ));
        }
    }
    if let Some(os) = &def.os {
        if os.arch != "x86_64" {
            return Err(ConfError::new(
                "domain/os/type@arch",
                format!("'{}' is not supported (x86_64)", os.arch),
            ));
        }
        for (value, field) in [
            (&os.kernel, "domain/os/kernel"),
            (&os.initrd, "domain/os/initrd"),
            (&os.nvram, "domain/os/nvram"),
        ] {
            if !value.is_empty() {
                check_host_path(value, field)?;
            }
        }
        if let Some(loader) = &os.loader {
            check_host_path(&loader.path, "domain/os/loader")?;
        }
        if !os.initrd.is_empty() && os.kernel.is_empty() {
            return Err(ConfError::new("domain/os/initrd", "needs <kernel>"));
        }
        if os.cmdline.len() > 2047 {
            return Err(ConfError::new(
                "domain/os/cmdline",
                "is longer than 2047 bytes (the x86 boot protocol's limit)",
            ));
        }
    }
    if let Some(tune) = &def.memtune {
        check_memory_limits(tune, "domain/memtune")?;
    }
    if let Some(devices) = &def.devices {
        validate_devices(devices)?;
    }
    Ok(())
}

/// Memory limits (memtune) within what Vireo supports.
pub fn check_memory_limits(tune: &pb::MemoryTune, field: &str) -> Result<(), ConfError> {
    for (name, limit) in [
        ("hard_limit", &tune.hard_limit),
        ("soft_limit", &tune.soft_limit),
        ("swap_hard_limit", &tune.swap_hard_limit),
        ("min_guarantee", &tune.min_guarantee),
    ] {
        if let Some(pb::memory_limit::Value::Kib(kib)) = limit.as_ref().and_then(|l| l.value)
            && kib > MAX_MEMORY_KIB
        {
            return Err(ConfError::new(
                format!("{field}/{name}"),
                format!("{kib} KiB is more than Vireo supports (at most 16 TiB)"),
            ));
        }
    }
    Ok(())
}

fn validate_devices(devices: &pb::DomainDevices) -> Result<(), ConfError> {
    let mut targets = std::collections::BTreeSet::new();
    for disk in &devices.disks {
        let target = disk
            .target
            .as_ref()
            .ok_or_else(|| ConfError::new("domain/devices/disk/target", "is required"))?;
        let field = format!("domain/devices/disk[{}]/target@dev", target.dev);
        if !target
            .dev
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            || target.dev.len() < 3
            || target.dev.len() > 8
        {
            return Err(ConfError::new(
                field,
                format!(
                    "'{}' is not a disk target name such as vda or hdc",
                    target.dev
                ),
            ));
        }
        if !targets.insert(target.dev.clone()) {
            return Err(ConfError::new(field, "is used by two disks"));
        }
        let source = disk.source.clone().unwrap_or_default();
        let source_field = format!("domain/devices/disk[{}]/source", target.dev);
        match disk.r#type() {
            pb::DiskType::File if !source.file.is_empty() => {
                check_host_path(&source.file, &format!("{source_field}@file"))?;
            }
            pb::DiskType::Block if !source.dev.is_empty() => {
                check_host_path(&source.dev, &format!("{source_field}@dev"))?;
            }
            pb::DiskType::Volume => {
                check_name(&source.pool, &format!("{source_field}@pool"))?;
                if source.volume.is_empty() || source.volume.contains('/') {
                    return Err(ConfError::new(
                        format!("{source_field}@volume"),
                        "must name a volume of the pool",
                    ));
                }
            }
            _ if disk.device == pb::DiskDevice::Disk as i32 => {
                return Err(ConfError::new(source_field, "a disk needs a source"));
            }
            _ => {}
        }
    }
    for interface in &devices.interfaces {
        let field = format!("domain/devices/interface[{}]", interface.mac);
        if !valid_mac(&interface.mac) {
            return Err(ConfError::new(
                format!("{field}/mac@address"),
                format!("'{}' is not a unicast MAC address", interface.mac),
            ));
        }
        let source = interface.source.clone().unwrap_or_default();
        let needed = match interface.r#type() {
            pb::InterfaceType::Network => Some(("network", &source.network)),
            pb::InterfaceType::Bridge => Some(("bridge", &source.bridge)),
            pb::InterfaceType::Direct => Some(("dev", &source.dev)),
            _ => None,
        };
        if let Some((attr, value)) = needed
            && !valid_device_name(value)
        {
            return Err(ConfError::new(
                format!("{field}/source@{attr}"),
                format!("'{}' is not a valid name", value.escape_debug()),
            ));
        }
        if !interface.target_dev.is_empty() && !valid_device_name(&interface.target_dev) {
            return Err(ConfError::new(
                format!("{field}/target@dev"),
                "is not a valid interface name (at most 15 characters)",
            ));
        }
    }
    for (kind, list) in [("serial", &devices.serials), ("console", &devices.consoles)] {
        for device in list {
            let path = device
                .source
                .as_ref()
                .map(|s| s.path.as_str())
                .unwrap_or("");
            let field = format!("domain/devices/{kind}/source@path");
            match device.r#type() {
                pb::CharSourceType::File | pb::CharSourceType::Unix => {
                    if path.is_empty() {
                        return Err(ConfError::new(field, "is required"));
                    }
                    check_host_path(path, &field)?;
                }
                _ => {}
            }
        }
    }
    if let Some(rng) = devices.rngs.first()
        && rng.backend_model == pb::RngBackendModel::Random as i32
        && !rng.backend_path.is_empty()
    {
        check_host_path(&rng.backend_path, "domain/devices/rng/backend")?;
    }
    for hostdev in &devices.hostdevs {
        if !hostdev.rom_file.is_empty() {
            check_host_path(&hostdev.rom_file, "domain/devices/hostdev/rom@file")?;
        }
        let pci = hostdev.r#type == pb::HostdevType::Pci as i32;
        if !pci
            && (!hostdev.driver.is_empty()
                || hostdev.rom_bar.is_some()
                || !hostdev.rom_file.is_empty())
        {
            return Err(ConfError::new(
                "domain/devices/hostdev",
                "<driver> and <rom> are for PCI host devices",
            ));
        }
    }
    Ok(())
}

/// Parses, fills defaults and validates: what define and create accept.
pub fn parse_definition(xml: &str) -> Result<pb::DomainDefinition, ConfError> {
    let mut def = parse(xml)?;
    fill_defaults(&mut def);
    validate(&def)?;
    Ok(def)
}

// ============================================================================================
// Formatting
// ============================================================================================

/// Attributes in the order they are set, skipping empty values.
#[derive(Default)]
pub(crate) struct Attrs(Vec<(&'static str, String)>);

impl Attrs {
    pub(crate) fn set(mut self, key: &'static str, value: impl ToString) -> Attrs {
        let value = value.to_string();
        if !value.is_empty() {
            self.0.push((key, value));
        }
        self
    }

    pub(crate) fn word<T: Copy + PartialEq + TryFrom<i32>>(
        self,
        key: &'static str,
        table: Table<T>,
        value: i32,
    ) -> Attrs {
        match T::try_from(value).ok().and_then(|v| word(table, v)) {
            Some(text) => self.set(key, text),
            None => self,
        }
    }

    fn yes(self, key: &'static str, value: bool) -> Attrs {
        if value { self.set(key, "yes") } else { self }
    }

    pub(crate) fn refs(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// The XML word of a proto enum value ("" when it has none).
pub fn name_of<T: Copy + PartialEq + TryFrom<i32>>(table: Table<T>, value: i32) -> &'static str {
    T::try_from(value)
        .ok()
        .and_then(|v| word(table, v))
        .unwrap_or("")
}

pub(crate) type Fmt = Result<(), crate::XmlError>;

/// The definition as libvirt domain XML. `id` is the runtime id of a running domain.
pub fn format(def: &pb::DomainDefinition, id: Option<i32>) -> Result<String, crate::XmlError> {
    let mut x = XmlWriter::new();
    let mut root = Attrs::default().word("type", DOMAIN_TYPES, def.r#type);
    if let Some(id) = id {
        root = root.set("id", id);
    }
    if def.engine != 0 {
        root = root.set("xmlns:vireo", VIREO_XML_NAMESPACE);
    }
    x.open("domain", &root.refs())?;
    x.text("name", &[], &def.name)?;
    x.text("uuid", &[], &def.uuid)?;
    if !def.title.is_empty() {
        x.text("title", &[], &def.title)?;
    }
    if !def.description.is_empty() {
        x.text("description", &[], &def.description)?;
    }
    if !def.metadata_xml.is_empty() {
        x.raw("metadata", &def.metadata_xml)?;
    }
    x.text("memory", &[("unit", "KiB")], &def.memory_kib.to_string())?;
    x.text(
        "currentMemory",
        &[("unit", "KiB")],
        &def.current_memory_kib.to_string(),
    )?;
    if let Some(tune) = &def.memtune {
        format_memtune(&mut x, tune)?;
    }
    if let Some(backing) = &def.memory_backing {
        format_memory_backing(&mut x, backing)?;
    }
    if let Some(vcpu) = &def.vcpu {
        let attrs = Attrs::default()
            .word("placement", PLACEMENTS, vcpu.placement)
            .set("cpuset", &vcpu.cpuset)
            .set(
                "current",
                vcpu.current.map(|c| c.to_string()).unwrap_or_default(),
            );
        x.text("vcpu", &attrs.refs(), &vcpu.count.to_string())?;
    }
    if let Some(tune) = &def.cputune {
        format_cputune(&mut x, tune)?;
    }
    if let Some(os) = &def.os {
        format_os(&mut x, os)?;
    }
    if let Some(features) = &def.features {
        x.open("features", &[])?;
        for (name, on) in [
            ("acpi", features.acpi),
            ("apic", features.apic),
            ("pae", features.pae),
        ] {
            if on {
                x.empty(name, &[])?;
            }
        }
        x.close("features")?;
    }
    if let Some(cpu) = &def.cpu {
        format_cpu(&mut x, cpu)?;
    }
    if let Some(clock) = &def.clock {
        format_clock(&mut x, clock)?;
    }
    for (name, action) in [
        ("on_poweroff", def.on_poweroff),
        ("on_reboot", def.on_reboot),
        ("on_crash", def.on_crash),
    ] {
        let text = name_of(ACTIONS, action);
        if !text.is_empty() {
            x.text(name, &[], text)?;
        }
    }
    if let Some(devices) = &def.devices {
        format_devices(&mut x, devices)?;
    }
    if def.engine != 0 {
        x.text("vireo:engine", &[], name_of(ENGINES, def.engine))?;
    }
    x.close("domain")?;
    Ok(x.finish())
}

fn format_limit(x: &mut XmlWriter, name: &str, limit: Option<&pb::MemoryLimit>) -> Fmt {
    match limit.and_then(|l| l.value.as_ref()) {
        Some(pb::memory_limit::Value::Kib(kib)) => {
            x.text(name, &[("unit", "KiB")], &kib.to_string())
        }
        Some(pb::memory_limit::Value::Unlimited(_)) => x.text(name, &[], "unlimited"),
        None => Ok(()),
    }
}

fn format_memtune(x: &mut XmlWriter, tune: &pb::MemoryTune) -> Fmt {
    x.open("memtune", &[])?;
    format_limit(x, "hard_limit", tune.hard_limit.as_ref())?;
    format_limit(x, "soft_limit", tune.soft_limit.as_ref())?;
    format_limit(x, "swap_hard_limit", tune.swap_hard_limit.as_ref())?;
    format_limit(x, "min_guarantee", tune.min_guarantee.as_ref())?;
    x.close("memtune")
}

fn format_memory_backing(x: &mut XmlWriter, backing: &pb::MemoryBacking) -> Fmt {
    x.open("memoryBacking", &[])?;
    if backing.hugepages {
        if backing.hugepage_size_kib == 0 {
            x.empty("hugepages", &[])?;
        } else {
            x.open("hugepages", &[])?;
            let size = backing.hugepage_size_kib.to_string();
            x.empty("page", &[("size", &size), ("unit", "KiB")])?;
            x.close("hugepages")?;
        }
    }
    if backing.nosharepages {
        x.empty("nosharepages", &[])?;
    }
    if backing.locked {
        x.empty("locked", &[])?;
    }
    x.close("memoryBacking")
}

fn format_cputune(x: &mut XmlWriter, tune: &pb::CpuTune) -> Fmt {
    x.open("cputune", &[])?;
    if let Some(shares) = tune.shares {
        x.text("shares", &[], &shares.to_string())?;
    }
    if let Some(period) = tune.period_us {
        x.text("period", &[], &period.to_string())?;
    }
    if let Some(quota) = tune.quota_us {
        x.text("quota", &[], &quota.to_string())?;
    }
    for pin in &tune.vcpupins {
        let vcpu = pin.vcpu.to_string();
        x.empty("vcpupin", &[("vcpu", &vcpu), ("cpuset", &pin.cpuset)])?;
    }
    x.close("cputune")
}

fn format_cpu(x: &mut XmlWriter, cpu: &pb::DomainCpu) -> Fmt {
    let attrs =
        Attrs::default()
            .word("mode", CPU_MODES, cpu.mode)
            .word("match", CPU_MATCHES, cpu.r#match);
    x.open("cpu", &attrs.refs())?;
    if !cpu.model.is_empty() {
        x.text("model", &[], &cpu.model)?;
    }
    if let Some(t) = &cpu.topology {
        let attrs = Attrs::default()
            .set("sockets", t.sockets)
            .set(
                "dies",
                if t.dies == 0 {
                    String::new()
                } else {
                    t.dies.to_string()
                },
            )
            .set("cores", t.cores)
            .set("threads", t.threads);
        x.empty("topology", &attrs.refs())?;
    }
    for feature in &cpu.features {
        let attrs = Attrs::default()
            .word("policy", FEATURE_POLICIES, feature.policy)
            .set("name", &feature.name);
        x.empty("feature", &attrs.refs())?;
    }
    x.close("cpu")
}

fn format_os(x: &mut XmlWriter, os: &pb::DomainOs) -> Fmt {
    let attrs = Attrs::default().word("firmware", FIRMWARES, os.firmware);
    x.open("os", &attrs.refs())?;
    let attrs = Attrs::default()
        .set("arch", &os.arch)
        .set("machine", &os.machine);
    x.text("type", &attrs.refs(), "hvm")?;
    if let Some(loader) = &os.loader {
        let attrs = Attrs::default()
            .yes("readonly", loader.readonly)
            .yes("secure", loader.secure)
            .word("type", LOADER_TYPES, loader.r#type);
        x.text("loader", &attrs.refs(), &loader.path)?;
    }
    if !os.nvram.is_empty() {
        let attrs = Attrs::default().set("template", &os.nvram_template);
        x.text("nvram", &attrs.refs(), &os.nvram)?;
    }
    for (name, value) in [
        ("kernel", &os.kernel),
        ("initrd", &os.initrd),
        ("cmdline", &os.cmdline),
    ] {
        if !value.is_empty() {
            x.text(name, &[], value)?;
        }
    }
    for boot in &os.boot {
        x.empty("boot", &[("dev", name_of(BOOT_DEVICES, *boot))])?;
    }
    if os.bootmenu.is_some() || os.bootmenu_timeout_ms.is_some() {
        let attrs = Attrs::default()
            .set(
                "enable",
                match os.bootmenu {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "",
                },
            )
            .set(
                "timeout",
                os.bootmenu_timeout_ms
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            );
        x.empty("bootmenu", &attrs.refs())?;
    }
    x.close("os")
}

fn format_clock(x: &mut XmlWriter, clock: &pb::DomainClock) -> Fmt {
    let mut attrs = Attrs::default()
        .word("offset", CLOCK_OFFSETS, clock.offset)
        .set("timezone", &clock.timezone);
    if clock.offset == pb::ClockOffset::Variable as i32 {
        attrs = attrs.set("adjustment", clock.adjustment_s);
    }
    if clock.timers.is_empty() {
        return x.empty("clock", &attrs.refs());
    }
    x.open("clock", &attrs.refs())?;
    for timer in &clock.timers {
        let attrs = Attrs::default()
            .word("name", TIMER_NAMES, timer.name)
            .word("tickpolicy", TICK_POLICIES, timer.tickpolicy)
            .set(
                "present",
                match timer.present {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "",
                },
            );
        x.empty("timer", &attrs.refs())?;
    }
    x.close("clock")
}

fn format_address(x: &mut XmlWriter, address: Option<&pb::DeviceAddress>) -> Fmt {
    match address.and_then(|a| a.kind.as_ref()) {
        Some(pb::device_address::Kind::Pci(pci)) => {
            let mut attrs = Attrs::default().set("type", "pci");
            attrs = pci_attrs(attrs, pci);
            x.empty("address", &attrs.refs())
        }
        Some(pb::device_address::Kind::Drive(drive)) => {
            let attrs = Attrs::default()
                .set("type", "drive")
                .set("controller", drive.controller)
                .set("bus", drive.bus)
                .set("target", drive.target)
                .set("unit", drive.unit);
            x.empty("address", &attrs.refs())
        }
        _ => Ok(()),
    }
}

fn pci_attrs(attrs: Attrs, pci: &pb::PciAddress) -> Attrs {
    let attrs = attrs
        .set("domain", format!("0x{:04x}", pci.domain))
        .set("bus", format!("0x{:02x}", pci.bus))
        .set("slot", format!("0x{:02x}", pci.slot))
        .set("function", format!("0x{:x}", pci.function));
    if pci.multifunction {
        attrs.set("multifunction", "on")
    } else {
        attrs
    }
}

fn format_alias(x: &mut XmlWriter, alias: &str) -> Fmt {
    if alias.is_empty() {
        Ok(())
    } else {
        x.empty("alias", &[("name", alias)])
    }
}

fn format_boot_order(x: &mut XmlWriter, order: Option<u32>) -> Fmt {
    match order {
        Some(order) => x.empty("boot", &[("order", &order.to_string())]),
        None => Ok(()),
    }
}

fn format_devices(x: &mut XmlWriter, devices: &pb::DomainDevices) -> Fmt {
    x.open("devices", &[])?;
    if !devices.emulator.is_empty() {
        x.text("emulator", &[], &devices.emulator)?;
    }
    for disk in &devices.disks {
        format_disk(x, disk)?;
    }
    for controller in &devices.controllers {
        format_controller(x, controller)?;
    }
    for interface in &devices.interfaces {
        format_interface(x, interface)?;
    }
    for serial in &devices.serials {
        format_char(x, "serial", serial)?;
    }
    for console in &devices.consoles {
        format_char(x, "console", console)?;
    }
    for input in &devices.inputs {
        let attrs = Attrs::default()
            .word("type", INPUT_TYPES, input.r#type)
            .word("bus", INPUT_BUSES, input.bus);
        let has_body = input.address.is_some() || !input.alias.is_empty();
        device_element(x, "input", &attrs, has_body, |x| {
            format_address(x, input.address.as_ref())?;
            format_alias(x, &input.alias)
        })?;
    }
    for graphics in &devices.graphics {
        format_graphics(x, graphics)?;
    }
    for video in &devices.videos {
        x.open("video", &[])?;
        let attrs = Attrs::default()
            .word("type", VIDEO_MODELS, video.model)
            .set(
                "vram",
                video.vram_kib.map(|v| v.to_string()).unwrap_or_default(),
            )
            .set(
                "heads",
                video.heads.map(|v| v.to_string()).unwrap_or_default(),
            )
            .yes("primary", video.primary);
        x.empty("model", &attrs.refs())?;
        format_address(x, video.address.as_ref())?;
        format_alias(x, &video.alias)?;
        x.close("video")?;
    }
    if let Some(balloon) = &devices.memballoon {
        let attrs = Attrs::default()
            .word("model", BALLOON_MODELS, balloon.model)
            .set("autodeflate", if balloon.autodeflate { "on" } else { "" });
        let has_body = balloon.stats_period_s.is_some()
            || balloon.address.is_some()
            || !balloon.alias.is_empty();
        device_element(x, "memballoon", &attrs, has_body, |x| {
            if let Some(period) = balloon.stats_period_s {
                x.empty("stats", &[("period", &period.to_string())])?;
            }
            format_address(x, balloon.address.as_ref())?;
            format_alias(x, &balloon.alias)
        })?;
    }
    for rng in &devices.rngs {
        format_rng(x, rng)?;
    }
    for hostdev in &devices.hostdevs {
        format_hostdev(x, hostdev)?;
    }
    for panic in &devices.panics {
        let attrs = Attrs::default().word("model", PANIC_MODELS, panic.model);
        let has_body = panic.address.is_some() || !panic.alias.is_empty();
        device_element(x, "panic", &attrs, has_body, |x| {
            format_alias(x, &panic.alias)?;
            format_address(x, panic.address.as_ref())
        })?;
    }
    x.close("devices")
}

/// `<name attrs/>` without a body, else `<name attrs>body</name>`.
fn device_element(
    x: &mut XmlWriter,
    name: &str,
    attrs: &Attrs,
    has_body: bool,
    body: impl FnOnce(&mut XmlWriter) -> Fmt,
) -> Fmt {
    if !has_body {
        return x.empty(name, &attrs.refs());
    }
    x.open(name, &attrs.refs())?;
    body(x)?;
    x.close(name)
}

fn format_disk(x: &mut XmlWriter, disk: &pb::Disk) -> Fmt {
    let attrs = Attrs::default().word("type", DISK_TYPES, disk.r#type).word(
        "device",
        DISK_DEVICES,
        disk.device,
    );
    x.open("disk", &attrs.refs())?;
    if let Some(driver) = &disk.driver {
        let attrs = Attrs::default()
            .set(
                "name",
                if driver.name == pb::DiskDriverName::Qemu as i32 {
                    "qemu"
                } else {
                    ""
                },
            )
            .word("type", DISK_FORMATS, driver.r#type)
            .word("cache", DISK_CACHES, driver.cache)
            .word("io", DISK_IOS, driver.io)
            .word("discard", DISK_DISCARDS, driver.discard);
        x.empty("driver", &attrs.refs())?;
    }
    if let Some(source) = &disk.source {
        let attrs = Attrs::default()
            .set("file", &source.file)
            .set("dev", &source.dev)
            .set("pool", &source.pool)
            .set("volume", &source.volume);
        if !attrs.0.is_empty() {
            x.empty("source", &attrs.refs())?;
        }
    }
    if let Some(target) = &disk.target {
        let attrs = Attrs::default()
            .set("dev", &target.dev)
            .word("bus", DISK_BUSES, target.bus);
        x.empty("target", &attrs.refs())?;
    }
    if disk.readonly {
        x.empty("readonly", &[])?;
    }
    if disk.shareable {
        x.empty("shareable", &[])?;
    }
    if !disk.serial.is_empty() {
        x.text("serial", &[], &disk.serial)?;
    }
    format_boot_order(x, disk.boot_order)?;
    format_alias(x, &disk.alias)?;
    format_address(x, disk.address.as_ref())?;
    x.close("disk")
}

fn format_controller(x: &mut XmlWriter, controller: &pb::Controller) -> Fmt {
    let attrs = Attrs::default()
        .word("type", CONTROLLER_TYPES, controller.r#type)
        .set("index", controller.index)
        .word("model", CONTROLLER_MODELS, controller.model)
        .set(
            "ports",
            controller.ports.map(|p| p.to_string()).unwrap_or_default(),
        )
        .set(
            "vectors",
            controller
                .vectors
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    let has_body =
        controller.queues.is_some() || controller.address.is_some() || !controller.alias.is_empty();
    device_element(x, "controller", &attrs, has_body, |x| {
        if let Some(queues) = controller.queues {
            x.empty("driver", &[("queues", &queues.to_string())])?;
        }
        format_alias(x, &controller.alias)?;
        format_address(x, controller.address.as_ref())
    })
}

fn format_interface(x: &mut XmlWriter, interface: &pb::Interface) -> Fmt {
    let attrs = Attrs::default().word("type", INTERFACE_TYPES, interface.r#type);
    x.open("interface", &attrs.refs())?;
    x.empty("mac", &[("address", &interface.mac)])?;
    if let Some(source) = &interface.source {
        let attrs = Attrs::default()
            .set("network", &source.network)
            .set("bridge", &source.bridge)
            .set("dev", &source.dev)
            .word("mode", DIRECT_MODES, source.mode);
        if !attrs.0.is_empty() {
            x.empty("source", &attrs.refs())?;
        }
    }
    if !interface.target_dev.is_empty() {
        x.empty("target", &[("dev", &interface.target_dev)])?;
    }
    let model = name_of(INTERFACE_MODELS, interface.model);
    if !model.is_empty() {
        x.empty("model", &[("type", model)])?;
    }
    if let Some(bandwidth) = &interface.bandwidth {
        x.open("bandwidth", &[])?;
        for (name, limit) in [
            ("inbound", &bandwidth.inbound),
            ("outbound", &bandwidth.outbound),
        ] {
            if let Some(limit) = limit {
                let text = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
                // libvirt's order.
                let attrs = Attrs::default()
                    .set("average", limit.average_kbytes_s)
                    .set("peak", text(limit.peak_kbytes_s))
                    .set("floor", text(limit.floor_kbytes_s))
                    .set("burst", text(limit.burst_kbytes));
                x.empty(name, &attrs.refs())?;
            }
        }
        x.close("bandwidth")?;
    }
    format_boot_order(x, interface.boot_order)?;
    format_alias(x, &interface.alias)?;
    format_address(x, interface.address.as_ref())?;
    x.close("interface")
}

fn format_char(x: &mut XmlWriter, name: &str, device: &pb::CharDevice) -> Fmt {
    let mut attrs = Attrs::default().word("type", CHAR_TYPES, device.r#type);
    let source = device.source.clone().unwrap_or_default();
    if device.r#type == pb::CharSourceType::Pty as i32 && !source.path.is_empty() {
        attrs = attrs.set("tty", &source.path);
    }
    x.open(name, &attrs.refs())?;
    let attrs = Attrs::default()
        .word("mode", CHAR_MODES, source.mode)
        .set("host", &source.host)
        .set(
            "service",
            if source.port == 0 {
                String::new()
            } else {
                source.port.to_string()
            },
        )
        .set("path", &source.path)
        .set("append", if source.append { "on" } else { "" });
    if !attrs.0.is_empty() {
        x.empty("source", &attrs.refs())?;
    }
    if source.protocol != 0 {
        x.empty(
            "protocol",
            &[("type", name_of(CHAR_PROTOCOLS, source.protocol))],
        )?;
    }
    if let Some(target) = &device.target {
        let attrs = Attrs::default()
            .word("type", CHAR_TARGETS, target.r#type)
            .set(
                "port",
                target.port.map(|p| p.to_string()).unwrap_or_default(),
            )
            .set("name", &target.name);
        x.empty("target", &attrs.refs())?;
    }
    format_alias(x, &device.alias)?;
    format_address(x, device.address.as_ref())?;
    x.close(name)
}

fn format_graphics(x: &mut XmlWriter, graphics: &pb::Graphics) -> Fmt {
    let attrs = Attrs::default()
        .word("type", GRAPHICS_TYPES, graphics.r#type)
        .set("port", graphics.port)
        .set("autoport", if graphics.autoport { "yes" } else { "no" })
        .set("listen", &graphics.listen)
        .set("passwd", &graphics.passwd)
        .set("keymap", &graphics.keymap);
    let has_body = !graphics.listen.is_empty() || !graphics.socket.is_empty();
    device_element(x, "graphics", &attrs, has_body, |x| {
        if !graphics.listen.is_empty() {
            x.empty(
                "listen",
                &[("type", "address"), ("address", &graphics.listen)],
            )?;
        }
        if !graphics.socket.is_empty() {
            x.empty(
                "listen",
                &[("type", "socket"), ("socket", &graphics.socket)],
            )?;
        }
        Ok(())
    })
}

fn format_rng(x: &mut XmlWriter, rng: &pb::Rng) -> Fmt {
    let attrs = Attrs::default().word("model", RNG_MODELS, rng.model);
    x.open("rng", &attrs.refs())?;
    if rng.rate_bytes.is_some() || rng.rate_period_ms.is_some() {
        let attrs = Attrs::default()
            .set(
                "bytes",
                rng.rate_bytes.map(|b| b.to_string()).unwrap_or_default(),
            )
            .set(
                "period",
                rng.rate_period_ms
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            );
        x.empty("rate", &attrs.refs())?;
    }
    if rng.backend_model != 0 {
        let attrs = Attrs::default().word("model", RNG_BACKENDS, rng.backend_model);
        if rng.backend_path.is_empty() {
            x.empty("backend", &attrs.refs())?;
        } else {
            x.text("backend", &attrs.refs(), &rng.backend_path)?;
        }
    }
    format_alias(x, &rng.alias)?;
    format_address(x, rng.address.as_ref())?;
    x.close("rng")
}

fn format_hostdev(x: &mut XmlWriter, hostdev: &pb::Hostdev) -> Fmt {
    let attrs = Attrs::default()
        .set("mode", "subsystem")
        .word("type", HOSTDEV_TYPES, hostdev.r#type)
        .set("managed", if hostdev.managed { "yes" } else { "no" });
    x.open("hostdev", &attrs.refs())?;
    if !hostdev.driver.is_empty() {
        x.empty("driver", &[("name", &hostdev.driver)])?;
    }
    match &hostdev.source {
        Some(pb::hostdev::Source::Pci(pci)) => {
            x.open("source", &[])?;
            x.empty("address", &pci_attrs(Attrs::default(), pci).refs())?;
            x.close("source")?;
        }
        Some(pb::hostdev::Source::Usb(usb)) => {
            x.open("source", &[])?;
            x.empty("vendor", &[("id", &format!("0x{:04x}", usb.vendor_id))])?;
            x.empty("product", &[("id", &format!("0x{:04x}", usb.product_id))])?;
            if usb.bus != 0 || usb.device != 0 {
                let attrs = Attrs::default()
                    .set("bus", usb.bus)
                    .set("device", usb.device);
                x.empty("address", &attrs.refs())?;
            }
            x.close("source")?;
        }
        Some(pb::hostdev::Source::Scsi(scsi)) => {
            x.open("source", &[])?;
            x.empty("adapter", &[("name", &scsi.adapter)])?;
            let attrs = Attrs::default()
                .set("bus", scsi.bus)
                .set("target", scsi.target)
                .set("unit", scsi.unit);
            x.empty("address", &attrs.refs())?;
            x.close("source")?;
        }
        None => {}
    }
    format_boot_order(x, hostdev.boot_order)?;
    if hostdev.rom_bar.is_some() || !hostdev.rom_file.is_empty() {
        let bar = match hostdev.rom_bar {
            Some(true) => "on",
            Some(false) => "off",
            None => "",
        };
        let attrs = Attrs::default()
            .set("bar", bar)
            .set("file", &hostdev.rom_file);
        x.empty("rom", &attrs.refs())?;
    }
    if hostdev.readonly {
        x.empty("readonly", &[])?;
    }
    if hostdev.shareable {
        x.empty("shareable", &[])?;
    }
    format_alias(x, &hostdev.alias)?;
    format_address(x, hostdev.address.as_ref())?;
    x.close("hostdev")
}

/// One device as XML (attach-device's reply, detach matching).
pub fn format_device(device: &pb::DomainDevice) -> Result<String, crate::XmlError> {
    use pb::domain_device::Kind;
    let mut x = XmlWriter::new();
    match device.kind.as_ref() {
        Some(Kind::Disk(disk)) => format_disk(&mut x, disk)?,
        Some(Kind::Controller(c)) => format_controller(&mut x, c)?,
        Some(Kind::Interface(i)) => format_interface(&mut x, i)?,
        Some(Kind::Serial(s)) => format_char(&mut x, "serial", s)?,
        Some(Kind::Console(c)) => format_char(&mut x, "console", c)?,
        Some(Kind::Graphics(g)) => format_graphics(&mut x, g)?,
        Some(Kind::Rng(r)) => format_rng(&mut x, r)?,
        Some(Kind::Hostdev(h)) => format_hostdev(&mut x, h)?,
        _ => {}
    }
    Ok(x.finish())
}
