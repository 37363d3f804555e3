//! Checks of request fields that every service makes the same way.

use tonic::Status;

/// An enum field's value; a number this server does not know is refused by field, not read as
/// the default.
pub fn known<E: TryFrom<i32>>(value: i32, field: &str) -> Result<E, Status> {
    E::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("{field}: unknown value {value}")))
}
