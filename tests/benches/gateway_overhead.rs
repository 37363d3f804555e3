//! What the gateway adds: the list of 1000 defined domains asked of svc-compute directly on its
//! socket, through the gateway's proxy (the same call forwarded byte for byte), and through the
//! gateway's cluster view (ListAllDomains, which asks every host and merges). The three are asked
//! in turn, many times, in one run; the benchmark prints p50 and p99 of each and their ratios to
//! the direct call. Target: the gateway adds at most 20%.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vireo-tests --bench gateway_overhead`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vireo_proto::cluster::v1 as cluster;
use vireo_proto::compute::v1 as compute;
use vireo_tests::{Server, block_on};

const DOMAINS: usize = 1000;
const WARMUP: usize = 20;
const ROUNDS: usize = 300;

/// The sample below which `per_mille`/1000 of them lie.
fn percentile(samples: &mut [Duration], per_mille: usize) -> Duration {
    samples.sort_unstable();
    let at = (samples.len() - 1) * per_mille / 1000;
    samples[at]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn main() {
    let server = Server::vireod();
    block_on(async {
        let gateway = server.connect().await;
        let direct = vireo_runtime::client::connect_unix(&server.run_dir.join("compute.sock"))
            .await
            .expect("svc-compute's socket");
        let mut defining =
            compute::domain_service_client::DomainServiceClient::new(gateway.clone());
        let started = Instant::now();
        for n in 0..DOMAINS {
            defining
                .define_domain(compute::DefineDomainRequest {
                    source: Some(compute::define_domain_request::Source::Xml(format!(
                        "<domain type='qemu'><name>bench-{n:04}</name><memory unit='MiB'>64</memory></domain>"
                    ))),
                    ..Default::default()
                })
                .await
                .expect("define");
        }
        println!(
            "defined {DOMAINS} domains in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let request = compute::ListDomainsRequest {
            include_active: true,
            include_inactive: true,
            ..Default::default()
        };
        let mut via_direct = compute::domain_service_client::DomainServiceClient::new(direct);
        let mut via_gateway =
            compute::domain_service_client::DomainServiceClient::new(gateway.clone());
        let mut via_cluster =
            cluster::cluster_domain_service_client::ClusterDomainServiceClient::new(gateway);
        let cluster_request = cluster::ListAllDomainsRequest {
            include_active: true,
            include_inactive: true,
            ..Default::default()
        };
        let mut samples: [Vec<Duration>; 3] = Default::default();
        for round in 0..WARMUP + ROUNDS {
            let timings = [
                {
                    let t = Instant::now();
                    let listed = via_direct.list_domains(request.clone()).await.unwrap();
                    assert_eq!(listed.get_ref().domains.len(), DOMAINS);
                    t.elapsed()
                },
                {
                    let t = Instant::now();
                    let listed = via_gateway.list_domains(request.clone()).await.unwrap();
                    assert_eq!(listed.get_ref().domains.len(), DOMAINS);
                    t.elapsed()
                },
                {
                    let t = Instant::now();
                    let listed = via_cluster
                        .list_all_domains(cluster_request.clone())
                        .await
                        .unwrap();
                    assert_eq!(listed.get_ref().domains.len(), DOMAINS);
                    t.elapsed()
                },
            ];
            if round >= WARMUP {
                for (kept, timing) in samples.iter_mut().zip(timings) {
                    kept.push(timing);
                }
            }
        }
        let [mut direct, mut proxied, mut merged] = samples;
        let (d50, d99) = (percentile(&mut direct, 500), percentile(&mut direct, 990));
        println!("\nList of {DOMAINS} domains, {ROUNDS} rounds each, taken in turn:");
        println!(
            "{:<44} {:>10} {:>10} {:>12} {:>12}",
            "path", "p50", "p99", "p50 ratio", "p99 ratio"
        );
        println!(
            "{:<44} {:>10} {:>10} {:>12} {:>12}",
            "svc-compute directly (compute.sock)",
            ms(d50),
            ms(d99),
            "1.00",
            "1.00"
        );
        for (label, samples) in [
            ("through the gateway's proxy (gateway.sock)", &mut proxied),
            ("the gateway's cluster view (ListAllDomains)", &mut merged),
        ] {
            let (p50, p99) = (percentile(samples, 500), percentile(samples, 990));
            let (r50, r99) = (
                p50.as_secs_f64() / d50.as_secs_f64(),
                p99.as_secs_f64() / d99.as_secs_f64(),
            );
            println!(
                "{label:<44} {:>10} {:>10} {:>12.2} {:>12.2}   {}",
                ms(p50),
                ms(p99),
                r50,
                r99,
                if r50 <= 1.2 {
                    "within 20%"
                } else {
                    "MORE than 20% added"
                }
            );
        }
    });
}
