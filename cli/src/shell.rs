//! The interactive shell (`vireo` with no command): virsh's `virsh #` prompt, one command a line.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::commands::{self, Command, Next};
use crate::connection::Connection;
use crate::output::{Format, print_error};

/// One shell line: a command with its options, no program name.
#[derive(Debug, Parser)]
#[command(
    name = "vireo",
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_version_flag = true
)]
struct Line {
    #[command(subcommand)]
    command: Command,
}

/// `help` or `help COMMAND`.
pub fn print_help(command: Option<&str>) {
    let mut cli = crate::Cli::command();
    let target = match command {
        None => Some(&mut cli),
        Some(name) => cli.find_subcommand_mut(name),
    };
    match target {
        Some(target) => {
            let _ = target.print_long_help();
            println!();
        }
        None => print_error(&format!(
            "command '{}' doesn't exist",
            command.unwrap_or_default()
        )),
    }
}

/// Reads commands until `quit` or end of input. Exits 0, as virsh's shell does.
pub async fn run(connection: &mut Connection, format: Format) -> ExitCode {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        println!("Welcome to vireo, the virtualization interactive terminal.\n");
        println!("Type:  'help' for help with commands");
        println!("       'quit' to quit\n");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            print!("vireo # ");
            let _ = std::io::stdout().flush();
        }
        let Some(Ok(line)) = lines.next() else { break };
        let words = match shell_words::split(&line) {
            Ok(words) => words,
            Err(err) => {
                print_error(&format!("cannot parse the line: {err}"));
                continue;
            }
        };
        if words.is_empty() {
            continue;
        }
        let command = match Line::try_parse_from(&words) {
            Ok(line) => line.command,
            Err(err) => {
                let _ = err.print();
                continue;
            }
        };
        if let Ok(Next::Quit) = commands::run(connection, format, command).await {
            break;
        }
    }
    ExitCode::SUCCESS
}
