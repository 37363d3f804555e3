//! NetworkService and NetworkPortService of vireo.network.v1 over core's manager: requests are
//! checked and converted here.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};
use vireo_proto::common::v1::{Empty, ObjectRef};
use vireo_proto::network::v1 as pb;
use vireo_proto::network::v1::network_port_service_server::{
    NetworkPortService, NetworkPortServiceServer,
};
use vireo_proto::network::v1::network_service_server::{NetworkService, NetworkServiceServer};

use vireo_runtime::fields::known;

use crate::core::networks::Manager;

pub fn network_server(manager: Arc<Manager>) -> NetworkServiceServer<Networks> {
    NetworkServiceServer::new(Networks(manager))
}

pub fn port_server(manager: Arc<Manager>) -> NetworkPortServiceServer<Ports> {
    NetworkPortServiceServer::new(Ports(manager))
}

pub struct Networks(Arc<Manager>);

/// GetPortXml and SetPortBandwidth answer UNIMPLEMENTED (vireo-runtime's pending layer).
pub struct Ports(Arc<Manager>);

#[tonic::async_trait]
impl NetworkPortService for Ports {
    async fn create_port(
        &self,
        request: Request<pb::CreatePortRequest>,
    ) -> Result<Response<pb::NetworkPort>, Status> {
        let request = request.into_inner();
        let definition = match request.source {
            Some(pb::create_port_request::Source::Definition(definition)) => definition,
            Some(pb::create_port_request::Source::Xml(_)) => {
                return Err(Status::unimplemented(
                    "source: port XML is not read yet; give the definition",
                ));
            }
            None => return Err(Status::invalid_argument("source: give the port definition")),
        };
        if request.queues > 1 {
            return Err(Status::unimplemented(
                "queues: multiqueue taps are not built yet",
            ));
        }
        let port = self
            .0
            .create_port(&network_of(request.network)?, definition, &request.tap_name)
            .await?;
        Ok(Response::new(port))
    }

    async fn delete_port(
        &self,
        request: Request<pb::DeletePortRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.0
            .delete_port(&network_of(request.network)?, &request.port_uuid)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_ports(
        &self,
        request: Request<pb::ListPortsRequest>,
    ) -> Result<Response<pb::NetworkPortList>, Status> {
        use vireo_proto::common::v1::object_ref::Key;
        let request = request.into_inner();
        let owner = request.owner.and_then(|o| o.key).map(|key| match key {
            Key::Name(n) | Key::Uuid(n) | Key::Any(n) => n,
            Key::Id(id) => id.to_string(),
        });
        let ports = self
            .0
            .ports(&network_of(request.network)?, owner.as_deref())
            .await?;
        Ok(Response::new(pb::NetworkPortList { ports }))
    }

    async fn get_port(
        &self,
        request: Request<pb::GetPortRequest>,
    ) -> Result<Response<pb::NetworkPort>, Status> {
        let request = request.into_inner();
        let uuid = request.port_uuid;
        self.0
            .ports(&network_of(request.network)?, None)
            .await?
            .into_iter()
            .find(|port| port.definition.as_ref().is_some_and(|d| d.uuid == uuid))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no port with uuid '{uuid}' on this network")))
    }
}

fn network_of(network: Option<ObjectRef>) -> Result<ObjectRef, Status> {
    network
        .filter(|n| n.key.is_some())
        .ok_or_else(|| Status::invalid_argument("network: name the network"))
}

fn source_of(
    source: Option<pb::define_network_request::Source>,
) -> Result<pb::define_network_request::Source, Status> {
    source.ok_or_else(|| {
        Status::invalid_argument("source: give the network as XML or as a definition")
    })
}

#[tonic::async_trait]
impl NetworkService for Networks {
    async fn list_networks(
        &self,
        request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::NetworkList>, Status> {
        let networks = self.0.list(&request.into_inner()).await;
        Ok(Response::new(pb::NetworkList { networks }))
    }

    async fn define_network(
        &self,
        request: Request<pb::DefineNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let source = source_of(request.into_inner().source)?;
        Ok(Response::new(self.0.define(source).await?))
    }

    async fn create_network(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let source = match request.into_inner().source {
            Some(pb::create_network_request::Source::Xml(xml)) => {
                pb::define_network_request::Source::Xml(xml)
            }
            Some(pb::create_network_request::Source::Definition(def)) => {
                pb::define_network_request::Source::Definition(def)
            }
            None => source_of(None)?,
        };
        Ok(Response::new(self.0.create(source).await?))
    }

    async fn start_network(
        &self,
        request: Request<pb::StartNetworkRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0
            .start(&network_of(request.into_inner().network)?)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn destroy_network(
        &self,
        request: Request<pb::DestroyNetworkRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0
            .destroy(&network_of(request.into_inner().network)?)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn undefine_network(
        &self,
        request: Request<pb::UndefineNetworkRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0
            .undefine(&network_of(request.into_inner().network)?)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn set_network_autostart(
        &self,
        request: Request<pb::SetNetworkAutostartRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.0
            .set_autostart(&network_of(request.network)?, request.autostart)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_network(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.0
                .get(&network_of(request.network)?, request.inactive)
                .await?,
        ))
    }

    async fn get_network_info(
        &self,
        request: Request<pb::GetNetworkInfoRequest>,
    ) -> Result<Response<pb::NetworkInfo>, Status> {
        let network = network_of(request.into_inner().network)?;
        Ok(Response::new(self.0.info(&network).await?))
    }

    async fn get_network_xml(
        &self,
        request: Request<pb::GetNetworkXmlRequest>,
    ) -> Result<Response<pb::NetworkXml>, Status> {
        let request = request.into_inner();
        let xml = self
            .0
            .xml(&network_of(request.network)?, request.inactive)
            .await?;
        Ok(Response::new(pb::NetworkXml { xml }))
    }

    async fn update_network(
        &self,
        request: Request<pb::UpdateNetworkRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        known::<pb::NetworkUpdateCommand>(request.command, "command")?;
        known::<pb::NetworkUpdateSection>(request.section, "section")?;
        self.0.update(&request).await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_dhcp_leases(
        &self,
        request: Request<pb::GetDhcpLeasesRequest>,
    ) -> Result<Response<pb::DhcpLeaseList>, Status> {
        let request = request.into_inner();
        let leases = self
            .0
            .leases(&network_of(request.network)?, &request.mac)
            .await?;
        Ok(Response::new(pb::DhcpLeaseList { leases }))
    }

    async fn watch_network_events(
        &self,
        request: Request<pb::WatchNetworkEventsRequest>,
    ) -> Result<Response<BoxStream<pb::NetworkEvent>>, Status> {
        use vireo_proto::common::v1::object_ref::Key;
        let filter = request
            .into_inner()
            .network
            .and_then(|n| n.key)
            .map(|key| match key {
                Key::Name(n) | Key::Uuid(n) | Key::Any(n) => n,
                Key::Id(id) => id.to_string(),
            });
        let events = tokio_stream::wrappers::BroadcastStream::new(self.0.subscribe());
        let stream = events.filter_map(move |event| match event {
            Ok(event) => match &filter {
                Some(f) if *f != event.name && !event.uuid.eq_ignore_ascii_case(f) => None,
                _ => Some(Ok(event)),
            },
            Err(_) => None,
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
