//! The one error type of svc-storage and its one mapping to gRPC statuses.

use tonic::Status;

use crate::core::tool::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("formatting XML: {0}")]
    Xml(#[from] vireo_conf::XmlError),
    /// A request field is wrong; the message names it.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    /// A definition (XML or typed) is wrong; the message names the field.
    #[error("{0}")]
    Definition(#[from] vireo_conf::ConfError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The pool or volume is not in a state that allows the request (e.g. deleting a volume a
    /// running domain uses, starting an active pool).
    #[error("{0}")]
    State(String),
    /// This pool type cannot do what was asked (e.g. resizing a partition).
    #[error("{0}")]
    Unsupported(String),
    /// A storage tool (qemu-img, lvm2, parted, mount, iscsiadm) failed; its words are quoted.
    #[error("{0}")]
    Tool(#[from] ToolError),
    /// svc-compute, asked which domains use a volume, did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// Our own files or the volume's bytes could not be read or written.
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
            Error::Xml(_) | Error::Io { .. } => Status::internal(message),
            Error::Tool(_) => Status::failed_precondition(message),
            Error::InvalidField { .. } | Error::Definition(_) => Status::invalid_argument(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::State(_) | Error::Unsupported(_) => Status::failed_precondition(message),
            Error::Unavailable(_) => Status::unavailable(message),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
