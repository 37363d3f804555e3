//! The one error type of svc-network and its one mapping to gRPC statuses.

use tonic::Status;

use crate::core::netlink::NetlinkError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong; the message names it.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("formatting XML: {0}")]
    Xml(#[from] vireo_conf::XmlError),
    /// A definition (XML or typed) is wrong; the message names the field.
    #[error("{0}")]
    Definition(#[from] vireo_conf::ConfError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The network or the host is not in a state that allows the request (starting an active
    /// network, a subnet another interface already routes, a missing host bridge).
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Unsupported(String),
    /// The kernel refused a link, address or route.
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    /// nft or dnsmasq failed; their words are quoted.
    #[error("{0}")]
    Tool(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let message = err.to_string();
        match err {
            Error::InvalidField { .. } | Error::Definition(_) => Status::invalid_argument(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::State(_) | Error::Unsupported(_) | Error::Tool(_) => {
                Status::failed_precondition(message)
            }
            Error::Xml(_) | Error::Netlink(_) | Error::Io { .. } => Status::internal(message),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
