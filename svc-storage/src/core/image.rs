//! Image work through qemu-img with JSON output: probing a file's format and sizes, creating
//! raw and qcow2 images (sparse, preallocated, overlays), converting (full clones, create-from)
//! with progress, and resizing.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use vireo_proto::storage::v1 as pb;

use super::tool::{ToolError, args, run};

/// What `qemu-img info` says about one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub cluster_size: Option<u64>,
    pub compat: Option<String>,
    pub lazy_refcounts: bool,
}

/// Probes an image. `-U` lets a running guest's image be read without taking its lock.
pub async fn info(path: &Path) -> Result<ImageInfo, ToolError> {
    let json = run(
        "qemu-img",
        &args(["info", "--output=json", "-U", &path.to_string_lossy()]),
    )
    .await?;
    parse_info(&json).map_err(|err| ToolError(format!("qemu-img info {}: {err}", path.display())))
}

fn parse_info(json: &str) -> Result<ImageInfo, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let number = |key: &str| value.get(key).and_then(|v| v.as_u64());
    let specific = value.pointer("/format-specific/data");
    Ok(ImageInfo {
        format: text("format").ok_or("no format")?,
        virtual_size: number("virtual-size").ok_or("no virtual-size")?,
        actual_size: number("actual-size").unwrap_or(0),
        backing_file: text("full-backing-filename").or_else(|| text("backing-filename")),
        backing_format: text("backing-filename-format"),
        cluster_size: number("cluster-size"),
        compat: specific
            .and_then(|d| d.get("compat"))
            .and_then(|v| v.as_str())
            .map(str::to_string),
        lazy_refcounts: specific
            .and_then(|d| d.get("lazy-refcounts"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    })
}

/// qemu-img's name for a volume format.
pub fn format_name(format: pb::VolumeFormat) -> &'static str {
    use pb::VolumeFormat as F;
    match format {
        F::Unspecified | F::Raw | F::Iso | F::Dir => "raw",
        F::Qcow2 => "qcow2",
        F::Qcow => "qcow",
        F::Vmdk => "vmdk",
        F::Vdi => "vdi",
        F::Vpc => "vpc",
        F::Vhdx => "vhdx",
        F::Bochs => "bochs",
        F::Cloop => "cloop",
        F::Dmg => "dmg",
        F::Qed => "qed",
    }
}

/// The volume format qemu-img reported, as the proto enum.
pub fn format_from_name(name: &str) -> pb::VolumeFormat {
    use pb::VolumeFormat as F;
    match name {
        "qcow2" => F::Qcow2,
        "qcow" => F::Qcow,
        "vmdk" => F::Vmdk,
        "vdi" => F::Vdi,
        "vpc" => F::Vpc,
        "vhdx" => F::Vhdx,
        "bochs" => F::Bochs,
        "cloop" => F::Cloop,
        "dmg" => F::Dmg,
        "qed" => F::Qed,
        _ => F::Raw,
    }
}

/// The `-o` options of `qemu-img create` for a volume's target and preallocation.
fn create_options(target: &pb::VolumeTarget, format: &str, preallocation: &str) -> Vec<String> {
    let mut options = Vec::new();
    if preallocation != "off" {
        options.push(format!("preallocation={preallocation}"));
    }
    if format == "qcow2" {
        let compat = match target.compat() {
            pb::Qcow2Compat::V010 => "0.10",
            _ => "1.1",
        };
        options.push(format!("compat={compat}"));
        if target.lazy_refcounts {
            options.push("lazy_refcounts=on".into());
        }
        if target.extended_l2 {
            options.push("extended_l2=on".into());
        }
        if target.cluster_size_bytes > 0 {
            options.push(format!("cluster_size={}", target.cluster_size_bytes));
        }
    }
    if target.nocow {
        options.push("nocow=on".into());
    }
    options
}

/// qemu-img's preallocation mode for a new volume, following libvirt: an allocation equal to the
/// capacity reserves everything (metadata for qcow2, falloc for raw), anything less is sparse.
pub fn preallocation(def: &pb::VolumeDefinition, format: &str) -> &'static str {
    match def.target.as_ref().map(|t| t.preallocation()) {
        Some(pb::VolumePreallocation::Off) => "off",
        Some(pb::VolumePreallocation::Metadata) => "metadata",
        Some(pb::VolumePreallocation::Falloc) => "falloc",
        Some(pb::VolumePreallocation::Full) => "full",
        // An overlay starts empty: its data lives in the backing image.
        _ if def
            .backing_store
            .as_ref()
            .is_some_and(|b| !b.path.is_empty()) =>
        {
            "off"
        }
        _ => {
            let allocation = def.allocation_bytes.unwrap_or(def.capacity_bytes);
            if allocation < def.capacity_bytes || def.capacity_bytes == 0 {
                "off"
            } else if format == "qcow2" {
                "metadata"
            } else {
                "falloc"
            }
        }
    }
}

/// Creates an image file of `def` at `path`.
pub async fn create(
    path: &Path,
    def: &pb::VolumeDefinition,
    format: &str,
) -> Result<(), ToolError> {
    let target = def.target.clone().unwrap_or_default();
    let mut argv = args(["create", "-q", "-f", format]);
    let options = create_options(&target, format, preallocation(def, format));
    if !options.is_empty() {
        argv.push("-o".into());
        argv.push(options.join(","));
    }
    if let Some(backing) = def.backing_store.as_ref().filter(|b| !b.path.is_empty()) {
        argv.push("-b".into());
        argv.push(backing.path.clone());
        let backing_format = match backing.format() {
            pb::VolumeFormat::Unspecified => info(Path::new(&backing.path)).await?.format,
            known => format_name(known).to_string(),
        };
        argv.push("-F".into());
        argv.push(backing_format);
    }
    argv.push(path.to_string_lossy().into_owned());
    if def.capacity_bytes > 0 {
        argv.push(def.capacity_bytes.to_string());
    }
    run("qemu-img", &argv).await.map(|_| ())
}

/// How a conversion writes its output.
pub struct Convert<'a> {
    pub source: &'a Path,
    pub source_format: &'a str,
    pub dest: &'a Path,
    pub dest_format: &'a str,
    /// The destination exists already (a block device, an LV, a partition): write into it.
    pub existing_dest: bool,
    /// `-o` options when qemu-img creates the destination.
    pub options: Vec<String>,
}

/// Copies `source` into `dest` with qemu-img convert, calling `progress` with a percentage as
/// qemu-img reports it. Sparse areas stay sparse; the copy is parallel and out of order (-W).
pub async fn convert(job: Convert<'_>, mut progress: impl FnMut(f64)) -> Result<(), ToolError> {
    let mut argv = args([
        "convert",
        "-p",
        "-W",
        "-f",
        job.source_format,
        "-O",
        job.dest_format,
    ]);
    if job.existing_dest {
        argv.push("-n".into());
    } else if !job.options.is_empty() {
        argv.push("-o".into());
        argv.push(job.options.join(","));
    }
    argv.push(job.source.to_string_lossy().into_owned());
    argv.push(job.dest.to_string_lossy().into_owned());
    let mut child = super::tool::command("qemu-img")
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| ToolError(format!("cannot run qemu-img: {err}")))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| ToolError("qemu-img: no stdout".into()))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| ToolError("qemu-img: no stderr".into()))?;
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut buffer = [0u8; 512];
    let mut pending = String::new();
    loop {
        let read = stdout.read(&mut buffer).await.unwrap_or(0);
        if read == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buffer[..read]));
        // qemu-img -p redraws "    (12.34/100%)" with carriage returns.
        while let Some(end) = pending.find(['\r', '\n']) {
            let line: String = pending.drain(..=end).collect();
            if let Some(percent) = parse_percent(&line) {
                progress(percent);
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|err| ToolError(format!("qemu-img convert: {err}")))?;
    let said = errors.await.unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(ToolError(format!(
            "qemu-img convert failed ({status}): {}",
            said.trim()
        )))
    }
}

fn parse_percent(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?;
    inner.split('/').next()?.trim().parse().ok()
}

/// The `-o` options a full copy of an image of `format` keeps (compat, cluster size).
pub fn copy_options(source: &ImageInfo, format: &str) -> Vec<String> {
    let mut options = Vec::new();
    if format == "qcow2" && source.format == "qcow2" {
        if let Some(compat) = &source.compat {
            options.push(format!("compat={compat}"));
        }
        if let Some(size) = source.cluster_size {
            options.push(format!("cluster_size={size}"));
        }
    }
    options
}

/// Resizes an image file to `capacity` bytes.
pub async fn resize(
    path: &Path,
    format: &str,
    capacity: u64,
    shrink: bool,
    allocate: bool,
) -> Result<(), ToolError> {
    let mut argv = args(["resize", "-q", "-f", format]);
    if shrink {
        argv.push("--shrink".into());
    }
    if allocate && format == "raw" {
        argv.push("--preallocation=falloc".into());
    }
    argv.push(path.to_string_lossy().into_owned());
    argv.push(capacity.to_string());
    run("qemu-img", &argv).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_img_info_json_is_read() {
        let json = r#"{"virtual-size": 1073741824, "filename": "/p/b.qcow2", "cluster-size": 65536,
            "format": "qcow2", "actual-size": 200704, "full-backing-filename": "/p/a.img",
            "backing-filename": "a.img", "backing-filename-format": "raw",
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "lazy-refcounts": true}}}"#;
        let info = parse_info(json).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 1 << 30);
        assert_eq!(info.backing_file.as_deref(), Some("/p/a.img"));
        assert_eq!(info.compat.as_deref(), Some("1.1"));
        assert!(info.lazy_refcounts);
    }

    #[test]
    fn progress_lines_are_read() {
        assert_eq!(parse_percent("    (12.50/100%)\r"), Some(12.5));
        assert_eq!(parse_percent("garbage"), None);
    }
}
