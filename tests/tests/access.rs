//! Who may call what over the gateway's TLS port (issue #9): certificates from `vireo pki`, a
//! bearer token, and every method the gateway's reflection lists called with no credentials, as
//! `readonly`, `operator` and `admin`, each answered as the role table says. The audit log
//! records who changed what. Another machine's gateway, reached over mutual TLS, joins as a host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use vireo_runtime::access::{Role, required_role, self_authenticated};
use vireo_tests::storage::free_port;
use vireo_tests::{Server, binary, block_on, stderr, stdout, wait_until};

fn pki(args: &[&str]) -> String {
    let output = std::process::Command::new(binary("vireo"))
        .arg("pki")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "vireo pki {args:?}: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// A CA with a server certificate for localhost, client certificates in their own directories
/// (as each client would keep them), and an operator token: (pki dir, token, its config lines).
struct Pki {
    dir: PathBuf,
    token: String,
    token_config: String,
}

fn make_pki(root: &Path, clients: &[&str]) -> Pki {
    let dir = root.join("pki");
    let dir_arg = dir.to_str().unwrap();
    pki(&["ca", "--dir", dir_arg]);
    pki(&[
        "server",
        "localhost",
        "--alt-name",
        "127.0.0.1",
        "--dir",
        dir_arg,
    ]);
    for client in clients {
        let out = root.join(client);
        pki(&[
            "client",
            client,
            "--dir",
            dir_arg,
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    let printed = pki(&["token", "ci", "--role", "operator"]);
    let token = printed
        .lines()
        .find_map(|line| line.strip_prefix("token: "))
        .unwrap()
        .to_string();
    let token_config = printed
        .lines()
        .skip_while(|line| !line.starts_with("[tls.tokens"))
        .collect::<Vec<_>>()
        .join("\n");
    Pki {
        dir,
        token,
        token_config,
    }
}

/// vireod serving TLS on a free port with `clients` (CN -> role) and the token.
fn tls_vireod(root: &Path, name: &str, pki: &Pki, clients: &str) -> (Server, u16) {
    let port = free_port();
    let config = root.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[network]\ndefault_network = false\n[gateway]\nhost_name = \"{name}\"\n[tls]\npki_dir = \"{}\"\n[tls.listen]\ngateway = \"127.0.0.1:{port}\"\n[tls.clients]\n{clients}\n{}\n",
            pki.dir.display(),
            pki.token_config
        ),
    )
    .unwrap();
    (
        Server::vireod_with(&[], &["--config", config.to_str().unwrap()]),
        port,
    )
}

/// A TLS channel to the gateway, as a client holding `client_dir`'s certificate (or none).
async fn tls_channel(port: u16, ca: &Path, client_dir: Option<&Path>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(dir) = client_dir {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("clientcert.pem")).unwrap(),
            std::fs::read(dir.join("clientkey.pem")).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Every method of every service the gateway's reflection lists: `/package.Service/Method`.
async fn reflected_methods(channel: Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([ask(MessageRequest::ListServices(
            String::new(),
        ))]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection did not list services");
    };
    let mut methods = Vec::new();
    for service in list.service {
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([ask(
                MessageRequest::FileContainingSymbol(service.name.clone()),
            )]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            replies.message().await.unwrap().unwrap().message_response
        else {
            panic!("no descriptor for {}", service.name);
        };
        for bytes in files.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            let package = file.package();
            for described in &file.service {
                if format!("{package}.{}", described.name()) != service.name {
                    continue;
                }
                for method in &described.method {
                    methods.push(format!("/{}/{}", service.name, method.name()));
                }
            }
        }
    }
    methods.sort();
    methods.dedup();
    methods
}

/// The code `path` answers an empty request with: the call's status, or OK once a stream has
/// started (a Watch that is allowed simply goes on).
async fn answer(channel: Channel, token: Option<&str>, path: &str) -> Code {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::iter([()]));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let call = client.streaming(request, path.parse().unwrap(), codec);
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Err(_) => Code::Ok,
        Ok(Err(status)) => status.code(),
        Ok(Ok(response)) => {
            let mut stream = response.into_inner();
            match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                Ok(Err(status)) => status.code(),
                _ => Code::Ok,
            }
        }
    }
}

#[test]
fn every_method_answers_as_the_role_table_says() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path(), &["alice", "bob", "mallory"]);
    let (server, port) = tls_vireod(
        root.path(),
        "a",
        &pki,
        "alice = \"readonly\"\nbob = \"admin\"",
    );
    let ca = pki.dir.join("cacert.pem");
    block_on(async {
        let methods = reflected_methods(server.connect().await).await;
        assert!(
            methods.len() > 100
                && methods
                    .iter()
                    .any(|m| m.contains("DomainService/StartDomain"))
                && methods.iter().any(|m| m.contains("HostService/JoinHost")),
            "reflection lists every service's methods: {methods:?}"
        );
        let anonymous = tls_channel(port, &ca, None).await;
        let alice = tls_channel(port, &ca, Some(&root.path().join("alice"))).await;
        let bob = tls_channel(port, &ca, Some(&root.path().join("bob"))).await;
        let mallory = tls_channel(port, &ca, Some(&root.path().join("mallory"))).await;
        let mut wrong = Vec::new();
        for path in &methods {
            let needed = required_role(path);
            let own_credential = self_authenticated(path);
            // JoinHost carries its own credential: an empty join token is refused by its handler.
            let allowed_unless = |role: Role| {
                if own_credential {
                    Code::Unauthenticated
                } else if needed > role {
                    Code::PermissionDenied
                } else {
                    Code::Ok
                }
            };
            let checks = [
                (
                    "no credentials",
                    anonymous.clone(),
                    None,
                    Code::Unauthenticated,
                ),
                (
                    "certificate without a role",
                    mallory.clone(),
                    None,
                    if own_credential {
                        Code::Unauthenticated
                    } else {
                        Code::PermissionDenied
                    },
                ),
                (
                    "readonly",
                    alice.clone(),
                    None,
                    allowed_unless(Role::ReadOnly),
                ),
                (
                    "operator token",
                    anonymous.clone(),
                    Some(pki.token.as_str()),
                    allowed_unless(Role::Operator),
                ),
                ("admin", bob.clone(), None, allowed_unless(Role::Admin)),
            ];
            for (who, channel, token, expected) in checks {
                let code = answer(channel, token, path).await;
                let denied = matches!(code, Code::Unauthenticated | Code::PermissionDenied);
                let as_expected = match expected {
                    // Allowed: the call reached its handler, which may refuse the empty request.
                    Code::Ok => !denied,
                    expected => code == expected,
                };
                if !as_expected {
                    wrong.push(format!("{path} as {who}: {code:?}, expected {expected:?}"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} calls answered wrongly:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        eprintln!("{} methods checked for 5 callers", methods.len());
    });

    // The CLI over TLS: a certificate, a token, and -r.
    let vireo = |uri: &str, token: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(binary("vireo"));
        command
            .arg("-c")
            .arg(uri)
            .args(args)
            .env_remove("VIREO_TOKEN");
        if let Some(token) = token {
            command.env("VIREO_TOKEN", token);
        }
        command.output().unwrap()
    };
    let uri_for = |client: &str| {
        format!(
            "https://localhost:{port}/?pkipath={}",
            root.path().join(client).display()
        )
    };
    let whoami = stdout(&vireo(&uri_for("alice"), None, &["whoami"]));
    assert!(
        whoami.contains("alice") && whoami.contains("readonly"),
        "{whoami}"
    );
    let whoami = stdout(&vireo(&uri_for("alice"), Some(&pki.token), &["whoami"]));
    assert!(
        whoami.contains("ci") && whoami.contains("operator") && whoami.contains("bearer token"),
        "{whoami}"
    );
    let denied = vireo(
        &uri_for("alice"),
        None,
        &[
            "pool-define-as",
            "p1",
            "dir",
            "--target",
            "/tmp/vireo-access-p1",
        ],
    );
    assert!(
        stderr(&denied).contains("DefinePool needs role admin; `alice` has role readonly"),
        "{}",
        stderr(&denied)
    );
    let target = root.path().join("p1");
    let target = target.to_str().unwrap();
    let defined = vireo(
        &uri_for("bob"),
        None,
        &["pool-define-as", "p1", "dir", "--target", target],
    );
    assert!(defined.status.success(), "{}", stderr(&defined));
    let readonly = vireo(&uri_for("bob"), None, &["-r", "pool-undefine", "p1"]);
    assert!(
        stderr(&readonly).contains("this connection is read-only"),
        "{}",
        stderr(&readonly)
    );

    // The audit log names who changed what, and how it ended.
    let audit = std::fs::read_to_string(server.state_dir.join("gateway/audit.log")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let find = |subject: &str, method: &str, result: &str| {
        records.iter().any(|record| {
            record["subject"] == subject
                && record["method"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with(method)
                && record["result"] == result
        })
    };
    assert!(
        find("alice", "StoragePoolService/DefinePool", "PermissionDenied"),
        "{audit}"
    );
    assert!(
        find("bob", "StoragePoolService/DefinePool", "Ok"),
        "{audit}"
    );
    assert!(
        records.iter().all(|record| !record["method"]
            .as_str()
            .unwrap_or_default()
            .contains("/List")),
        "reads are not audited"
    );
}

/// Another machine's vireod, reached over TCP with mutual TLS: it joins a gateway as a host, and
/// calls for it go to its gateway, which knows this gateway by its client certificate.
#[test]
fn a_host_behind_tls_joins_and_serves() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path(), &["cli"]);
    // The far host's gateway grants the near gateway (certificate `near-gateway`) admin.
    let (far, far_port) = tls_vireod(root.path(), "far", &pki, "\"near-gateway\" = \"admin\"");
    // The near gateway presents clientcert.pem from its PKI directory.
    let near_pki = root.path().join("near-pki");
    pki_client_into(&pki.dir, "near-gateway", &near_pki);
    let config = root.path().join("near.toml");
    std::fs::write(
        &config,
        format!(
            "[network]\ndefault_network = false\n[gateway]\nhost_name = \"near\"\n[tls]\npki_dir = \"{}\"\n",
            near_pki.display()
        ),
    )
    .unwrap();
    let near = Server::vireod_with(&[], &["--config", config.to_str().unwrap()]);
    let token = vireo_tests::ok(&near, &["host-join-token", "--name", "far"]);
    let address = format!("https://localhost:{far_port}");
    let joined = vireo_tests::ok(
        &near,
        &["host-join", "far", &address, "--token", token.trim()],
    );
    assert!(joined.contains("Host far joined"), "{joined}");
    let hosts = vireo_tests::ok(&near, &["host-list"]);
    let far_line = hosts.lines().find(|line| line.contains(" far ")).unwrap();
    assert!(far_line.contains("up"), "{hosts}");

    // A pool defined through the near gateway for `far` exists on far, and only there.
    let target = root.path().join("far-pool");
    vireo_tests::ok(
        &near,
        &[
            "--host",
            "far",
            "pool-define-as",
            "farpool",
            "dir",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(vireo_tests::ok(&far, &["pool-list", "--all"]).contains("farpool"));
    assert!(!vireo_tests::ok(&near, &["pool-list", "--all"]).contains("farpool"));
    // far's audit log names the near gateway's certificate.
    let audit = std::fs::read_to_string(far.state_dir.join("gateway/audit.log")).unwrap();
    assert!(audit.contains("\"subject\":\"near-gateway\""), "{audit}");

    // A used token does not work twice; a bad address leaves nothing behind.
    let again = vireo_tests::fails(
        &near,
        &["host-join", "far2", &address, "--token", token.trim()],
    );
    assert!(
        again.contains("join_token: unknown, already used or expired"),
        "{again}"
    );
    let token = vireo_tests::ok(&near, &["host-join-token"]);
    let unreachable = format!("https://localhost:{}", free_port());
    let refused = vireo_tests::fails(
        &near,
        &[
            "host-join",
            "nowhere",
            &unreachable,
            "--token",
            token.trim(),
        ],
    );
    assert!(refused.contains("address: host `nowhere`"), "{refused}");
    assert!(!vireo_tests::ok(&near, &["host-list"]).contains("nowhere"));

    vireo_tests::ok(&near, &["host-remove", "far"]);
    wait_until(Duration::from_secs(10), "far leaves host-list", || {
        (!vireo_tests::ok(&near, &["host-list"]).contains(" far ")).then_some(())
    });
}

/// A client certificate for `name`, written into `out` with the CA, as `vireo pki client` does.
fn pki_client_into(pki_dir: &Path, name: &str, out: &Path) {
    pki(&[
        "client",
        name,
        "--dir",
        pki_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
}

/// A host's service on another machine: svc-compute on its own, serving TLS on TCP, is this
/// host's compute for the gateway (`[gateway.backends] compute = "https://..."`), which reaches
/// it with its client certificate.
#[test]
fn a_service_on_another_machine_over_tls() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path(), &[]);
    let port = free_port();
    let compute_config = root.path().join("compute.toml");
    std::fs::write(
        &compute_config,
        format!(
            "[tls]\npki_dir = \"{}\"\n[tls.listen]\ncompute = \"127.0.0.1:{port}\"\n[tls.clients]\n\"the-gateway\" = \"admin\"\n",
            pki.dir.display()
        ),
    )
    .unwrap();
    let compute = Server::start(
        "svc-compute",
        "compute.sock",
        &["--config", compute_config.to_str().unwrap()],
    );
    let gateway_pki = root.path().join("gateway-pki");
    pki_client_into(&pki.dir, "the-gateway", &gateway_pki);
    let config = root.path().join("vireod.toml");
    std::fs::write(
        &config,
        format!(
            "[network]\ndefault_network = false\n[gateway]\nhost_name = \"split\"\n[gateway.backends]\ncompute = \"https://localhost:{port}\"\n[tls]\npki_dir = \"{}\"\n",
            gateway_pki.display()
        ),
    )
    .unwrap();
    let vireod = Server::vireod_with(&[], &["--config", config.to_str().unwrap()]);

    let xml = root.path().join("far.xml");
    std::fs::write(
        &xml,
        "<domain type='qemu'><name>far-domain</name><memory unit='MiB'>64</memory><vcpu>1</vcpu></domain>",
    )
    .unwrap();
    vireo_tests::ok(&vireod, &["define", xml.to_str().unwrap()]);
    // The domain lives with the remote compute service (its own socket answers for it).
    let direct = std::process::Command::new(binary("vireo"))
        .args([
            "-c",
            &format!("unix://{}", compute.socket.display()),
            "dominfo",
            "far-domain",
        ])
        .output()
        .unwrap();
    assert!(
        stdout(&direct).contains("far-domain"),
        "{}",
        stderr(&direct)
    );
    let hosts = vireo_tests::ok(&vireod, &["--output", "json", "host-list"]);
    assert!(
        hosts.contains(&format!("https://localhost:{port}")),
        "{hosts}"
    );
    assert!(vireo_tests::ok(&vireod, &["list", "--all"]).contains("far-domain"));
    // Without the gateway's certificate the service's port refuses.
    block_on(async {
        let anonymous = tls_channel(port, &pki.dir.join("cacert.pem"), None).await;
        let code = answer(
            anonymous,
            None,
            "/vireo.compute.v1.DomainService/ListDomains",
        )
        .await;
        assert_eq!(code, Code::Unauthenticated);
    });
}
