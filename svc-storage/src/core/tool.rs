//! Running the system tools that are the real interface to storage (qemu-img, lvm2, parted,
//! partx, mount, iscsiadm, showmount): arguments always as a vector, never through a shell,
//! and a failure quotes the tool's own words.

use std::process::Stdio;

use tokio::process::Command;

/// A tool failed, or could not be started; the message says which and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// A tool command that dies with the service: a qemu-img left copying after a crash would
/// keep writing a volume that the restarted service removes as unfinished.
pub fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Runs `program args` to completion and returns its stdout.
pub async fn run(program: &str, args: &[String]) -> Result<String, ToolError> {
    let output = command(program)
        .args(args)
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| ToolError(format!("cannot run {program}: {err}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    Err(ToolError(format!(
        "{program} {} failed ({}): {}",
        args.first().map(String::as_str).unwrap_or(""),
        output.status,
        last_lines(said, 4)
    )))
}

/// Builds an argument vector from anything string-like.
pub fn args<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

/// Whether `program` is on the PATH (a pool type whose tools are missing is reported, not tried).
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join("; ")
}
