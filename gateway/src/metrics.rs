//! `/metrics` in Prometheus text format, over plain HTTP on `[gateway] metrics_address` (off when
//! unset; bind it to a loopback or management address). Per running domain of every host, read
//! at scrape time through each host's domstats: CPU time, memory (balloon current and maximum),
//! and block and interface counters, which are what virt-manager's graphs plot. Per proxied
//! method: calls by status code and a latency histogram, counted by the gateway's proxy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vireo_proto::compute::v1 as compute;
use vireo_runtime::{CancellationToken, Service};

use crate::backends::Backends;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// How long a host's domstats may take before the scrape goes on without it.
const HOST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct MethodFigures {
    /// Calls by gRPC status code name.
    calls: BTreeMap<&'static str, u64>,
    /// Count per bucket (cumulative when printed), then the total seconds.
    buckets: [u64; BUCKETS.len()],
    seconds: f64,
    count: u64,
}

/// The proxy's counts, by (service, method).
#[derive(Default)]
pub struct RpcMetrics {
    methods: Mutex<BTreeMap<(String, String), MethodFigures>>,
}

impl RpcMetrics {
    /// Counts one call of `path` (`/vireo.x.v1.Service/Method`) that ended with `code`.
    pub fn record(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let Ok(mut methods) = self.methods.lock() else {
            return;
        };
        let figures = methods
            .entry((service.to_string(), method.to_string()))
            .or_default();
        *figures.calls.entry(code_name(code)).or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            figures.buckets[bucket] += 1;
        }
        figures.seconds += seconds;
        figures.count += 1;
    }

    fn write(&self, out: &mut String) {
        let Ok(methods) = self.methods.lock() else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP vireo_rpc_calls_total gRPC calls the gateway forwarded, by status code.\n# TYPE vireo_rpc_calls_total counter"
        );
        for ((service, method), figures) in methods.iter() {
            for (code, calls) in &figures.calls {
                let _ = writeln!(
                    out,
                    "vireo_rpc_calls_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}} {calls}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP vireo_rpc_duration_seconds Time from the call's arrival to its answer's headers.\n# TYPE vireo_rpc_duration_seconds histogram"
        );
        for ((service, method), figures) in methods.iter() {
            let labels = format!("service=\"{service}\",method=\"{method}\"");
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(figures.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "vireo_rpc_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "vireo_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\nvireo_rpc_duration_seconds_sum{{{labels}}} {}\nvireo_rpc_duration_seconds_count{{{labels}}} {}",
                figures.count, figures.seconds, figures.count
            );
        }
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family's header and its samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

async fn domain_metrics(backends: &Backends, out: &mut String) {
    let groups = [
        compute::DomainStatsGroup::CpuTotal,
        compute::DomainStatsGroup::Balloon,
        compute::DomainStatsGroup::Interface,
        compute::DomainStatsGroup::Block,
    ];
    let family = |name, kind, help| Family {
        name,
        kind,
        help,
        samples: Vec::new(),
    };
    let mut families = [
        family(
            "vireo_host_up",
            "gauge",
            "1 when the host's compute service answered this scrape.",
        ),
        family(
            "vireo_domain_cpu_seconds_total",
            "counter",
            "CPU time the domain has used.",
        ),
        family(
            "vireo_domain_memory_current_bytes",
            "gauge",
            "Memory the domain has now (balloon).",
        ),
        family(
            "vireo_domain_memory_maximum_bytes",
            "gauge",
            "The domain's maximum memory.",
        ),
        family(
            "vireo_domain_block_read_bytes_total",
            "counter",
            "Bytes the domain read from a disk.",
        ),
        family(
            "vireo_domain_block_write_bytes_total",
            "counter",
            "Bytes the domain wrote to a disk.",
        ),
        family(
            "vireo_domain_block_read_requests_total",
            "counter",
            "Read requests to a disk.",
        ),
        family(
            "vireo_domain_block_write_requests_total",
            "counter",
            "Write requests to a disk.",
        ),
        family(
            "vireo_domain_interface_receive_bytes_total",
            "counter",
            "Bytes the domain received on an interface.",
        ),
        family(
            "vireo_domain_interface_transmit_bytes_total",
            "counter",
            "Bytes the domain sent on an interface.",
        ),
        family(
            "vireo_domain_interface_receive_packets_total",
            "counter",
            "Packets received on an interface.",
        ),
        family(
            "vireo_domain_interface_transmit_packets_total",
            "counter",
            "Packets sent on an interface.",
        ),
    ];
    let names = backends.host_names();
    let answers = futures::future::join_all(names.iter().map(|host| async move {
        let channel = backends.channel(host, Service::Compute)?;
        let mut client = compute::domain_service_client::DomainServiceClient::new(channel);
        let call = client.get_domain_stats(compute::GetDomainStatsRequest {
            groups: groups.iter().map(|g| *g as i32).collect(),
            list_active: true,
            ..Default::default()
        });
        tokio::time::timeout(HOST_TIMEOUT, call)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer"))?
            .map(|reply| reply.into_inner().records)
    }))
    .await;
    for (host, answer) in names.iter().zip(answers) {
        let host_label = format!("host=\"{}\"", label(host));
        families[0]
            .samples
            .push((host_label.clone(), f64::from(u8::from(answer.is_ok()))));
        for record in answer.unwrap_or_default() {
            let domain = format!(
                "{host_label},domain=\"{}\",uuid=\"{}\"",
                label(&record.name),
                label(&record.uuid)
            );
            if let Some(cpu) = &record.cpu {
                families[1]
                    .samples
                    .push((domain.clone(), cpu.time_ns as f64 / 1e9));
            }
            if let Some(balloon) = &record.balloon {
                families[2]
                    .samples
                    .push((domain.clone(), balloon.current_kib as f64 * 1024.0));
                families[3]
                    .samples
                    .push((domain.clone(), balloon.maximum_kib as f64 * 1024.0));
            }
            for block in &record.blocks {
                let Some(stats) = &block.stats else { continue };
                let labels = format!("{domain},device=\"{}\"", label(&block.name));
                for (at, value) in [
                    (4, stats.rd_bytes),
                    (5, stats.wr_bytes),
                    (6, stats.rd_req),
                    (7, stats.wr_req),
                ] {
                    families[at].samples.push((labels.clone(), value as f64));
                }
            }
            for interface in &record.interfaces {
                let labels = format!("{domain},interface=\"{}\"", label(&interface.interface));
                for (at, value) in [
                    (8, interface.rx_bytes),
                    (9, interface.tx_bytes),
                    (10, interface.rx_packets),
                    (11, interface.tx_packets),
                ] {
                    families[at].samples.push((labels.clone(), value as f64));
                }
            }
        }
    }
    for family in families {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            family.name, family.help, family.name, family.kind
        );
        for (labels, value) in family.samples {
            let _ = writeln!(out, "{}{{{labels}}} {value}", family.name);
        }
    }
}

/// Serves `/metrics` on `address` until `shutdown`.
pub async fn serve(
    address: SocketAddr,
    backends: Arc<Backends>,
    rpc: Arc<RpcMetrics>,
    shutdown: CancellationToken,
) -> Result<(), vireo_runtime::BoxError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| format!("[gateway] metrics_address {address}: {err}"))?;
    tracing::info!(%address, "metrics serving");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let backends = backends.clone();
            let rpc = rpc.clone();
            async move {
                let mut out = String::new();
                domain_metrics(&backends, &mut out).await;
                rpc.write(&mut out);
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    out,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_code_and_timed_into_cumulative_buckets() {
        let rpc = RpcMetrics::default();
        let path = "/vireo.compute.v1.DomainService/ListDomains";
        rpc.record(path, tonic::Code::Ok, Duration::from_micros(700));
        rpc.record(path, tonic::Code::Ok, Duration::from_millis(20));
        rpc.record(path, tonic::Code::NotFound, Duration::from_secs(5));
        let mut out = String::new();
        rpc.write(&mut out);
        let labels = "service=\"vireo.compute.v1.DomainService\",method=\"ListDomains\"";
        for line in [
            format!("vireo_rpc_calls_total{{{labels},code=\"OK\"}} 2"),
            format!("vireo_rpc_calls_total{{{labels},code=\"NOT_FOUND\"}} 1"),
            format!("vireo_rpc_duration_seconds_bucket{{{labels},le=\"0.0005\"}} 0"),
            format!("vireo_rpc_duration_seconds_bucket{{{labels},le=\"0.001\"}} 1"),
            format!("vireo_rpc_duration_seconds_bucket{{{labels},le=\"0.025\"}} 2"),
            format!("vireo_rpc_duration_seconds_bucket{{{labels},le=\"2.5\"}} 2"),
            format!("vireo_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("vireo_rpc_duration_seconds_count{{{labels}}} 3"),
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
