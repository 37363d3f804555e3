//! iscsi and netfs pools for real (issue #6): inside the nested test host (scripts/nested-storage:
//! the kit's Debian kernel under QEMU TCG, which has the kernel iSCSI initiator and NFS client this
//! host lacks), vireod logs in to a tgt target and mounts an nfs-ganesha export through `vireo`.
//! Both servers run here on 127.0.0.1, which QEMU's user network shows the nested host as
//! 10.0.2.2. The nested host reports on its console; the test checks that report and what the
//! servers' files hold afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use vireo_tests::storage::{
    IscsiTarget, NESTED_STORAGE_TOOLS, NfsServer, nested_report, qemu_img_info, require_tools,
    run_nested_storage,
};
use vireo_tests::{binary, kit_files, qemu_installed, skip};

const MIB: u64 = 1024 * 1024;
const IQN: &str = "iqn.2026-11.org.vireo.test:nested";
/// Written at the start of LUN 2 here before the boot; the nested host reads it back.
const HOST_PATTERN: &str = "VIREO-HOST-PATTERN";
/// The nested host uploads 1 MiB of these lines (`yes VIREO-LUN-DATA`) to LUN 1.
const LUN_LINE: &str = "VIREO-LUN-DATA\n";

/// The nested host's script. `step NAME ARGS` runs `vireo ARGS` and prints its output as
/// `NAME| LINE` and then `STEP NAME status=S`; CHECK lines report what the nested kernel sees.
fn nested_script(iscsi_port: u16, nfs_port: u16) -> String {
    format!(
        r#"step() {{ name=$1; shift; out=$(vireo "$@" 2>&1); status=$?; printf '%s\n' "$out" | sed "/^$/d; s/^/$name| /"; echo "STEP $name status=$status"; }}
step find find-storage-pool-sources-as iscsi 10.0.2.2 {iscsi_port}
step define pool-define-as trial1 iscsi 10.0.2.2 - {IQN} - /dev/disk/by-path --source-port {iscsi_port}
step start pool-start trial1
echo "CHECK sessions=$(ls /sys/class/iscsi_session | wc -l)"
step vols vol-list trial1 --details
yes VIREO-LUN-DATA | head -c {MIB} >/tmp/up.bin
step upload vol-upload unit:0:0:1 /tmp/up.bin --pool trial1
step download vol-download unit:0:0:2 /tmp/down.bin --pool trial1 --length 65536
echo "CHECK lun2_head=$(head -c {pattern_len} /tmp/down.bin) lun2_bytes=$(wc -c </tmp/down.bin)"
step destroy pool-destroy trial1
echo "CHECK sessions_after=$(ls /sys/class/iscsi_session | wc -l) disks_after=$(ls /sys/block | grep -c ^sd)"
step nfsdefine pool-define-as nfstrial netfs 10.0.2.2 /export - - /mnt/nfs --source-format nfs --source-port {nfs_port} --source-protocol-ver 4
step nfsbuild pool-build nfstrial
step nfsstart pool-start nfstrial
echo "CHECK mount=$(grep ' /mnt/nfs ' /proc/mounts | cut -d' ' -f1,3)"
step nfscreate vol-create-as nfstrial disk.qcow2 64M --format qcow2
step nfsvols vol-list nfstrial --details
step nfsdestroy pool-destroy nfstrial
echo "CHECK mounted_after=$(grep -c ' /mnt/nfs ' /proc/mounts)""#,
        pattern_len = HOST_PATTERN.len(),
    )
}

/// What step `name` printed (`NESTED-OUT name| LINE`).
fn step_output(report: &[String], name: &str) -> Vec<String> {
    let prefix = format!("NESTED-OUT {name}| ");
    report
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn assert_step_ok(report: &[String], name: &str) {
    let done = format!("NESTED-OUT STEP {name} status=0");
    assert!(
        report.contains(&done),
        "step {name} failed or did not run:\n{}",
        report.join("\n")
    );
}

fn assert_reported(report: &[String], line: &str) {
    assert!(
        report.iter().any(|reported| reported == line),
        "no `{line}` in the report:\n{}",
        report.join("\n")
    );
}

/// The vol-list --details row of `volume`, split into words.
fn volume_row(rows: &[String], volume: &str) -> Vec<String> {
    rows.iter()
        .map(|row| {
            row.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|words| words.first().is_some_and(|name| name == volume))
        .unwrap_or_else(|| panic!("no volume {volume} in:\n{}", rows.join("\n")))
}

#[test]
fn iscsi_and_netfs_pools_run_on_a_real_kernel() {
    if let Err(missing) = qemu_installed() {
        skip!("needs {missing} for the nested test host");
    }
    if let Err(missing) = require_tools(NESTED_STORAGE_TOOLS) {
        skip!("needs {missing} for the nested storage host");
    }
    let kit = match kit_files(&["nested-vmlinux", "nested-storage-base.cpio.gz"]) {
        Ok(kit) => kit,
        Err(missing) => skip!("needs {missing}"),
    };
    binary("vireod");
    binary("vireo");
    let target = match IscsiTarget::start(IQN, &[64 * MIB, 32 * MIB]) {
        Ok(target) => target,
        Err(missing) => skip!("needs {missing} for the iSCSI target"),
    };
    let nfs = match NfsServer::start() {
        Ok(nfs) => nfs,
        Err(missing) => skip!("needs {missing} for the NFS server"),
    };
    {
        use std::os::unix::fs::FileExt;
        let lun2 = fs::OpenOptions::new()
            .write(true)
            .open(target.lun_file(2))
            .expect("open LUN 2's file");
        lun2.write_all_at(HOST_PATTERN.as_bytes(), 0)
            .expect("write LUN 2's file");
    }
    let script = nested_script(target.port(), nfs.nfs_port());

    let (console, errors) = run_nested_storage(
        &kit,
        &["--timeout", "120", "--script", script.as_str()],
        || {
            let _ = fs::remove_file(nfs.export_dir().join("disk.qcow2"));
        },
    );
    let report = nested_report(&console);
    eprintln!("{}", report.join("\n"));
    assert!(
        report.iter().any(|line| line.starts_with("NESTED-READY ")),
        "vireod did not come up in the nested host:\n{console}\n{errors}"
    );

    // iSCSI: discovery (sendtargets through libiscsi), login with iscsiadm and the kernel's
    // iscsi_tcp, the LUNs as sd disks, data both ways, logout.
    assert_step_ok(&report, "find");
    let found = step_output(&report, "find").join("\n");
    assert!(
        found.contains(&format!("<device path='{IQN}'/>")),
        "{found}"
    );
    // The portal as the target advertises it (its own address).
    assert!(
        found.contains(&format!(
            "<host name='127.0.0.1' port='{}'/>",
            target.port()
        )),
        "{found}"
    );
    for step in ["define", "start"] {
        assert_step_ok(&report, step);
    }
    assert_reported(&report, "NESTED-OUT CHECK sessions=1");
    assert_step_ok(&report, "vols");
    let rows = step_output(&report, "vols");
    for (volume, size) in [("unit:0:0:1", "64.00"), ("unit:0:0:2", "32.00")] {
        let row = volume_row(&rows, volume);
        // Name, path, type, capacity (number, unit), allocation.
        assert!(
            row[1].starts_with("/dev/sd"),
            "{volume} is not a SCSI disk: {row:?}"
        );
        assert_eq!(row[2], "block", "{row:?}");
        assert_eq!(row[3..5], [size, "MiB"], "{row:?}");
    }
    assert_step_ok(&report, "upload");
    assert_step_ok(&report, "download");
    assert_reported(
        &report,
        &format!("NESTED-OUT CHECK lun2_head={HOST_PATTERN} lun2_bytes=65536"),
    );
    assert_step_ok(&report, "destroy");
    assert_reported(&report, "NESTED-OUT CHECK sessions_after=0 disks_after=0");
    // The upload went through the kernel initiator into tgt's file.
    let written = fs::read(target.lun_file(1)).expect("read LUN 1's file");
    let uploaded: Vec<u8> = LUN_LINE.bytes().cycle().take(1 << 20).collect();
    assert!(
        written.starts_with(&uploaded),
        "LUN 1's file does not hold the upload"
    );

    // NFS: an NFSv4 mount by the kernel's client on ganesha's port, a qcow2 volume on it, umount.
    for step in ["nfsdefine", "nfsbuild", "nfsstart"] {
        assert_step_ok(&report, step);
    }
    assert_reported(&report, "NESTED-OUT CHECK mount=10.0.2.2:/export nfs4");
    assert_step_ok(&report, "nfscreate");
    assert_step_ok(&report, "nfsvols");
    let row = volume_row(&step_output(&report, "nfsvols"), "disk.qcow2");
    assert_eq!(
        row[1..5],
        ["/mnt/nfs/disk.qcow2", "file", "64.00", "MiB"],
        "{row:?}"
    );
    assert_step_ok(&report, "nfsdestroy");
    assert_reported(&report, "NESTED-OUT CHECK mounted_after=0");
    let image = nfs.export_dir().join("disk.qcow2");
    let info = qemu_img_info(&image.to_string_lossy(), None);
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 64 * MIB, "{info}");

    assert!(
        report
            .iter()
            .any(|line| line.starts_with("NESTED-SCRIPT-EXIT=0 ")),
        "{}",
        report.join("\n")
    );
    assert_reported(&report, "NESTED-DONE");
}
