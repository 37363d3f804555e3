//! The flags every server takes (`--state-dir`, `--run-dir`, `--config`, `--log`) and the TOML file
//! they may come from. A flag wins over the file; the file wins over the defaults of DESIGN.md.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// Default root of persistent state; each service keeps `<root>/<service>/`.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/vireo";
/// Default directory of sockets, pid files and guest consoles.
pub const DEFAULT_RUN_DIR: &str = "/run/vireo";
/// The config file read when `--config` is not given, if it exists (as libvirtd's
/// /etc/libvirt/libvirtd.conf).
pub const DEFAULT_CONFIG: &str = "/etc/vireo/vireo.toml";

/// The processes that serve gRPC, each with its own socket `<run-dir>/<name>.sock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Compute,
    Storage,
    Network,
    Nodedev,
    Migrate,
    Gateway,
}

impl Service {
    /// The services behind the gateway, in the order vireod starts them.
    pub const HOST_SERVICES: [Service; 5] = [
        Service::Compute,
        Service::Storage,
        Service::Network,
        Service::Nodedev,
        Service::Migrate,
    ];

    /// Short name used for sockets, state directories and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Compute => "compute",
            Service::Storage => "storage",
            Service::Network => "network",
            Service::Nodedev => "nodedev",
            Service::Migrate => "migrate",
            Service::Gateway => "gateway",
        }
    }

    /// The proto package whose services this process owns.
    pub fn package(self) -> &'static str {
        match self {
            Service::Compute => "vireo.compute.v1",
            Service::Storage => "vireo.storage.v1",
            Service::Network => "vireo.network.v1",
            Service::Nodedev => "vireo.nodedev.v1",
            Service::Migrate => "vireo.migrate.v1",
            Service::Gateway => "vireo.cluster.v1",
        }
    }

    /// The service that owns a package, for routing a gRPC path such as `/vireo.storage.v1.X/Y`.
    pub fn owning(package: &str) -> Option<Service> {
        [
            Service::Compute,
            Service::Storage,
            Service::Network,
            Service::Nodedev,
            Service::Migrate,
            Service::Gateway,
        ]
        .into_iter()
        .find(|service| service.package() == package)
    }

    pub fn socket_in(self, run_dir: &Path) -> PathBuf {
        run_dir.join(format!("{}.sock", self.name()))
    }
}

impl CommonArgs {
    /// `--config`, else the default config file when it exists.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG);
            default.is_file().then_some(default)
        })
    }
}

/// Flags shared by every server binary.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Directory of persistent state (definitions).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of runtime files: sockets, pid files, consoles.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// TOML configuration file (default /etc/vireo/vireo.toml when it exists); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `svc_compute=debug` (RUST_LOG wins when set).
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// The TOML file: common keys at the top, one optional table per service (`[gateway]`, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub log: Option<String>,
    #[serde(default)]
    pub compute: toml::Table,
    #[serde(default)]
    pub storage: toml::Table,
    #[serde(default)]
    pub network: toml::Table,
    #[serde(default)]
    pub nodedev: toml::Table,
    #[serde(default)]
    pub migrate: toml::Table,
    #[serde(default)]
    pub gateway: toml::Table,
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: section [{section}]: {message}")]
    Section {
        path: PathBuf,
        section: &'static str,
        message: String,
    },
}

/// What a service needs to run: resolved directories and its own config section.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub service: Service,
    /// This service's own persistent directory (`<state-root>/<service>`).
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The socket this service serves on.
    pub socket: PathBuf,
    /// The whole resolved file, so a composite (vireod) can hand each service its section.
    pub file: FileConfig,
    config_path: Option<PathBuf>,
}

impl ServiceContext {
    /// Resolves flags and file for a standalone service binary. `--state-dir` names the service's
    /// own directory; the default is `/var/lib/vireo/<service>`.
    pub fn resolve(service: Service, args: &CommonArgs) -> Result<ServiceContext, ConfigError> {
        let config_path = args.config_path();
        let file = load_file(config_path.as_deref())?;
        let state_dir = args
            .state_dir
            .clone()
            .or_else(|| {
                file.state_dir
                    .as_ref()
                    .map(|root| root.join(service.name()))
            })
            .unwrap_or_else(|| Path::new(DEFAULT_STATE_ROOT).join(service.name()));
        let run_dir = resolve_run_dir(args, &file);
        Ok(ServiceContext {
            service,
            socket: service.socket_in(&run_dir),
            state_dir,
            run_dir,
            file,
            config_path,
        })
    }

    /// The context of one service inside a composite process whose state root is `state_root`.
    pub fn within(&self, service: Service) -> ServiceContext {
        let state_root = self.state_dir.clone();
        ServiceContext {
            service,
            state_dir: state_root.join(service.name()),
            run_dir: self.run_dir.clone(),
            socket: service.socket_in(&self.run_dir),
            file: self.file.clone(),
            config_path: self.config_path.clone(),
        }
    }

    /// Resolves flags and file for vireod, where `--state-dir` is the root holding every
    /// service's directory.
    pub fn resolve_root(args: &CommonArgs) -> Result<ServiceContext, ConfigError> {
        let config_path = args.config_path();
        let file = load_file(config_path.as_deref())?;
        let state_dir = args
            .state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT));
        let run_dir = resolve_run_dir(args, &file);
        Ok(ServiceContext {
            service: Service::Gateway,
            socket: Service::Gateway.socket_in(&run_dir),
            state_dir,
            run_dir,
            file,
            config_path,
        })
    }

    /// This service's `[section]` of the config file, typed.
    pub fn section<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, ConfigError> {
        let table = match self.service {
            Service::Compute => &self.file.compute,
            Service::Storage => &self.file.storage,
            Service::Network => &self.file.network,
            Service::Nodedev => &self.file.nodedev,
            Service::Migrate => &self.file.migrate,
            Service::Gateway => &self.file.gateway,
        };
        if table.is_empty() {
            return Ok(T::default());
        }
        table
            .clone()
            .try_into()
            .map_err(|err: toml::de::Error| ConfigError::Section {
                path: self.config_path.clone().unwrap_or_default(),
                section: self.service.name(),
                message: err.message().to_string(),
            })
    }

    /// The log filter: flag, then file, then `info`.
    pub fn log_filter(args: &CommonArgs, file: &FileConfig) -> String {
        args.log
            .clone()
            .or_else(|| file.log.clone())
            .unwrap_or_else(|| "info".to_string())
    }
}

fn resolve_run_dir(args: &CommonArgs, file: &FileConfig) -> PathBuf {
    args.run_dir
        .clone()
        .or_else(|| file.run_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// Reads the TOML file, or the defaults when no file is given.
pub fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::Parse {
        path: path.to_path_buf(),
        message: err.message().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vireo.toml");
        std::fs::write(
            &path,
            "state_dir = \"/srv/vireo\"\nrun_dir = \"/srv/run\"\n[gateway]\nhost_name = \"h1\"\n",
        )
        .unwrap();
        let args = CommonArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let ctx = ServiceContext::resolve(Service::Storage, &args).unwrap();
        assert_eq!(ctx.state_dir, PathBuf::from("/srv/vireo/storage"));
        assert_eq!(ctx.socket, PathBuf::from("/srv/run/storage.sock"));

        let args = CommonArgs {
            config: Some(path),
            run_dir: Some("/tmp/r".into()),
            ..Default::default()
        };
        let ctx = ServiceContext::resolve(Service::Storage, &args).unwrap();
        assert_eq!(ctx.socket, PathBuf::from("/tmp/r/storage.sock"));

        let ctx = ServiceContext::resolve(Service::Compute, &CommonArgs::default()).unwrap();
        assert_eq!(ctx.state_dir, PathBuf::from("/var/lib/vireo/compute"));
        assert_eq!(ctx.socket, PathBuf::from("/run/vireo/compute.sock"));
    }

    #[test]
    fn unknown_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "sate_dir = \"/x\"\n").unwrap();
        let err = load_file(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("sate_dir"),
            "{err}"
        );
    }
}
