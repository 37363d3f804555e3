//! The one table of who may call what. Roles follow DESIGN.md: `readonly` may call every
//! Get/List/Watch, `operator` adds lifecycle, `admin` may call everything.

/// A caller's role, weakest first, so `a >= b` means `a` may do what `b` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ReadOnly,
    Operator,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::ReadOnly => "readonly",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// Method-name prefixes that only read.
const READ_PREFIXES: &[&str] = &[
    "Get",
    "List",
    "Watch",
    "Find",
    "Lookup",
    "Download",
    "Has",
    "Check",
    "WhoAmI",
    "ServerReflectionInfo",
];
/// Method-name prefixes that change a running object's state but not what is defined.
const LIFECYCLE_PREFIXES: &[&str] = &[
    "Start", "Shutdown", "Reboot", "Reset", "Destroy", "Suspend", "Resume", "Console", "Refresh",
    "AbortJob",
];

/// The weakest role allowed to call the gRPC method at `path` (`/package.Service/Method`).
pub fn required_role(path: &str) -> Role {
    let method = path.rsplit('/').next().unwrap_or_default();
    if READ_PREFIXES
        .iter()
        .any(|prefix| method.starts_with(prefix))
    {
        Role::ReadOnly
    } else if LIFECYCLE_PREFIXES
        .iter()
        .any(|prefix| method.starts_with(prefix))
    {
        Role::Operator
    } else {
        Role::Admin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lifecycle_and_the_rest() {
        assert_eq!(
            required_role("/vireo.compute.v1.DomainService/ListDomains"),
            Role::ReadOnly
        );
        assert_eq!(
            required_role("/grpc.health.v1.Health/Check"),
            Role::ReadOnly
        );
        assert_eq!(
            required_role("/vireo.compute.v1.DomainService/StartDomain"),
            Role::Operator
        );
        assert_eq!(
            required_role("/vireo.compute.v1.DomainService/DefineDomain"),
            Role::Admin
        );
        assert_eq!(
            required_role("/vireo.storage.v1.StorageVolumeService/DeleteVolume"),
            Role::Admin
        );
        assert_eq!(required_role("garbage"), Role::Admin);
    }
}

/// Refuses, with PermissionDenied, every call that needs more than `readonly`. Serves the
/// read-only socket, like `virsh -r`.
#[derive(Debug, Clone, Default)]
pub struct ReadOnlyLayer;

impl<S> tower::Layer<S> for ReadOnlyLayer {
    type Service = ReadOnly<S>;

    fn layer(&self, inner: S) -> ReadOnly<S> {
        ReadOnly { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ReadOnly<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ReadOnly<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let needed = required_role(&path);
        if needed > Role::ReadOnly {
            let method = path.trim_start_matches('/');
            let status = tonic::Status::permission_denied(format!(
                "{method} needs role {needed}; this connection is read-only"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}
