//! Host side of guest interfaces: the tap devices a running guest's NICs use. A bridge
//! interface gets a tap created for it and enslaved to the bridge; a network interface gets a
//! port from svc-network (a tap on the network's bridge, asked for over `<run>/network.sock`);
//! a direct interface gets a macvtap; an ethernet interface uses the tap the admin named. Taps
//! named `vireo*` are removed when the guest stops (svc-network then forgets the port).

use vireo_proto::compute::v1 as pb;

use crate::Error;

async fn ip(args: &[&str]) -> Result<(), Error> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|err| Error::Engine(format!("cannot run ip: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Engine(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Runs the `ip` steps that make link `name`, then brings it up; on failure removes it again.
async fn create_link(
    name: &str,
    steps: &[&[&str]],
    created: &mut Vec<String>,
) -> Result<String, Error> {
    let made = async {
        for step in steps {
            ip(step).await?;
        }
        ip(&["link", "set", "dev", name, "up"]).await
    }
    .await;
    match made {
        Ok(()) => {
            created.push(name.to_string());
            Ok(name.to_string())
        }
        Err(err) => {
            let _ = ip(&["link", "del", "dev", name]).await;
            Err(err)
        }
    }
}

/// How long a start waits for svc-network to come up (vireod starts its services together).
const NETWORK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// svc-network, which gives network interfaces their ports.
pub struct Networks {
    socket: std::path::PathBuf,
}

impl Networks {
    pub fn new(socket: std::path::PathBuf) -> Networks {
        Networks { socket }
    }

    /// A port of `interface`'s network for domain `def`: the tap `tap` on the network's bridge.
    async fn plug(
        &self,
        def: &pb::DomainDefinition,
        interface: &pb::Interface,
        tap: &str,
    ) -> Result<String, Error> {
        use vireo_proto::network::v1 as net;
        let network = interface
            .source
            .as_ref()
            .map_or("", |source| source.network.as_str());
        if network.is_empty() {
            return Err(Error::Definition(vireo_conf::ConfError::new(
                format!("domain/devices/interface[{}]/source@network", interface.mac),
                "a network interface names its network",
            )));
        }
        let channel = vireo_runtime::client::connect_unix_within(&self.socket, NETWORK_WAIT)
            .await
            .map_err(|err| {
                Error::State(format!(
                    "interface {}: network '{network}': svc-network is unreachable: {err}",
                    interface.mac
                ))
            })?;
        let request = net::CreatePortRequest {
            network: Some(vireo_proto::common::v1::ObjectRef {
                key: Some(vireo_proto::common::v1::object_ref::Key::Name(
                    network.to_string(),
                )),
            }),
            source: Some(net::create_port_request::Source::Definition(
                net::NetworkPortDefinition {
                    owner: Some(net::PortOwner {
                        name: def.name.clone(),
                        uuid: def.uuid.clone(),
                    }),
                    mac: interface.mac.clone(),
                    bandwidth: interface.bandwidth.as_ref().map(port_bandwidth),
                    ..Default::default()
                },
            )),
            tap_name: tap.to_string(),
            ..Default::default()
        };
        let port = net::network_port_service_client::NetworkPortServiceClient::new(channel)
            .create_port(request)
            .await
            .map_err(|status| {
                Error::State(format!(
                    "interface {}: network '{network}': {}",
                    interface.mac,
                    status.message()
                ))
            })?
            .into_inner();
        Ok(port
            .definition
            .and_then(|d| d.plug)
            .map(|plug| plug.tap_device)
            .unwrap_or_default())
    }

    /// The DHCP leases svc-network's dnsmasq gave to `mac` on `network` (domifaddr's default
    /// source), as (IPv6?, address, prefix).
    pub async fn leases(
        &self,
        network: &str,
        mac: &str,
    ) -> Result<Vec<(bool, String, u32)>, Error> {
        use vireo_proto::network::v1 as net;
        let channel = vireo_runtime::client::connect_unix(&self.socket)
            .await
            .map_err(|err| Error::State(format!("svc-network is unreachable: {err}")))?;
        let leases = net::network_service_client::NetworkServiceClient::new(channel)
            .get_dhcp_leases(net::GetDhcpLeasesRequest {
                network: Some(vireo_proto::common::v1::ObjectRef {
                    key: Some(vireo_proto::common::v1::object_ref::Key::Name(
                        network.to_string(),
                    )),
                }),
                mac: mac.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| Error::State(format!("network '{network}': {}", status.message())))?
            .into_inner()
            .leases;
        Ok(leases
            .into_iter()
            .map(|lease| {
                let v6 = lease.r#type == net::IpFamily::Ipv6 as i32;
                (v6, lease.ip_address, lease.prefix)
            })
            .collect())
    }
}

/// A domain interface's `<bandwidth>` as its port's (both in libvirt's kilobytes).
fn port_bandwidth(bandwidth: &pb::InterfaceBandwidth) -> vireo_proto::network::v1::Bandwidth {
    let rate = |limit: &pb::BandwidthLimit| vireo_proto::network::v1::BandwidthRate {
        average_kib_s: limit.average_kbytes_s,
        peak_kib_s: limit.peak_kbytes_s.unwrap_or(0),
        burst_kib: limit.burst_kbytes.unwrap_or(0),
        floor_kib_s: limit.floor_kbytes_s.unwrap_or(0),
    };
    vireo_proto::network::v1::Bandwidth {
        inbound: bandwidth.inbound.as_ref().map(rate),
        outbound: bandwidth.outbound.as_ref().map(rate),
    }
}

/// The tap name of each interface, in order ("" for user networking). Taps created here are
/// removed again if a later one fails.
pub async fn prepare_taps(
    def: &pb::DomainDefinition,
    id: i32,
    networks: &Networks,
) -> Result<Vec<String>, Error> {
    let mut taps = Vec::new();
    let mut created = Vec::new();
    let interfaces = def
        .devices
        .as_ref()
        .map(|d| d.interfaces.as_slice())
        .unwrap_or(&[]);
    for (index, interface) in interfaces.iter().enumerate() {
        let source = interface.source.clone().unwrap_or_default();
        if interface.bandwidth.is_some() && interface.r#type() != pb::InterfaceType::Network {
            remove_taps(&created).await;
            return Err(Error::Unsupported(format!(
                "interface {}: <bandwidth> is applied to ports of virtual networks (type='network') only so far",
                interface.mac
            )));
        }
        let result = match interface.r#type() {
            pb::InterfaceType::User => Ok(String::new()),
            pb::InterfaceType::Ethernet => {
                if interface.target_dev.is_empty() {
                    Err(Error::Definition(vireo_conf::ConfError::new(
                        format!("domain/devices/interface[{}]/target@dev", interface.mac),
                        "an ethernet interface names its tap device",
                    )))
                } else {
                    Ok(interface.target_dev.clone())
                }
            }
            pb::InterfaceType::Bridge => {
                let name = if interface.target_dev.is_empty() {
                    format!("vireo{id}n{index}")
                } else {
                    interface.target_dev.clone()
                };
                let bridge = &source.bridge;
                if !std::path::Path::new(&format!("/sys/class/net/{bridge}/bridge")).exists() {
                    Err(Error::State(format!(
                        "interface {}: bridge '{bridge}' does not exist on this host",
                        interface.mac
                    )))
                } else {
                    create_link(
                        &name,
                        &[
                            &["tuntap", "add", "dev", &name, "mode", "tap"],
                            &["link", "set", "dev", &name, "master", bridge],
                        ],
                        &mut created,
                    )
                    .await
                }
            }
            pb::InterfaceType::Direct => {
                let name = if interface.target_dev.is_empty() {
                    format!("vireo{id}m{index}")
                } else {
                    interface.target_dev.clone()
                };
                let mode = match source.mode() {
                    pb::DirectMode::Bridge => "bridge",
                    pb::DirectMode::Private => "private",
                    pb::DirectMode::Passthrough => "passthru",
                    _ => "vepa",
                };
                let add = [
                    "link",
                    "add",
                    "link",
                    &source.dev,
                    "name",
                    &name,
                    "address",
                    &interface.mac,
                    "type",
                    "macvtap",
                    "mode",
                    mode,
                ];
                create_link(&name, &[&add], &mut created).await
            }
            pb::InterfaceType::Network => {
                let name = if interface.target_dev.is_empty() {
                    format!("vireo{id}n{index}")
                } else {
                    interface.target_dev.clone()
                };
                let plugged = networks.plug(def, interface, &name).await;
                if let Ok(tap) = &plugged {
                    created.push(tap.clone());
                }
                plugged
            }
            _ => Err(Error::Unsupported(format!(
                "interface {}: this interface type is not supported",
                interface.mac
            ))),
        };
        match result {
            Ok(tap) => taps.push(tap),
            Err(err) => {
                remove_taps(&created).await;
                return Err(err);
            }
        }
    }
    Ok(taps)
}

/// Whether link `name` is a macvtap (a direct interface, or the port of a macvtap network):
/// engines reach it through its character device, not by tap name.
pub fn is_macvtap(name: &str) -> bool {
    !name.is_empty()
        && std::path::Path::new("/sys/class/net")
            .join(name)
            .join("macvtap")
            .exists()
}

/// The character device of a macvtap (`/dev/tapN`, N its ifindex); where udev did not make
/// it (containers), the service makes one in the guest's run directory `dir` from the numbers
/// sysfs gives, so nothing is left in /dev.
pub fn macvtap_device(name: &str, dir: &std::path::Path) -> Result<std::path::PathBuf, Error> {
    let sys = std::path::Path::new("/sys/class/net").join(name);
    let ifindex = std::fs::read_to_string(sys.join("ifindex"))
        .map_err(|err| Error::Engine(format!("macvtap {name}: {err}")))?;
    let udev = std::path::PathBuf::from(format!("/dev/tap{}", ifindex.trim()));
    if udev.exists() {
        return Ok(udev);
    }
    let device = dir.join(format!("tap{}", ifindex.trim()));
    let numbers = std::fs::read_to_string(sys.join(format!("macvtap/tap{}/dev", ifindex.trim())))
        .map_err(|err| Error::Engine(format!("macvtap {name}: {err}")))?;
    let (major, minor) = numbers
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .ok_or_else(|| Error::Engine(format!("macvtap {name}: bad device numbers {numbers}")))?;
    nix::sys::stat::mknod(
        &device,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major, minor),
    )
    .map_err(|err| Error::Engine(format!("creating {}: {err}", device.display())))?;
    Ok(device)
}

/// Removes the taps created for a guest (names starting with "vireo"; an admin's ethernet tap
/// is left alone).
pub async fn remove_taps(taps: &[String]) {
    for tap in taps.iter().filter(|t| t.starts_with("vireo")) {
        let _ = ip(&["link", "del", "dev", tap]).await;
    }
}
