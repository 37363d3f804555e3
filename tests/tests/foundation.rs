//! The foundation through the real binaries: vireod serving every package behind the gateway, the
//! CLI's host commands against the host's real facts, honest UNIMPLEMENTED answers, the read-only
//! socket, standalone service binaries, and clean stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use vireo_proto::compute::v1 as compute;
use vireo_proto::network::v1 as network;
use vireo_proto::storage::v1 as storage;
use vireo_tests::{Server, binary, block_on, run_with_stdin, stderr, stdout};

fn nproc() -> u32 {
    let output = Command::new("nproc").output().expect("nproc");
    stdout(&output)
        .trim()
        .parse()
        .expect("nproc prints a number")
}

fn meminfo_total_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .expect("MemTotal");
    line.split_whitespace()
        .nth(1)
        .expect("value")
        .parse()
        .expect("number")
}

#[test]
fn nodeinfo_reports_the_real_host() {
    let vireod = Server::vireod();
    let output = vireod.vireo(&["nodeinfo"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let field = |label: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{label}:")))
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("CPU(s)"), nproc().to_string());
    assert_eq!(field("Memory size"), format!("{} KiB", meminfo_total_kib()));
    assert_eq!(field("CPU model"), std::env::consts::ARCH);
    let mhz: u32 = field("CPU frequency")
        .trim_end_matches(" MHz")
        .parse()
        .expect("MHz is a number");
    assert!(mhz > 0, "CPU frequency read from /proc/cpuinfo");
    let topology: u32 = [
        "CPU socket(s)",
        "Core(s) per socket",
        "Thread(s) per core",
        "NUMA cell(s)",
    ]
    .iter()
    .map(|label| field(label).parse::<u32>().expect("number"))
    .product();
    assert_eq!(
        topology,
        nproc(),
        "sockets x cores x threads x cells = CPUs on this host"
    );

    let output = vireod.vireo(&["--output", "json", "nodeinfo"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("nodeinfo --output json is JSON");
    assert_eq!(json["cpus"], nproc());
    assert_eq!(json["memoryKib"], meminfo_total_kib().to_string());
}

#[test]
fn list_all_prints_virshs_empty_table() {
    let vireod = Server::vireod();
    let output = vireod.vireo(&["list", "--all"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        " Id   Name   State\n--------------------\n\n"
    );
    let output = vireod.vireo(&["--output", "json", "list", "--all"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(
        json.get("domains")
            .is_none_or(|domains| domains.as_array().is_some_and(Vec::is_empty)),
        "{json}"
    );
}

#[test]
fn host_commands_answer() {
    let vireod = Server::vireod();
    let hostname = nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned();
    assert_eq!(stdout(&vireod.vireo(&["hostname"])).trim(), hostname);
    let uri = format!("unix://{}", vireod.socket.display());
    assert_eq!(stdout(&vireod.vireo(&["uri"])).trim(), uri);

    let version = stdout(&vireod.vireo(&["version"]));
    assert!(
        version.contains(&format!(
            "Using library: vireo {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );

    let caps = vireod.vireo(&["capabilities"]);
    assert!(caps.status.success(), "{}", stderr(&caps));
    let caps = stdout(&caps);
    assert!(
        caps.starts_with("<capabilities>") && caps.contains("<vireo:engine name='qemu'"),
        "{caps}"
    );
    // KVM availability comes from ioctls: it must agree with whether /dev/kvm can be opened.
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert_eq!(
        caps.contains("<vireo:kvm available='yes'"),
        kvm_opens,
        "{caps}"
    );
    assert_eq!(caps.contains("<domain type='kvm'/>"), kvm_opens, "{caps}");

    let freecell = stdout(&vireod.vireo(&["freecell"]));
    assert!(
        freecell.starts_with("Total: ") && freecell.trim_end().ends_with(" KiB"),
        "{freecell}"
    );
    let missing = vireod.vireo(&["freecell", "--cellno", "4096"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("cell: NUMA cell 4096 does not exist"),
        "{}",
        stderr(&missing)
    );

    for command in ["sysinfo", "nodememstats", "nodecpustats"] {
        let output = vireod.vireo(&[command]);
        assert!(output.status.success(), "{command}: {}", stderr(&output));
        assert!(!stdout(&output).is_empty(), "{command} printed nothing");
    }
}

#[test]
fn every_service_is_serving_and_reflected_through_the_gateway() {
    let vireod = Server::vireod();
    let names = vireod.service_names();
    for package in vireo_proto::PACKAGES {
        assert!(
            names
                .iter()
                .any(|name| name.starts_with(&format!("{package}."))),
            "{package} not in {names:?}"
        );
    }
    let vireo_services: Vec<&String> = names
        .iter()
        .filter(|name| name.starts_with("vireo."))
        .collect();
    assert!(vireo_services.len() >= 12, "{vireo_services:?}");
    for name in vireo_services {
        assert_eq!(vireod.health(name), Some(ServingStatus::Serving), "{name}");
    }
    assert_eq!(
        vireod.health("vireo.nosuch.v1.Nothing"),
        None,
        "unknown service is an error, not SERVING"
    );
}

#[test]
fn a_stopped_backend_reads_not_serving_and_is_unavailable() {
    // The storage service alone, the gateway alone pointed at it: stop storage, the gateway says so.
    let storage = Server::start("svc-storage", "storage.sock", &[]);
    let config = storage.dirs.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway.backends]\nstorage = \"{}\"\n",
            storage.socket.display()
        ),
    )
    .unwrap();
    let gateway = Server::start(
        "gateway",
        "gateway.sock",
        &["--config", config.to_str().unwrap()],
    );
    let name = "vireo.storage.v1.StoragePoolService";
    assert_eq!(gateway.health(name), Some(ServingStatus::Serving));
    drop(storage);
    assert_eq!(gateway.health(name), Some(ServingStatus::NotServing));
    let status = block_on(async {
        let mut client = storage::storage_pool_service_client::StoragePoolServiceClient::new(
            gateway.connect().await,
        );
        client
            .list_pools(storage::ListPoolsRequest::default())
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("storage service of host"),
        "{}",
        status.message()
    );
}

#[test]
fn later_work_answers_unimplemented_and_names_it() {
    let vireod = Server::vireod();
    let status = block_on(async {
        let mut client =
            vireo_proto::nodedev::v1::node_device_service_client::NodeDeviceServiceClient::new(
                vireod.connect().await,
            );
        client
            .watch_node_device_events(
                vireo_proto::nodedev::v1::WatchNodeDeviceEventsRequest::default(),
            )
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status
            .message()
            .contains("WatchNodeDeviceEvents is not implemented yet")
            && status.message().contains("nodedev-event"),
        "{}",
        status.message()
    );

    let status = block_on(async {
        let mut client = network::network_port_service_client::NetworkPortServiceClient::new(
            vireod.connect().await,
        );
        client
            .get_port_xml(network::GetPortXmlRequest::default())
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status.message().contains("issue #7"),
        "{}",
        status.message()
    );
}

#[test]
fn an_unknown_host_is_not_found() {
    let vireod = Server::vireod();
    let status = block_on(async {
        let mut client =
            compute::node_service_client::NodeServiceClient::new(vireod.connect().await);
        let request = compute::GetNodeInfoRequest {
            host: "no-such-host".to_string(),
        };
        client.get_node_info(request).await.unwrap_err()
    });
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("no-such-host"),
        "{}",
        status.message()
    );
}

#[test]
fn the_readonly_socket_reads_but_refuses_changes() {
    let vireod = Server::vireod();
    let output = vireod.vireo(&["-r", "list", "--all"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&vireod.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the read-write socket is root-only");
    let readonly = vireod.run_dir.join("gateway-ro.sock");
    let status = block_on(async {
        let channel = vireo_runtime::client::connect_unix(&readonly)
            .await
            .unwrap();
        let mut client =
            storage::storage_pool_service_client::StoragePoolServiceClient::new(channel);
        client
            .define_pool(storage::DefinePoolRequest::default())
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("DefinePool needs role admin"),
        "{}",
        status.message()
    );
}

#[test]
fn cli_suggests_on_unknown_commands_and_runs_a_shell() {
    let vireod = Server::vireod();
    let output = vireod.vireo(&["lst"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("similar subcommand") && stderr(&output).contains("'list'"),
        "{}",
        stderr(&output)
    );

    let output = vireod.vireo_with_stdin(&[], "nodeinfo\nbogus\nlist --all\nquit\nnodeinfo\n");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(
        text.matches("CPU(s):").count(),
        1,
        "quit ends the shell:\n{text}"
    );
    assert!(text.contains(" Id   Name   State"), "{text}");
    assert!(
        stderr(&output).contains("unrecognized subcommand 'bogus'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn cli_reports_a_dead_connection() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("unix://{}/gateway.sock", dir.path().display());
    let output = run_with_stdin(
        Command::new(binary("vireo")).args(["-c", &uri, "nodeinfo"]),
        "",
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("failed to connect to the hypervisor"),
        "{}",
        stderr(&output)
    );
    let output = run_with_stdin(
        Command::new(binary("vireo")).args(["-c", "qemu:///system", "list"]),
        "",
    );
    assert!(
        stderr(&output).contains("unsupported URI scheme `qemu`"),
        "{}",
        stderr(&output)
    );
    // $VIREO_DEFAULT_URI is the default connection.
    let output = run_with_stdin(
        Command::new(binary("vireo"))
            .env("VIREO_DEFAULT_URI", &uri)
            .arg("uri"),
        "",
    );
    assert_eq!(stdout(&output).trim(), uri);
}

#[test]
fn sigterm_stops_vireod_cleanly_and_removes_its_sockets() {
    let mut vireod = Server::vireod();
    assert!(
        vireod.sockets_left().len() >= 7,
        "{:?}",
        vireod.sockets_left()
    );
    let status = vireod
        .terminate(Duration::from_secs(2))
        .expect("vireod exits within 2 s of SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        vireod.log()
    );
    assert!(
        vireod.sockets_left().is_empty(),
        "left behind: {:?}",
        vireod.sockets_left()
    );
}

#[test]
fn each_service_binary_serves_alone_and_stops_cleanly() {
    for (binary_name, socket, service) in [
        (
            "svc-compute",
            "compute.sock",
            "vireo.compute.v1.NodeService",
        ),
        (
            "svc-storage",
            "storage.sock",
            "vireo.storage.v1.StorageVolumeService",
        ),
        (
            "svc-network",
            "network.sock",
            "vireo.network.v1.NetworkService",
        ),
        (
            "svc-nodedev",
            "nodedev.sock",
            "vireo.nodedev.v1.NodeDeviceService",
        ),
        (
            "svc-migrate",
            "migrate.sock",
            "vireo.migrate.v1.SaveRestoreService",
        ),
        ("gateway", "gateway.sock", "vireo.cluster.v1.HostService"),
    ] {
        let mut server = Server::start(binary_name, socket, &[]);
        assert_eq!(
            server.health(service),
            Some(ServingStatus::Serving),
            "{binary_name}: {service}"
        );
        assert!(
            server.service_names().iter().any(|name| name == service),
            "{binary_name} reflects {service}"
        );
        assert!(
            server.state_dir.is_dir(),
            "{binary_name} creates its state directory"
        );
        let status = server
            .terminate(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("{binary_name} stops"));
        assert!(status.success(), "{binary_name}: {status}");
        assert!(
            server.sockets_left().is_empty(),
            "{binary_name} left {:?}",
            server.sockets_left()
        );
    }
}

#[test]
fn a_second_vireod_on_the_same_run_dir_refuses() {
    let vireod = Server::vireod();
    let output = Command::new(binary("vireod"))
        .arg("--state-dir")
        .arg(vireod.dirs.path().join("other-state"))
        .arg("--run-dir")
        .arg(&vireod.run_dir)
        .output()
        .expect("second vireod");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("already listening"),
        "{}",
        stderr(&output)
    );
    // The second one touched nothing: no service made its state (no default network, pool).
    let other = vireod.dirs.path().join("other-state");
    for service in ["network", "storage", "compute"] {
        assert!(!other.join(service).exists(), "{service} state was made");
    }
    // The first one is untouched.
    assert_eq!(vireod.health(""), Some(ServingStatus::Serving));
    assert!(vireod.vireo(&["nodeinfo"]).status.success());
}

#[test]
fn a_bad_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vireo.toml");
    std::fs::write(&config, "state_dir = 5\n").unwrap();
    let output = Command::new(binary("vireod"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("vireod");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("vireo.toml"),
        "{}",
        stderr(&output)
    );
}
