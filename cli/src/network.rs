//! virsh's net-* commands: virtual networks through vireo.network.v1, with virsh's names,
//! options, messages and layouts.

use crate::connection::GatewayChannel as Channel;
use clap::{Args, Subcommand};
use tonic::Status;
use vireo_proto::common::v1::ObjectRef;
use vireo_proto::network::v1 as pb;
use vireo_proto::network::v1::network_service_client::NetworkServiceClient;

use crate::commands::{Call, fail, failed, object_step, read_file};
use crate::connection::Connection;
use crate::domain::{object, object_named, object_with_uuid, utc_time};
use crate::edit::edit_xml;
use crate::output::{Format, print_fields_at, print_json, print_table, print_xml};
use crate::storage::by_name;

/// Width of net-info's labels.
const INFO_WIDTH: usize = 16;

/// Variants are virsh's command names, which all start with `net-`.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// List networks (active ones unless told otherwise)
    NetList(NetListArgs),
    /// Define (but do not start) a network from an XML file
    NetDefine { file: String },
    /// Create and start a transient network from an XML file
    NetCreate { file: String },
    /// Start an inactive network
    NetStart { network: String },
    /// Stop an active network (a transient one is gone afterwards)
    NetDestroy { network: String },
    /// Remove a network's persistent definition
    NetUndefine { network: String },
    /// Start a network when the host starts
    NetAutostart {
        network: String,
        #[arg(long)]
        disable: bool,
    },
    /// Basic facts about a network
    NetInfo { network: String },
    /// A network's XML
    NetDumpxml {
        network: String,
        #[arg(long)]
        inactive: bool,
    },
    /// Edit a network's XML in $EDITOR and define the result
    NetEdit { network: String },
    /// A network's UUID, from its name
    NetUuid { network: String },
    /// A network's name, from its UUID
    NetName { uuid: String },
    /// The DHCP leases of an active network
    NetDhcpLeases {
        network: String,
        #[arg(long)]
        mac: Option<String>,
    },
    /// Change part of a network's definition (ip-dhcp-host so far)
    NetUpdate(NetUpdateArgs),
}

#[derive(Debug, Args)]
pub struct NetListArgs {
    #[arg(long)]
    all: bool,
    #[arg(long)]
    inactive: bool,
    #[arg(long)]
    persistent: bool,
    #[arg(long)]
    transient: bool,
    #[arg(long)]
    autostart: bool,
    #[arg(long)]
    no_autostart: bool,
    #[arg(long)]
    name: bool,
    #[arg(long)]
    uuid: bool,
}

#[derive(Debug, Args)]
pub struct NetUpdateArgs {
    network: String,
    /// add (add-last), add-first, add-last, delete or modify
    command: String,
    /// e.g. ip-dhcp-host
    section: String,
    /// The element's XML, or a file holding it
    xml: String,
    #[arg(long)]
    parent_index: Option<u32>,
    #[arg(long)]
    live: bool,
    #[arg(long)]
    config: bool,
    #[arg(long)]
    current: bool,
}

async fn client(connection: &mut Connection) -> Result<NetworkServiceClient<Channel>, Call> {
    Ok(NetworkServiceClient::new(connection.channel().await?))
}

fn network_failed(network: &str, action: Option<String>) -> impl FnOnce(Status) -> Call {
    failed(Some(format!("failed to get network '{network}'")), action)
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

fn list_request(args: &NetListArgs) -> pb::ListNetworksRequest {
    let active = match (args.all, args.inactive) {
        (true, _) => None,
        (false, true) => Some(false),
        (false, false) => Some(true),
    };
    let either = |yes: bool, no: bool| match (yes, no) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    };
    pb::ListNetworksRequest {
        host: String::new(),
        active,
        persistent: either(args.persistent, args.transient),
        autostart: either(args.autostart, args.no_autostart),
    }
}

fn network_table(networks: &[pb::NetworkInfo]) -> Vec<Vec<String>> {
    by_name(networks, |network| &network.name)
        .into_iter()
        .map(|network| {
            vec![
                network.name.clone(),
                if network.active { "active" } else { "inactive" }.to_string(),
                yes_no(network.autostart),
                yes_no(network.persistent),
            ]
        })
        .collect()
}

fn info_fields(info: &pb::NetworkInfo) -> Vec<(&'static str, String)> {
    vec![
        ("Name", info.name.clone()),
        ("UUID", info.uuid.clone()),
        ("Active", yes_no(info.active)),
        ("Persistent", yes_no(info.persistent)),
        ("Autostart", yes_no(info.autostart)),
        ("Bridge", info.bridge.clone()),
    ]
}

fn lease_rows(leases: &[pb::DhcpLease]) -> Vec<Vec<String>> {
    leases
        .iter()
        .map(|lease| {
            let dash = |text: &str| {
                if text.is_empty() {
                    "-".to_string()
                } else {
                    text.to_string()
                }
            };
            vec![
                match lease.expiry_time_unix_s {
                    0 => "never".to_string(),
                    secs => utc_time(secs),
                },
                dash(&lease.mac),
                match pb::IpFamily::try_from(lease.r#type) {
                    Ok(pb::IpFamily::Ipv6) => "ipv6",
                    _ => "ipv4",
                }
                .to_string(),
                format!("{}/{}", lease.ip_address, lease.prefix),
                dash(&lease.hostname),
                dash(&lease.client_id),
            ]
        })
        .collect()
}

fn update_command(name: &str) -> Result<pb::NetworkUpdateCommand, String> {
    Ok(match name {
        "add" | "add-last" => pb::NetworkUpdateCommand::AddLast,
        "add-first" => pb::NetworkUpdateCommand::AddFirst,
        "delete" => pb::NetworkUpdateCommand::Delete,
        "modify" => pb::NetworkUpdateCommand::Modify,
        other => {
            return Err(format!(
                "unknown command '{other}' (add, add-first, add-last, delete, modify)"
            ));
        }
    })
}

fn update_section(name: &str) -> Result<pb::NetworkUpdateSection, String> {
    Ok(match name {
        "bridge" => pb::NetworkUpdateSection::Bridge,
        "ip-dhcp-host" => pb::NetworkUpdateSection::IpDhcpHost,
        "ip-dhcp-range" => pb::NetworkUpdateSection::IpDhcpRange,
        "forward-interface" => pb::NetworkUpdateSection::ForwardInterface,
        "portgroup" => pb::NetworkUpdateSection::Portgroup,
        "dns-host" => pb::NetworkUpdateSection::DnsHost,
        "dns-txt" => pb::NetworkUpdateSection::DnsTxt,
        "dns-srv" => pb::NetworkUpdateSection::DnsSrv,
        other => return Err(format!("unknown section '{other}'")),
    })
}

async fn info(
    connection: &mut Connection,
    shown: &str,
    network: Option<ObjectRef>,
) -> Result<pb::NetworkInfo, Call> {
    Ok(client(connection)
        .await?
        .get_network_info(pb::GetNetworkInfoRequest {
            host: String::new(),
            network,
        })
        .await
        .map_err(network_failed(shown, None))?
        .into_inner())
}

pub async fn run(
    connection: &mut Connection,
    format: Format,
    command: NetworkCommand,
) -> Result<(), Call> {
    use NetworkCommand as C;
    match command {
        C::NetList(args) => {
            let list = client(connection)
                .await?
                .list_networks(list_request(&args))
                .await
                .map_err(failed(None, Some("Failed to list networks".into())))?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
            } else if args.name || args.uuid {
                for network in by_name(&list.networks, |network| &network.name) {
                    match (args.uuid, args.name) {
                        (true, true) => println!("{} {}", network.uuid, network.name),
                        (true, false) => println!("{}", network.uuid),
                        _ => println!("{}", network.name),
                    }
                }
                println!();
            } else {
                print_table(
                    &["Name", "State", "Autostart", "Persistent"],
                    &network_table(&list.networks),
                );
            }
        }
        C::NetDefine { file } => {
            let xml = read_file(&file)?;
            let network = client(connection)
                .await?
                .define_network(pb::DefineNetworkRequest {
                    host: String::new(),
                    source: Some(pb::define_network_request::Source::Xml(xml)),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to define network from {file}")),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&network),
                Format::Table => println!("Network {} defined from {file}\n", name_of(&network)),
            }
        }
        C::NetCreate { file } => {
            let xml = read_file(&file)?;
            let network = client(connection)
                .await?
                .create_network(pb::CreateNetworkRequest {
                    host: String::new(),
                    source: Some(pb::create_network_request::Source::Xml(xml)),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to create network from {file}")),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&network),
                Format::Table => println!("Network {} created from {file}\n", name_of(&network)),
            }
        }
        C::NetStart { network } => {
            let call = client(connection)
                .await?
                .start_network(pb::StartNetworkRequest {
                    host: String::new(),
                    network: object(&network),
                })
                .await;
            object_step("Network", &network, "start", "started", call)?;
        }
        C::NetDestroy { network } => {
            let call = client(connection)
                .await?
                .destroy_network(pb::DestroyNetworkRequest {
                    host: String::new(),
                    network: object(&network),
                })
                .await;
            object_step("Network", &network, "destroy", "destroyed", call)?;
        }
        C::NetUndefine { network } => {
            let call = client(connection)
                .await?
                .undefine_network(pb::UndefineNetworkRequest {
                    host: String::new(),
                    network: object(&network),
                })
                .await;
            object_step("Network", &network, "undefine", "has been undefined", call)?;
        }
        C::NetAutostart { network, disable } => {
            let (action, done) = if disable {
                ("unmark", "unmarked")
            } else {
                ("mark", "marked")
            };
            client(connection)
                .await?
                .set_network_autostart(pb::SetNetworkAutostartRequest {
                    host: String::new(),
                    network: object(&network),
                    autostart: !disable,
                })
                .await
                .map_err(network_failed(
                    &network,
                    Some(format!(
                        "failed to {action} network {network} as autostarted"
                    )),
                ))?;
            println!("Network {network} {done} as autostarted\n");
        }
        C::NetInfo { network } => {
            let info = info(connection, &network, object(&network)).await?;
            match format {
                Format::Json => print_json(&info),
                Format::Table => {
                    print_fields_at(INFO_WIDTH, &info_fields(&info));
                    println!();
                }
            }
        }
        C::NetUuid { network } => {
            let info = info(connection, &network, object_named(&network)).await?;
            match format {
                Format::Json => print_json(&info),
                Format::Table => println!("{}\n", info.uuid),
            }
        }
        C::NetName { uuid } => {
            let info = info(connection, &uuid, object_with_uuid(&uuid)).await?;
            match format {
                Format::Json => print_json(&info),
                Format::Table => println!("{}\n", info.name),
            }
        }
        C::NetDumpxml { network, inactive } => {
            let xml = client(connection)
                .await?
                .get_network_xml(pb::GetNetworkXmlRequest {
                    host: String::new(),
                    network: object(&network),
                    inactive,
                })
                .await
                .map_err(network_failed(&network, None))?
                .into_inner();
            print_xml(format, &xml, &xml.xml);
        }
        C::NetEdit { network } => edit(connection, &network).await?,
        C::NetDhcpLeases { network, mac } => {
            let leases = client(connection)
                .await?
                .get_dhcp_leases(pb::GetDhcpLeasesRequest {
                    host: String::new(),
                    network: object(&network),
                    mac: mac.unwrap_or_default(),
                })
                .await
                .map_err(network_failed(&network, None))?
                .into_inner();
            match format {
                Format::Json => print_json(&leases),
                Format::Table => print_table(
                    &[
                        "Expiry Time",
                        "MAC address",
                        "Protocol",
                        "IP address",
                        "Hostname",
                        "Client ID or DUID",
                    ],
                    &lease_rows(&leases.leases),
                ),
            }
        }
        C::NetUpdate(args) => update(connection, &args).await?,
    }
    Ok(())
}

fn name_of(network: &pb::Network) -> &str {
    network
        .definition
        .as_ref()
        .map_or("", |def| def.name.as_str())
}

async fn edit(connection: &mut Connection, network: &str) -> Result<(), Call> {
    let name = info(connection, network, object(network)).await?.name;
    let mut client = client(connection).await?;
    let xml = client
        .get_network_xml(pb::GetNetworkXmlRequest {
            host: String::new(),
            network: object(network),
            inactive: true,
        })
        .await
        .map_err(network_failed(network, None))?
        .into_inner()
        .xml;
    let Some(edited) = edit_xml(&name, &xml)? else {
        println!("Network {name} XML configuration not changed.\n");
        return Ok(());
    };
    let defined = client
        .define_network(pb::DefineNetworkRequest {
            host: String::new(),
            source: Some(pb::define_network_request::Source::Xml(edited)),
        })
        .await?
        .into_inner();
    println!("Network {} XML configuration edited.\n", name_of(&defined));
    Ok(())
}

async fn update(connection: &mut Connection, args: &NetUpdateArgs) -> Result<(), Call> {
    let command = update_command(&args.command).map_err(fail)?;
    let section = update_section(&args.section).map_err(fail)?;
    // virsh takes the element itself, or a file that holds it.
    let xml = if args.xml.trim_start().starts_with('<') {
        args.xml.clone()
    } else {
        read_file(&args.xml)?
    };
    if args.current && (args.live || args.config) {
        return Err(fail(
            "--current cannot be combined with --live or --config".into(),
        ));
    }
    let mut request = pb::UpdateNetworkRequest {
        host: String::new(),
        network: object(&args.network),
        parent_index: args.parent_index,
        xml,
        live: args.live,
        config: args.config,
        ..Default::default()
    };
    request.set_command(command);
    request.set_section(section);
    client(connection)
        .await?
        .update_network(request)
        .await
        .map_err(network_failed(
            &args.network,
            Some("Failed to update network".to_string()),
        ))?;
    let what = match (args.live, args.config) {
        (true, true) => "persistent config and live state",
        (true, false) => "live state",
        (false, true) => "persistent config",
        (false, false) => "current state",
    };
    println!("Updated network {} {what}\n", args.network);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_follow_virsh() {
        let args = |all, inactive| NetListArgs {
            all,
            inactive,
            persistent: false,
            transient: true,
            autostart: false,
            no_autostart: false,
            name: false,
            uuid: false,
        };
        let request = list_request(&args(false, false));
        assert_eq!(request.active, Some(true));
        assert_eq!(request.persistent, Some(false));
        assert_eq!(list_request(&args(true, false)).active, None);
        assert_eq!(list_request(&args(false, true)).active, Some(false));
    }

    #[test]
    fn net_list_and_leases_look_like_virsh() {
        let rows = network_table(&[pb::NetworkInfo {
            name: "default".into(),
            active: true,
            autostart: true,
            persistent: true,
            ..Default::default()
        }]);
        assert_eq!(rows, vec![vec!["default", "active", "yes", "yes"]]);
        let leases = lease_rows(&[pb::DhcpLease {
            expiry_time_unix_s: 0,
            mac: "52:54:00:00:00:01".into(),
            ip_address: "192.168.122.10".into(),
            prefix: 24,
            r#type: pb::IpFamily::Ipv4 as i32,
            ..Default::default()
        }]);
        assert_eq!(
            leases[0],
            vec![
                "never",
                "52:54:00:00:00:01",
                "ipv4",
                "192.168.122.10/24",
                "-",
                "-"
            ]
        );
        assert!(update_command("add").is_ok());
        assert!(
            update_section("ip-dhcp-bogus")
                .unwrap_err()
                .contains("ip-dhcp-bogus")
        );
    }
}
