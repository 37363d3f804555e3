//! Domains end to end: vireod and vireo as users run them, guests on both engines (a Debian
//! kernel under QEMU TCG, the tiny guest on this host's KVM), definitions and guests that survive
//! kill -9 of the service, and the errors users see for bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vireo_proto::common::v1::{ObjectRef, object_ref::Key};
use vireo_proto::compute::v1 as pb;
use vireo_proto::compute::v1::domain_service_client::DomainServiceClient;
use vireo_tests::guests::{Console, counting_debian_xml, debian_kit, debian_xml};
use vireo_tests::{
    Netns, Server, binary, block_on, fails, kit_files, kvm_usable, ok, qemu_installed, skip,
    stderr, stdout, wait_until,
};

fn state(server: &Server, name: &str) -> String {
    ok(server, &["domstate", name, "--reason"])
        .trim()
        .to_string()
}

fn wait_state(server: &Server, name: &str, wanted: &str, deadline: Duration) {
    wait_until(deadline, &format!("{name} to be {wanted}"), || {
        (state(server, name) == wanted).then_some(())
    });
}

fn write_xml(dir: &Path, name: &str, xml: &str) -> String {
    let path = dir.join(format!("{name}.xml"));
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

/// `vireo event --loop` in the background, its lines collected as they come.
struct Events {
    child: Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Events {
    fn watch(server: &Server) -> Events {
        let mut child = Command::new(binary("vireo"))
            .arg("-c")
            .arg(format!("unix://{}", server.socket.display()))
            .args(["event", "--loop", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let collected = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                collected.lock().unwrap().push(line);
            }
        });
        // Let the subscription reach the service before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Events { child, seen }
    }

    /// The lines so far, once events have stopped arriving for a moment (an event can trail
    /// the state change a test waited for).
    fn lines(mut self) -> Vec<String> {
        let started = std::time::Instant::now();
        let mut count = usize::MAX;
        while started.elapsed() < Duration::from_secs(5) {
            let now = self.seen.lock().unwrap().len();
            if now == count {
                break;
            }
            count = now;
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen.lock().unwrap().clone()
    }
}

/// The tiny guest on this host's KVM, or what is missing.
fn tiny_kit() -> Result<std::path::PathBuf, String> {
    kvm_usable()?;
    kit_files(&["tiny.elf"])
}

/// vireod in a network namespace of the test's own, with a bridge `vtbr0` in it. The server
/// goes before the namespace (fields drop in order).
struct Bridged {
    server: Server,
    netns: Netns,
}

impl Bridged {
    fn start(tag: &str) -> Result<Bridged, String> {
        let netns = Netns::create(tag)?;
        let made = Command::new("ip")
            .args(["-n", &netns.0, "link", "add", "vtbr0", "type", "bridge"])
            .status();
        if !made.is_ok_and(|s| s.success()) {
            return Err("a bridge in a network namespace (ip link add type bridge)".into());
        }
        let server = Server::vireod_wrapped(&["ip", "netns", "exec", &netns.0]);
        Ok(Bridged { server, netns })
    }

    /// `ip -n NETNS ARGS`, its output.
    fn ip(&self, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.netns.0])
            .args(args)
            .output()
            .unwrap();
        stdout(&output)
    }
}

/// The host-side device of the interface with `mac` in `vireo domiflist` output.
fn tap_of(listed: &str, mac: &str) -> String {
    listed
        .lines()
        .find(|l| l.contains(mac))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no interface {mac}: {listed}"))
        .to_string()
}

fn tiny_xml(name: &str, kit: &Path, actions: &str, extra: &str) -> String {
    format!(
        "<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <os>
    <type>hvm</type>
    <kernel>{kernel}</kernel>
    <cmdline>console=ttyS0 tiny.test={actions}</cmdline>
  </os>
  {extra}
  <devices>
    <serial type='pty'/>
  </devices>
</domain>
",
        kernel = kit.join("tiny.elf").display(),
    )
}

/// The flow every engine goes through: define, start, console, suspend, resume, a graceful
/// shutdown the guest carries out, start again, destroy, undefine; with the events it publishes.
fn lifecycle(
    server: &Server,
    name: &str,
    xml_path: &str,
    ready: &str,
    powered_off: &str,
    boot: Duration,
) {
    let events = Events::watch(server);
    assert!(ok(server, &["define", xml_path]).contains(&format!("Domain '{name}' defined")));
    let listed = ok(server, &["list", "--all"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(name) && l.contains("shut off")),
        "{listed}"
    );
    assert_eq!(state(server, name), "shut off (unknown)");

    assert!(ok(server, &["start", name]).contains(&format!("Domain '{name}' started")));
    assert_eq!(state(server, name), "running (booted)");
    let id: i32 = ok(server, &["domid", name]).trim().parse().unwrap();
    assert!(id > 0);
    let console = Console::attach(server, name, false);
    console.wait_for(ready, boot);
    // A second client is refused while the first holds the console.
    let refused = fails(server, &["console", name]);
    assert!(refused.contains("in use by another client"), "{refused}");
    let seen = console.leave();
    assert!(
        seen.contains(&format!("Connected to domain '{name}'")),
        "{seen}"
    );

    ok(server, &["suspend", name]);
    assert_eq!(state(server, name), "paused (user)");
    let refused = fails(server, &["shutdown", name]);
    assert!(refused.contains("paused"), "{refused}");
    ok(server, &["resume", name]);
    assert_eq!(state(server, name), "running (unpaused)");

    // Graceful shutdown: the power button; the guest powers itself off.
    let console = Console::attach(server, name, false);
    assert!(ok(server, &["shutdown", name]).contains("is being shutdown"));
    wait_state(server, name, "shut off (shutdown)", Duration::from_secs(60));
    console.wait_for(powered_off, Duration::from_secs(5));
    let (clean, _) = console.wait_ended(Duration::from_secs(10));
    assert!(
        !clean,
        "the console session ends with an error when the guest stops"
    );
    assert_eq!(ok(server, &["domid", name]).trim(), "-");

    ok(server, &["start", name]);
    let second: i32 = ok(server, &["domid", name]).trim().parse().unwrap();
    assert!(second > id, "a new run gets a new id ({second} after {id})");
    let refused = fails(server, &["start", name]);
    assert!(refused.contains("already active"), "{refused}");
    assert!(ok(server, &["destroy", name]).contains("destroyed"));
    assert_eq!(state(server, name), "shut off (destroyed)");
    assert!(ok(server, &["undefine", name]).contains("has been undefined"));
    assert!(!ok(server, &["list", "--all"]).contains(name));
    assert!(
        std::fs::read_dir(server.run_dir.join("compute"))
            .unwrap()
            .next()
            .is_none(),
        "the run directory keeps nothing of a stopped guest"
    );

    let lines = events.lines();
    let expected = [
        "Defined Added",
        "Started Booted",
        "Suspended Paused",
        "Resumed Unpaused",
        "Shutdown Finished",
        "Stopped Shutdown",
        "Started Booted",
        "Stopped Destroyed",
        "Undefined Removed",
    ];
    let got: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("event 'lifecycle' for domain '{name}': ")))
        .collect();
    assert_eq!(got, expected, "events: {lines:?}");
}

#[test]
fn qemu_engine_runs_a_debian_guest_through_its_lifecycle() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(dir.path(), "debian", &debian_xml("debian", &kit));
    lifecycle(
        &server,
        "debian",
        &xml,
        "VIREO-GUEST-READY",
        "VIREO-POWER-BUTTON",
        Duration::from_secs(90),
    );
}

#[test]
fn vmm_engine_runs_the_tiny_guest_through_its_lifecycle() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(
        dir.path(),
        "tiny",
        &tiny_xml("tiny", &kit, "wait-shutdown", ""),
    );
    lifecycle(
        &server,
        "tiny",
        &xml,
        "TINY: waiting for shutdown request",
        "TINY: shutdown request",
        Duration::from_secs(10),
    );
}

#[test]
fn lifecycle_actions_apply_on_the_vmm_engine() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "reboots",
            "reset",
            "<on_reboot>destroy</on_reboot>",
            "shut off (shutdown)",
        ),
        ("crashes", "triple-fault", "", "shut off (crashed)"),
        (
            "keeps",
            "triple-fault",
            "<on_crash>preserve</on_crash>",
            "crashed (unknown)",
        ),
        ("poweroff", "poweroff", "", "shut off (shutdown)"),
    ];
    for (name, action, extra, expected) in cases {
        let xml = write_xml(dir.path(), name, &tiny_xml(name, &kit, action, extra));
        ok(&server, &["define", &xml]);
        ok(&server, &["start", name]);
        wait_state(&server, name, expected, Duration::from_secs(10));
    }
    // on_reboot=restart (the default): a reset starts the guest again with the same id.
    let xml = write_xml(
        dir.path(),
        "again",
        &tiny_xml("again", &kit, "wait-shutdown", ""),
    );
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "again"]);
    let id = ok(&server, &["domid", "again"]);
    ok(&server, &["reset", "again"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&server, "again"), "running (booted)");
    assert_eq!(ok(&server, &["domid", "again"]), id);
    // virsh reboot: the guest powers off on the button and is started again.
    ok(&server, &["reboot", "again"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&server, "again"), "running (booted)");
    ok(&server, &["destroy", "again"]);
}

#[test]
fn guests_and_consoles_survive_kill_9_of_vireod() {
    if let Err(needs) = kvm_usable() {
        skip!("needs {needs}");
    }
    let kit = match kit_files(&["tiny.elf", "vmlinuz", "initramfs.cpio.gz"]) {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let with_qemu = qemu_installed().is_ok();
    let mut server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let tiny = write_xml(
        dir.path(),
        "tiny",
        &tiny_xml("tiny", &kit, "wait-shutdown", ""),
    );
    ok(&server, &["define", &tiny]);
    ok(&server, &["start", "tiny"]);
    if with_qemu {
        let debian = write_xml(dir.path(), "debian", &debian_xml("debian", &kit));
        ok(&server, &["define", &debian]);
        ok(&server, &["start", "debian"]);
    }
    let before = ok(&server, &["list"]);
    let pids = server.guest_pids();
    assert_eq!(pids.len(), if with_qemu { 2 } else { 1 });

    server.kill9();
    for pid in &pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "guest process {pid} died with the service"
        );
    }
    server.restart();
    assert_eq!(
        ok(&server, &["list"]),
        before,
        "same guests, same ids, same states"
    );
    // The console still works: the tiny guest's output is there, and it still takes the button.
    let console = Console::attach(&server, "tiny", false);
    console.wait_for("TINY: waiting for shutdown request", Duration::from_secs(5));
    ok(&server, &["shutdown", "tiny"]);
    wait_state(
        &server,
        "tiny",
        "shut off (shutdown)",
        Duration::from_secs(10),
    );
    console.wait_ended(Duration::from_secs(5));
    if with_qemu {
        // QMP answers again after the restart.
        ok(&server, &["suspend", "debian"]);
        assert_eq!(state(&server, "debian"), "paused (user)");
        ok(&server, &["destroy", "debian"]);
    }
    assert!(server.guest_pids().is_empty());
}

fn object(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        key: Some(Key::Name(name.to_string())),
    })
}

#[test]
fn definitions_survive_kill_9_during_define_and_undefine() {
    let mut server = Server::vireod();
    let names: Vec<String> = (0..4).map(|i| format!("d{i}")).collect();
    // What each name's last acknowledged operation left: defined or not.
    let mut acknowledged: std::collections::BTreeMap<String, bool> =
        std::collections::BTreeMap::new();
    let rounds = 25;
    let mut interrupted = 0;
    for round in 0..rounds {
        let log: Arc<Mutex<Vec<(String, bool, bool)>>> = Arc::new(Mutex::new(Vec::new()));
        let socket = server.socket.clone();
        let worker_log = log.clone();
        let worker_names = names.clone();
        let worker = std::thread::spawn(move || {
            block_on(async move {
                let Ok(channel) = vireo_runtime::client::connect_unix(&socket).await else {
                    return;
                };
                let mut client = DomainServiceClient::new(channel);
                for step in 0u64.. {
                    let name = &worker_names[usize::try_from(step % 4).unwrap()];
                    let define = (step / 4) % 2 == 0;
                    worker_log
                        .lock()
                        .unwrap()
                        .push((name.clone(), define, false));
                    let result = if define {
                        let xml = format!(
                            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><description>{}</description></domain>",
                            "x".repeat(usize::try_from(step % 2000).unwrap())
                        );
                        client
                            .define_domain(pb::DefineDomainRequest {
                                source: Some(pb::define_domain_request::Source::Xml(xml)),
                                ..Default::default()
                            })
                            .await
                            .map(drop)
                    } else {
                        client
                            .undefine_domain(pb::UndefineDomainRequest {
                                domain: object(name),
                                ..Default::default()
                            })
                            .await
                            .map(drop)
                    };
                    match result {
                        Ok(()) => worker_log.lock().unwrap().last_mut().unwrap().2 = true,
                        Err(status) if status.code() == tonic::Code::NotFound => {
                            worker_log.lock().unwrap().last_mut().unwrap().2 = true;
                        }
                        Err(_) => return,
                    }
                }
            });
        });
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 90));
        server.kill9();
        worker.join().unwrap();
        let log = log.lock().unwrap().clone();
        let mut in_flight = None;
        for (name, define, acked) in &log {
            if *acked {
                acknowledged.insert(name.clone(), *define);
            } else {
                in_flight = Some(name.clone());
            }
        }
        if in_flight.is_some() {
            interrupted += 1;
        }
        server.restart();
        let listed = ok(&server, &["list", "--all", "--name"]);
        for name in &names {
            let present = listed.lines().any(|l| l.trim() == name);
            if in_flight.as_ref() != Some(name) {
                let expected = acknowledged.get(name).copied().unwrap_or(false);
                assert_eq!(present, expected, "round {round}: {name} after kill -9");
            }
            if present {
                // Whole, not torn: it dumps and parses.
                let xml = ok(&server, &["dumpxml", name]);
                assert!(xml.contains(&format!("<name>{name}</name>")), "{xml}");
            }
            if in_flight.as_ref() == Some(name) {
                acknowledged.insert(name.clone(), present);
            }
        }
        let domains = server.state_dir.join("compute/domains");
        for entry in std::fs::read_dir(&domains).unwrap().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            assert!(
                file.ends_with(".xml"),
                "left in {}: {file}",
                domains.display()
            );
        }
    }
    eprintln!("{rounds} kills, {interrupted} with an operation in flight");
}

#[test]
fn fifty_domains_defined_and_ten_running() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..50 {
        let name = format!("g{i:02}");
        let xml = write_xml(
            dir.path(),
            &name,
            &tiny_xml(&name, &kit, "wait-shutdown", ""),
        );
        ok(&server, &["define", &xml]);
    }
    let count = |args: &[&str]| {
        ok(&server, args)
            .lines()
            .filter(|l| l.trim().starts_with('g'))
            .count()
    };
    assert_eq!(count(&["list", "--all", "--name"]), 50);
    for i in 0..10 {
        ok(&server, &["start", &format!("g{i:02}")]);
        let listed = ok(&server, &["list"]);
        assert_eq!(
            listed.lines().filter(|l| l.contains("running")).count(),
            i + 1,
            "{listed}"
        );
        assert_eq!(count(&["list", "--inactive", "--name"]), 50 - (i + 1));
    }
    assert_eq!(server.guest_pids().len(), 10);
    let listed = ok(&server, &["list", "--all"]);
    assert_eq!(
        listed.lines().filter(|l| l.contains(" g")).count(),
        50,
        "{listed}"
    );
    for i in 0..10 {
        ok(&server, &["destroy", &format!("g{i:02}")]);
    }
    assert_eq!(count(&["list", "--name"]), 0);
}

#[test]
fn bad_input_gets_errors_that_name_what_is_wrong() {
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let bad = write_xml(
        dir.path(),
        "bad",
        "<domain type='kvm'><name>x</name><memory>",
    );
    assert!(fails(&server, &["define", &bad]).contains("xml: <memory> is not closed"));
    let huge = write_xml(
        dir.path(),
        "huge",
        "<domain type='kvm'><name>huge</name><memory unit='KiB'>9223372036854775808</memory></domain>",
    );
    assert!(
        fails(&server, &["define", &huge])
            .contains("domain/memory: 9223372036854775808 KiB is more than")
    );
    let sound = write_xml(
        dir.path(),
        "sound",
        "<domain type='qemu'><name>s</name><memory>65536</memory><devices><sound model='ich6'/></devices></domain>",
    );
    assert!(fails(&server, &["define", &sound]).contains("<sound> is not supported by Vireo"));
    let dots = write_xml(
        dir.path(),
        "dots",
        "<domain type='qemu'><name>d</name><memory>65536</memory><os><type>hvm</type><kernel>/boot/../etc/shadow</kernel></os></domain>",
    );
    assert!(fails(&server, &["define", &dots]).contains("must not contain '..'"));
    assert!(fails(&server, &["start", "nosuch"]).contains("no such domain"));
    assert!(fails(&server, &["dominfo", "nosuch"]).contains("no such domain"));
    assert!(
        ok(&server, &["list", "--all", "--name"]).trim().is_empty(),
        "nothing half-created"
    );

    // A guest whose engine cannot start leaves nothing running and says why.
    let broken = write_xml(
        dir.path(),
        "broken",
        "<domain type='qemu'><name>broken</name><memory unit='MiB'>64</memory><os><type>hvm</type><kernel>/nonexistent/vmlinuz</kernel></os><devices><serial type='pty'/></devices></domain>",
    );
    ok(&server, &["define", &broken]);
    if qemu_installed().is_ok() {
        let error = fails(&server, &["start", "broken"]);
        assert!(error.contains("QEMU did not start the guest"), "{error}");
        assert!(error.contains("/nonexistent/vmlinuz"), "{error}");
        assert_eq!(state(&server, "broken"), "shut off (failed)");
        assert!(server.guest_pids().is_empty());
    }
    // Same name, another UUID: refused.
    let twin = write_xml(
        dir.path(),
        "twin",
        "<domain type='qemu'><name>broken</name><uuid>11111111-2222-4333-8444-555555555555</uuid><memory>65536</memory></domain>",
    );
    assert!(fails(&server, &["define", &twin]).contains("already exists"));
    // The vmm engine names what it cannot run.
    let graphics = write_xml(
        dir.path(),
        "gfx",
        "<domain type='kvm'><name>gfx</name><memory unit='MiB'>64</memory><os><type>hvm</type><kernel>/boot/vmlinuz</kernel></os><devices><graphics type='vnc'/></devices><vireo:engine xmlns:vireo='urn:x-vireo:xmlns:1'>vmm</vireo:engine></domain>",
    );
    ok(&server, &["define", &graphics]);
    let error = fails(&server, &["start", "gfx"]);
    assert!(
        error.contains("the vmm engine cannot run <graphics>")
            || error.contains("vmm engine is unavailable"),
        "{error}"
    );
    assert!(server.guest_pids().is_empty());
}

#[test]
fn inspection_and_tuning_of_a_running_tiny_guest() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let xml = tiny_xml("t", &kit, "wait-shutdown", "<vcpu>2</vcpu>").replace(
        "<serial type='pty'/>",
        &format!(
            "<serial type='pty'/><disk type='file'><source file='{}'/><target dev='vda'/></disk>",
            disk.display()
        ),
    );
    let xml = write_xml(dir.path(), "t", &xml);
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "t"]);

    let info = ok(&server, &["dominfo", "t"]);
    for line in [
        "State:          running",
        "CPU(s):         2",
        "Max memory:     32768 KiB",
        "Engine:         vmm",
    ] {
        assert!(info.contains(line), "{info}");
    }
    let vcpus = ok(&server, &["vcpuinfo", "t"]);
    assert_eq!(vcpus.matches("VCPU:").count(), 2, "{vcpus}");
    ok(&server, &["vcpupin", "t", "1", "0"]);
    let pins = ok(&server, &["vcpupin", "t"]);
    assert!(
        pins.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "0"]),
        "{pins}"
    );
    assert!(ok(&server, &["dumpxml", "t"]).contains("<vcpupin vcpu='1' cpuset='0'/>"));

    let blocks = ok(&server, &["domblklist", "t"]);
    assert!(
        blocks.contains(&format!("vda      {}", disk.display())),
        "{blocks}"
    );
    let stats = ok(&server, &["domblkstat", "t", "vda"]);
    assert!(stats.contains("vda rd_req "), "{stats}");
    ok(&server, &["setmem", "t", "16M"]);
    let memory = ok(&server, &["dommemstat", "t"]);
    assert!(
        memory.contains("actual ") && memory.contains("rss "),
        "{memory}"
    );
    assert!(
        ok(&server, &["dumpxml", "t"]).contains("<currentMemory unit='KiB'>16384</currentMemory>")
    );
    assert!(fails(&server, &["setmem", "t", "1G"]).contains("more than the domain's maximum"));

    // Devices: the persistent definition always; live changes are refused by name.
    let extra = dir.path().join("extra.img");
    std::fs::write(&extra, b"").unwrap();
    let live = fails(
        &server,
        &["attach-disk", "t", &extra.display().to_string(), "vdb"],
    );
    assert!(live.contains("not supported by the vmm engine"), "{live}");
    ok(
        &server,
        &[
            "attach-disk",
            "t",
            &extra.display().to_string(),
            "vdb",
            "--config",
        ],
    );
    assert!(ok(&server, &["domblklist", "t", "--inactive"]).contains("vdb"));
    assert!(!ok(&server, &["domblklist", "t"]).contains("vdb"));
    ok(
        &server,
        &[
            "attach-interface",
            "t",
            "bridge",
            "br0",
            "--mac",
            "52:54:00:aa:bb:cc",
            "--config",
        ],
    );
    let interfaces = ok(&server, &["domiflist", "t", "--inactive"]);
    assert!(
        interfaces.contains("bridge") && interfaces.contains("52:54:00:aa:bb:cc"),
        "{interfaces}"
    );
    ok(
        &server,
        &[
            "detach-interface",
            "t",
            "bridge",
            "--mac",
            "52:54:00:aa:bb:cc",
            "--config",
        ],
    );
    ok(&server, &["detach-disk", "t", "vdb", "--config"]);
    assert!(!ok(&server, &["domblklist", "t", "--inactive"]).contains("vdb"));
    let live = fails(&server, &["setvcpus", "t", "1", "--live"]);
    assert!(live.contains("not supported by the vmm engine"), "{live}");
    ok(&server, &["setvcpus", "t", "1", "--config"]);
    assert!(ok(&server, &["dumpxml", "t", "--inactive"]).contains("current='1'"));
    ok(&server, &["setmaxmem", "t", "64M", "--config"]);
    assert!(
        ok(&server, &["dumpxml", "t", "--inactive"]).contains("<memory unit='KiB'>65536</memory>")
    );

    ok(&server, &["autostart", "t"]);
    assert!(ok(&server, &["list", "--autostart", "--name"]).contains('t'));
    assert!(ok(&server, &["dominfo", "t"]).contains("Autostart:      enable"));
    let uuid = ok(&server, &["domuuid", "t"]);
    assert_eq!(ok(&server, &["domname", uuid.trim()]).trim(), "t");
    ok(&server, &["destroy", "t"]);
}

#[test]
fn autostart_domains_start_with_the_service() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let mut server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(
        dir.path(),
        "auto",
        &tiny_xml("auto", &kit, "wait-shutdown", ""),
    );
    ok(&server, &["define", &xml]);
    ok(&server, &["autostart", "auto"]);
    assert_eq!(
        server
            .terminate(Duration::from_secs(10))
            .map(|s| s.success()),
        Some(true)
    );
    server.restart();
    assert_eq!(state(&server, "auto"), "running (booted)");
    ok(&server, &["autostart", "auto", "--disable"]);
    ok(&server, &["destroy", "auto"]);
}

#[test]
fn qemu_engine_attaches_a_disk_live_and_dumps_guest_memory() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(dir.path(), "hot", &debian_xml("hot", &kit));
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "hot"]);
    let mut console = Console::attach(&server, "hot", false);
    console.wait_for("VIREO-GUEST-READY", Duration::from_secs(90));

    let image = dir.path().join("hot.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let image = image.display().to_string();
    ok(
        &server,
        &["attach-disk", "hot", &image, "vdb", "--persistent"],
    );
    assert!(ok(&server, &["domblklist", "hot"]).contains("vdb"));
    assert!(ok(&server, &["domblklist", "hot", "--inactive"]).contains("vdb"));
    // The guest sees an 8 MiB virtio disk (16384 sectors): typed on its console, answered there.
    console.wait_for("16384 512-byte logical blocks", Duration::from_secs(30));
    console.wait_for("/ # ", Duration::from_secs(30));
    console.type_text("echo SIZE=$(cat /sys/block/vda/size)\n");
    console.wait_for("SIZE=16384", Duration::from_secs(30));

    // A live change is held to the rules of a definition: no `..` in a path.
    let refused = fails(
        &server,
        &["attach-disk", "hot", "/tmp/../etc/passwd", "vdc", "--live"],
    );
    assert!(refused.contains("must not contain '..'"), "{refused}");
    assert!(!ok(&server, &["domblklist", "hot"]).contains("vdc"));
    ok(&server, &["detach-disk", "hot", "vdb", "--persistent"]);
    assert!(!ok(&server, &["domblklist", "hot"]).contains("vdb"));
    assert!(!ok(&server, &["domblklist", "hot", "--inactive"]).contains("vdb"));

    let core = dir.path().join("core.elf");
    ok(
        &server,
        &["dump", "hot", &core.display().to_string(), "--memory-only"],
    );
    let mut magic = [0u8; 4];
    std::fs::File::open(&core)
        .unwrap()
        .read_exact(&mut magic)
        .unwrap();
    assert_eq!(&magic, b"\x7fELF", "the dump is an ELF core");
    assert!(
        std::fs::metadata(&core).unwrap().len() > 256 << 20,
        "it holds the guest's 256 MiB"
    );
    console.leave();
    ok(&server, &["destroy", "hot"]);
}

#[test]
fn cgroups_carry_cpu_and_memory_tuning() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let cpu_root = Path::new("/sys/fs/cgroup/cpu");
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !cpu_root.join("cpu.shares").exists() && !unified {
        skip!("needs a cgroup v1 cpu hierarchy or cgroup v2 at /sys/fs/cgroup");
    }
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let tune = "<cputune><shares>512</shares><quota>50000</quota></cputune>\
                <memtune><hard_limit unit='MiB'>256</hard_limit></memtune>\
                <memoryBacking><nosharepages/></memoryBacking>";
    let xml = write_xml(
        dir.path(),
        "tuned",
        &tiny_xml("tuned", &kit, "wait-shutdown", tune),
    );
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "tuned"]);
    let uuid = ok(&server, &["domuuid", "tuned"]).trim().to_string();
    let pid = server.guest_pids()[0];
    let (cpu_dir, memory_dir) = if unified {
        let dir = Path::new("/sys/fs/cgroup/vireo").join(&uuid);
        (dir.clone(), dir)
    } else {
        (
            cpu_root.join("vireo").join(&uuid),
            Path::new("/sys/fs/cgroup/memory/vireo").join(&uuid),
        )
    };
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    assert!(
        read(cpu_dir.join("cgroup.procs"))
            .lines()
            .any(|l| l == pid.to_string())
    );
    let info = ok(&server, &["schedinfo", "tuned"]);
    assert!(
        info.contains("cpu_shares     : 512") && info.contains("vcpu_quota     : 50000"),
        "{info}"
    );
    let memory = ok(&server, &["memtune", "tuned"]);
    assert!(memory.contains("hard_limit     : 262144"), "{memory}");
    if !unified {
        assert_eq!(read(cpu_dir.join("cpu.shares")).trim(), "512");
        assert_eq!(
            read(memory_dir.join("memory.limit_in_bytes")).trim(),
            (256u64 << 20).to_string()
        );
    }
    // Live changes reach the cgroup; --config reaches the definition.
    ok(
        &server,
        &["schedinfo", "tuned", "--set", "cpu_shares=2048", "--live"],
    );
    assert!(ok(&server, &["schedinfo", "tuned"]).contains("cpu_shares     : 2048"));
    let huge = fails(&server, &["memtune", "tuned", "--hard-limit", "20T"]);
    assert!(
        huge.contains("params/hard_limit: 21474836480 KiB is more than Vireo supports"),
        "{huge}"
    );
    ok(
        &server,
        &["memtune", "tuned", "--hard-limit", "128M", "--config"],
    );
    assert!(
        ok(&server, &["dumpxml", "tuned", "--inactive"])
            .contains("<hard_limit unit='KiB'>131072</hard_limit>")
    );
    let stats = ok(&server, &["cpu-stats", "tuned", "--total"]);
    assert!(stats.contains("cpu_time"), "{stats}");
    let domstats = ok(&server, &["domstats", "tuned"]);
    assert!(
        domstats.contains("state.state=1") && domstats.contains("vcpu.maximum=1"),
        "{domstats}"
    );
    ok(&server, &["destroy", "tuned"]);
    assert!(!cpu_dir.exists(), "the cgroup goes with the guest");
}

fn counts(text: &str) -> Vec<u64> {
    text.split("count=")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn snapshots_of_a_running_vmm_guest_take_it_back_in_time() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(
        dir.path(),
        "cnt",
        &tiny_xml("cnt", &kit, "counter tiny.count_shift=16", ""),
    );
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "cnt"]);
    let console = Console::attach(&server, "cnt", false);
    console.wait_for("count=", Duration::from_secs(10));
    ok(
        &server,
        &[
            "snapshot-create-as",
            "cnt",
            "--name",
            "s1",
            "--description",
            "first",
        ],
    );
    let id = ok(&server, &["domid", "cnt"]);
    // The guest goes on counting in a new vireo-vmm process, same domain id.
    let (_, _) = console.wait_ended(Duration::from_secs(10));
    let console = Console::attach(&server, "cnt", false);
    console.wait_for("count=", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(800));
    let after = *counts(&console.leave()).last().unwrap();
    assert_eq!(ok(&server, &["domid", "cnt"]), id);
    let listed = ok(&server, &["snapshot-list", "cnt"]);
    assert!(
        listed.contains(" s1 ") && listed.contains("running"),
        "{listed}"
    );
    let xml = ok(&server, &["snapshot-dumpxml", "cnt", "s1"]);
    for part in [
        "<name>s1</name>",
        "<description>first</description>",
        "<memory snapshot='external'",
        "<name>cnt</name>",
    ] {
        assert!(xml.contains(part), "{xml}");
    }

    ok(&server, &["snapshot-revert", "cnt", "s1"]);
    assert_eq!(state(&server, "cnt"), "running (from snapshot)");
    let console = Console::attach(&server, "cnt", false);
    console.wait_for("count=", Duration::from_secs(10));
    let first_after_revert = counts(&console.leave())[0];
    assert!(
        first_after_revert < after,
        "after the revert the count starts again from the snapshot ({first_after_revert} < {after})"
    );
    // A domain with snapshots is not undefined by accident.
    ok(&server, &["destroy", "cnt"]);
    assert!(fails(&server, &["undefine", "cnt"]).contains("has snapshots"));
    assert!(ok(&server, &["snapshot-delete", "cnt", "--current"]).contains("s1 deleted"));
    ok(&server, &["undefine", "cnt"]);
}

#[test]
fn snapshots_of_a_qemu_guest_live_in_its_qcow2_disk() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .unwrap();
    assert!(created.success());
    let raw = dir.path().join("raw.img");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let with_disk = |name: &str, path: &Path, format: &str| {
        counting_debian_xml(name, &kit).replace(
            "<serial type='pty'/>",
            &format!(
                "<serial type='pty'/><disk type='file'><driver name='qemu' type='{format}'/><source file='{}'/><target dev='vda'/></disk>",
                path.display()
            ),
        )
    };
    let xml = write_xml(dir.path(), "qs", &with_disk("qs", &disk, "qcow2"));
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "qs"]);
    let console = Console::attach(&server, "qs", false);
    console.wait_for("N=5\r\n", Duration::from_secs(90));
    ok(&server, &["snapshot-create-as", "qs", "--name", "live"]);
    let at_snapshot = console.last_count();
    // Let the guest count on, then take it back to the snapshot: it counts from there again.
    wait_until(Duration::from_secs(60), "the guest to count on", || {
        (console.last_count() >= at_snapshot + 10).then_some(())
    });
    let before_revert = console.last_count();
    let mark = console.mark();
    ok(&server, &["snapshot-revert", "qs", "live"]);
    assert_eq!(state(&server, "qs"), "running (from snapshot)");
    let first = wait_until(Duration::from_secs(60), "a count after the revert", || {
        console.counts_since(mark).first().copied()
    });
    assert!(
        first <= at_snapshot + 2 && first < before_revert,
        "after the revert the guest counts from the snapshot ({first}; {at_snapshot} at the snapshot, {before_revert} before the revert)"
    );
    console.leave();

    ok(&server, &["destroy", "qs"]);
    // Reverting a shut-off domain to a running snapshot starts it from there.
    ok(&server, &["snapshot-revert", "qs", "live"]);
    assert_eq!(state(&server, "qs"), "running (from snapshot)");
    ok(&server, &["destroy", "qs"]);
    // Taken while shut off: disks only, by qemu-img.
    ok(&server, &["snapshot-create-as", "qs", "--name", "off"]);
    let images = Command::new("qemu-img")
        .args(["snapshot", "-l"])
        .arg(&disk)
        .output()
        .unwrap();
    let images = stdout(&images);
    assert!(
        images.contains("live") && images.contains("off"),
        "{images}"
    );
    let listed = ok(&server, &["snapshot-list", "qs"]);
    assert!(listed.contains("shut off"), "{listed}");
    ok(&server, &["snapshot-delete", "qs", "off"]);
    ok(&server, &["snapshot-delete", "qs", "live"]);
    let images = Command::new("qemu-img")
        .args(["snapshot", "-l"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(stdout(&images).trim().is_empty(), "{}", stdout(&images));

    // A writable raw disk cannot hold a snapshot: refused by name.
    let xml = write_xml(dir.path(), "rawdisk", &with_disk("rawdisk", &raw, "raw"));
    ok(&server, &["define", &xml]);
    let refused = fails(&server, &["snapshot-create-as", "rawdisk", "--name", "x"]);
    assert!(
        refused.contains("disk vda is writable and not qcow2"),
        "{refused}"
    );
}

#[test]
fn save_restore_and_managed_save_on_both_engines() {
    if let Err(needs) = kvm_usable() {
        skip!("needs {needs}");
    }
    let kit = match kit_files(&["tiny.elf", "vmlinuz", "initramfs.cpio.gz"]) {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();

    // vmm: the counter goes on from where it was saved.
    let xml = write_xml(
        dir.path(),
        "cnt",
        &tiny_xml("cnt", &kit, "counter tiny.count_shift=16", ""),
    );
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "cnt"]);
    let console = Console::attach(&server, "cnt", false);
    console.wait_for("count=", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let image = dir.path().join("cnt.save").display().to_string();
    ok(&server, &["save", "cnt", &image]);
    let (_, _) = console.wait_ended(Duration::from_secs(10));
    assert_eq!(state(&server, "cnt"), "shut off (saved)");
    ok(&server, &["restore", &image]);
    assert_eq!(state(&server, "cnt"), "running (restored)");
    let console = Console::attach(&server, "cnt", false);
    console.wait_for("count=", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let restored = counts(&console.leave());
    assert!(
        restored[0] > 0,
        "the count continues after restore: {restored:?}"
    );
    // Managed save: the next start resumes, and the image is used up.
    ok(&server, &["managedsave", "cnt"]);
    assert!(ok(&server, &["dominfo", "cnt"]).contains("Managed save:   yes"));
    ok(&server, &["start", "cnt"]);
    assert_eq!(state(&server, "cnt"), "running (restored)");
    assert!(ok(&server, &["dominfo", "cnt"]).contains("Managed save:   no"));
    ok(&server, &["destroy", "cnt"]);
    // --force-boot discards a managed image and boots fresh.
    ok(&server, &["start", "cnt"]);
    ok(&server, &["managedsave", "cnt"]);
    ok(&server, &["start", "cnt", "--force-boot"]);
    assert_eq!(state(&server, "cnt"), "running (booted)");
    assert!(ok(&server, &["dominfo", "cnt"]).contains("Managed save:   no"));
    ok(&server, &["destroy", "cnt"]);
    assert!(
        fails(&server, &["restore", "/nonexistent/image"])
            .contains("not a save image this host wrote")
    );

    // qemu: the guest's memory comes back (a file in its tmpfs).
    if qemu_installed().is_err() {
        return;
    }
    let xml = write_xml(dir.path(), "deb", &counting_debian_xml("deb", &kit));
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "deb"]);
    let console = Console::attach(&server, "deb", false);
    console.wait_for("N=10\r\n", Duration::from_secs(90));
    let image = dir.path().join("deb.save").display().to_string();
    ok(&server, &["save", "deb", &image]);
    let saved_at = console.last_count();
    console.wait_ended(Duration::from_secs(10));
    assert_eq!(state(&server, "deb"), "shut off (saved)");
    ok(&server, &["restore", &image]);
    assert_eq!(state(&server, "deb"), "running (restored)");
    // The guest goes on counting from where it was saved; a fresh boot would start at 0.
    let console = Console::attach(&server, "deb", false);
    let first = wait_until(Duration::from_secs(60), "a count after the restore", || {
        console.counts_since(0).first().copied()
    });
    assert!(
        first >= saved_at,
        "restored at {first}, saved at {saved_at}"
    );
    console.leave();
    ok(&server, &["destroy", "deb"]);
}

#[test]
fn qemu_engine_places_disks_on_every_bus_and_emulated_devices() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let mut devices = String::new();
    for (target, bus, device) in [
        ("hda", "ide", "disk"),
        ("hdc", "ide", "cdrom"),
        ("sda", "sata", "disk"),
        ("sdb", "scsi", "disk"),
        ("fda", "fdc", "floppy"),
    ] {
        let image = dir.path().join(format!("{target}.img"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(1_474_560)
            .unwrap();
        devices.push_str(&format!(
            "<disk type='file' device='{device}'><source file='{}'/><target dev='{target}' bus='{bus}'/></disk>",
            image.display()
        ));
    }
    devices.push_str(
        "<disk type='file' device='cdrom'><target dev='hdd' bus='ide'/></disk>\
         <interface type='user'><model type='e1000'/></interface>\
         <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
         <input type='tablet' bus='usb'/><video><model type='cirrus'/></video>\
         <graphics type='vnc' autoport='yes'/>",
    );
    let xml = debian_xml("buses", &kit).replace(
        "<serial type='pty'/>",
        &format!("<serial type='pty'/>{devices}"),
    );
    let xml = write_xml(dir.path(), "buses", &xml);
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "buses"]);
    // QEMU holds each drive where the definition put it: it counts I/O for every one.
    for target in ["hda", "hdc", "sda", "sdb", "fda", "hdd"] {
        let stats = ok(&server, &["domblkstat", "buses", target]);
        assert!(stats.contains(&format!("{target} rd_req ")), "{stats}");
    }
    let live = ok(&server, &["dumpxml", "buses"]);
    assert!(
        live.contains("<graphics type='vnc' port='59"),
        "the VNC port QEMU took: {live}"
    );
    let interfaces = ok(&server, &["domiflist", "buses"]);
    assert!(
        interfaces.contains("user") && interfaces.contains("e1000"),
        "{interfaces}"
    );
    ok(&server, &["destroy", "buses"]);
}

#[test]
fn a_bridge_interface_gets_a_tap_on_the_bridge_for_the_guests_life() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    // The service runs in a network namespace of the test's own, with a bridge in it.
    let bridged = match Bridged::start("br") {
        Ok(bridged) => bridged,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = &bridged.server;
    let bridge = "vtbr0";
    let dir = tempfile::tempdir().unwrap();
    let xml = tiny_xml("nic", &kit, "wait-shutdown", "").replace(
        "<serial type='pty'/>",
        &format!(
            "<serial type='pty'/><interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='{bridge}'/></interface>"
        ),
    );
    let xml = write_xml(dir.path(), "nic", &xml);
    ok(server, &["define", &xml]);
    ok(server, &["start", "nic"]);
    let tap = tap_of(&ok(server, &["domiflist", "nic"]), "52:54:00:12:34:56");
    let on_bridge = bridged.ip(&["-o", "link", "show", "master", bridge]);
    assert!(on_bridge.contains(&tap), "{tap} on {bridge}: {on_bridge}");
    let stats = ok(server, &["domifstat", "nic", &tap]);
    assert!(stats.contains(&format!("{tap} rx_bytes ")), "{stats}");
    ok(server, &["destroy", "nic"]);
    let left = bridged.ip(&["-o", "link"]);
    assert!(!left.contains(&tap), "the tap goes with the guest: {left}");
    // A bridge that does not exist is named, and nothing starts.
    let missing = write_xml(
        dir.path(),
        "nobr",
        &tiny_xml("nobr", &kit, "wait-shutdown", "").replace(
            "<serial type='pty'/>",
            "<serial type='pty'/><interface type='bridge'><source bridge='nosuchbr0'/></interface>",
        ),
    );
    ok(server, &["define", &missing]);
    assert!(fails(server, &["start", "nobr"]).contains("bridge 'nosuchbr0' does not exist"));
    assert!(server.guest_pids().is_empty());
}

#[test]
fn a_direct_interface_is_a_macvtap_qemu_holds_open() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let guard = match Netns::create("mv") {
        Ok(netns) => netns,
        Err(needs) => skip!("needs {needs}"),
    };
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let netns = guard.0.clone();
    assert!(ip(&[
        "-n", &netns, "link", "add", "uplink0", "type", "veth", "peer", "name", "peer0"
    ]));
    assert!(ip(&["-n", &netns, "link", "set", "uplink0", "up"]));
    let server = Server::vireod_wrapped(&["ip", "netns", "exec", &netns]);
    let dir = tempfile::tempdir().unwrap();
    let xml = debian_xml("mv", &kit).replace(
        "<serial type='pty'/>",
        "<serial type='pty'/><interface type='direct'><mac address='52:54:00:ab:cd:ef'/><source dev='uplink0' mode='bridge'/><model type='virtio'/></interface>",
    );
    let xml = write_xml(dir.path(), "mv", &xml);
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "mv"]);
    let interfaces = ok(&server, &["domiflist", "mv"]);
    let tap = interfaces
        .lines()
        .find(|l| l.contains("52:54:00:ab:cd:ef"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{interfaces}"))
        .to_string();
    assert!(
        interfaces.contains("direct") && interfaces.contains("uplink0"),
        "{interfaces}"
    );
    let link = Command::new("ip")
        .args(["-n", &netns, "-d", "link", "show", &tap])
        .output()
        .unwrap();
    let link = stdout(&link);
    assert!(
        link.contains("macvtap") && link.contains("mode bridge"),
        "{link}"
    );
    assert!(
        link.contains("52:54:00:ab:cd:ef"),
        "the macvtap has the guest's MAC: {link}"
    );
    ok(&server, &["destroy", "mv"]);
    let left = Command::new("ip")
        .args(["-n", &netns, "-o", "link"])
        .output()
        .unwrap();
    assert!(!stdout(&left).contains(&tap), "{}", stdout(&left));
}

#[test]
fn qemu_engine_plugs_vcpus_in_and_out_live() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = debian_xml("cpus", &kit).replace("<vcpu>1</vcpu>", "<vcpu current='1'>3</vcpu>");
    let xml = write_xml(dir.path(), "cpus", &xml);
    ok(&server, &["define", &xml]);
    ok(&server, &["start", "cpus"]);
    let mut console = Console::attach(&server, "cpus", false);
    console.wait_for("VIREO-GUEST-READY", Duration::from_secs(90));
    console.wait_for("/ # ", Duration::from_secs(30));
    ok(&server, &["setvcpus", "cpus", "3", "--live"]);
    assert!(ok(&server, &["dominfo", "cpus"]).contains("CPU(s):         3"));
    assert_eq!(
        ok(&server, &["vcpuinfo", "cpus"]).matches("VCPU:").count(),
        3
    );
    // The guest sees them: Linux makes a sysfs entry per hot-added CPU.
    console.type_text("echo CPUS=$(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l)\n");
    console.wait_for("CPUS=3", Duration::from_secs(30));
    ok(&server, &["setvcpus", "cpus", "1", "--live"]);
    assert!(ok(&server, &["dominfo", "cpus"]).contains("CPU(s):         1"));
    assert!(fails(&server, &["setvcpus", "cpus", "4", "--live"]).contains("must be 1-3"));
    console.leave();
    ok(&server, &["destroy", "cpus"]);
}

#[test]
fn serial_ports_go_to_the_file_or_socket_the_definition_names() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let xml = tiny_xml("tofile", &kit, "wait-shutdown", "").replace(
        "<serial type='pty'/>",
        &format!(
            "<serial type='file'><source path='{}'/></serial>",
            log.display()
        ),
    );
    ok(&server, &["define", &write_xml(dir.path(), "tofile", &xml)]);
    ok(&server, &["start", "tofile"]);
    wait_until(Duration::from_secs(10), "the serial file", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("TINY: waiting for shutdown request"))
    });

    let socket = dir.path().join("serial.sock");
    let xml = tiny_xml("tosock", &kit, "wait-shutdown", "").replace(
        "<serial type='pty'/>",
        &format!(
            "<serial type='unix'><source mode='bind' path='{}'/></serial>",
            socket.display()
        ),
    );
    ok(&server, &["define", &write_xml(dir.path(), "tosock", &xml)]);
    // A guest with nothing waiting would print before anyone connects: start it paused.
    ok(&server, &["start", "tosock", "--paused"]);
    let mut stream = wait_until(Duration::from_secs(10), "the serial socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    ok(&server, &["resume", "tosock"]);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 1024];
    while !seen.contains("TINY: waiting for shutdown request") {
        let n = stream
            .read(&mut buffer)
            .expect("serial output on the socket");
        assert!(n > 0, "the socket closed; it showed {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    // Unsupported host ends are named before anything starts.
    let tcp = tiny_xml("totcp", &kit, "wait-shutdown", "").replace(
        "<serial type='pty'/>",
        "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/></serial>",
    );
    ok(&server, &["define", &write_xml(dir.path(), "totcp", &tcp)]);
    assert!(fails(&server, &["start", "totcp"]).contains("serial port on TCP"));
    ok(&server, &["destroy", "tofile"]);
    ok(&server, &["destroy", "tosock"]);
    assert!(!socket.exists(), "the socket goes with the guest");
}

#[test]
fn create_runs_a_transient_guest_and_edit_changes_a_definition() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(
        dir.path(),
        "temp",
        &tiny_xml("temp", &kit, "wait-shutdown", ""),
    );
    assert!(ok(&server, &["create", &xml]).contains("Domain 'temp' created from"));
    assert!(ok(&server, &["dominfo", "temp"]).contains("Persistent:     no"));
    assert!(fails(&server, &["autostart", "temp"]).contains("transient"));
    ok(&server, &["shutdown", "temp"]);
    wait_until(
        Duration::from_secs(10),
        "the transient domain to go",
        || (!ok(&server, &["list", "--all", "--name"]).contains("temp")).then_some(()),
    );

    // edit: $EDITOR changes the persistent XML, which is defined again.
    let xml = write_xml(dir.path(), "ed", &tiny_xml("ed", &kit, "wait-shutdown", ""));
    ok(&server, &["define", &xml]);
    let edited = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(["edit", "ed"])
        .env("EDITOR", "sed -i s|</name>|</name><title>edited</title>|")
        .output()
        .unwrap();
    assert!(
        stdout(&edited).contains("XML configuration edited"),
        "{}",
        stderr(&edited)
    );
    assert!(ok(&server, &["dumpxml", "ed"]).contains("<title>edited</title>"));
    let unchanged = Command::new(binary("vireo"))
        .arg("-c")
        .arg(format!("unix://{}", server.socket.display()))
        .args(["edit", "ed"])
        .env("EDITOR", "true")
        .output()
        .unwrap();
    assert!(
        stdout(&unchanged).contains("not changed"),
        "{}",
        stderr(&unchanged)
    );
}

#[test]
fn qemu_engine_plugs_a_nic_into_a_bridge_live() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let bridged = match Bridged::start("hotnic") {
        Ok(bridged) => bridged,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = &bridged.server;
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(dir.path(), "hotnic", &counting_debian_xml("hotnic", &kit));
    ok(server, &["define", &xml]);
    ok(server, &["start", "hotnic"]);
    let console = Console::attach(server, "hotnic", false);
    console.wait_for("N=3\r\n", Duration::from_secs(90));
    let mac = "52:54:00:00:aa:01";
    ok(
        server,
        &[
            "attach-interface",
            "hotnic",
            "bridge",
            "vtbr0",
            "--mac",
            mac,
            "--live",
        ],
    );
    let tap = tap_of(&ok(server, &["domiflist", "hotnic"]), mac);
    let on_bridge = bridged.ip(&["-o", "link", "show", "master", "vtbr0"]);
    assert!(on_bridge.contains(&tap), "{on_bridge}");
    assert!(
        !ok(server, &["domiflist", "hotnic", "--inactive"]).contains(mac),
        "live only"
    );
    ok(
        server,
        &[
            "detach-interface",
            "hotnic",
            "bridge",
            "--mac",
            mac,
            "--live",
        ],
    );
    assert!(!ok(server, &["domiflist", "hotnic"]).contains(mac));
    let links = bridged.ip(&["-o", "link"]);
    assert!(!links.contains(&tap), "the tap goes with the NIC: {links}");
    console.leave();
    ok(server, &["destroy", "hotnic"]);
}

#[test]
fn a_qemu_guest_that_panics_is_crashed_and_on_crash_applies() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    // base64 of: echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger
    let panics = debian_xml("panics", &kit)
        .replace(
            "vireo.hold=1",
            "vireo.run64=ZWNobyAxID4gL3Byb2Mvc3lzL2tlcm5lbC9zeXNycTsgZWNobyBjID4gL3Byb2Mvc3lzcnEtdHJpZ2dlcg==",
        )
        .replace("<serial type='pty'/>", "<serial type='pty'/><panic model='isa'/>");
    let xml = write_xml(dir.path(), "panics", &panics);
    ok(&server, &["define", &xml]);
    let events = Events::watch(&server);
    ok(&server, &["start", "panics"]);
    wait_state(
        &server,
        "panics",
        "shut off (crashed)",
        Duration::from_secs(90),
    );
    let lines = events.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("'panics': Crashed Panicked"))
            && lines
                .iter()
                .any(|l| l.ends_with("'panics': Stopped Crashed")),
        "{lines:?}"
    );
    // The vmm engine sees crashes itself and has no pvpanic device: refused by name.
    let xml = panics
        .replace("<domain type='qemu'>", "<domain type='kvm'>")
        .replace(
            "</devices>",
            "</devices><vireo:engine xmlns:vireo='urn:x-vireo:xmlns:1'>vmm</vireo:engine>",
        );
    ok(&server, &["define", &write_xml(dir.path(), "panics", &xml)]);
    if tiny_kit().is_ok() {
        assert!(fails(&server, &["start", "panics"]).contains("cannot run <panic>"));
    }
}

#[test]
fn a_vmm_snapshot_comes_back_on_its_own_taps() {
    let kit = match tiny_kit() {
        Ok(kit) => kit,
        Err(needs) => skip!("needs {needs}"),
    };
    let bridged = match Bridged::start("snapnic") {
        Ok(bridged) => bridged,
        Err(needs) => skip!("needs {needs}"),
    };
    let server = &bridged.server;
    let dir = tempfile::tempdir().unwrap();
    let xml = tiny_xml("snapnic", &kit, "wait-shutdown", "").replace(
        "<serial type='pty'/>",
        "<serial type='pty'/><interface type='bridge'><mac address='52:54:00:00:bb:01'/><source bridge='vtbr0'/></interface>",
    );
    ok(server, &["define", &write_xml(dir.path(), "snapnic", &xml)]);
    ok(server, &["start", "snapnic"]);
    let mac = "52:54:00:00:bb:01";
    let saved_with = tap_of(&ok(server, &["domiflist", "snapnic"]), mac);
    ok(server, &["snapshot-create-as", "snapnic", "--name", "s"]);
    ok(server, &["destroy", "snapnic"]);
    // From shut off: a new run, yet the machine state gets the tap it was saved with.
    ok(server, &["snapshot-revert", "snapnic", "s"]);
    assert_eq!(state(server, "snapnic"), "running (from snapshot)");
    let tap = tap_of(&ok(server, &["domiflist", "snapnic"]), mac);
    assert_eq!(
        tap, saved_with,
        "the restored machine reopens the tap it was saved with"
    );
    let on_bridge = bridged.ip(&["-o", "link", "show", "master", "vtbr0"]);
    assert!(on_bridge.contains(&tap), "{on_bridge}");
    ok(server, &["destroy", "snapnic"]);
    ok(server, &["snapshot-delete", "snapnic", "s"]);
}

/// A graphics password is shown only to `dumpxml --security-info` (as in libvirt), and kept by
/// `edit`, which reads the XML with it.
#[test]
fn graphics_passwords_show_only_with_security_info() {
    let server = Server::vireod();
    let dir = tempfile::tempdir().unwrap();
    let xml = write_xml(
        dir.path(),
        "secret",
        "<domain type='qemu'><name>secret</name><memory unit='MiB'>64</memory><devices><graphics type='vnc' passwd='hunter2'/></devices></domain>",
    );
    ok(&server, &["define", &xml]);
    let plain = ok(&server, &["dumpxml", "secret"]);
    assert!(
        plain.contains("<graphics") && !plain.contains("hunter2"),
        "{plain}"
    );
    let secure = ok(&server, &["dumpxml", "secret", "--security-info"]);
    assert!(
        secure.contains("passwd='hunter2'") || secure.contains("passwd=\"hunter2\""),
        "{secure}"
    );
    let refused = fails(&server, &["-r", "dumpxml", "secret", "--security-info"]);
    assert!(
        refused.contains("not shown to a read-only caller"),
        "{refused}"
    );
}
