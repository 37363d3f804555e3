//! vireo-cli owns `vireo`, the command-line client. It speaks virsh's command names, options and
//! output layout, talks only to the gateway, and offers `--output json` (the proto3 JSON of the
//! API's messages) for scripts. With no command it opens an interactive shell, as virsh does.

mod commands;
mod connection;
mod domain;
mod edit;
mod install;
mod network;
mod nodedev;
mod output;
mod pki;
mod shell;
mod storage;

use std::process::ExitCode;

use clap::Parser;

use crate::commands::Command;
use crate::connection::Connection;
use crate::output::Format;

/// The URI used when neither -c nor $VIREO_DEFAULT_URI is given.
pub const DEFAULT_URI: &str = "unix:///run/vireo/gateway.sock";

/// Vireo's command-line client: virsh's commands, against a Vireo gateway.
#[derive(Debug, Parser)]
#[command(name = "vireo", version, disable_help_subcommand = true)]
pub struct Cli {
    /// Gateway URI, e.g. unix:///run/vireo/gateway.sock
    #[arg(short = 'c', long = "connect", value_name = "URI", env = "VIREO_DEFAULT_URI", default_value = DEFAULT_URI, global = true)]
    pub uri: String,
    /// Connect read-only, as `virsh -r`
    #[arg(short = 'r', long, global = true)]
    pub readonly: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// The host behind the gateway each command is for (see host-list); the gateway's own by default
    // Its own id: subcommands have `host` arguments of their own (a storage source's host).
    #[arg(
        long = "host",
        id = "vireo_host",
        value_name = "NAME",
        env = "VIREO_HOST",
        global = true
    )]
    pub vireo_host: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A command failed; the message has been printed. virsh exits 1 on any command failure.
pub struct Failed;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let mut connection = Connection::new(&cli.uri, cli.readonly, cli.vireo_host.clone());
        match cli.command {
            None => shell::run(&mut connection, cli.output).await,
            Some(command) => match commands::run(&mut connection, cli.output, command).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(Failed) => ExitCode::FAILURE,
            },
        }
    });
    // A console may leave a read of stdin pending; it must not keep the process alive.
    runtime.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn the_global_host_is_not_a_subcommands_own_host_argument() {
        let source =
            Cli::try_parse_from(["vireo", "find-storage-pool-sources-as", "iscsi", "10.0.0.5"])
                .unwrap();
        assert_eq!(source.vireo_host, None);
        let on_b = Cli::try_parse_from(["vireo", "--host", "b", "list"]).unwrap();
        assert_eq!(on_b.vireo_host.as_deref(), Some("b"));
        let after = Cli::try_parse_from(["vireo", "list", "--host", "b"]).unwrap();
        assert_eq!(after.vireo_host.as_deref(), Some("b"));
    }
}
