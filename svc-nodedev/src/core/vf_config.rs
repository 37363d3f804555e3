//! A VF's administrative settings (MAC, VLAN and priority, spoof check, trust, link state, rate
//! limits), which the PF's driver keeps: set through netlink on the PF's network interface
//! (RTM_SETLINK with IFLA_VFINFO_LIST, as `ip link set PF vf N ...` does) and read back
//! (RTM_GETLINK with the VF extension mask).

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac,
    VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState,
};
use tonic::Status;
use vireo_proto::nodedev::v1 as pb;

/// A request's MAC as bytes: six colon-separated hex octets, not multicast (all zeros clears it).
pub fn parse_mac(text: &str) -> Result<[u8; 6], Status> {
    let bad = || Status::invalid_argument(format!("mac: '{text}' is not a MAC address"));
    let octets: Vec<u8> = text
        .split(':')
        .map(|octet| {
            (octet.len() == 2)
                .then(|| u8::from_str_radix(octet, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let mac: [u8; 6] = octets.try_into().map_err(|_| bad())?;
    if mac[0] & 1 != 0 {
        return Err(Status::invalid_argument(format!(
            "mac: '{text}' is a multicast address; a VF needs a unicast one"
        )));
    }
    Ok(mac)
}

/// Checks what the kernel would refuse less clearly, before anything is sent.
pub fn check(request: &pb::SetVfConfigRequest) -> Result<(), Status> {
    if let Some(mac) = &request.mac {
        parse_mac(mac)?;
    }
    if request.vlan_id.is_some_and(|vlan| vlan > 4095) {
        return Err(Status::invalid_argument(
            "vlan_id: a VLAN id is at most 4095 (0 removes the VLAN)",
        ));
    }
    if let Some(qos) = request.vlan_qos {
        if qos > 7 {
            return Err(Status::invalid_argument("vlan_qos: a priority is 0-7"));
        }
        if request.vlan_id.unwrap_or(0) == 0 {
            return Err(Status::invalid_argument(
                "vlan_qos: a priority goes with a nonzero vlan_id",
            ));
        }
    }
    if let Some(state) = request.link_state {
        vireo_runtime::fields::known::<pb::VfLinkState>(state, "link_state")?;
    }
    if let (Some(min), Some(max)) = (request.min_tx_rate_mbit_s, request.max_tx_rate_mbit_s)
        && max != 0
        && min > max
    {
        return Err(Status::invalid_argument(format!(
            "min_tx_rate_mbit_s: {min} is above max_tx_rate_mbit_s {max}"
        )));
    }
    Ok(())
}

/// The RTM_SETLINK message for link `index` that makes the request's changes to VF `vf`.
/// `current` gives the rate not being changed (the kernel sets both limits at once).
pub fn message(
    index: u32,
    request: &pb::SetVfConfigRequest,
    current: &pb::VirtualFunction,
) -> Result<LinkMessage, Status> {
    let vf = request.vf_index;
    let mut settings = Vec::new();
    if let Some(mac) = &request.mac {
        settings.push(VfInfo::Mac(VfInfoMac::new(vf, &parse_mac(mac)?)));
    }
    if let Some(vlan) = request.vlan_id {
        settings.push(VfInfo::Vlan(VfInfoVlan::new(
            vf,
            vlan,
            request.vlan_qos.unwrap_or(0),
        )));
    }
    if let Some(enabled) = request.spoofchk {
        settings.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, enabled)));
    }
    if let Some(enabled) = request.trust {
        settings.push(VfInfo::Trust(VfInfoTrust::new(vf, enabled)));
    }
    if let Some(state) = request.link_state {
        let state = match pb::VfLinkState::try_from(state) {
            Ok(pb::VfLinkState::Enable) => VfLinkState::Enable,
            Ok(pb::VfLinkState::Disable) => VfLinkState::Disable,
            _ => VfLinkState::Auto,
        };
        settings.push(VfInfo::LinkState(VfInfoLinkState::new(vf, state)));
    }
    if request.min_tx_rate_mbit_s.is_some() || request.max_tx_rate_mbit_s.is_some() {
        settings.push(VfInfo::Rate(VfInfoRate::new(
            vf,
            request
                .min_tx_rate_mbit_s
                .unwrap_or(current.min_tx_rate_mbit_s),
            request
                .max_tx_rate_mbit_s
                .unwrap_or(current.max_tx_rate_mbit_s),
        )));
    }
    if settings.is_empty() {
        return Err(Status::invalid_argument(
            "give at least one setting: mac, vlan_id, spoofchk, trust, link_state or a rate",
        ));
    }
    let mut message = rtnetlink::LinkUnspec::new_with_index(index).build();
    message
        .attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(settings)]));
    Ok(message)
}

/// What the PF's driver reports of each VF, by index.
fn settings_of(message: &LinkMessage) -> Vec<pb::VirtualFunction> {
    let mut vfs = Vec::new();
    for attribute in &message.attributes {
        let LinkAttribute::VfInfoList(list) = attribute else {
            continue;
        };
        for LinkVfInfo(infos) in list {
            let mut vf = pb::VirtualFunction::default();
            for info in infos {
                match info {
                    VfInfo::Mac(mac) => {
                        vf.index = mac.vf_id;
                        vf.mac = mac.mac[..6]
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":");
                    }
                    VfInfo::Vlan(vlan) => {
                        vf.vlan_id = vlan.vlan_id;
                        vf.vlan_qos = vlan.qos;
                    }
                    VfInfo::SpoofCheck(check) => vf.spoofchk = check.enabled,
                    VfInfo::Trust(trust) => vf.trust = trust.enabled,
                    VfInfo::LinkState(state) => {
                        vf.set_link_state(match state.state {
                            VfLinkState::Enable => pb::VfLinkState::Enable,
                            VfLinkState::Disable => pb::VfLinkState::Disable,
                            _ => pb::VfLinkState::Auto,
                        });
                    }
                    VfInfo::Rate(rate) => {
                        vf.min_tx_rate_mbit_s = rate.min_tx_rate;
                        vf.max_tx_rate_mbit_s = rate.max_tx_rate;
                    }
                    _ => {}
                }
            }
            vfs.push(vf);
        }
    }
    vfs
}

fn netlink_status(what: &str, interface: &str, err: rtnetlink::Error) -> Status {
    let errno = match &err {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    };
    match errno {
        Some(libc::EOPNOTSUPP) => Status::failed_precondition(format!(
            "{interface}: its driver does not support VF settings ({what}: operation not supported)"
        )),
        Some(libc::ENODEV) => Status::failed_precondition(format!(
            "{interface}: no such network interface in this network namespace"
        )),
        Some(libc::EINVAL) => Status::invalid_argument(format!(
            "{interface}: the driver refused the setting ({what}: invalid argument)"
        )),
        _ => Status::unavailable(format!("{interface}: {what}: {err}")),
    }
}

/// A route netlink connection for one request.
fn connect() -> Result<rtnetlink::Handle, Status> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|err| Status::internal(format!("opening a netlink socket: {err}")))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The PF interface's index and its VFs' settings as the driver reports them (none when the
/// driver reports nothing).
pub async fn read(interface: &str) -> Result<(u32, Vec<pb::VirtualFunction>), Status> {
    let handle = connect()?;
    let mut request = handle.link().get().match_name(interface.to_string());
    request = request.set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::Vf]);
    let link = request
        .execute()
        .try_next()
        .await
        .map_err(|err| netlink_status("reading its VFs", interface, err))?
        .ok_or_else(|| {
            Status::failed_precondition(format!("{interface}: no such network interface"))
        })?;
    Ok((link.header.index, settings_of(&link)))
}

/// Sends the change to the PF's interface.
pub async fn apply(interface: &str, message: LinkMessage) -> Result<(), Status> {
    connect()?
        .link()
        .set(message)
        .execute()
        .await
        .map_err(|err| netlink_status("setting a VF", interface, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{Emitable, Parseable};

    #[test]
    fn the_message_carries_each_setting_for_the_vf_and_parses_back() {
        let request = pb::SetVfConfigRequest {
            vf_index: 3,
            mac: Some("52:54:00:ab:cd:ef".into()),
            vlan_id: Some(100),
            vlan_qos: Some(5),
            spoofchk: Some(true),
            max_tx_rate_mbit_s: Some(1000),
            ..Default::default()
        };
        let current = pb::VirtualFunction {
            min_tx_rate_mbit_s: 10,
            ..Default::default()
        };
        let message = message(7, &request, &current).unwrap();
        let mut bytes = vec![0u8; message.buffer_len()];
        message.emit(&mut bytes);
        let parsed = LinkMessage::parse(&bytes[..]).unwrap();
        assert_eq!(parsed.header.index, 7);
        let vfs = settings_of(&parsed);
        assert_eq!(vfs.len(), 1);
        let vf = &vfs[0];
        assert_eq!((vf.index, vf.mac.as_str()), (3, "52:54:00:ab:cd:ef"));
        assert_eq!((vf.vlan_id, vf.vlan_qos, vf.spoofchk), (100, 5, true));
        assert_eq!((vf.min_tx_rate_mbit_s, vf.max_tx_rate_mbit_s), (10, 1000));
    }

    #[test]
    fn bad_settings_are_refused_by_field_before_any_netlink() {
        let refused =
            |request: pb::SetVfConfigRequest| check(&request).unwrap_err().message().to_string();
        assert!(
            refused(pb::SetVfConfigRequest {
                mac: Some("01:00:5e:00:00:01".into()),
                ..Default::default()
            })
            .starts_with("mac: '01:00:5e:00:00:01' is a multicast")
        );
        assert!(
            refused(pb::SetVfConfigRequest {
                mac: Some("52:54:00:zz:00:01".into()),
                ..Default::default()
            })
            .starts_with("mac:")
        );
        assert!(
            refused(pb::SetVfConfigRequest {
                vlan_id: Some(4096),
                ..Default::default()
            })
            .starts_with("vlan_id:")
        );
        assert!(
            refused(pb::SetVfConfigRequest {
                vlan_qos: Some(3),
                ..Default::default()
            })
            .starts_with("vlan_qos:")
        );
        assert!(
            refused(pb::SetVfConfigRequest {
                link_state: Some(9),
                ..Default::default()
            })
            .starts_with("link_state")
        );
        assert!(
            message(
                1,
                &pb::SetVfConfigRequest::default(),
                &pb::VirtualFunction::default()
            )
            .is_err()
        );
    }
}
