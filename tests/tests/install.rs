//! `vireo install` through vireod (issue #11, first part): the definitions virt-install's
//! options ask for, printed with --print-xml and defined with `vireo define`; refusals name the
//! option, and leave nothing defined. Creating volumes and starting the install phase are not
//! built yet, and the real install says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vireo_tests::{Server, fails, ok};

#[test]
fn print_xml_defines_cleanly_and_refusals_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("install.amd")).unwrap();
    std::fs::write(tree.join("install.amd/vmlinuz"), b"kernel").unwrap();
    std::fs::write(tree.join("install.amd/initrd.gz"), b"initrd").unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("path={}", disk.display());
    let server = Server::vireod();

    // A tree install: step 1 boots the installer with --extra-args, step 2 the disk.
    let location = [
        "install",
        "--name",
        "treeguest",
        "--memory",
        "256",
        "--location",
        tree.to_str().unwrap(),
        "--extra-args",
        "console=ttyS0 marker=42",
        "--disk",
        &disk_arg,
        "--nonetworks",
        "--graphics",
        "none",
    ];
    let step1 = ok(&server, &[&location[..], &["--print-xml", "1"]].concat());
    assert!(step1.contains("install.amd/vmlinuz</kernel>"), "{step1}");
    assert!(step1.contains("<cmdline>console=ttyS0 marker=42</cmdline>"));
    let step2 = ok(&server, &[&location[..], &["--print-xml", "2"]].concat());
    assert!(
        step2.contains("<boot dev='hd'/>") && !step2.contains("<kernel>"),
        "{step2}"
    );
    let file = dir.path().join("treeguest.xml");
    std::fs::write(&file, &step2).unwrap();
    ok(&server, &["define", file.to_str().unwrap()]);
    let defined = ok(&server, &["dumpxml", "--inactive", "treeguest"]);
    assert!(defined.contains("<boot dev='hd'/>"), "{defined}");
    assert!(defined.contains(&disk.display().to_string()));

    // A direct kernel boot is one phase; its XML defines as it is.
    let kernel = ok(
        &server,
        &[
            "install",
            "--name",
            "kernelguest",
            "--memory",
            "64",
            "--boot",
            "kernel=/boot/vmlinuz,kernel_args=console=ttyS0",
            "--nonetworks",
            "--print-xml",
        ],
    );
    let file = dir.path().join("kernelguest.xml");
    std::fs::write(&file, &kernel).unwrap();
    ok(&server, &["define", file.to_str().unwrap()]);

    // Refusals name what is wrong, and nothing more is defined.
    for (args, expected) in [
        (
            vec![
                "install",
                "--name",
                "x",
                "--memory",
                "64",
                "--cdrom",
                "/nonexistent.iso",
            ],
            "cdrom: `/nonexistent.iso` does not exist",
        ),
        (
            vec!["install", "--name", "x", "--memory", "64", "--import"],
            "--import needs a --disk",
        ),
        (
            vec!["install", "--name", "x", "--pxe", "--os-variant", "beos5"],
            "os_variant: `beos5` is not known",
        ),
        (
            vec![
                "install",
                "--name",
                "x",
                "--memory",
                "64",
                "--pxe",
                "--disk",
                "pool=default,size=8",
            ],
            "creating a volume (pool=, size=) is not built yet",
        ),
        (
            vec![
                "install",
                "--name",
                "x",
                "--memory",
                "64",
                "--pxe",
                "--disk",
                "color=red",
            ],
            "--disk: unknown option `color`",
        ),
        (
            vec![
                "install", "--name", "x", "--memory", "64", "--pxe", "--import",
            ],
            "give one of --cdrom, --location, --pxe, --import or --boot kernel=",
        ),
        (
            vec![
                "install", "--name", "x", "--memory", "64", "--import", "--disk", &disk_arg,
            ],
            "not built yet (issue #11)",
        ),
    ] {
        let refused = fails(&server, &args);
        assert!(refused.contains(expected), "{args:?}: {refused}");
    }
    let listed = ok(&server, &["list", "--all", "--name"]);
    let mut names: Vec<&str> = listed.split_whitespace().collect();
    names.sort_unstable();
    assert_eq!(names, ["kernelguest", "treeguest"]);
}
