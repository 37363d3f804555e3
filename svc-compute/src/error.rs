//! The one error type of svc-compute and its one mapping to gRPC statuses.

use tonic::Status;

use crate::core::host::HostError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host's own files could not be read: a server-side fault, not the caller's.
    #[error("reading host facts: {0}")]
    Host(#[from] HostError),
    #[error("formatting XML: {0}")]
    Xml(#[from] vireo_conf::XmlError),
    /// A request field names something that does not exist on this host.
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::Host(_) | Error::Xml(_) => Status::internal(err.to_string()),
            Error::InvalidField { .. } => Status::invalid_argument(err.to_string()),
        }
    }
}
