//! virsh's nodedev-* commands over vireo.nodedev.v1: nodedev-list (`--tree`, `--cap`),
//! nodedev-dumpxml, nodedev-info, nodedev-detach (and the seed's nodedev-dettach),
//! nodedev-reattach, nodedev-reset, nodedev-create (NPIV vHBAs) and nodedev-destroy, with
//! virsh's layouts and messages; and two of Vireo's own for SR-IOV, which virsh leaves to
//! sysfs and `ip link`: nodedev-sriov (list a PF's VFs, set their number) and
//! nodedev-vf-config (a VF's MAC, VLAN and other settings).

use crate::connection::GatewayChannel as Channel;
use clap::Subcommand;
use vireo_conf::domain::lookup;
use vireo_conf::nodedev::CAPABILITY_TYPES;
use vireo_proto::nodedev::v1 as pb;
use vireo_proto::nodedev::v1::node_device_service_client::NodeDeviceServiceClient;

use crate::commands::{Call, fail, failed, read_file};
use crate::connection::Connection;
use crate::domain::object;
use crate::output::{Format, print_fields_at, print_json, print_table, print_xml};

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
    /// Create a device (an NPIV vHBA) from its XML
    NodedevCreate { file: String },
    /// Destroy a device made by nodedev-create
    NodedevDestroy { device: String },
    /// An SR-IOV PF's virtual functions; with --count, enable that many first (0 disables)
    NodedevSriov {
        device: String,
        #[arg(long)]
        count: Option<u32>,
    },
    /// Set a VF's settings on its PF (as `ip link set PF vf N ...`)
    NodedevVfConfig {
        /// The PF
        device: String,
        /// The VF's index on the PF
        vf: u32,
        #[arg(long)]
        mac: Option<String>,
        /// VLAN id; 0 removes the VLAN
        #[arg(long)]
        vlan: Option<u32>,
        /// 802.1p priority 0-7 of the VLAN tag
        #[arg(long)]
        qos: Option<u32>,
        #[arg(long)]
        spoofchk: Option<OnOff>,
        #[arg(long)]
        trust: Option<OnOff>,
        /// auto, enable or disable
        #[arg(long)]
        state: Option<String>,
        /// Mbit/s; 0 is unlimited
        #[arg(long)]
        min_tx_rate: Option<u32>,
        #[arg(long)]
        max_tx_rate: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The VF link states by `ip link`'s words.
const VF_LINK_STATES: vireo_conf::domain::Table<pb::VfLinkState> = &[
    ("auto", pb::VfLinkState::Auto),
    ("enable", pb::VfLinkState::Enable),
    ("disable", pb::VfLinkState::Disable),
];

fn vf_rows(info: &pb::SriovInfo) -> Vec<Vec<String>> {
    info.vfs
        .iter()
        .map(|vf| {
            let vlan = if vf.vlan_id == 0 {
                "-".to_string()
            } else {
                format!("{} (qos {})", vf.vlan_id, vf.vlan_qos)
            };
            let or_dash = |text: &str| {
                if text.is_empty() {
                    "-".to_string()
                } else {
                    text.to_string()
                }
            };
            vec![
                vf.index.to_string(),
                vf.name.clone(),
                or_dash(&vf.driver),
                or_dash(&vf.interface),
                or_dash(&vf.mac),
                vlan,
            ]
        })
        .collect()
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
        NodedevCommand::NodedevCreate { file } => {
            let xml = read_file(&file)?;
            let created = client(connection)
                .await?
                .create_node_device(pb::CreateNodeDeviceRequest {
                    host: String::new(),
                    source: Some(pb::create_node_device_request::Source::Xml(xml)),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to create node device from {file}")),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&created),
                Format::Table => println!("Node device {} created from {file}\n", created.name),
            }
        }
        NodedevCommand::NodedevDestroy { device } => {
            client(connection)
                .await?
                .destroy_node_device(pb::DestroyNodeDeviceRequest {
                    host: String::new(),
                    device: object(&device),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to destroy node device '{device}'")),
                ))?;
            println!("Destroyed node device '{device}'\n");
        }
        NodedevCommand::NodedevSriov { device, count } => {
            let mut client = client(connection).await?;
            let info = match count {
                Some(num_vfs) => client
                    .set_sriov_vf_count(pb::SetSriovVfCountRequest {
                        host: String::new(),
                        device: object(&device),
                        num_vfs,
                    })
                    .await
                    .map_err(failed(
                        None,
                        Some(format!("Failed to set the VF count of {device}")),
                    ))?,
                None => client
                    .list_virtual_functions(pb::ListVirtualFunctionsRequest {
                        host: String::new(),
                        device: object(&device),
                    })
                    .await
                    .map_err(failed(
                        None,
                        Some(format!("Failed to list VFs of {device}")),
                    ))?,
            }
            .into_inner();
            match format {
                Format::Json => print_json(&info),
                Format::Table => {
                    println!(
                        "{}: {} of {} VFs{}\n",
                        info.pf_name,
                        info.num_vfs,
                        info.total_vfs,
                        if info.pf_interface.is_empty() {
                            String::new()
                        } else {
                            format!(" (interface {})", info.pf_interface)
                        }
                    );
                    print_table(
                        &["VF", "Name", "Driver", "Interface", "MAC", "VLAN"],
                        &vf_rows(&info),
                    );
                }
            }
        }
        NodedevCommand::NodedevVfConfig {
            device,
            vf,
            mac,
            vlan,
            qos,
            spoofchk,
            trust,
            state,
            min_tx_rate,
            max_tx_rate,
        } => {
            let link_state = state
                .map(|word| lookup(VF_LINK_STATES, &word, "--state".into()))
                .transpose()
                .map_err(|err| fail(err.to_string()))?
                .map(|state| state as i32);
            let on = |flag: Option<OnOff>| flag.map(|f| matches!(f, OnOff::On));
            let set = client(connection)
                .await?
                .set_vf_config(pb::SetVfConfigRequest {
                    host: String::new(),
                    device: object(&device),
                    vf_index: vf,
                    mac,
                    vlan_id: vlan,
                    vlan_qos: qos,
                    spoofchk: on(spoofchk),
                    trust: on(trust),
                    link_state,
                    min_tx_rate_mbit_s: min_tx_rate,
                    max_tx_rate_mbit_s: max_tx_rate,
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to configure VF {vf} of {device}")),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&set),
                Format::Table => println!("VF {vf} of {device} configured\n"),
            }
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
