//! vireod owns composition only: it runs every host service (compute, storage, network, nodedev,
//! migrate) and the gateway in one process, each on its own socket under one run directory and
//! its own state directory under one state root, all stopped by one cancellation token.

use std::future::Future;
use std::pin::Pin;

use clap::Parser;
use vireo_runtime::{BoxError, CancellationToken, CommonArgs, Service, ServiceContext};

/// Vireo on one host: every service and the gateway in one process.
/// State goes to `<state-dir>/<service>/`, sockets to `<run-dir>/<service>.sock`.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

type Serving = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

fn serve_one(context: ServiceContext, token: CancellationToken) -> Serving {
    match context.service {
        Service::Compute => Box::pin(svc_compute::serve(context, token)),
        Service::Storage => Box::pin(svc_storage::serve(context, token)),
        Service::Network => Box::pin(svc_network::serve(context, token)),
        Service::Nodedev => Box::pin(svc_nodedev::serve(context, token)),
        Service::Migrate => Box::pin(svc_migrate::serve(context, token)),
        Service::Gateway => Box::pin(gateway::serve(context, token)),
    }
}

async fn serve_all(root: ServiceContext, token: CancellationToken) -> Result<(), BoxError> {
    let mut running = tokio::task::JoinSet::new();
    for service in Service::HOST_SERVICES.into_iter().chain([Service::Gateway]) {
        let context = root.within(service);
        let token = token.clone();
        running.spawn(async move { (service, serve_one(context, token).await) });
    }
    let mut failure: Option<BoxError> = None;
    while let Some(joined) = running.join_next().await {
        let (service, result) = joined.map_err(|err| format!("a service task failed: {err}"))?;
        if let Err(err) = result {
            // One service failing stops them all: a partial vireod would mislead clients.
            tracing::error!(service = service.name(), "{err}");
            token.cancel();
            failure.get_or_insert_with(|| format!("{}: {err}", service.name()).into());
        }
    }
    failure.map_or(Ok(()), Err)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let root = match ServiceContext::resolve_root(&args.common) {
        Ok(root) => root,
        Err(err) => {
            eprintln!("vireod: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    vireo_runtime::init_logging(&ServiceContext::log_filter(&args.common, &root.file));
    tracing::info!(state = %root.state_dir.display(), run = %root.run_dir.display(), "vireod starting");
    vireo_runtime::run_until_stopped("vireod", |token| serve_all(root, token))
}
