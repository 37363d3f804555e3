//! Links, addresses and routes through rtnetlink: the bridges of networks, and their addresses,
//! routes and ports. Tap devices are made with the tun driver's ioctls (`tap.rs`), which netlink
//! cannot do, and enslaved here.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{BridgeStpState, InfoBridge};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

/// A netlink failure, said with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    what: String,
    source: rtnetlink::Error,
}

impl NetlinkError {
    /// The kernel's errno, when it gave one.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
            _ => None,
        }
    }
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

/// What a new bridge looks like.
#[derive(Debug, Clone, Default)]
pub struct BridgeSettings {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub stp: bool,
    /// STP forward delay, seconds.
    pub delay_s: u32,
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a route netlink socket; its connection runs on the current tokio runtime.
    pub fn connect() -> std::io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The index of link `name`, or None when there is no such link.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|link| link.header.index)),
            Err(rtnetlink::Error::NetlinkError(message))
                if message.code.is_some_and(|code| -code.get() == libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(err) => Err(failed(format!("looking up link {name}"))(err)),
        }
    }

    /// Creates bridge `name` (up) and returns its index.
    pub async fn add_bridge(
        &self,
        name: &str,
        settings: &BridgeSettings,
    ) -> Result<u32, NetlinkError> {
        let stp = if settings.stp {
            BridgeStpState::KernelStp
        } else {
            BridgeStpState::Disabled
        };
        // The kernel counts the forward delay in hundredths of a second.
        let mut bridge = LinkBridge::new(name)
            .append_info_data(InfoBridge::StpState(stp))
            .append_info_data(InfoBridge::ForwardDelay(
                settings.delay_s.saturating_mul(100),
            ));
        if let Some(mac) = settings.mac {
            bridge = bridge.address(mac.to_vec());
        }
        if let Some(mtu) = settings.mtu {
            bridge = bridge.mtu(mtu);
        }
        self.handle
            .link()
            .add(bridge.build())
            .execute()
            .await
            .map_err(failed(format!("creating bridge {name}")))?;
        self.index_of(name).await?.ok_or_else(|| NetlinkError {
            what: format!("bridge {name} vanished right after its creation"),
            source: rtnetlink::Error::RequestFailed,
        })
    }

    pub async fn add_address(
        &self,
        index: u32,
        address: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, address, prefix)
            .execute()
            .await
            .map_err(failed(format!("adding {address}/{prefix}")))
    }

    /// A static route through `gateway` (on-link next hop).
    pub async fn add_route(
        &self,
        destination: IpAddr,
        prefix: u8,
        gateway: IpAddr,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        let what = format!("adding route {destination}/{prefix} via {gateway}");
        let mut route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(destination, prefix)
            .map_err(|err| NetlinkError {
                what: what.clone(),
                source: rtnetlink::Error::InvalidNla(err.to_string()),
            })?
            .gateway(gateway)
            .map_err(|err| NetlinkError {
                what: what.clone(),
                source: rtnetlink::Error::InvalidNla(err.to_string()),
            })?;
        if metric > 0 {
            route = route.priority(metric);
        }
        self.handle
            .route()
            .add(route.build())
            .execute()
            .await
            .map_err(failed(what))
    }

    /// Enslaves link `index` to bridge `bridge` and brings it up.
    pub async fn attach(&self, index: u32, bridge: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(format!("attaching link {index} to bridge {bridge}")))
    }

    /// Creates macvtap `name` on link `base` in `mode` with the guest's `mac`, up; its index.
    pub async fn add_macvtap(
        &self,
        name: &str,
        base: u32,
        mode: rtnetlink::packet_route::link::MacVtapMode,
        mac: [u8; 6],
    ) -> Result<u32, NetlinkError> {
        self.handle
            .link()
            .add(
                rtnetlink::LinkMacVtap::new(name, base, mode)
                    .address(mac.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(format!("creating macvtap {name}")))?;
        self.index_of(name).await?.ok_or_else(|| NetlinkError {
            what: format!("macvtap {name} vanished right after its creation"),
            source: rtnetlink::Error::RequestFailed,
        })
    }

    /// Creates the ifb device `name`, up.
    pub async fn add_ifb(&self, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(rtnetlink::LinkIfb::new(name).up().build())
            .execute()
            .await
            .map_err(failed(format!("creating ifb device {name}")))
    }

    /// Sets link `index`'s MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(format!("setting the MAC of link {index}")))
    }

    /// Removes link `name`; a link already gone is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), NetlinkError> {
        let Some(index) = self.index_of(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(message))
                if message.code.is_some_and(|code| -code.get() == libc::ENODEV) =>
            {
                Ok(())
            }
            result => result.map_err(failed(format!("removing link {name}"))),
        }
    }
}
