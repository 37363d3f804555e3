//! `vireo install` through vireod (issue #11): Debian guests installed under QEMU TCG from an
//! ISO the test builds (isolinux), from an install tree (--location with --extra-args), over
//! PXE from a Vireo NAT network's TFTP root, and imported from a disk with a direct kernel
//! boot; each reaches its marker on the console, and after the install phase the persistent
//! definition boots from the disk. --print-xml output defines with `vireo define`, and every
//! refusal leaves no volume, tap or definition behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vireo_tests::guests::debian_kit;
use vireo_tests::{Netns, Server, binary, fails, ok, wait_until};

/// Files the test media are built from, and the Debian packages that carry them.
const BOOT_LOADERS: &[(&str, &str)] = &[
    ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
    ("/usr/lib/PXELINUX/pxelinux.0", "pxelinux"),
    (
        "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        "syslinux-common",
    ),
];

/// The kit and the boot loaders, or what is missing (a failure under scripts/test).
fn media_or_skip() -> Option<PathBuf> {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(missing) => {
            eprintln!("skipped: needs {missing}");
            return None;
        }
    };
    let missing: Vec<String> = BOOT_LOADERS
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(file, package)| format!("{file} (Debian package {package})"))
        .chain(
            std::process::Command::new("xorriso")
                .arg("-version")
                .output()
                .is_err()
                .then(|| "xorriso (Debian package xorriso)".to_string()),
        )
        .collect();
    if missing.is_empty() {
        return Some(kit);
    }
    assert!(
        std::env::var_os("VIREO_GUEST_DIR").is_none(),
        "scripts/test installs {missing:?}"
    );
    eprintln!("skipped: needs {}", missing.join(", "));
    None
}

/// A syslinux configuration booting the kit with `append` (isolinux and pxelinux read the same).
fn syslinux_config(kernel: &str, initrd: &str, append: &str) -> String {
    format!(
        "DEFAULT install\nPROMPT 0\nTIMEOUT 0\nLABEL install\n  KERNEL {kernel}\n  INITRD {initrd}\n  APPEND {append}\n"
    )
}

/// The kit's /init runs this (base64, so the kernel command line carries it as one word),
/// then powers the guest off a second later: the end of its install phase.
fn run64(command: &str) -> String {
    use base64::Engine;
    format!(
        "vireo.run64={}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("{command}; sleep 1"))
    )
}

/// Where the guest's console is logged while it runs (the log goes with the run); None before
/// the domain exists.
fn console_log_path(server: &Server, name: &str) -> Option<PathBuf> {
    let uuid = vireo_tests::stdout(&server.vireo(&["domuuid", name]));
    let uuid = uuid.trim();
    (!uuid.is_empty()).then(|| {
        server
            .run_dir
            .join("compute")
            .join(uuid)
            .join("console.log")
    })
}

/// What the guest wrote on its console in this run.
fn console_log(server: &Server, name: &str) -> String {
    console_log_path(server, name)
        .and_then(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default()
}

/// `vireo install ARGS --wait ...` while watching the guest's console: each run's console log
/// goes with its run, so the install phase's is read while it lasts. Its stdout, and what the
/// guest wrote in every run.
fn install_watching_console(server: &Server, name: &str, args: &[&str]) -> (String, String) {
    std::thread::scope(|scope| {
        let install = scope.spawn(|| ok(server, args));
        let mut runs: Vec<String> = Vec::new();
        let mut path = None;
        while !install.is_finished() {
            if path.is_none() {
                path = console_log_path(server, name);
            }
            let now = path
                .as_ref()
                .and_then(|path| std::fs::read_to_string(path).ok())
                .unwrap_or_default();
            match runs.last_mut() {
                Some(last) if now.starts_with(last.as_str()) => *last = now,
                _ if now.is_empty() => {}
                _ => runs.push(now),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (install.join().unwrap(), runs.concat())
    })
}

/// `vireo install ARGS` at a terminal: its stdin stays open, so the console it attaches stays
/// attached, until the console is attached to the installed guest (the second time); then the
/// terminal closes, which leaves the console and ends the command. Everything it printed.
fn install_at_a_terminal(server: &Server, name: &str, args: &[&str]) -> String {
    let mut install = std::process::Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let terminal = install.stdin.take();
    let mut output = install.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut output, &mut buffer) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    let connected = format!("Connected to domain '{name}'");
    wait_until(
        Duration::from_secs(180),
        "the installed guest's console",
        || {
            let seen = seen.lock().unwrap();
            (seen.matches(&connected).count() == 2).then_some(())
        },
    );
    drop(terminal);
    let status = wait_until(Duration::from_secs(30), "vireo install to end", || {
        install.try_wait().unwrap()
    });
    reader.join().unwrap();
    let mut installed = seen.lock().unwrap().clone();
    std::io::Read::read_to_string(&mut install.stderr.take().unwrap(), &mut installed).unwrap();
    assert!(status.success(), "{installed}");
    installed
}

fn wait_for_console(server: &Server, name: &str, marker: &str) {
    wait_until(Duration::from_secs(90), marker, || {
        console_log(server, name).contains(marker).then_some(())
    });
}

/// After the install phase: the installed guest runs, and its definition boots its new disk
/// and nothing else. Destroys it.
fn assert_installed(server: &Server, name: &str) {
    assert_eq!(ok(server, &["domstate", name]).trim(), "running");
    let disk = format!("{name}.qcow2");
    assert!(volumes(server).contains(&disk), "{:?}", volumes(server));
    let inactive = ok(server, &["dumpxml", "--inactive", name]);
    assert!(inactive.contains("<boot dev='hd'/>"), "{inactive}");
    assert!(inactive.contains(&disk), "{inactive}");
    for install_only in [
        "<kernel>",
        ".iso'",
        "<boot dev='network'/>",
        "on_reboot>destroy",
    ] {
        assert!(
            !inactive.contains(install_only),
            "{install_only}: {inactive}"
        );
    }
    ok(server, &["destroy", name]);
}

/// `vireo install` of a 256 MiB guest under TCG with a new 50 MiB disk, and `more` options.
fn install_args<'a>(name: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let common = [
        "install",
        "--name",
        name,
        "--memory",
        "256",
        "--virt-type",
        "qemu",
        "--disk",
        "pool=default,size=0.05",
    ];
    [&common[..], more].concat()
}

fn volumes(server: &Server) -> Vec<String> {
    ok(server, &["vol-list", "default"])
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

fn domains(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = ok(server, &["list", "--all", "--name"])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn cdrom_install_boots_the_built_iso_then_the_disk() {
    let Some(kit) = media_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("iso");
    std::fs::create_dir_all(tree.join("isolinux")).unwrap();
    for (file, _) in [BOOT_LOADERS[0], BOOT_LOADERS[2]] {
        let name = Path::new(file).file_name().unwrap();
        std::fs::copy(file, tree.join("isolinux").join(name)).unwrap();
    }
    std::fs::copy(kit.join("vmlinuz"), tree.join("vmlinuz")).unwrap();
    std::fs::copy(kit.join("initramfs.cpio.gz"), tree.join("initrd.gz")).unwrap();
    std::fs::write(
        tree.join("isolinux/isolinux.cfg"),
        syslinux_config(
            "/vmlinuz",
            "/initrd.gz",
            &format!(
                "console=ttyS0 quiet {}",
                run64("echo VIREO-INSTALLED-FROM-$((6*7))")
            ),
        ),
    )
    .unwrap();
    let iso = dir.path().join("install.iso");
    let made = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args([
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ])
        .arg(&tree)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    // virt-install's default: the console follows the install phase, and when the guest has
    // powered off the installed guest is started. Its stdin stays open, as a terminal's would.
    let server = Server::vireod();
    let installed = install_at_a_terminal(
        &server,
        "isoguest",
        &install_args(
            "isoguest",
            &[
                "--cdrom",
                iso.to_str().unwrap(),
                "--nonetworks",
                "--graphics",
                "none",
            ],
        ),
    );
    assert!(
        installed.contains("created volume `isoguest.qcow2`"),
        "{installed}"
    );
    let console_at = installed.find("Connected to domain 'isoguest'");
    let marker_at = installed.find("VIREO-INSTALLED-FROM-42");
    let restart_at = installed.find("Restarting the installed guest");
    assert!(
        console_at < marker_at && marker_at < restart_at && console_at.is_some(),
        "{installed}"
    );
    assert_installed(&server, "isoguest");
    let inactive = ok(&server, &["dumpxml", "--inactive", "isoguest"]);
    assert!(
        inactive.contains("device='cdrom'") && !inactive.contains("install.iso"),
        "the drive stays, empty: {inactive}"
    );
}

#[test]
fn location_install_boots_the_trees_installer_with_the_extra_args() {
    let Some(kit) = media_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("debian-tree");
    std::fs::create_dir_all(tree.join("install.amd")).unwrap();
    std::os::unix::fs::symlink(kit.join("vmlinuz"), tree.join("install.amd/vmlinuz")).unwrap();
    std::os::unix::fs::symlink(
        kit.join("initramfs.cpio.gz"),
        tree.join("install.amd/initrd.gz"),
    )
    .unwrap();
    let server = Server::vireod();
    // The guest reads its own /proc/cmdline: the marker is there only if --extra-args was.
    let install_from = |name: &str, location: &str, marker: &str| {
        let extra_args = format!(
            "console=ttyS0 quiet vireo.tree.marker={marker} {}",
            run64(
                "sed -n 's/.*vireo.tree.marker=\\([a-z0-9-]*\\).*/CMDLINE-SAYS-\\1/p' /proc/cmdline"
            )
        );
        let (installed, console) = install_watching_console(
            &server,
            name,
            &install_args(
                name,
                &[
                    "--location",
                    location,
                    "--extra-args",
                    &extra_args,
                    "--nonetworks",
                    "--wait",
                    "3",
                ],
            ),
        );
        assert!(
            installed.contains("starting the installed guest"),
            "{installed}"
        );
        assert!(
            console.contains(&format!("CMDLINE-SAYS-{marker}")),
            "{installed}: {console}"
        );
        assert_installed(&server, name);
        installed
    };
    install_from("treeguest", tree.to_str().unwrap(), "tree-42");

    // The same tree in an ISO image: read with xorriso (nothing is mounted), and the image is
    // the install phase's CD-ROM.
    let image = dir.path().join("debian-tree.iso");
    let made = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-f", "-R", "-o"])
        .arg(&image)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    install_from("isotreeguest", image.to_str().unwrap(), "iso-42");
    let step1 = ok(
        &server,
        &install_args(
            "isoprint",
            &[
                "--location",
                image.to_str().unwrap(),
                "--nonetworks",
                "--print-xml",
                "1",
            ],
        ),
    );
    assert!(
        step1.contains("device='cdrom'") && step1.contains("debian-tree.iso'"),
        "{step1}"
    );

    // The same tree served over HTTP: its installer is fetched, put on the host for the
    // install phase's start, and removed.
    let port = vireo_tests::storage::free_port();
    let mut web = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(&tree)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the HTTP server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = format!("http://127.0.0.1:{port}/");
    let installed = install_from("webguest", &url, "web-42");
    let _ = web.kill();
    let _ = web.wait();
    assert!(
        installed.contains("fetched the installer from"),
        "{installed}"
    );
    let mut left = volumes(&server);
    left.sort_unstable();
    assert_eq!(
        left,
        ["isotreeguest.qcow2", "treeguest.qcow2", "webguest.qcow2"],
        "the fetched installer is gone"
    );
    let refused = fails(
        &server,
        &install_args("nowhere", &["--location", &url, "--nonetworks"]),
    );
    assert!(refused.contains("location: fetching"), "{refused}");

    // And from an NFS export (libnfs' userspace client: this kernel has no NFS client).
    let nfs = match vireo_tests::storage::NfsServer::start() {
        Ok(nfs) => nfs,
        Err(missing) => {
            assert!(
                std::env::var_os("VIREO_GUEST_DIR").is_none(),
                "scripts/test installs {missing}"
            );
            eprintln!("skipped the NFS tree: needs {missing}");
            return;
        }
    };
    let exported = nfs.export_dir().join("tree/install.amd");
    std::fs::create_dir_all(&exported).unwrap();
    std::fs::copy(kit.join("vmlinuz"), exported.join("vmlinuz")).unwrap();
    std::fs::copy(kit.join("initramfs.cpio.gz"), exported.join("initrd.gz")).unwrap();
    install_from("nfsguest", &nfs.url_v4("tree"), "nfs-42");
    let refused = fails(
        &server,
        &install_args(
            "nowhere",
            &["--location", &nfs.url_v4("no-tree"), "--nonetworks"],
        ),
    );
    assert!(
        refused.contains("has no installer kernel and initrd"),
        "{refused}"
    );
}

#[test]
fn import_boots_a_disk_with_a_root_filesystem_by_direct_kernel_boot() {
    let Some(kit) = media_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/vireo-imported"), "VIREO-ROOTFS-IMPORTED\n").unwrap();
    let image = dir.path().join("root.img");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("16M")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let server = Server::vireod();
    let boot = format!(
        "kernel={},initrd={},kernel_args=console=ttyS0 quiet {}",
        kit.join("vmlinuz").display(),
        kit.join("initramfs.cpio.gz").display(),
        run64("mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && cat /mnt/etc/vireo-imported"),
    );
    let installed = ok(
        &server,
        &[
            "install",
            "--name",
            "rootguest",
            "--memory",
            "256",
            "--virt-type",
            "qemu",
            "--import",
            "--disk",
            &format!("path={}", image.display()),
            "--boot",
            &boot,
            "--nonetworks",
            "--noautoconsole",
        ],
    );
    assert!(
        installed.contains("Domain creation completed"),
        "{installed}"
    );
    wait_for_console(&server, "rootguest", "VIREO-ROOTFS-IMPORTED");
    let inactive = ok(&server, &["dumpxml", "--inactive", "rootguest"]);
    assert!(
        inactive.contains(&image.display().to_string()) && inactive.contains("<kernel>"),
        "{inactive}"
    );
    assert!(
        volumes(&server).is_empty(),
        "an existing image is not a new volume"
    );
    let _ = server.vireo(&["destroy", "rootguest"]);
}

#[test]
fn an_install_on_the_vmm_engine_gives_the_guest_its_new_disk() {
    if let Err(missing) = vireo_tests::kvm_usable() {
        eprintln!("skipped: needs {missing}");
        return;
    }
    let kit = match vireo_tests::kit_files(&["tiny.elf"]) {
        Ok(kit) => kit,
        Err(missing) => {
            eprintln!("skipped: needs {missing}");
            return;
        }
    };
    let server = Server::vireod();
    let boot = format!(
        "kernel={},kernel_args=console=ttyS0 tiny.test=blk",
        kit.join("tiny.elf").display()
    );
    let installed = ok(
        &server,
        &[
            "install",
            "--name",
            "tinyguest",
            "--memory",
            "64",
            "--engine",
            "vmm",
            "--autostart",
            "--import",
            "--boot",
            &boot,
            "--disk",
            "pool=default,size=0.01,format=raw",
            "--nonetworks",
            "--noautoconsole",
        ],
    );
    assert!(
        installed.contains("created volume `tinyguest.img`"),
        "{installed}"
    );
    // The tiny guest writes, flushes and reads back a block of the volume made for it.
    wait_for_console(&server, "tinyguest", "TINY: blk ok");
    let console = console_log(&server, "tinyguest");
    assert!(console.contains("wrote=1"), "{console}");
    let info = ok(&server, &["dominfo", "tinyguest"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Engine:") && l.ends_with("vmm")),
        "{info}"
    );
    assert!(
        info.lines()
            .any(|l| l.starts_with("Autostart:") && l.ends_with("enable")),
        "{info}"
    );
    ok(&server, &["destroy", "tinyguest"]);
}

/// A vireod in a namespace of its own, with a NAT network whose TFTP root serves pxelinux and
/// the kit. Networks outlive vireod, so dropping it destroys the network first.
struct PxeWorld {
    server: Server,
    host: Netns,
    _dir: tempfile::TempDir,
}

impl Drop for PxeWorld {
    fn drop(&mut self) {
        let _ = self.server.vireo(&["destroy", "pxeguest"]);
        let _ = self.server.vireo(&["net-destroy", "pxe"]);
    }
}

fn pxe_world(kit: &Path) -> Result<PxeWorld, String> {
    let host = Netns::create("inst")?;
    host.ok("ip", &["link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    // dnsmasq serves TFTP as an unprivileged user: the root must be readable by anyone.
    let tftp = dir.path().join("tftp");
    std::fs::create_dir_all(tftp.join("pxelinux.cfg")).unwrap();
    for (file, _) in &BOOT_LOADERS[1..] {
        std::fs::copy(file, tftp.join(Path::new(file).file_name().unwrap())).unwrap();
    }
    std::fs::copy(kit.join("vmlinuz"), tftp.join("vmlinuz")).unwrap();
    std::fs::copy(kit.join("initramfs.cpio.gz"), tftp.join("initrd.gz")).unwrap();
    std::fs::write(
        tftp.join("pxelinux.cfg/default"),
        syslinux_config(
            "vmlinuz",
            "initrd.gz",
            &format!(
                "console=ttyS0 quiet {}",
                run64("echo VIREO-PXE-BOOTED-$((6*7))")
            ),
        ),
    )
    .unwrap();
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let config = dir.path().join("vireo.toml");
    std::fs::write(&config, "[network]\ndefault_network = false\n").unwrap();
    let server = Server::vireod_with(
        &["ip", "netns", "exec", &host.0],
        &["--config", config.to_str().unwrap()],
    );
    let network = dir.path().join("pxe.xml");
    std::fs::write(
        &network,
        format!(
            "<network><name>pxe</name><forward mode='nat'/><bridge name='vbrpxe'/>
             <ip address='192.168.150.1' netmask='255.255.255.0'>
               <tftp root='{}'/>
               <dhcp><range start='192.168.150.10' end='192.168.150.50'/><bootp file='pxelinux.0'/></dhcp>
             </ip></network>",
            tftp.display()
        ),
    )
    .unwrap();
    ok(&server, &["net-define", network.to_str().unwrap()]);
    ok(&server, &["net-start", "pxe"]);
    Ok(PxeWorld {
        server,
        host,
        _dir: dir,
    })
}

#[test]
fn pxe_install_from_a_nat_networks_tftp_root() {
    let Some(kit) = media_or_skip() else { return };
    let world = match pxe_world(&kit) {
        Ok(world) => world,
        Err(missing) => {
            assert!(
                std::env::var_os("VIREO_GUEST_DIR").is_none(),
                "scripts/test runs as root: {missing}"
            );
            eprintln!("skipped: needs {missing}");
            return;
        }
    };
    let server = &world.server;
    // With --wait the gateway follows the install phase and starts the installed guest; the
    // console shows both meanwhile.
    let installed = install_at_a_terminal(
        server,
        "pxeguest",
        &install_args(
            "pxeguest",
            &["--pxe", "--network", "network=pxe", "--wait", "4"],
        ),
    );
    let marker_at = installed.find("VIREO-PXE-BOOTED-42");
    let restart_at = installed.find("starting the installed guest");
    assert!(marker_at.is_some() && marker_at < restart_at, "{installed}");
    assert_installed(server, "pxeguest");

    // A guest whose start fails after its volume and its port on the network were made:
    // both go, and so does its definition.
    let refused = fails(
        server,
        &install_args(
            "brokenguest",
            &[
                "--import",
                "--boot",
                "kernel=/nonexistent/vmlinuz",
                "--network",
                "network=pxe",
            ],
        ),
    );
    assert!(refused.contains("/nonexistent/vmlinuz"), "{refused}");
    assert_eq!(domains(server), ["pxeguest"]);
    assert_eq!(volumes(server), ["pxeguest.qcow2"]);
    let taps = world
        .host
        .ok("ip", &["-o", "link", "show", "master", "vbrpxe"]);
    assert!(taps.trim().is_empty(), "taps left on the network: {taps}");
}

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

    // A direct kernel boot is one phase; its XML defines as it is. A new volume is printed
    // where the pool will put it, and not created.
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
            "--disk",
            "pool=default,size=1",
            "--nonetworks",
            "--print-xml",
        ],
    );
    assert!(kernel.contains("images/kernelguest.qcow2'"), "{kernel}");
    // An existing image's format is read, not guessed from its name.
    let cloud_image = dir.path().join("cloudimg-amd64.img");
    vireo_tests::storage::run_tool_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            cloud_image.to_str().unwrap(),
            "16M",
        ],
    );
    let imported = ok(
        &server,
        &[
            "install",
            "--name",
            "cloudguest",
            "--memory",
            "64",
            "--import",
            "--disk",
            cloud_image.to_str().unwrap(),
            "--nonetworks",
            "--print-xml",
        ],
    );
    assert!(imported.contains("type='qcow2'"), "{imported}");

    // path= with size= is a new volume in the pool whose directory holds it.
    let in_pool = server.state_dir.join("images/named.img");
    let named = ok(
        &server,
        &[
            "install",
            "--name",
            "namedguest",
            "--memory",
            "64",
            "--import",
            "--disk",
            &format!("path={},size=0.01,format=raw,sparse=no", in_pool.display()),
            "--nonetworks",
            "--print-xml",
        ],
    );
    assert!(
        named.contains(&format!("<source file='{}'/>", in_pool.display()))
            && named.contains("type='raw'"),
        "{named}"
    );
    let file = dir.path().join("kernelguest.xml");
    std::fs::write(&file, &kernel).unwrap();
    ok(&server, &["define", file.to_str().unwrap()]);
    assert!(volumes(&server).is_empty());

    // A dry run places and checks everything, and creates nothing.
    // size= alone is a new volume in the `default` pool, as in virt-install.
    let new_disk = ["--disk", "size=0.01", "--nonetworks"];
    let checked = ok(
        &server,
        &[
            &[
                "install",
                "--name",
                "x",
                "--memory",
                "64",
                "--import",
                "--dry-run",
            ][..],
            &new_disk,
        ]
        .concat(),
    );
    assert!(checked.contains("nothing created"), "{checked}");

    // Refusals name what is wrong, and nothing more is defined or created.
    let guest_x =
        |more: &[&'static str]| [&["install", "--name", "x", "--memory", "64"][..], more].concat();
    let pool_disk = ["--disk", "pool=default,size=0.01"];
    for (args, expected) in [
        (
            guest_x(&["--cdrom", "/nonexistent.iso", "--nonetworks"]),
            "cdrom: `/nonexistent.iso` does not exist",
        ),
        (
            guest_x(&[&["--pxe", "--network", "network=nosuch"][..], &pool_disk].concat()),
            "networks[0]: network `nosuch` is not defined on host",
        ),
        (
            [
                &["install", "--name", "treeguest", "--memory", "64", "--pxe"][..],
                &new_disk,
            ]
            .concat(),
            "name: a domain `treeguest` already exists",
        ),
        (
            guest_x(
                &[
                    &["--pxe", "--nonetworks"][..],
                    &pool_disk,
                    &["--disk", "pool=default,size=100000"],
                ]
                .concat(),
            ),
            "disks[1].size_gib: 100000 GiB is more than pool `default` has free",
        ),
        (
            guest_x(&[
                "--import",
                "--nonetworks",
                "--disk",
                "path=/var/tmp/elsewhere.img,size=1",
            ]),
            "disks[0]: `/var/tmp` is not the directory of a storage pool",
        ),
        (
            guest_x(&["--pxe", "--nonetworks", "--console", "tcp,host=1.2.3.4"]),
            "--console: `tcp,host=1.2.3.4`",
        ),
        (guest_x(&["--import"]), "--import needs a --disk"),
        (
            guest_x(&["--location", "file:///srv/tree", "--nonetworks"]),
            "trees are fetched over http://",
        ),
        (
            guest_x(&[
                "--import",
                "--nonetworks",
                "--disk",
                "/images/x.img",
                "--print-xml",
                "2",
            ]),
            "--print-xml 2: this install boots one way throughout",
        ),
        (
            vec!["install", "--name", "x", "--pxe", "--os-variant", "beos5"],
            "os_variant: `beos5` is not known",
        ),
        (
            guest_x(&["--pxe", "--disk", "color=red"]),
            "--disk: unknown option `color`",
        ),
        (
            guest_x(&["--pxe", "--cdrom", "/a.iso"]),
            "give one of --cdrom, --location, --pxe, --import or --boot kernel=",
        ),
    ] {
        let refused = fails(&server, &args);
        assert!(refused.contains(expected), "{args:?}: {refused}");
    }
    assert_eq!(domains(&server), ["kernelguest", "treeguest"]);
    assert!(volumes(&server).is_empty(), "{:?}", volumes(&server));
}
