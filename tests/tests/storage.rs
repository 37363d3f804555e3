//! Storage end to end (POOL-*, VOL-*): vireod and vireo as users run them, with every pool and
//! vol command on a dir pool, fs and disk pools on loop devices, a logical pool at LVM metadata
//! level (no device-mapper here), discovery against a real tgt and nfs-ganesha, a 1 GiB upload
//! and download with progress, volumes that running domains use, and crash safety.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vireo_tests::storage::{IscsiTarget, LoopDevice, NfsServer, require_tools};
use vireo_tests::{
    Server, binary, fails, kit_files, kvm_usable, ok, skip, stderr, stdout, wait_until,
};

/// The value of a `Label:   value` line of pool-info or vol-info.
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} in:\n{text}"))
        .trim()
        .to_string()
}

/// Names in the first column of a vireo table (after the header and its rule).
fn names(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Deletes `volumes`, then the pool: destroy, delete, undefine, each of which must succeed.
fn remove_pool(server: &Server, pool: &str, volumes: &[&str]) {
    for volume in volumes {
        let said = ok(server, &["vol-delete", volume, "--pool", pool]);
        assert!(said.contains(&format!("Vol {volume} deleted")), "{said}");
    }
    for step in ["pool-destroy", "pool-delete", "pool-undefine"] {
        ok(server, &[step, pool]);
    }
}

fn tools_or_skip(tools: &[(&str, &str)]) -> Result<(), String> {
    require_tools(tools)
}

#[test]
fn dir_pool_takes_every_pool_and_vol_command() {
    if let Err(missing) = tools_or_skip(&[("qemu-img", "qemu-utils")]) {
        skip!("needs {missing}");
    }
    let server = Server::vireod();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("guest_images");
    let target_text = target.display().to_string();

    // POOL-01: a fresh host has the default pool, active and autostarted.
    let list = ok(&server, &["pool-list", "--all"]);
    assert!(
        list.contains("default") && list.contains("active"),
        "{list}"
    );
    assert_eq!(
        field(&ok(&server, &["pool-info", "default"]), "Autostart"),
        "yes"
    );

    // POOL-03 --print-xml defines nothing; then define, build, start, autostart (POOL-20).
    let xml = ok(
        &server,
        &[
            "pool-define-as",
            "guest_images_dir",
            "dir",
            "-",
            "-",
            "-",
            "-",
            &target_text,
            "--print-xml",
        ],
    );
    assert!(
        xml.contains("<pool type='dir'>") && xml.contains(&target_text),
        "{xml}"
    );
    assert!(!ok(&server, &["pool-list", "--all"]).contains("guest_images_dir"));
    assert!(
        ok(
            &server,
            &[
                "pool-define-as",
                "guest_images_dir",
                "dir",
                "-",
                "-",
                "-",
                "-",
                &target_text
            ]
        )
        .contains("Pool guest_images_dir defined")
    );
    assert!(ok(&server, &["pool-list", "--inactive"]).contains("guest_images_dir"));
    fails(&server, &["vol-list", "guest_images_dir"]);
    assert!(fails(&server, &["pool-start", "guest_images_dir"]).contains("pool-build"));
    ok(&server, &["pool-build", "guest_images_dir"]);
    assert!(target.is_dir());
    ok(&server, &["pool-start", "guest_images_dir"]);
    ok(&server, &["pool-autostart", "guest_images_dir"]);
    let info = ok(&server, &["pool-info", "guest_images_dir"]);
    assert_eq!(field(&info, "State"), "running");
    assert_eq!(field(&info, "Persistent"), "yes");
    assert_eq!(field(&info, "Autostart"), "yes");
    assert!(field(&info, "Capacity").ends_with("iB"), "{info}");
    let uuid = ok(&server, &["pool-uuid", "guest_images_dir"])
        .trim()
        .to_string();
    assert_eq!(
        ok(&server, &["pool-name", &uuid]).trim(),
        "guest_images_dir"
    );
    let dumped = ok(&server, &["pool-dumpxml", "guest_images_dir"]);
    assert!(
        dumped.contains(&uuid) && dumped.contains("<capacity unit='bytes'>"),
        "{dumped}"
    );

    // VOL-01: raw sparse and preallocated, qcow2, an overlay with a backing volume.
    ok(
        &server,
        &[
            "vol-create-as",
            "guest_images_dir",
            "sparse.img",
            "64M",
            "--allocation",
            "0",
        ],
    );
    ok(
        &server,
        &["vol-create-as", "guest_images_dir", "full.img", "16M"],
    );
    ok(
        &server,
        &[
            "vol-create-as",
            "guest_images_dir",
            "base.qcow2",
            "1G",
            "--format",
            "qcow2",
        ],
    );
    ok(
        &server,
        &[
            "vol-create-as",
            "guest_images_dir",
            "top.qcow2",
            "1G",
            "--format",
            "qcow2",
            "--backing-vol",
            "base.qcow2",
            "--backing-vol-format",
            "qcow2",
        ],
    );
    let details = ok(&server, &["vol-list", "guest_images_dir", "--details"]);
    assert_eq!(
        names(&details),
        ["base.qcow2", "full.img", "sparse.img", "top.qcow2"],
        "{details}"
    );
    let sparse = ok(
        &server,
        &[
            "vol-info",
            "sparse.img",
            "--pool",
            "guest_images_dir",
            "--bytes",
        ],
    );
    assert_eq!(field(&sparse, "Capacity"), "67108864 bytes");
    let full = ok(
        &server,
        &[
            "vol-info",
            "full.img",
            "--pool",
            "guest_images_dir",
            "--bytes",
        ],
    );
    assert_eq!(
        field(&full, "Allocation"),
        "16777216 bytes",
        "preallocated: {full}"
    );
    let top = ok(
        &server,
        &["vol-dumpxml", "top.qcow2", "--pool", "guest_images_dir"],
    );
    assert!(
        top.contains("<format type='qcow2'/>")
            && top.contains(&format!("{target_text}/base.qcow2")),
        "{top}"
    );
    let image = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(target.join("top.qcow2"))
        .output()
        .unwrap();
    assert!(
        stdout(&image).contains("base.qcow2"),
        "qemu-img sees the backing file"
    );

    // VOL-03..05: three ways to name a volume, and their conversions.
    let path = format!("{target_text}/full.img");
    assert_eq!(
        ok(
            &server,
            &["vol-path", "full.img", "--pool", "guest_images_dir"]
        )
        .trim(),
        path
    );
    assert_eq!(ok(&server, &["vol-key", &path]).trim(), path);
    assert_eq!(ok(&server, &["vol-name", &path]).trim(), "full.img");
    assert_eq!(ok(&server, &["vol-pool", &path]).trim(), "guest_images_dir");
    assert_eq!(field(&ok(&server, &["vol-info", &path]), "Type"), "file");

    // vol-create from XML, vol-create-from, vol-clone (full and linked).
    let vol_xml = write(
        work.path(),
        "vol.xml",
        "<volume><name>fromxml.qcow2</name><capacity unit='M'>32</capacity><target><format type='qcow2'/></target></volume>",
    );
    assert!(
        ok(&server, &["vol-create", "guest_images_dir", &vol_xml])
            .contains("Vol fromxml.qcow2 created from")
    );
    let copy_xml = write(
        work.path(),
        "copy.xml",
        "<volume><name>copy.raw</name><capacity unit='M'>16</capacity><target><format type='raw'/></target></volume>",
    );
    std::fs::write(target.join("full.img"), vec![0x5a; 16 << 20]).unwrap();
    ok(
        &server,
        &[
            "vol-create-from",
            "guest_images_dir",
            &copy_xml,
            "fromxml.qcow2",
            "--inputpool",
            "guest_images_dir",
        ],
    );
    ok(
        &server,
        &[
            "vol-clone",
            "full.img",
            "clone.img",
            "--pool",
            "guest_images_dir",
        ],
    );
    assert_eq!(
        std::fs::read(target.join("clone.img")).unwrap(),
        std::fs::read(target.join("full.img")).unwrap()
    );
    ok(
        &server,
        &[
            "vol-clone",
            "base.qcow2",
            "linked.qcow2",
            "--pool",
            "guest_images_dir",
            "--linked",
        ],
    );
    assert!(
        ok(
            &server,
            &["vol-dumpxml", "linked.qcow2", "--pool", "guest_images_dir"]
        )
        .contains("<backingStore>")
    );

    // vol-resize: grow, a shrink needs --shrink.
    ok(
        &server,
        &[
            "vol-resize",
            "sparse.img",
            "128M",
            "--pool",
            "guest_images_dir",
        ],
    );
    let refused = fails(
        &server,
        &[
            "vol-resize",
            "sparse.img",
            "32M",
            "--pool",
            "guest_images_dir",
        ],
    );
    assert!(refused.contains("--shrink"), "{refused}");
    ok(
        &server,
        &[
            "vol-resize",
            "sparse.img",
            "32M",
            "--pool",
            "guest_images_dir",
            "--shrink",
        ],
    );
    assert_eq!(
        field(
            &ok(
                &server,
                &[
                    "vol-info",
                    "sparse.img",
                    "--pool",
                    "guest_images_dir",
                    "--bytes"
                ]
            ),
            "Capacity"
        ),
        "33554432 bytes"
    );

    // vol-wipe: zeroes, and a pattern algorithm (DoD: zeroes, ones, random, verified).
    ok(
        &server,
        &["vol-wipe", "clone.img", "--pool", "guest_images_dir"],
    );
    assert!(
        std::fs::read(target.join("clone.img"))
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    ok(
        &server,
        &[
            "vol-wipe",
            "clone.img",
            "--pool",
            "guest_images_dir",
            "--algorithm",
            "dod",
        ],
    );
    let wiped = std::fs::read(target.join("clone.img")).unwrap();
    assert_eq!(wiped.len(), 16 << 20);
    assert!(
        wiped.iter().any(|&b| b != 0),
        "the last DoD pass is random, not zeroes"
    );
    assert!(
        wiped.windows(2).any(|w| w[0] != w[1]),
        "and not a fixed pattern"
    );

    // vol-upload / vol-download of a small file (the 1 GiB case has its own test).
    let upload = work.path().join("upload.bin");
    std::fs::write(
        &upload,
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    ok(
        &server,
        &[
            "vol-upload",
            "sparse.img",
            &upload.display().to_string(),
            "--pool",
            "guest_images_dir",
        ],
    );
    let download = work.path().join("download.bin");
    ok(
        &server,
        &[
            "vol-download",
            "sparse.img",
            &download.display().to_string(),
            "--pool",
            "guest_images_dir",
            "--length",
            "3000000",
        ],
    );
    assert_eq!(
        std::fs::read(&download).unwrap(),
        std::fs::read(&upload).unwrap()
    );

    // A base with an overlay cannot go; pool-refresh sees files made outside Vireo.
    let refused = fails(
        &server,
        &["vol-delete", "base.qcow2", "--pool", "guest_images_dir"],
    );
    assert!(
        refused.contains("linked.qcow2") || refused.contains("top.qcow2"),
        "{refused}"
    );
    std::fs::write(target.join("outside.img"), b"x").unwrap();
    assert!(!ok(&server, &["vol-list", "guest_images_dir"]).contains("outside.img"));
    ok(&server, &["pool-refresh", "guest_images_dir"]);
    assert!(ok(&server, &["vol-list", "guest_images_dir"]).contains("outside.img"));

    // POOL-10: pool-edit through $EDITOR (a sed script) redefines the pool.
    let editor = write(
        work.path(),
        "editor.sh",
        "#!/bin/sh\nsed -i 's|<permissions>|<permissions>|' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let edited = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(["pool-edit", "guest_images_dir"])
        .env("EDITOR", &editor)
        .env("VISUAL", &editor)
        .output()
        .unwrap();
    assert!(edited.status.success(), "pool-edit: {}", stderr(&edited));

    // pool-delete refuses while volumes remain; then every volume goes and the pool with them.
    fails(&server, &["pool-delete", "guest_images_dir"]);
    ok(&server, &["pool-destroy", "guest_images_dir"]);
    let refused = fails(&server, &["pool-delete", "guest_images_dir"]);
    assert!(refused.contains("still holds"), "{refused}");
    ok(&server, &["pool-start", "guest_images_dir"]);
    for volume in [
        "linked.qcow2",
        "top.qcow2",
        "base.qcow2",
        "clone.img",
        "copy.raw",
        "fromxml.qcow2",
        "full.img",
        "sparse.img",
        "outside.img",
    ] {
        assert!(
            ok(
                &server,
                &["vol-delete", volume, "--pool", "guest_images_dir"]
            )
            .contains(&format!("Vol {volume} deleted"))
        );
    }
    ok(
        &server,
        &["pool-autostart", "guest_images_dir", "--disable"],
    );
    ok(&server, &["pool-destroy", "guest_images_dir"]);
    ok(&server, &["pool-delete", "guest_images_dir"]);
    assert!(!target.exists());
    ok(&server, &["pool-undefine", "guest_images_dir"]);
    assert!(!ok(&server, &["pool-list", "--all"]).contains("guest_images_dir"));

    // POOL-04: a transient pool from pool-create-as vanishes on pool-destroy.
    let transient = work.path().join("transient").display().to_string();
    ok(
        &server,
        &[
            "pool-create-as",
            "scratch",
            "dir",
            "--target",
            &transient,
            "--build",
        ],
    );
    let info = ok(&server, &["pool-info", "scratch"]);
    assert_eq!(field(&info, "Persistent"), "no");
    ok(&server, &["pool-destroy", "scratch"]);
    fails(&server, &["pool-info", "scratch"]);

    // pool-create FILE, watched by pool-event; pool-capabilities says what this host can do.
    let mut events = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(["pool-event", "--loop", "--timeout", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let xml = write(
        work.path(),
        "created.xml",
        &format!(
            "<pool type='dir'><name>created</name><target><path>{transient}</path></target></pool>"
        ),
    );
    assert!(ok(&server, &["pool-create", &xml]).contains("Pool created created from"));
    ok(&server, &["pool-destroy", "created"]);
    let mut seen = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut seen)
        .unwrap();
    events.wait().unwrap();
    assert!(
        seen.contains("'lifecycle' for storage pool created: Started"),
        "{seen}"
    );
    assert!(
        seen.contains("'lifecycle' for storage pool created: Stopped"),
        "{seen}"
    );
    let caps = ok(&server, &["pool-capabilities"]);
    assert!(caps.contains("<pool type='dir' supported='yes'>"), "{caps}");
    assert!(caps.contains("<pool type='rbd' supported='no'"), "{caps}");
}

#[test]
fn bad_names_sizes_and_xml_are_refused_by_field() {
    let server = Server::vireod();
    // An enum value the server does not know is refused, not read as the default (a zero wipe).
    ok(&server, &["vol-create-as", "default", "keep.img", "1M"]);
    let keep = server.state_dir.join("images/keep.img");
    std::fs::write(&keep, vec![7u8; 1 << 20]).unwrap();
    let status = vireo_tests::block_on(async {
        let mut client = vireo_proto::storage::v1::storage_volume_service_client::StorageVolumeServiceClient::new(server.connect().await);
        let request = vireo_proto::storage::v1::WipeVolumeRequest {
            volume: Some(vireo_proto::storage::v1::VolumeRef {
                pool: "default".into(),
                name: "keep.img".into(),
                ..Default::default()
            }),
            algorithm: 99,
            ..Default::default()
        };
        match client.wipe_volume(request).await {
            Ok(_) => panic!("an unknown algorithm was accepted"),
            Err(status) => status,
        }
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("algorithm"), "{status:?}");
    assert!(
        std::fs::read(&keep).unwrap().iter().all(|&b| b == 7),
        "nothing was wiped"
    );
    ok(&server, &["vol-delete", "keep.img", "--pool", "default"]);
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("p").display().to_string();
    for name in ["bad/name", "..", "-dash"] {
        let xml = format!(
            "<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>"
        );
        let refused = fails(
            &server,
            &["pool-define", &write(work.path(), "named.xml", &xml)],
        );
        assert!(refused.contains("pool/name"), "{name}: {refused}");
    }
    let refused = fails(
        &server,
        &["pool-define-as", "p", "dir", "--target", "/tmp/../etc"],
    );
    assert!(refused.contains("pool/target"), "{refused}");
    let refused = fails(
        &server,
        &[
            "pool-define",
            &write(
                work.path(),
                "bad.xml",
                "<pool type='dir'><name>x</name><target><path>/x</path></target><colour/></pool>",
            ),
        ],
    );
    assert!(refused.contains("pool/colour"), "{refused}");
    let refused = fails(
        &server,
        &[
            "pool-define",
            &write(work.path(), "broken.xml", "<pool type='dir'><name>x</pool>"),
        ],
    );
    assert!(refused.contains("xml"), "{refused}");
    let refused = fails(
        &server,
        &[
            "pool-define",
            &write(
                work.path(),
                "rbd.xml",
                "<pool type='rbd'><name>x</name></pool>",
            ),
        ],
    );
    assert!(refused.contains("pool@type"), "{refused}");
    for name in ["../escape", ".hidden", "-x", "a/b"] {
        // `--` lets a name that starts with '-' reach the server, as in virsh.
        let refused = fails(&server, &["vol-create-as", "default", "--", name, "1M"]);
        assert!(refused.contains("volume/name"), "{name}: {refused}");
    }
    let refused = fails(
        &server,
        &["vol-create-as", "default", "huge", "9223372036854775808"],
    );
    assert!(refused.contains("volume/capacity"), "{refused}");
    let refused = fails(&server, &["vol-create-as", "default", "huge", "16E"]);
    assert!(refused.contains("capacity"), "{refused}");
    let refused = fails(&server, &["vol-info", "nothing", "--pool", "default"]);
    assert!(refused.contains("nothing"), "{refused}");
    let refused = fails(&server, &["pool-info", "nopool"]);
    assert!(refused.contains("nopool"), "{refused}");
    ok(&server, &["vol-create-as", "default", "twice", "1M"]);
    let refused = fails(&server, &["vol-create-as", "default", "twice", "1M"]);
    assert!(refused.contains("already exists"), "{refused}");
    // Nothing half-made is left: only the one good volume.
    assert_eq!(names(&ok(&server, &["vol-list", "default"])), ["twice"]);
    let images = server.state_dir.join("images");
    let files: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn fs_pool_mounts_a_loop_device() {
    let device = match LoopDevice::new(256 << 20) {
        Ok(device) => device,
        Err(missing) => skip!("needs {missing}"),
    };
    let server = Server::vireod();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("guest_images_fs");
    let target_text = target.display().to_string();
    let dev = device.path().display().to_string();
    // POOL-21: pool-define-as NAME fs - - DEVICE - TARGET.
    ok(
        &server,
        &[
            "pool-define-as",
            "guest_images_fs",
            "fs",
            "-",
            "-",
            &dev,
            "-",
            &target_text,
            "--source-format",
            "ext4",
        ],
    );
    ok(&server, &["pool-build", "guest_images_fs", "--overwrite"]);
    let refused = fails(
        &server,
        &["pool-build", "guest_images_fs", "--no-overwrite"],
    );
    assert!(refused.contains("ext4"), "{refused}");
    ok(&server, &["pool-start", "guest_images_fs"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(&target_text), "mounted");
    assert!(target.join("lost+found").is_dir());
    ok(
        &server,
        &[
            "vol-create-as",
            "guest_images_fs",
            "v1.qcow2",
            "64M",
            "--format",
            "qcow2",
        ],
    );
    ok(
        &server,
        &[
            "vol-clone",
            "v1.qcow2",
            "v2.qcow2",
            "--pool",
            "guest_images_fs",
        ],
    );
    assert_eq!(
        names(&ok(&server, &["vol-list", "guest_images_fs"])),
        ["v1.qcow2", "v2.qcow2"]
    );
    let info = ok(&server, &["pool-info", "guest_images_fs", "--bytes"]);
    let capacity: u64 = field(&info, "Capacity")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        capacity > 200 << 20 && capacity <= 256 << 20,
        "the filesystem's size: {info}"
    );
    ok(&server, &["pool-destroy", "guest_images_fs"]);
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&target_text),
        "unmounted"
    );
    // The data stays on the device: start again and the volumes are there.
    ok(&server, &["pool-start", "guest_images_fs"]);
    assert_eq!(
        names(&ok(&server, &["vol-list", "guest_images_fs"])),
        ["v1.qcow2", "v2.qcow2"]
    );
    remove_pool(&server, "guest_images_fs", &["v1.qcow2", "v2.qcow2"]);
    assert!(!target.exists());
}

#[test]
fn disk_pool_makes_partitions_on_a_loop_device() {
    let device = match LoopDevice::new(256 << 20) {
        Ok(device) => device,
        Err(missing) => skip!("needs {missing}"),
    };
    if let Err(missing) = tools_or_skip(&[("parted", "parted"), ("wipefs", "util-linux")]) {
        skip!("needs {missing}");
    }
    let server = Server::vireod();
    let work = tempfile::tempdir().unwrap();
    let dev = device.path().display().to_string();
    // POOL-22: the seed's XML, on our loop device.
    let xml = write(
        work.path(),
        "disk.xml",
        &format!(
            "<pool type='disk'><name>guest_images_disk</name><source><device path='{dev}'/><format type='gpt'/></source><target><path>/dev</path></target></pool>"
        ),
    );
    ok(&server, &["pool-define", &xml]);
    ok(&server, &["pool-build", "guest_images_disk"]);
    ok(&server, &["pool-start", "guest_images_disk"]);
    ok(
        &server,
        &["vol-create-as", "guest_images_disk", "volume1", "8M"],
    );
    ok(
        &server,
        &[
            "vol-create-as",
            "guest_images_disk",
            "volume2",
            "16M",
            "--format",
            "linux-lvm",
        ],
    );
    let list = ok(&server, &["vol-list", "guest_images_disk", "--details"]);
    assert_eq!(names(&list), ["volume1", "volume2"], "{list}");
    let partition = format!("{dev}p1");
    assert!(list.contains(&partition), "{list}");
    assert_eq!(
        device.partitions().len(),
        2,
        "the kernel knows both partitions"
    );
    assert_eq!(
        vireo_tests::storage::block_device_size(Path::new(&partition)),
        8 << 20
    );
    assert!(
        ok(
            &server,
            &["vol-dumpxml", "volume2", "--pool", "guest_images_disk"]
        )
        .contains("linux-lvm")
    );
    // Data goes into the partition and comes back out; a clone is a third partition.
    let data = work.path().join("data");
    std::fs::write(&data, vec![0xa5u8; 8 << 20]).unwrap();
    ok(
        &server,
        &[
            "vol-upload",
            "volume1",
            &data.display().to_string(),
            "--pool",
            "guest_images_disk",
        ],
    );
    ok(
        &server,
        &[
            "vol-clone",
            "volume1",
            "clone1",
            "--pool",
            "guest_images_disk",
        ],
    );
    let back = work.path().join("back");
    ok(
        &server,
        &[
            "vol-download",
            "clone1",
            &back.display().to_string(),
            "--pool",
            "guest_images_disk",
        ],
    );
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&data).unwrap());
    let refused = fails(
        &server,
        &[
            "vol-resize",
            "volume1",
            "16M",
            "--pool",
            "guest_images_disk",
        ],
    );
    assert!(refused.contains("cannot be resized"), "{refused}");
    ok(&server, &["pool-destroy", "guest_images_disk"]);
    assert!(fails(&server, &["pool-delete", "guest_images_disk"]).contains("still holds"));
    ok(&server, &["pool-start", "guest_images_disk"]);
    remove_pool(
        &server,
        "guest_images_disk",
        &["volume1", "volume2", "clone1"],
    );
    assert!(device.partitions().is_empty());
}

#[test]
fn logical_pool_works_at_lvm_metadata_level() {
    let device = match LoopDevice::new(256 << 20) {
        Ok(device) => device,
        Err(missing) => skip!("needs {missing}"),
    };
    if let Err(missing) = tools_or_skip(&[("lvm", "lvm2")]) {
        skip!("needs {missing}");
    }
    let server = Server::vireod();
    let dev = device.path().display().to_string();
    let vg = format!("vireo_test_{}", std::process::id());
    // POOL-23: pool-define-as NAME logical - - DEVICE VG /dev/VG.
    ok(
        &server,
        &[
            "pool-define-as",
            "guest_images_lvm",
            "logical",
            "-",
            "-",
            &dev,
            &vg,
            &format!("/dev/{vg}"),
        ],
    );
    ok(&server, &["pool-build", "guest_images_lvm"]);
    let refused = fails(&server, &["pool-build", "guest_images_lvm"]);
    assert!(refused.contains("--overwrite"), "{refused}");
    ok(&server, &["pool-start", "guest_images_lvm"]);
    ok(
        &server,
        &["vol-create-as", "guest_images_lvm", "volume1", "8M"],
    );
    ok(
        &server,
        &["vol-create-as", "guest_images_lvm", "volume2", "20M"],
    );
    let list = ok(&server, &["vol-list", "guest_images_lvm", "--details"]);
    assert_eq!(names(&list), ["volume1", "volume2"], "{list}");
    assert!(list.contains(&format!("/dev/{vg}/volume1")), "{list}");
    let key = ok(
        &server,
        &["vol-key", "volume1", "--pool", "guest_images_lvm"],
    )
    .trim()
    .to_string();
    assert_eq!(key.len(), 38, "an LV UUID: {key}");
    assert_eq!(ok(&server, &["vol-name", &key]).trim(), "volume1");
    let info = ok(&server, &["pool-info", "guest_images_lvm", "--bytes"]);
    assert_eq!(
        field(&info, "Allocation"),
        (28u64 << 20).to_string(),
        "{info}"
    );
    let sources = ok(&server, &["find-storage-pool-sources", "logical"]);
    assert!(
        sources.contains(&format!("<name>{vg}</name>")) && sources.contains(&dev),
        "{sources}"
    );
    assert!(fails(&server, &["pool-delete", "guest_images_lvm"]).contains("destroy it first"));
    remove_pool(&server, "guest_images_lvm", &["volume1", "volume2"]);
    assert!(!ok(&server, &["find-storage-pool-sources", "logical"]).contains(&vg));
}

#[test]
fn iscsi_and_netfs_sources_are_discovered_from_tgt_and_ganesha() {
    if let Err(missing) =
        tools_or_skip(&[("iscsi-ls", "libiscsi-bin"), ("showmount", "nfs-common")])
    {
        skip!("needs {missing}");
    }
    let iqn = "iqn.2010-05.com.example.server1:trial1";
    let target = match IscsiTarget::start(iqn, &[64 << 20, 32 << 20]) {
        Ok(target) => target,
        Err(missing) => skip!("needs {missing}"),
    };
    let server = Server::vireod();
    let work = tempfile::tempdir().unwrap();
    // POOL-16: find-storage-pool-sources-as iscsi HOST PORT, and with a SRCSPEC file.
    let port = target.port().to_string();
    let sources = ok(
        &server,
        &["find-storage-pool-sources-as", "iscsi", "127.0.0.1", &port],
    );
    assert!(
        sources.contains(iqn) && sources.contains("127.0.0.1"),
        "{sources}"
    );
    let spec = write(
        work.path(),
        "spec.xml",
        &format!("<source><host name='127.0.0.1' port='{port}'/></source>"),
    );
    assert!(ok(&server, &["find-storage-pool-sources", "iscsi", &spec]).contains(iqn));
    // POOL-24: the seed's pool-define-as form. Starting it needs the kernel's iSCSI initiator,
    // which this host lacks: the start fails, saying why, and leaves the pool inactive.
    ok(
        &server,
        &[
            "pool-define-as",
            "trial1",
            "iscsi",
            &format!("127.0.0.1:{port}"),
            iqn,
            "-",
            "-",
            "/dev/disk/by-path",
        ],
    );
    let xml = ok(&server, &["pool-dumpxml", "trial1"]);
    assert!(
        xml.contains(&format!("<host name='127.0.0.1' port='{port}'/>")) && xml.contains(iqn),
        "{xml}"
    );
    let start = server.vireo(&["pool-start", "trial1"]);
    if start.status.success() {
        let volumes = ok(&server, &["vol-list", "trial1"]);
        assert_eq!(names(&volumes).len(), 2, "both LUNs: {volumes}");
        ok(&server, &["pool-destroy", "trial1"]);
    } else {
        let said = stderr(&start);
        eprintln!("iSCSI login needs the kernel initiator (the nested test host has it): {said}");
        assert!(
            said.contains("iscsiadm"),
            "the failure names the login: {said}"
        );
        assert!(ok(&server, &["pool-list", "--inactive"]).contains("trial1"));
    }
    let refused = fails(&server, &["vol-create-as", "trial1", "x", "1M"]);
    assert!(
        refused.contains("not active") || refused.contains("LUNs"),
        "{refused}"
    );
    ok(&server, &["pool-undefine", "trial1"]);

    let nfs = match NfsServer::start() {
        Ok(nfs) => nfs,
        Err(missing) => skip!("needs {missing}"),
    };
    let sources = ok(
        &server,
        &["find-storage-pool-sources-as", "netfs", nfs.host()],
    );
    assert!(
        sources.contains(&format!("<dir path='{}'/>", nfs.export_path()))
            && sources.contains("nfs"),
        "{sources}"
    );
    // POOL-26: netfs needs the kernel NFS client to mount; here the mount fails, saying so.
    let mount_point = work.path().join("nfs").display().to_string();
    ok(
        &server,
        &[
            "pool-define-as",
            "nfstrial",
            "netfs",
            nfs.host(),
            nfs.export_path(),
            "-",
            "-",
            &mount_point,
            "--source-format",
            "nfs",
        ],
    );
    ok(&server, &["pool-build", "nfstrial"]);
    let start = server.vireo(&["pool-start", "nfstrial"]);
    if start.status.success() {
        std::fs::write(nfs.export_dir().join("seen.img"), b"x").unwrap();
        ok(&server, &["pool-refresh", "nfstrial"]);
        assert!(ok(&server, &["vol-list", "nfstrial"]).contains("seen.img"));
        ok(&server, &["pool-destroy", "nfstrial"]);
    } else {
        let said = stderr(&start);
        eprintln!("mounting NFS needs the kernel NFS client (the nested test host has it): {said}");
        assert!(said.contains("mount"), "{said}");
    }
    ok(&server, &["pool-delete", "nfstrial"]);
    ok(&server, &["pool-undefine", "nfstrial"]);
}

/// Runs vireo with stderr on a pseudo-terminal (where progress is drawn) and returns what the
/// terminal showed.
fn vireo_on_terminal(server: &Server, args: &[&str]) -> String {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut child = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // SAFETY: a duplicate of the slave end, owned by the child's stderr from here on.
        .stderr(unsafe { Stdio::from_raw_fd(nix::libc::dup(slave.as_raw_fd())) })
        .spawn()
        .unwrap();
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(read) = master.read(&mut buffer) {
            if read == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let status = child.wait().unwrap();
    let seen = reader.join().unwrap();
    assert!(status.success(), "vireo {args:?} failed: {seen}");
    seen
}

#[test]
fn one_gib_upload_and_download_show_progress_and_keep_the_bytes() {
    let server = Server::vireod();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let data = work.path().join("data.bin");
    // One MiB in eight is zero: a sparse download may skip it, the bytes must not change.
    vireo_tests::write_random_file(&data, 1024, 8);
    ok(
        &server,
        &[
            "vol-create-as",
            "default",
            "big.img",
            "1G",
            "--allocation",
            "0",
        ],
    );
    let shown = vireo_on_terminal(
        &server,
        &[
            "vol-upload",
            "big.img",
            &data.display().to_string(),
            "--pool",
            "default",
        ],
    );
    assert!(
        shown.contains('%') && shown.contains("100"),
        "upload progress: {shown:?}"
    );
    let back = work.path().join("back.bin");
    let shown = vireo_on_terminal(
        &server,
        &[
            "vol-download",
            "big.img",
            &back.display().to_string(),
            "--pool",
            "default",
            "--sparse",
        ],
    );
    assert!(
        shown.contains('%') && shown.contains("100"),
        "download progress: {shown:?}"
    );
    let sum = |path: &Path| {
        stdout(&Command::new("sha256sum").arg(path).output().unwrap())
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(sum(&data), sum(&back), "checksums");

    // A pipe cannot be passed for the kernel to copy: the same bytes go through the gRPC streams.
    let stream_part = work.path().join("part.bin");
    vireo_tests::write_random_file(&stream_part, 64, 4);
    let mut upload = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(["vol-upload", "big.img", "/dev/stdin", "--pool", "default"])
        .args(["--offset", "1M"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = upload.stdin.take().unwrap();
    let mut source = std::fs::File::open(&stream_part).unwrap();
    std::io::copy(&mut source, &mut pipe).unwrap();
    drop(pipe);
    let uploaded = upload.wait_with_output().unwrap();
    assert!(uploaded.status.success(), "{}", stderr(&uploaded));
    let downloaded = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args([
            "vol-download",
            "big.img",
            "/dev/stdout",
            "--pool",
            "default",
        ])
        .args(["--offset", "1M", "--length", "64M"])
        .output()
        .unwrap();
    assert!(downloaded.status.success(), "{}", stderr(&downloaded));
    assert!(
        downloaded.stdout == std::fs::read(&stream_part).unwrap(),
        "the streamed 64 MiB came back different ({} bytes)",
        downloaded.stdout.len()
    );
}

/// The local transfer socket takes only root, and answers a confused client by field.
#[test]
fn the_local_transfer_socket_is_root_only_and_refuses_bad_requests() {
    use std::os::unix::fs::PermissionsExt;
    use vireo_proto::storage::v1 as pb;
    use vireo_proto::storage::v1::local_transfer_reply::Reply;
    use vireo_proto::storage::v1::local_transfer_request::Transfer;
    let server = Server::vireod();
    let socket = server.run_dir.join("gateway-transfer.sock");
    for path in [&socket, &server.run_dir.join("storage-transfer.sock")] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ask = |request: pb::LocalTransferRequest, file: Option<&std::fs::File>| {
        runtime.block_on(async {
            let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let fd = file.map(std::os::fd::AsFd::as_fd);
            vireo_runtime::transfer::send(&mut stream, &request, fd)
                .await
                .unwrap();
            let (reply, _) =
                vireo_runtime::transfer::receive::<pb::LocalTransferReply>(&mut stream)
                    .await
                    .unwrap()
                    .expect("a reply");
            reply.reply
        })
    };
    let upload = |pool: &str, volume: &str| pb::LocalTransferRequest {
        host: String::new(),
        transfer: Some(Transfer::Upload(pb::UploadVolumeHeader {
            volume: Some(pb::VolumeRef {
                pool: pool.into(),
                name: volume.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let refused = |reply: Option<Reply>, code: tonic::Code, needle: &str| match reply {
        Some(Reply::Error(error)) => {
            assert_eq!(tonic::Code::from(error.code), code, "{}", error.message);
            assert!(error.message.contains(needle), "{}", error.message);
        }
        other => panic!("expected {code:?} naming {needle}, got {other:?}"),
    };
    let file = tempfile::tempfile().unwrap();
    refused(
        ask(upload("default", "x.img"), None),
        tonic::Code::InvalidArgument,
        "file:",
    );
    refused(
        ask(upload("default", "absent.img"), Some(&file)),
        tonic::Code::NotFound,
        "absent.img",
    );
    let mut elsewhere = upload("default", "x.img");
    elsewhere.host = "other-host".into();
    refused(
        ask(elsewhere, Some(&file)),
        tonic::Code::NotFound,
        "other-host",
    );
    let nothing = pb::LocalTransferRequest::default();
    refused(
        ask(nothing, Some(&file)),
        tonic::Code::InvalidArgument,
        "transfer:",
    );
    // A frame claiming 4 GiB is refused, and the gateway goes on serving.
    runtime.block_on(async {
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, &u32::MAX.to_be_bytes())
            .await
            .unwrap();
        let (reply, _) = vireo_runtime::transfer::receive::<pb::LocalTransferReply>(&mut stream)
            .await
            .unwrap()
            .expect("a reply");
        refused(reply.reply, tonic::Code::InvalidArgument, "at most");
    });
    ok(&server, &["pool-list", "--all"]);
}

/// The tiny guest (waiting for the power button) with a disk that is a volume of `default`.
const TINY_DOMAIN: &str = "<domain type='kvm'><name>NAME</name><memory unit='MiB'>32</memory>
  <os><type>hvm</type><kernel>KERNEL</kernel><cmdline>console=ttyS0 tiny.test=wait-shutdown</cmdline></os>
  <devices><disk type='volume' device='disk'><source pool='default' volume='guest.img'/><target dev='vda' bus='virtio'/></disk>
  <serial type='pty'/></devices></domain>";

#[test]
fn a_volume_a_running_domain_uses_cannot_be_deleted_wiped_or_shrunk() {
    if let Err(why) = kvm_usable() {
        skip!("needs {why}");
    }
    let kit = match kit_files(&["tiny.elf"]) {
        Ok(kit) => kit,
        Err(missing) => skip!("needs {missing}"),
    };
    let server = Server::vireod();
    let work = tempfile::tempdir().unwrap();
    ok(&server, &["vol-create-as", "default", "guest.img", "64M"]);
    let xml = TINY_DOMAIN
        .replace("NAME", "volguest")
        .replace("KERNEL", &kit.join("tiny.elf").display().to_string());
    ok(&server, &["define", &write(work.path(), "guest.xml", &xml)]);
    ok(&server, &["start", "volguest"]);
    let blocks = ok(&server, &["domblklist", "volguest"]);
    assert!(blocks.contains("vda"), "{blocks}");
    for (args, what) in [
        (
            vec!["vol-delete", "guest.img", "--pool", "default"],
            "delete",
        ),
        (vec!["vol-wipe", "guest.img", "--pool", "default"], "wipe"),
        (
            vec![
                "vol-resize",
                "guest.img",
                "32M",
                "--pool",
                "default",
                "--shrink",
            ],
            "shrink",
        ),
    ] {
        let refused = fails(&server, &args);
        assert!(
            refused.contains("volguest") && refused.contains(what),
            "{what}: {refused}"
        );
    }
    // Growing is fine while running.
    ok(
        &server,
        &["vol-resize", "guest.img", "128M", "--pool", "default"],
    );
    ok(&server, &["destroy", "volguest"]);
    ok(&server, &["vol-delete", "guest.img", "--pool", "default"]);
    // A domain whose volume is gone does not start, and says which.
    let refused = fails(&server, &["start", "volguest"]);
    assert!(refused.contains("guest.img"), "{refused}");
    ok(&server, &["undefine", "volguest"]);
}

#[test]
fn a_clone_cut_short_by_kill_9_leaves_no_volume() {
    let mut server = Server::vireod();
    ok(
        &server,
        &[
            "vol-create-as",
            "default",
            "source.img",
            "2G",
            "--allocation",
            "0",
        ],
    );
    let images = server.state_dir.join("images");
    // Real data, so that the copy takes a while.
    std::fs::write(images.join("source.img"), vec![0x33u8; 512 << 20]).unwrap();
    ok(&server, &["pool-refresh", "default"]);
    let mut clone = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(["vol-clone", "source.img", "copy.img", "--pool", "default"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the clone to start writing",
        || {
            std::fs::read_dir(&images)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with('.'))
                .then_some(())
        },
    );
    server.kill9();
    let _ = clone.wait();
    // qemu-img may outlive the service for a moment; whatever it leaves is hidden.
    server.restart();
    assert_eq!(
        names(&ok(&server, &["vol-list", "default"])),
        ["source.img"]
    );
    let left: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "source.img")
        .collect();
    assert!(
        left.is_empty(),
        "the partial clone is removed at start: {left:?}"
    );
    ok(
        &server,
        &["vol-clone", "source.img", "copy.img", "--pool", "default"],
    );
    assert_eq!(
        names(&ok(&server, &["vol-list", "default"])),
        ["copy.img", "source.img"]
    );
}
