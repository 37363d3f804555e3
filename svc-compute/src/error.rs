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
    /// A definition (XML or typed) is wrong; the message names the field.
    #[error("{0}")]
    Definition(#[from] vireo_conf::ConfError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The domain is not in a state that allows the request (e.g. starting a running domain).
    #[error("{0}")]
    State(String),
    /// The domain's engine cannot do what was asked; the message names the case.
    #[error("{0}")]
    Unsupported(String),
    /// The engine failed or did not answer.
    #[error("{0}")]
    Engine(String),
    /// Our own files (definitions, run directory) could not be written or read.
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
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let message = err.to_string();
        match err {
            Error::Host(_) | Error::Xml(_) | Error::Engine(_) | Error::Io { .. } => {
                Status::internal(message)
            }
            Error::InvalidField { .. } | Error::Definition(_) => Status::invalid_argument(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::State(_) | Error::Unsupported(_) => Status::failed_precondition(message),
        }
    }
}
