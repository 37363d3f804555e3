//! svc-nodedev against this machine's real sysfs, read-only: every PCI function listed with the
//! vendor, product and class sysfs gives, the host bridge among them, net interfaces under their
//! PCI parents, the tree rooted at `computer`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vireo_tests::{Server, fails, ok};

fn sysfs_hex(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[test]
fn the_real_pci_functions_and_net_interfaces_are_listed_as_sysfs_has_them() {
    let server = Server::vireod();
    let listed = ok(&server, &["nodedev-list", "--cap", "pci"]);
    let mut bridges = 0;
    for entry in std::fs::read_dir("/sys/bus/pci/devices").unwrap().flatten() {
        let address = entry.file_name().to_string_lossy().into_owned();
        let name = format!("pci_{}", address.replace([':', '.'], "_"));
        assert!(
            listed.lines().any(|line| line == name),
            "{name} not in {listed}"
        );
        let xml = ok(&server, &["nodedev-dumpxml", &name]);
        let vendor = sysfs_hex(&entry.path().join("vendor"));
        let product = sysfs_hex(&entry.path().join("device"));
        let class = sysfs_hex(&entry.path().join("class"));
        assert!(
            xml.contains(&format!("<vendor id='{vendor}'")),
            "{name}: {xml}"
        );
        assert!(
            xml.contains(&format!("<product id='{product}'")),
            "{name}: {xml}"
        );
        assert!(
            xml.contains(&format!("<class>{class}</class>")),
            "{name}: {xml}"
        );
        if class.starts_with("0x0600") {
            bridges += 1;
            assert!(xml.contains("<parent>computer</parent>"), "{xml}");
        }
    }
    assert!(bridges >= 1, "no host bridge among {listed}");

    // Net interfaces sit under the PCI function they belong to.
    for entry in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let interface = entry.file_name().to_string_lossy().into_owned();
        let mac = sysfs_hex(&entry.path().join("address"));
        let name = format!("net_{interface}_{}", mac.replace(':', "_"));
        let info = ok(&server, &["nodedev-info", &name]);
        assert!(info.starts_with("Name:           net_"), "{info}");
        let Ok(device) = std::fs::canonicalize(entry.path().join("device")) else {
            assert!(info.contains("computer"), "{info}");
            continue;
        };
        let parent = device
            .ancestors()
            .filter_map(|dir| dir.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .find(|n| n.matches(':').count() == 2)
            .map(|address| format!("pci_{}", address.replace([':', '.'], "_")))
            .unwrap();
        assert!(
            info.contains(&parent),
            "{name} should sit under {parent}: {info}"
        );
    }

    // Whole disks backed by hardware, with the size sysfs gives.
    for entry in std::fs::read_dir("/sys/class/block").unwrap().flatten() {
        let real = std::fs::canonicalize(entry.path()).unwrap();
        if real.join("partition").exists() || !real.join("device").exists() {
            continue;
        }
        let dev = entry.file_name().to_string_lossy().into_owned();
        let storage = ok(&server, &["nodedev-list", "--cap", "storage"]);
        let name = storage
            .lines()
            .find(|line| {
                *line == format!("block_{dev}") || line.starts_with(&format!("block_{dev}_"))
            })
            .unwrap_or_else(|| panic!("no block_{dev} in {storage}"))
            .to_string();
        let xml = ok(&server, &["nodedev-dumpxml", &name]);
        let sectors: u64 = sysfs_hex(&real.join("size")).parse().unwrap();
        assert!(xml.contains(&format!("<block>/dev/{dev}</block>")), "{xml}");
        assert!(
            xml.contains(&format!("<size>{}</size>", sectors * 512)),
            "{xml}"
        );
    }

    let tree = ok(&server, &["nodedev-list", "--tree"]);
    assert!(tree.starts_with("computer\n"), "{tree}");
    assert!(tree.contains("+- pci_"), "{tree}");
    let root = ok(&server, &["nodedev-dumpxml", "computer"]);
    assert!(root.contains("<capability type='system'>"), "{root}");
    let missing = fails(&server, &["nodedev-dumpxml", "pci_9999_99_99_9"]);
    assert!(
        missing.contains("Could not find matching device"),
        "{missing}"
    );
    let refused = fails(&server, &["nodedev-list", "--cap", "floppy"]);
    assert!(refused.contains("floppy"), "{refused}");
}
