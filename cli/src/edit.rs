//! Editing an object's XML in $VISUAL or $EDITOR, as virsh's edit commands do: the caller fetches
//! the XML, this runs the editor on a temporary copy, and the caller defines what came back.

use std::io::Write;

use crate::commands::{Call, fail};

/// Runs the editor on `xml`; the edited text, or None when it is unchanged.
pub fn edit_xml(name: &str, xml: &str) -> Result<Option<String>, Call> {
    let (path, mut file) = temp_file_for(name)
        .map_err(|err| fail(format!("cannot create a temporary file: {err}")))?;
    file.write_all(xml.as_bytes())
        .map_err(|err| fail(format!("cannot write {}: {err}", path.display())))?;
    drop(file);
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let words = shell_words::split(&editor).map_err(|err| fail(format!("$EDITOR: {err}")))?;
    let (program, args) = words
        .split_first()
        .ok_or_else(|| fail("$EDITOR is empty".into()))?;
    let status = std::process::Command::new(program)
        .args(args)
        .arg(&path)
        .status();
    let edited = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let status = status.map_err(|err| fail(format!("cannot run {editor}: {err}")))?;
    if !status.success() {
        return Err(fail(format!(
            "{editor} exited with {status}; nothing changed"
        )));
    }
    Ok((edited != xml).then_some(edited))
}

/// A new file of our own in the temporary directory (create_new: never one planted there).
fn temp_file_for(name: &str) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let dir = std::env::temp_dir();
    for attempt in 0..100u32 {
        let path = dir.join(format!("vireo-{name}-{}-{attempt}.xml", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}
