//! vireo-runtime owns the process plumbing that every Vireo server and client shares: the common
//! flags and TOML config, serving gRPC on a unix socket (and TLS on TCP, with who may call what)
//! with health and reflection, answering
//! not-yet-built RPCs honestly, shutdown on SIGTERM/SIGINT, logging, connecting to a socket, crash-safe
//! definition files, local transfer sockets that pass open files, and checks of request fields.
//! It knows nothing of any service's domain logic.

pub mod access;
pub mod client;
pub mod config;
pub mod fields;
pub mod pending;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod tls;
pub mod transfer;

pub use config::{CommonArgs, Service, ServiceContext};
pub use server::{ServerBuilder, ServerError};
pub use tokio_util::sync::CancellationToken;

/// Sets up `tracing` logs on stderr. `filter` follows `RUST_LOG` syntax; `RUST_LOG` wins when set.
pub fn init_logging(filter: &str) {
    let env_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // A second init (tests running several servers in one process) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The error a service's `serve` returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `main` of a standalone server binary: resolve flags and config, log, serve until SIGTERM or
/// SIGINT, drain under a deadline. Exit status 0 on a clean stop, 1 on a failure, 2 on bad config.
pub fn run_service<F, Fut>(service: Service, args: &CommonArgs, serve: F) -> std::process::ExitCode
where
    F: FnOnce(ServiceContext, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let context = match ServiceContext::resolve(service, args) {
        Ok(context) => context,
        Err(err) => {
            eprintln!("{}: {err}", service.name());
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&ServiceContext::log_filter(args, &context.file));
    run_until_stopped(service.name(), |token| serve(context, token))
}

/// Runs `serve` on a tokio runtime with the signal-driven token, and maps its outcome to an exit
/// status. Shared by the service binaries and vireod.
pub fn run_until_stopped<F, Fut>(name: &str, serve: F) -> std::process::ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let token = CancellationToken::new();
        shutdown::cancel_on_signal(token.clone())?;
        match shutdown::drain(&token, serve(token.clone())).await {
            Some(result) => result,
            None => {
                tracing::warn!("stop deadline passed with work in flight; exiting anyway");
                Ok(())
            }
        }
    });
    // Abandoned tasks are dropped here, which closes and removes their sockets.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{name}: {err}");
            eprintln!("{name}: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `main` of a standalone service binary: `--state-dir`, `--run-dir`, `--config`, `--log`,
/// `--version`, then `run_service`.
#[macro_export]
macro_rules! service_main {
    ($service:expr, $serve:path, $about:literal) => {
        #[derive(clap::Parser)]
        #[command(version, about = $about)]
        struct Args {
            #[command(flatten)]
            common: $crate::CommonArgs,
        }

        fn main() -> std::process::ExitCode {
            let args = <Args as clap::Parser>::parse();
            $crate::run_service($service, &args.common, $serve)
        }
    };
}

impl ServiceContext {
    /// Creates this service's state directory, naming it in the error. Before that, refuses when
    /// another process already serves this service's socket: a second instance must not touch
    /// the host (networks, pools, guests) that the first one manages.
    pub fn prepare_state_dir(&self) -> Result<(), BoxError> {
        if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
            return Err(server::ServerError::AlreadyServing(self.socket.clone()).into());
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|err| {
            format!(
                "cannot create state directory {}: {err}",
                self.state_dir.display()
            )
            .into()
        })
    }
}
