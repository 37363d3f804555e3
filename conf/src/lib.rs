//! vireo-conf owns the one mapping between libvirt XML, Vireo's typed definitions and the proto
//! messages: parse (pure), fill defaults, validate, format. The services, the gateway and the CLI
//! all go through it; nothing else reads or writes libvirt XML. Each object kind is pinned by
//! golden in/out files under `tests/golden/`. `network` maps `<network>` (and one DHCP `<host>`,
//! for net-update); its `parse` also fills defaults and validates, since svc-network relies on it.

pub mod capabilities;
mod dom;
pub mod domain;
pub mod network;
pub mod nodedev;
pub mod pool;
pub mod snapshot;
pub mod sysinfo;
pub mod units;
pub mod volume;
mod xml;

pub use dom::ConfError;
pub use xml::XmlError;

/// The XML namespace of Vireo's own elements (engine choice, engine facts, volume
/// preallocation), as libvirt does for its hypervisor-specific extensions.
pub const VIREO_XML_NAMESPACE: &str = "urn:x-vireo:xmlns:1";
