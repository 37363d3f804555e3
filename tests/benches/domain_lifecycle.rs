//! Domain lifecycle benchmark: Vireo (vireod, through the gateway, with the `vireo` CLI) against
//! Debian's libvirt (libvirtd with its QEMU driver, with `virsh`), in one run, on the same guest:
//! the kit's Debian kernel and initramfs as `<domain type='qemu'>` (TCG on both). It also times
//! Vireo's vmm engine on the tiny guest, which libvirt has no engine for. Medians of several runs:
//! define, start (returns when running), define+start, destroy.
//!
//! Run as root, after `scripts/install-deps bench` (libvirt-daemon-system):
//! `cargo build --release --workspace --bins && cargo bench -p vireo-tests --bench domain_lifecycle`
//! The benchmark starts virtlogd and libvirtd when their sockets are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vireo_tests::{Server, kit_files, kvm_usable, libvirt_ready, median, qemu_installed, timed};

const RUNS: usize = 5;

#[derive(Default)]
struct Figures {
    define: Vec<Duration>,
    start: Vec<Duration>,
    define_start: Vec<Duration>,
    destroy: Vec<Duration>,
}

/// Runs define, start, destroy, undefine RUNS times with `cli` (vireo or virsh).
fn cycle(cli: &dyn Fn(&[&str]) -> Command, name: &str, xml: &Path) -> Figures {
    let mut figures = Figures::default();
    let xml = xml.display().to_string();
    for _ in 0..RUNS {
        let define = timed("define", &mut cli(&["define", &xml]));
        let start = timed("start", &mut cli(&["start", name]));
        figures.define.push(define);
        figures.start.push(start);
        figures.define_start.push(define + start);
        // Let the guest get going, as a user's would, before it is destroyed.
        std::thread::sleep(Duration::from_millis(300));
        figures
            .destroy
            .push(timed("destroy", &mut cli(&["destroy", name])));
        timed("undefine", &mut cli(&["undefine", name]));
    }
    figures
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn debian_xml(name: &str, kit: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 vireo.hold=1</cmdline></os><features><acpi/></features>\
         <devices><serial type='pty'/></devices></domain>",
        kit.join("vmlinuz").display(),
        kit.join("initramfs.cpio.gz").display()
    )
}

fn main() {
    if let Err(needs) = qemu_installed() {
        println!("SKIPPED: needs {needs}");
        return;
    }
    let kit = match kit_files(&["vmlinuz", "initramfs.cpio.gz", "tiny.elf"]) {
        Ok(kit) => kit,
        Err(needs) => {
            println!("SKIPPED: needs {needs}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let debian = dir.path().join("debian.xml");
    std::fs::write(&debian, debian_xml("bench-debian", &kit)).unwrap();

    let server = Server::vireod();
    let socket = format!("unix://{}", server.socket.display());
    let vireo = |args: &[&str]| {
        let mut command = Command::new(vireo_tests::binary("vireo"));
        command.arg("-c").arg(&socket).args(args);
        command
    };
    let vireo_qemu = cycle(&vireo, "bench-debian", &debian);
    let vireo_vmm = match kvm_usable() {
        Ok(()) => {
            let tiny = dir.path().join("tiny.xml");
            std::fs::write(
                &tiny,
                format!(
                    "<domain type='kvm'><name>bench-tiny</name><memory unit='MiB'>64</memory>\
                     <os><type>hvm</type><kernel>{}</kernel><cmdline>tiny.test=wait-shutdown</cmdline></os>\
                     <devices><serial type='pty'/></devices></domain>",
                    kit.join("tiny.elf").display()
                ),
            )
            .unwrap();
            Some(cycle(&vireo, "bench-tiny", &tiny))
        }
        Err(needs) => {
            println!("vmm engine not measured: needs {needs}");
            None
        }
    };
    drop(server);

    let libvirt = match libvirt_ready() {
        Ok(()) => {
            let virsh = |args: &[&str]| {
                let mut command = Command::new("virsh");
                command.args(["-c", "qemu:///system"]).args(args);
                command
            };
            Some(cycle(&virsh, "bench-debian", &debian))
        }
        Err(needs) => {
            println!("libvirt not measured: needs {needs}");
            None
        }
    };

    println!("\nDomain lifecycle, medians of {RUNS} runs, each step one CLI call (vireo / virsh):");
    println!(
        "{:<24}{:>16}{:>16}{:>12}{:>18}",
        "step", "vireo (qemu)", "libvirt (qemu)", "ratio", "vireo (vmm, tiny)"
    );
    type Pick = fn(&Figures) -> Vec<Duration>;
    let rows: [(&str, Pick); 4] = [
        ("define", |f| f.define.clone()),
        ("start -> running", |f| f.start.clone()),
        ("define+start -> running", |f| f.define_start.clone()),
        ("destroy", |f| f.destroy.clone()),
    ];
    for (step, pick) in rows {
        let ours = median(pick(&vireo_qemu));
        let theirs = libvirt.as_ref().map(|f| median(pick(f)));
        let vmm = vireo_vmm.as_ref().map(|f| ms(median(pick(f))));
        println!(
            "{step:<24}{:>16}{:>16}{:>12}{:>18}",
            ms(ours),
            theirs.map_or_else(|| "-".into(), ms),
            theirs.map_or_else(
                || "-".into(),
                |t| format!("{:.3}", ours.as_secs_f64() / t.as_secs_f64())
            ),
            vmm.unwrap_or_else(|| "-".into())
        );
    }
    if let Some(libvirt) = &libvirt {
        for (step, ours, theirs) in [
            (
                "define+start -> running",
                &vireo_qemu.define_start,
                &libvirt.define_start,
            ),
            ("destroy", &vireo_qemu.destroy, &libvirt.destroy),
        ] {
            let ratio = median(ours.clone()).as_secs_f64() / median(theirs.clone()).as_secs_f64();
            println!(
                "target {step} <= 1/3 of libvirt: {} (ratio {ratio:.3})",
                if ratio <= 1.0 / 3.0 { "met" } else { "NOT met" }
            );
        }
    }
}
