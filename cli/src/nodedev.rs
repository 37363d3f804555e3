//! virsh's nodedev-* commands over vireo.nodedev.v1: nodedev-list (`--tree`, `--cap`),
//! nodedev-dumpxml, nodedev-info, nodedev-detach (and the seed's nodedev-dettach),
//! nodedev-reattach and nodedev-reset, with virsh's layouts and messages.

use clap::Subcommand;
use tonic::transport::Channel;
use vireo_conf::domain::lookup;
use vireo_conf::nodedev::CAPABILITY_TYPES;
use vireo_proto::nodedev::v1 as pb;
use vireo_proto::nodedev::v1::node_device_service_client::NodeDeviceServiceClient;

use crate::commands::{Call, fail, failed};
use crate::connection::Connection;
use crate::domain::object;
use crate::output::{Format, print_fields_at, print_json, print_xml};

/// Width of nodedev-info's labels.
const INFO_WIDTH: usize = 16;

/// Variants are virsh's command names, which all start with `nodedev-`.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum NodedevCommand {
    /// List host devices (as a tree, or only those with some capabilities)
    NodedevList {
        #[arg(long)]
        tree: bool,
        /// Capability types, comma separated: pci, net, system, ...
        #[arg(long)]
        cap: Option<String>,
    },
    /// A host device's XML
    NodedevDumpxml { device: String },
    /// Basic facts about a host device
    NodedevInfo { device: String },
    /// Detach a PCI device from its host driver for guest assignment
    #[command(alias = "nodedev-dettach")]
    NodedevDetach {
        device: String,
        /// vfio (the default) or pci-stub
        #[arg(long)]
        driver: Option<String>,
    },
    /// Give a detached PCI device back to its host driver
    NodedevReattach { device: String },
    /// Reset a detached PCI device
    NodedevReset { device: String },
}

async fn client(connection: &mut Connection) -> Result<NodeDeviceServiceClient<Channel>, Call> {
    Ok(NodeDeviceServiceClient::new(connection.channel().await?))
}

fn device_failed(device: &str) -> impl FnOnce(tonic::Status) -> Call {
    failed(
        Some(format!("Could not find matching device '{device}'")),
        None,
    )
}

fn caps_of(text: &str) -> Result<Vec<i32>, String> {
    text.split(',')
        .filter(|word| !word.is_empty())
        .map(|word| {
            lookup(CAPABILITY_TYPES, word.trim(), "--cap".into())
                .map(|cap| cap as i32)
                .map_err(|err| err.to_string())
        })
        .collect()
}

/// virsh's `--tree`: each device under its parent, a `|` line before the first child, `+- `
/// before each, and a `|` column down past a child that has later siblings.
fn tree_lines(devices: &[pb::NodeDeviceSummary]) -> Vec<String> {
    fn walk(devices: &[pb::NodeDeviceSummary], name: &str, indent: &str, lines: &mut Vec<String>) {
        let children: Vec<&pb::NodeDeviceSummary> = devices
            .iter()
            .filter(|d| d.parent == name && d.name != name)
            .collect();
        if !children.is_empty() {
            lines.push(format!("{indent}  |"));
        }
        for (index, child) in children.iter().enumerate() {
            let last = index + 1 == children.len();
            lines.push(format!("{indent}  +- {}", child.name));
            let deeper = format!("{indent}  {}", if last { "  " } else { "| " });
            walk(devices, &child.name, &deeper, lines);
        }
    }
    let mut lines = Vec::new();
    for root in devices.iter().filter(|d| d.parent.is_empty()) {
        lines.push(root.name.clone());
        walk(devices, &root.name, "", &mut lines);
    }
    lines
}

pub async fn run(
    connection: &mut Connection,
    format: Format,
    command: NodedevCommand,
) -> Result<(), Call> {
    match command {
        NodedevCommand::NodedevList { tree, cap } => {
            if tree && cap.is_some() {
                return Err(fail("--tree and --cap cannot be used together".into()));
            }
            let caps = cap.as_deref().map(caps_of).transpose().map_err(fail)?;
            let list = client(connection)
                .await?
                .list_node_devices(pb::ListNodeDevicesRequest {
                    host: String::new(),
                    caps: caps.unwrap_or_default(),
                })
                .await
                .map_err(failed(None, Some("Failed to count node devices".into())))?
                .into_inner();
            match (format, tree) {
                (Format::Json, _) => print_json(&list),
                (Format::Table, true) => {
                    for line in tree_lines(&list.devices) {
                        println!("{line}");
                    }
                    println!();
                }
                (Format::Table, false) => {
                    let mut names: Vec<&str> =
                        list.devices.iter().map(|d| d.name.as_str()).collect();
                    names.sort_unstable();
                    for name in names {
                        println!("{name}");
                    }
                    println!();
                }
            }
        }
        NodedevCommand::NodedevDumpxml { device } => {
            let xml = client(connection)
                .await?
                .get_node_device_xml(pb::GetNodeDeviceXmlRequest {
                    host: String::new(),
                    device: object(&device),
                })
                .await
                .map_err(device_failed(&device))?
                .into_inner();
            print_xml(format, &xml, &xml.xml);
        }
        NodedevCommand::NodedevDetach { device, driver } => {
            client(connection)
                .await?
                .detach_node_device(pb::DetachNodeDeviceRequest {
                    host: String::new(),
                    device: object(&device),
                    driver: driver.unwrap_or_default(),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to detach device {device}")),
                ))?;
            println!("Device {device} detached\n");
        }
        NodedevCommand::NodedevReattach { device } => {
            client(connection)
                .await?
                .reattach_node_device(pb::ReattachNodeDeviceRequest {
                    host: String::new(),
                    device: object(&device),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to re-attach device {device}")),
                ))?;
            println!("Device {device} re-attached\n");
        }
        NodedevCommand::NodedevReset { device } => {
            client(connection)
                .await?
                .reset_node_device(pb::ResetNodeDeviceRequest {
                    host: String::new(),
                    device: object(&device),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to reset device {device}")),
                ))?;
            println!("Device {device} reset\n");
        }
        NodedevCommand::NodedevInfo { device } => {
            let info = client(connection)
                .await?
                .get_node_device_info(pb::GetNodeDeviceInfoRequest {
                    host: String::new(),
                    device: object(&device),
                })
                .await
                .map_err(device_failed(&device))?
                .into_inner();
            let yes_no = |value: bool| if value { "yes" } else { "no" }.to_string();
            match format {
                Format::Json => print_json(&info),
                Format::Table => {
                    print_fields_at(
                        INFO_WIDTH,
                        &[
                            ("Name", info.name.clone()),
                            ("Parent", info.parent.clone()),
                            ("Active", yes_no(info.active)),
                            ("Persistent", yes_no(info.persistent)),
                            ("Autostart", yes_no(info.autostart)),
                        ],
                    );
                    println!();
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_tree_look_like_virsh() {
        assert_eq!(
            caps_of("pci,net").unwrap(),
            vec![
                pb::CapabilityType::Pci as i32,
                pb::CapabilityType::Net as i32
            ]
        );
        assert!(caps_of("floppy").unwrap_err().contains("floppy"));
        let device = |name: &str, parent: &str| pb::NodeDeviceSummary {
            name: name.into(),
            parent: parent.into(),
            ..Default::default()
        };
        let lines = tree_lines(&[
            device("computer", ""),
            device("pci_0000_00_03_0", "computer"),
            device("net_eth0_52_54_00_00_00_01", "pci_0000_00_03_0"),
            device("pci_0000_00_04_0", "computer"),
        ]);
        assert_eq!(
            lines,
            [
                "computer",
                "  |",
                "  +- pci_0000_00_03_0",
                "  |   |",
                "  |   +- net_eth0_52_54_00_00_00_01",
                "  +- pci_0000_00_04_0",
            ]
        );
    }
}
