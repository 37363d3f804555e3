//! svc-network end to end: vireod runs in a network namespace of the test's own ("host"), an
//! "uplink" namespace plays the outside world (10.99.0.0/24, never a real address), and "guest"
//! namespaces joined to the network's bridge by veth pairs play guests: DHCP from the network's
//! dnsmasq, names from its DNS, NAT into the uplink, and nothing left after net-destroy or a
//! kill -9 of vireod.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vireo_tests::{Netns, Server, ok, skip};

/// A network of the test: NAT, a static host, a DNS host and the test's own domain.
const NAT_XML: &str = "<network><name>natnet</name><forward mode='nat'/>
  <bridge name='vtnat0'/>
  <domain name='vireo.test' localOnly='yes'/>
  <dns><host ip='192.168.150.50'><hostname>printer</hostname></host></dns>
  <ip address='192.168.150.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.150.100' end='192.168.150.199'/>
      <host mac='52:54:00:15:00:07' name='fixed' ip='192.168.150.7'/></dhcp>
  </ip></network>";

/// The script udhcpc runs: configure what the lease says.
const UDHCPC_SCRIPT: &str = "#!/bin/sh
case \"$1\" in
  bound|renew)
    ip addr add \"$ip/$mask\" dev \"$interface\"
    [ -n \"$router\" ] && ip route replace default via \"$router\"
    ;;
esac
exit 0
";

fn tools_or_skip() -> Option<String> {
    for (tool, package) in [
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("busybox", "busybox"),
        ("python3", "python3"),
    ] {
        if Command::new(tool).arg("--help").output().is_err() {
            return Some(format!("{tool} (Debian package {package})"));
        }
    }
    None
}

/// The world around one vireod: its namespace and the uplink behind it.
struct World {
    server: Server,
    host: Netns,
    uplink: Netns,
    _dir: tempfile::TempDir,
    script: String,
}

impl World {
    fn new(tag: &str, default_network: bool) -> Result<World, String> {
        let host = Netns::create(&format!("{tag}h"))?;
        let uplink = Netns::create(&format!("{tag}u"))?;
        let link = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        link(&[
            "-n", &host.0, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns",
            &uplink.0,
        ]);
        host.ok("ip", &["addr", "add", "10.99.0.1/24", "dev", "up0"]);
        host.ok("ip", &["link", "set", "up0", "up"]);
        host.ok("ip", &["link", "set", "lo", "up"]);
        host.ok("ip", &["route", "add", "default", "via", "10.99.0.2"]);
        uplink.ok("ip", &["addr", "add", "10.99.0.2/24", "dev", "up1"]);
        uplink.ok("ip", &["link", "set", "up1", "up"]);
        uplink.ok("ip", &["link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vireo.toml");
        std::fs::write(
            &config,
            format!("[network]\ndefault_network = {default_network}\n"),
        )
        .unwrap();
        let script = dir.path().join("udhcpc.sh");
        std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let server = Server::vireod_with(
            &["ip", "netns", "exec", &host.0],
            &["--config", config.to_str().unwrap()],
        );
        Ok(World {
            server,
            host,
            uplink,
            _dir: dir,
            script: script.display().to_string(),
        })
    }

    /// A guest: a namespace whose eth0 (with `mac`) is a veth port of `bridge`, addressed by
    /// DHCP from the network.
    fn guest(&self, tag: &str, bridge: &str, mac: &str) -> Netns {
        let guest = Netns::create(tag).unwrap();
        let port = format!("vp{tag}");
        self.host.ok(
            "ip",
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &guest.0,
            ],
        );
        self.host
            .ok("ip", &["link", "set", &port, "master", bridge, "up"]);
        guest.ok("ip", &["link", "set", "eth0", "address", mac, "up"]);
        guest.ok("ip", &["link", "set", "lo", "up"]);
        guest.ok(
            "busybox",
            &[
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-f",
                "-t",
                "10",
                "-s",
                &self.script,
            ],
        );
        guest
    }

    /// How many dnsmasq processes serve `network` (by their configuration file).
    fn dnsmasqs(&self, network: &str) -> usize {
        let conf = format!("{network}.conf");
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
            .filter(|cmdline| {
                let text = String::from_utf8_lossy(cmdline);
                text.starts_with("dnsmasq")
                    && text.contains(&conf)
                    && text.contains(&self.server.state_dir.display().to_string())
            })
            .count()
    }

    fn tables(&self) -> String {
        self.host.ok("nft", &["list", "tables"])
    }
}

impl Drop for World {
    /// Networks outlive vireod, as they do libvirtd: destroy them, or their dnsmasqs would keep
    /// the test's namespaces alive.
    fn drop(&mut self) {
        let listed = self.server.vireo(&["net-list", "--name"]);
        for name in vireo_tests::stdout(&listed).split_whitespace() {
            let _ = self.server.vireo(&["net-destroy", name]);
        }
    }
}

/// The address of `dev` in `netns` (the first IPv4 one).
fn address_of(netns: &Netns, dev: &str) -> String {
    let shown = netns.ok("ip", &["-4", "-o", "addr", "show", "dev", dev]);
    shown
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on {dev}: {shown}"))
        .to_string()
}

/// Accepts one TCP connection on `listen`:8080 in `server_ns` from `client_ns` and returns the
/// peer address the server saw (None when the client never got through).
fn peer_seen(server_ns: &Netns, listen: &str, client_ns: &Netns) -> Option<String> {
    let accept = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{listen}', 8080))\ns.listen(1)\ns.settimeout(8)\nc,a=s.accept()\nprint(a[0])"
    );
    let connect =
        format!("import socket\nsocket.create_connection(('{listen}', 8080), timeout=1).close()");
    std::thread::scope(|scope| {
        let listening = scope.spawn(|| server_ns.run("python3", &["-c", &accept]));
        // The listener may not be up yet: retry for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(6);
        while std::time::Instant::now() < deadline {
            if client_ns.run("python3", &["-c", &connect]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let accepted = listening.join().unwrap();
        accepted
            .status
            .success()
            .then(|| String::from_utf8_lossy(&accepted.stdout).trim().to_string())
    })
}

/// The address the uplink's server sees when `guest` connects to it.
fn peer_seen_by_uplink(world: &World, guest: &Netns) -> String {
    peer_seen(&world.uplink, "10.99.0.2", guest).expect("the guest never reached the uplink")
}

#[test]
fn nat_network_leases_resolves_masquerades_and_survives_kill_9() {
    if let Some(missing) = tools_or_skip() {
        skip!("needs {missing}");
    }
    let mut world = match World::new("nat", false) {
        Ok(world) => world,
        Err(why) => skip!("needs {why}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("natnet.xml");
    std::fs::write(&xml, NAT_XML).unwrap();
    let server = &world.server;
    assert!(ok(server, &["net-define", xml.to_str().unwrap()]).contains("Network natnet defined"));
    assert!(ok(server, &["net-list", "--all"]).contains("natnet"));
    ok(server, &["net-start", "natnet"]);
    let info = ok(server, &["net-info", "natnet"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Active:") && l.ends_with("yes"))
            && info
                .lines()
                .any(|l| l.starts_with("Bridge:") && l.ends_with("vtnat0"))
            && !info.contains("::"),
        "{info}"
    );
    assert!(world.tables().contains("vireo_"), "{}", world.tables());
    assert_eq!(world.dnsmasqs("natnet"), 1);

    // DHCP: a dynamic lease, and the static host by its MAC.
    let dynamic = world.guest("natg1", "vtnat0", "52:54:00:15:00:01");
    let fixed = world.guest("natg2", "vtnat0", "52:54:00:15:00:07");
    let leased = address_of(&dynamic, "eth0");
    assert!(leased.starts_with("192.168.150.1"), "{leased}");
    assert_eq!(address_of(&fixed, "eth0"), "192.168.150.7");
    let leases = ok(server, &["net-dhcp-leases", "natnet"]);
    assert!(
        leases.contains("52:54:00:15:00:01") && leases.contains(&leased),
        "{leases}"
    );
    assert!(leases.contains("192.168.150.7/24"), "{leases}");

    // Guests reach each other, resolve the network's names, and leave through NAT.
    dynamic.ok("busybox", &["ping", "-c", "1", "-W", "5", "192.168.150.7"]);
    let resolved = dynamic.ok(
        "busybox",
        &["nslookup", "printer.vireo.test", "192.168.150.1"],
    );
    assert!(resolved.contains("192.168.150.50"), "{resolved}");
    assert_eq!(
        peer_seen_by_uplink(&world, &dynamic),
        "10.99.0.1",
        "not masqueraded"
    );

    // net-update: a static host added live and to the definition serves the next guest.
    let said = ok(
        &world.server,
        &[
            "net-update",
            "natnet",
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:15:00:09' name='late' ip='192.168.150.9'/>",
            "--live",
            "--config",
        ],
    );
    assert!(said.contains("Updated network natnet"), "{said}");
    let late = world.guest("natg3", "vtnat0", "52:54:00:15:00:09");
    assert_eq!(address_of(&late, "eth0"), "192.168.150.9");
    let inactive = ok(&world.server, &["net-dumpxml", "natnet", "--inactive"]);
    assert!(inactive.contains("52:54:00:15:00:09"), "{inactive}");

    // kill -9 and a restart: the same one table, one dnsmasq, one bridge; guests still served.
    world.server.kill9();
    world.server.restart();
    let server = &world.server;
    assert_eq!(
        world.tables().matches("vireo_").count(),
        1,
        "{}",
        world.tables()
    );
    assert_eq!(world.dnsmasqs("natnet"), 1);
    let bridges = world
        .host
        .ok("ip", &["-o", "link", "show", "type", "bridge"]);
    assert_eq!(bridges.matches("vtnat0").count(), 1, "{bridges}");
    assert!(ok(server, &["net-list"]).contains("natnet"));
    assert_eq!(peer_seen_by_uplink(&world, &dynamic), "10.99.0.1");

    // net-destroy leaves nothing behind.
    ok(server, &["net-destroy", "natnet"]);
    assert!(!world.tables().contains("vireo_"), "{}", world.tables());
    assert_eq!(world.dnsmasqs("natnet"), 0);
    let links = world.host.ok("ip", &["-o", "link", "show"]);
    assert!(!links.contains("vtnat0"), "{links}");
    ok(server, &["net-undefine", "natnet"]);
    assert!(!ok(server, &["net-list", "--all"]).contains("natnet"));
}

#[test]
fn isolated_routed_and_default_networks() {
    if let Some(missing) = tools_or_skip() {
        skip!("needs {missing}");
    }
    let world = match World::new("iso", true) {
        Ok(world) => world,
        Err(why) => skip!("needs {why}"),
    };
    let server = &world.server;
    // A fresh host gets libvirt's default network, autostarted.
    let listed = ok(server, &["net-list"]);
    assert!(
        listed.contains("default") && listed.contains("active"),
        "{listed}"
    );
    let info = ok(server, &["net-info", "default"]);
    assert!(info.contains("vireobr0"), "{info}");
    let dumped = ok(server, &["net-dumpxml", "default"]);
    assert!(dumped.contains("192.168.122.1"), "{dumped}");
    // net-uuid and net-name are each other's inverse; net-autostart flips what net-list shows.
    let uuid = ok(server, &["net-uuid", "default"]).trim().to_string();
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(ok(server, &["net-name", &uuid]).trim(), "default");
    let unmarked = ok(server, &["net-autostart", "default", "--disable"]);
    assert!(
        unmarked.contains("Network default unmarked as autostarted"),
        "{unmarked}"
    );
    let listed = ok(server, &["net-list", "--no-autostart"]);
    assert!(listed.contains("default"), "{listed}");
    assert!(ok(server, &["net-autostart", "default"]).contains("marked as autostarted"));
    assert!(!ok(server, &["net-list", "--no-autostart"]).contains("default"));
    let missing = vireo_tests::fails(server, &["net-info", "nosuch"]);
    assert!(
        missing.contains("failed to get network 'nosuch'"),
        "{missing}"
    );
    // A bad definition is refused by field, and nothing is left defined.
    let bad = std::env::temp_dir().join(format!("vireo-bad-net-{}.xml", std::process::id()));
    std::fs::write(
        &bad,
        "<network><name>bad</name><ip address='10.0.0.300' prefix='24'/></network>",
    )
    .unwrap();
    let refused = vireo_tests::fails(server, &["net-define", bad.to_str().unwrap()]);
    let _ = std::fs::remove_file(&bad);
    assert!(refused.contains("network/ip@address"), "{refused}");
    assert!(!ok(server, &["net-list", "--all"]).contains("bad"));

    let dir = tempfile::tempdir().unwrap();
    let define = |name: &str, xml: &str| {
        let path = dir.path().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        ok(server, &["net-create", path.to_str().unwrap()]);
    };
    define(
        "iso",
        "<network><name>iso</name><bridge name='vtiso0'/>
          <ip address='192.168.160.1' netmask='255.255.255.0'>
          <dhcp><range start='192.168.160.10' end='192.168.160.20'/></dhcp></ip></network>",
    );
    define(
        "routed",
        "<network><name>routed</name><forward mode='route'/><bridge name='vtrt0'/>
          <ip address='192.168.170.1' netmask='255.255.255.0'>
          <dhcp><range start='192.168.170.10' end='192.168.170.20'/></dhcp></ip></network>",
    );

    // Isolated: the host answers, the uplink is out of reach.
    let isolated = world.guest("isog1", "vtiso0", "52:54:00:16:00:01");
    isolated.ok("busybox", &["ping", "-c", "1", "-W", "5", "192.168.160.1"]);
    assert_eq!(
        peer_seen(&world.uplink, "10.99.0.2", &isolated),
        None,
        "a guest on an isolated network reached the uplink"
    );

    // Routed: the uplink reaches the guest by its own address, and the guest leaves unNATed.
    let routed = world.guest("rtg1", "vtrt0", "52:54:00:17:00:01");
    let address = address_of(&routed, "eth0");
    world.uplink.ok(
        "ip",
        &["route", "add", "192.168.170.0/24", "via", "10.99.0.1"],
    );
    assert_eq!(
        peer_seen(&routed, &address, &world.uplink).as_deref(),
        Some("10.99.0.2"),
        "the uplink did not reach the routed guest"
    );
    assert_eq!(
        peer_seen(&world.uplink, "10.99.0.2", &routed),
        Some(address),
        "a routed guest must leave with its own address"
    );

    // Transient networks go with net-destroy; the default one too, its definition stays.
    for name in ["iso", "routed", "default"] {
        ok(server, &["net-destroy", name]);
    }
    let all = ok(server, &["net-list", "--all"]);
    assert!(!all.contains("iso") && !all.contains("routed"), "{all}");
    assert!(all.contains("default"), "{all}");
    assert!(!world.tables().contains("vireo_"), "{}", world.tables());
}

/// A Debian guest under QEMU (TCG) on network `network` with `mac`, its serial port in `log`,
/// taking a DHCP lease and then running `script` (one line, no double quotes), then held up.
fn qemu_guest_xml(
    name: &str,
    network: &str,
    mac: &str,
    log: &Path,
    script: &str,
    interface_extra: &str,
) -> String {
    let kit = vireo_tests::kit_dir();
    let script = script
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 vireo.dhcp=1 vireo.run=\"{script}\" vireo.hold=1</cmdline></os>
  <features><acpi/></features>
  <devices>
    <interface type='network'><source network='{network}'/><mac address='{mac}'/><model type='virtio'/>{interface_extra}</interface>
    <serial type='file'><source path='{log}'/></serial>
  </devices></domain>",
        kernel = kit.join("vmlinuz").display(),
        initrd = kit.join("initramfs.cpio.gz").display(),
        log = log.display(),
    )
}

/// A world with the NAT network `natnet` running, for QEMU guests; or what is missing.
fn nat_world_for_qemu(tag: &str) -> Result<(World, tempfile::TempDir), String> {
    if let Some(missing) = tools_or_skip() {
        return Err(missing);
    }
    vireo_tests::qemu_installed()?;
    vireo_tests::kit_files(&["vmlinuz", "initramfs.cpio.gz"])?;
    let world = World::new(tag, false)?;
    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("natnet.xml");
    std::fs::write(&xml, NAT_XML).unwrap();
    ok(&world.server, &["net-create", xml.to_str().unwrap()]);
    Ok((world, dir))
}

/// Waits (bounded) for `needle` in the serial log `log`; its text.
fn serial_shows(log: &Path, needle: &str) -> String {
    vireo_tests::wait_until(Duration::from_secs(180), needle, || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|text| text.contains(needle) || text.contains("VIREO-DHCP-FAILED"))
    })
}

#[test]
fn qemu_guests_on_a_nat_network_lease_resolve_reach_each_other_and_leave_through_nat() {
    let (world, dir) = match nat_world_for_qemu("qg") {
        Ok(ready) => ready,
        Err(why) => skip!("needs {why}"),
    };
    let server = &world.server;

    // The uplink listens first: the guest's script connects once it has its lease.
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let first = qemu_guest_xml(
        "first",
        "natnet",
        "52:54:00:15:00:07",
        &first_log,
        "nslookup printer.vireo.test 192.168.150.1; for i in 1 2 3 4 5 6 7 8 9 10; do echo hello | nc -w 3 10.99.0.2 8080 && break; sleep 2; done",
        "",
    );
    let second = qemu_guest_xml(
        "second",
        "natnet",
        "52:54:00:15:00:08",
        &second_log,
        "ping -c 3 -W 5 192.168.150.7 && echo PEER-REACHED",
        "",
    );
    let seen = std::thread::scope(|scope| {
        let listening = scope.spawn(|| {
            world.uplink.run(
                "python3",
                &["-c", "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('10.99.0.2', 8080))\ns.listen(1)\ns.settimeout(240)\nc,a=s.accept()\nprint(a[0])"],
            )
        });
        for (name, text) in [("first", &first), ("second", &second)] {
            let path = dir.path().join(format!("{name}.xml"));
            std::fs::write(&path, text).unwrap();
            ok(server, &["create", path.to_str().unwrap()]);
        }
        vireo_tests::stdout(&listening.join().unwrap())
    });
    let shown = serial_shows(&first_log, "VIREO-RUN-EXIT=");
    assert!(
        shown.contains("VIREO-DHCP-ADDR=192.168.150.7"),
        "the first guest did not get its static lease: {shown}"
    );
    assert!(
        shown.contains("192.168.150.50"),
        "DNS host not resolved: {shown}"
    );
    assert_eq!(
        seen.trim(),
        "10.99.0.1",
        "the uplink must see the host's address (NAT)"
    );
    let shown = serial_shows(&second_log, "VIREO-RUN-EXIT=");
    assert!(shown.contains("VIREO-DHCP-ADDR=192.168.150.1"), "{shown}");
    assert!(
        shown.contains("PEER-REACHED"),
        "guests did not reach each other: {shown}"
    );
    let leases = ok(server, &["net-dhcp-leases", "natnet"]);
    assert!(
        leases.contains("52:54:00:15:00:07") && leases.contains("52:54:00:15:00:08"),
        "{leases}"
    );
    // domifaddr's default source is the network's leases.
    let addresses = ok(server, &["domifaddr", "first"]);
    assert!(addresses.contains("192.168.150.7/24"), "{addresses}");
    // Stopping the guests removes their taps; destroying the network leaves nothing.
    for name in ["first", "second"] {
        ok(server, &["destroy", name]);
    }
    ok(server, &["net-destroy", "natnet"]);
    let links = world.host.ok("ip", &["-o", "link", "show"]);
    let names: Vec<&str> = links
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .collect();
    assert!(
        names
            .iter()
            .all(|name| !name.starts_with("vireo") && !name.starts_with("vtnat0")),
        "taps or the bridge left behind: {names:?}"
    );
}

#[test]
fn a_bandwidth_limit_on_a_port_is_the_rate_the_guest_gets() {
    let (world, dir) = match nat_world_for_qemu("bw") {
        Ok(ready) => ready,
        Err(why) => skip!("needs {why}"),
    };
    let server = &world.server;
    // 512 KiB/s each way; the guest sends 4 MiB to the uplink, which times it.
    const RATE: f64 = 512.0 * 1024.0;
    let log = dir.path().join("sender.log");
    let sender = qemu_guest_xml(
        "sender",
        "natnet",
        "52:54:00:15:00:31",
        &log,
        "for i in 1 2 3 4 5 6 7 8 9 10; do dd if=/dev/zero bs=1024 count=4096 2>/dev/null | nc -w 5 10.99.0.2 8080 && break; sleep 2; done",
        "<bandwidth><inbound average='512'/><outbound average='512'/></bandwidth>",
    );
    let (bytes, seconds) = std::thread::scope(|scope| {
        let listening = scope.spawn(|| {
            world.uplink.run(
                "python3",
                &["-c", "import socket, time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('10.99.0.2', 8080))\ns.listen(1)\ns.settimeout(120)\nc,a=s.accept()\nfirst=c.recv(65536)\nstart=time.monotonic()\nn=0\nwhile True:\n    d=c.recv(65536)\n    if not d: break\n    n+=len(d)\nprint(n, time.monotonic()-start)"],
            )
        });
        let path = dir.path().join("sender.xml");
        std::fs::write(&path, &sender).unwrap();
        ok(server, &["create", path.to_str().unwrap()]);
        let said = vireo_tests::stdout(&listening.join().unwrap());
        let mut words = said.split_whitespace();
        let bytes: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
        let seconds: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
        (bytes, seconds)
    });
    assert!(
        bytes > 3.0 * 1024.0 * 1024.0,
        "too little arrived: {bytes} bytes"
    );
    let measured = bytes / seconds;
    eprintln!(
        "outbound limit {RATE} B/s, measured {measured:.0} B/s ({:.1}%)",
        measured / RATE * 100.0
    );
    assert!(
        (measured / RATE - 1.0).abs() <= 0.10,
        "measured {measured:.0} B/s against a limit of {RATE} B/s"
    );
    // The limit toward the guest is on the tap's egress.
    let tap = ok(server, &["domiflist", "sender"])
        .lines()
        .find(|line| line.contains("52:54:00:15:00:31"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_string();
    let classes = world.host.ok("tc", &["class", "show", "dev", &tap]);
    assert!(classes.contains("rate 4194Kbit"), "{classes}");
    ok(server, &["destroy", "sender"]);
}

#[test]
fn qemu_guests_on_isolated_and_routed_networks() {
    let (world, dir) = match nat_world_for_qemu("qr") {
        Ok(ready) => ready,
        Err(why) => skip!("needs {why}"),
    };
    let server = &world.server;
    let create = |name: &str, xml: &str| {
        let path = dir.path().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        ok(server, &["create", path.to_str().unwrap()]);
    };
    let network = |name: &str, xml: &str| {
        let path = dir.path().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        ok(server, &["net-create", path.to_str().unwrap()]);
    };
    network(
        "iso",
        "<network><name>iso</name><bridge name='vtiso0'/>
          <ip address='192.168.160.1' netmask='255.255.255.0'>
          <dhcp><range start='192.168.160.10' end='192.168.160.20'/></dhcp></ip></network>",
    );
    network(
        "routed",
        "<network><name>routed</name><forward mode='route'/><bridge name='vtrt0'/>
          <ip address='192.168.170.1' netmask='255.255.255.0'>
          <dhcp><range start='192.168.170.10' end='192.168.170.20'/></dhcp></ip></network>",
    );
    world.uplink.ok(
        "ip",
        &["route", "add", "192.168.170.0/24", "via", "10.99.0.1"],
    );
    // The isolated guest pings the uplink (which answers the NAT network's guests) and says
    // whether it got through; the routed guest serves a line the uplink fetches.
    let (iso_log, routed_log) = (dir.path().join("iso.log"), dir.path().join("routed.log"));
    create(
        "isolated-guest",
        &qemu_guest_xml(
            "isolated-guest",
            "iso",
            "52:54:00:16:00:01",
            &iso_log,
            "ping -c 1 -W 3 192.168.160.1 && echo HOST-REACHED; ping -c 2 -W 3 10.99.0.2 && echo UPLINK-REACHED || echo UPLINK-UNREACHABLE",
            "",
        ),
    );
    create(
        "routed-guest",
        &qemu_guest_xml(
            "routed-guest",
            "routed",
            "52:54:00:17:00:01",
            &routed_log,
            "echo LISTENING; echo from-the-guest | nc -l -p 8080",
            "",
        ),
    );
    let shown = serial_shows(&iso_log, "VIREO-RUN-EXIT=");
    assert!(shown.contains("HOST-REACHED"), "{shown}");
    assert!(
        shown.contains("UPLINK-UNREACHABLE") && !shown.contains("UPLINK-REACHED\n"),
        "a guest on an isolated network reached the uplink: {shown}"
    );
    let shown = serial_shows(&routed_log, "LISTENING");
    let address = shown
        .lines()
        .find_map(|line| line.trim().strip_prefix("VIREO-DHCP-ADDR="))
        .unwrap_or_else(|| panic!("no lease: {shown}"))
        .trim()
        .to_string();
    assert!(address.starts_with("192.168.170."), "{address}");
    let fetched = vireo_tests::wait_until(Duration::from_secs(30), "the routed guest", || {
        let output = world.uplink.run(
            "python3",
            &[
                "-c",
                &format!(
                    "import socket\nc=socket.create_connection(('{address}', 8080), timeout=3)\nprint(c.recv(100).decode().strip())"
                ),
            ],
        );
        let text = vireo_tests::stdout(&output);
        text.contains("from-the-guest").then_some(text)
    });
    assert!(fetched.contains("from-the-guest"));
    for name in ["isolated-guest", "routed-guest"] {
        ok(server, &["destroy", name]);
    }
}

#[test]
fn a_qemu_guest_on_a_macvtap_network_reaches_the_uplink_segment() {
    let (world, dir) = match nat_world_for_qemu("qm") {
        Ok(ready) => ready,
        Err(why) => skip!("needs {why}"),
    };
    let server = &world.server;
    let network = dir.path().join("mv.xml");
    std::fs::write(
        &network,
        "<network><name>mv</name><forward mode='bridge'><interface dev='up0'/></forward></network>",
    )
    .unwrap();
    ok(server, &["net-create", network.to_str().unwrap()]);
    // No DHCP on the uplink segment: the guest takes an address of its own there.
    let log = dir.path().join("mv.log");
    let guest = qemu_guest_xml(
        "mv-guest",
        "mv",
        "52:54:00:18:00:01",
        &log,
        "ip link set eth0 up; ip addr add 10.99.0.50/24 dev eth0; ping -c 3 -W 5 10.99.0.2 && echo SEGMENT-REACHED",
        "",
    )
    .replace("vireo.dhcp=1 ", "");
    let path = dir.path().join("mv-guest.xml");
    std::fs::write(&path, &guest).unwrap();
    let created = server.vireo(&["create", path.to_str().unwrap()]);
    if !created.status.success() && vireo_tests::stderr(&created).contains("macvtap") {
        skip!(
            "needs macvtap in this kernel: {}",
            vireo_tests::stderr(&created)
        );
    }
    assert!(
        created.status.success(),
        "{}",
        vireo_tests::stderr(&created)
    );
    let listed = ok(server, &["domiflist", "mv-guest"]);
    let tap = listed
        .lines()
        .find(|line| line.contains("52:54:00:18:00:01"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_string();
    let kind = world.host.ok("ip", &["-d", "link", "show", &tap]);
    assert!(kind.contains("macvtap") && kind.contains("up0"), "{kind}");
    let shown = serial_shows(&log, "VIREO-RUN-EXIT=");
    assert!(shown.contains("SEGMENT-REACHED"), "{shown}");
    ok(server, &["destroy", "mv-guest"]);
    ok(server, &["net-destroy", "mv"]);
}
