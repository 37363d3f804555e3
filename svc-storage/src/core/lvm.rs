//! The lvm2-cmd wrapper: LVM physical volumes, volume groups and logical volumes through the
//! lvm2 commands with `--reportformat json`. Arguments are vectors; every call carries the
//! service's `--config` (without device-mapper, activation is off: metadata work only).

use serde::Deserialize;

use super::tool::{ToolError, args, run};

/// The tag an LV carries while its creation (and first copy) is in progress.
pub const PARTIAL_TAG: &str = "vireo_partial";

#[derive(Debug, Clone)]
pub struct Lvm {
    config: String,
    /// Whether LVs can be activated (device-mapper present).
    pub activation: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeGroup {
    pub name: String,
    pub uuid: String,
    pub size: u64,
    pub free: u64,
    pub extent_size: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogicalVolume {
    pub name: String,
    pub uuid: String,
    pub path: String,
    pub size: u64,
    pub tags: Vec<String>,
    pub devices: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PhysicalVolume {
    pub name: String,
    pub vg: String,
    pub size: u64,
}

/// lvm's JSON report: {"report": [{"vg": [{...}]}]} with every value a string.
#[derive(Deserialize)]
struct Report {
    report: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn rows(
    json: &str,
    kind: &str,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, ToolError> {
    let report: Report =
        serde_json::from_str(json).map_err(|err| ToolError(format!("lvm {kind} report: {err}")))?;
    Ok(report
        .report
        .into_iter()
        .filter_map(|mut section| section.remove(kind))
        .filter_map(|rows| match rows {
            serde_json::Value::Array(rows) => Some(rows),
            _ => None,
        })
        .flatten()
        .filter_map(|row| match row {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        })
        .collect())
}

fn text(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> String {
    row.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn bytes(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> u64 {
    text(row, key).trim_end_matches('B').parse().unwrap_or(0)
}

impl Lvm {
    /// `extra` is the `[storage] lvm_config` setting, appended to what this host needs.
    pub fn new(extra: &str) -> Lvm {
        // The kernel's own word (a /dev/mapper/control node can exist without the driver).
        let activation = std::fs::read_to_string("/proc/misc")
            .is_ok_and(|misc| misc.lines().any(|line| line.ends_with(" device-mapper")));
        // Vireo owns no host-wide LVM caches: no metadata backups, no hints file.
        let mut config = String::from("backup{backup=0 archive=0} devices{hints=\"none\"} ");
        if !activation {
            config.push_str(
                "global{activation=0} activation{udev_sync=0 udev_rules=0 monitoring=0} \
                 devices{obtain_device_list_from_udev=0 external_device_info_source=\"none\"} ",
            );
        }
        config.push_str(extra);
        Lvm {
            config: config.trim().to_string(),
            activation,
        }
    }

    async fn lvm(&self, command: &str, rest: Vec<String>) -> Result<String, ToolError> {
        let mut argv = args([command, "--config", self.config.as_str()]);
        argv.extend(rest);
        run("lvm", &argv).await
    }

    fn report_args(fields: &str) -> Vec<String> {
        args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            fields,
        ])
    }

    pub async fn volume_groups(&self) -> Result<Vec<VolumeGroup>, ToolError> {
        let json = self
            .lvm(
                "vgs",
                Self::report_args("vg_name,vg_uuid,vg_size,vg_free,vg_extent_size"),
            )
            .await?;
        Ok(rows(&json, "vg")?
            .iter()
            .map(|row| VolumeGroup {
                name: text(row, "vg_name"),
                uuid: text(row, "vg_uuid"),
                size: bytes(row, "vg_size"),
                free: bytes(row, "vg_free"),
                extent_size: bytes(row, "vg_extent_size"),
            })
            .collect())
    }

    pub async fn volume_group(&self, name: &str) -> Result<Option<VolumeGroup>, ToolError> {
        Ok(self
            .volume_groups()
            .await?
            .into_iter()
            .find(|vg| vg.name == name))
    }

    pub async fn physical_volumes(&self) -> Result<Vec<PhysicalVolume>, ToolError> {
        let json = self
            .lvm("pvs", Self::report_args("pv_name,vg_name,pv_size"))
            .await?;
        Ok(rows(&json, "pv")?
            .iter()
            .map(|row| PhysicalVolume {
                name: text(row, "pv_name"),
                vg: text(row, "vg_name"),
                size: bytes(row, "pv_size"),
            })
            .collect())
    }

    pub async fn logical_volumes(&self, vg: &str) -> Result<Vec<LogicalVolume>, ToolError> {
        let mut rest = Self::report_args("lv_name,lv_uuid,lv_path,lv_size,lv_tags,devices");
        rest.push(vg.to_string());
        let json = self.lvm("lvs", rest).await?;
        let mut volumes: Vec<LogicalVolume> = Vec::new();
        for row in rows(&json, "lv")? {
            let name = text(&row, "lv_name");
            // An LV of several segments is reported once per segment.
            if let Some(known) = volumes.iter_mut().find(|lv| lv.name == name) {
                known.devices = format!("{},{}", known.devices, text(&row, "devices"));
                continue;
            }
            let path = match text(&row, "lv_path") {
                path if path.is_empty() => format!("/dev/{vg}/{name}"),
                path => path,
            };
            volumes.push(LogicalVolume {
                uuid: text(&row, "lv_uuid"),
                size: bytes(&row, "lv_size"),
                tags: text(&row, "lv_tags")
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                devices: text(&row, "devices"),
                path,
                name,
            });
        }
        Ok(volumes)
    }

    /// pvcreate on every device (forced with `overwrite`), then vgcreate.
    pub async fn create_group(
        &self,
        vg: &str,
        devices: &[String],
        overwrite: bool,
    ) -> Result<(), ToolError> {
        for device in devices {
            let mut rest = Vec::new();
            if overwrite {
                rest.extend(args(["-ff", "-y"]));
            }
            rest.push(device.clone());
            self.lvm("pvcreate", rest).await?;
        }
        let mut rest = args([vg]);
        rest.extend(devices.iter().cloned());
        self.lvm("vgcreate", rest).await.map(|_| ())
    }

    pub async fn remove_group(&self, vg: &str, devices: &[String]) -> Result<(), ToolError> {
        self.lvm("vgremove", args(["-f", vg])).await?;
        for device in devices {
            self.lvm("pvremove", args(["-y", device.as_str()])).await?;
        }
        Ok(())
    }

    /// Activates (or deactivates) a VG's LVs where this host can; a no-op without device-mapper.
    pub async fn activate(&self, vg: &str, on: bool) -> Result<(), ToolError> {
        if !self.activation {
            return Ok(());
        }
        let flag = if on { "-aay" } else { "-an" };
        self.lvm("vgchange", args([flag, vg])).await.map(|_| ())
    }

    /// Creates an LV of `size` bytes tagged as partial; `finish_volume` drops the tag.
    pub async fn create_volume(&self, vg: &str, name: &str, size: u64) -> Result<(), ToolError> {
        let mut rest = args([
            "--yes",
            "-n",
            name,
            "-L",
            &format!("{size}b"),
            "--addtag",
            PARTIAL_TAG,
        ]);
        if !self.activation {
            rest.extend(args(["-an", "-Zn"]));
        } else {
            rest.extend(args(["-Wy", "-Zy"]));
        }
        rest.push(vg.to_string());
        self.lvm("lvcreate", rest).await.map(|_| ())
    }

    pub async fn finish_volume(&self, vg: &str, name: &str) -> Result<(), ToolError> {
        self.lvm(
            "lvchange",
            args(["--deltag", PARTIAL_TAG, &format!("{vg}/{name}")]),
        )
        .await
        .map(|_| ())
    }

    pub async fn remove_volume(&self, vg: &str, name: &str) -> Result<(), ToolError> {
        self.lvm("lvremove", args(["-f", &format!("{vg}/{name}")]))
            .await
            .map(|_| ())
    }

    pub async fn resize_volume(&self, vg: &str, name: &str, size: u64) -> Result<(), ToolError> {
        self.lvm(
            "lvresize",
            args(["-f", "-L", &format!("{size}b"), &format!("{vg}/{name}")]),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read() {
        let json = r#"{"report": [{"lv": [
            {"lv_name":"a", "lv_uuid":"U1", "lv_path":"", "lv_size":"4194304", "lv_tags":"vireo_partial", "devices":"/dev/loop0(0)"},
            {"lv_name":"a", "lv_uuid":"U1", "lv_path":"", "lv_size":"4194304", "lv_tags":"vireo_partial", "devices":"/dev/loop1(0)"}
        ]}]}"#;
        let lvs: Vec<_> = rows(json, "lv").unwrap();
        assert_eq!(lvs.len(), 2);
        assert_eq!(bytes(&lvs[0], "lv_size"), 4 << 20);
        assert_eq!(text(&lvs[0], "lv_tags"), PARTIAL_TAG);
    }
}
