//! A port's `<bandwidth>` with tc: traffic to the guest is shaped on the tap's egress (htb), and
//! traffic from the guest, which arrives on the tap's ingress where nothing can be shaped, is
//! redirected to an ifb device of the port's own and shaped there. Rates are libvirt's KiB/s.

use vireo_proto::network::v1 as pb;

use super::netlink::Netlink;
use crate::error::{Error, Result};

/// The ifb device of the port with this UUID (15 bytes at most, as every interface name).
pub fn ifb_name(port_uuid: &str) -> String {
    let hex: String = port_uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(10)
        .collect();
    format!("vifb{hex}")
}

async fn tc(args: &[&str]) -> Result<()> {
    let output = tokio::process::Command::new("tc")
        .args(args)
        .output()
        .await
        .map_err(|err| Error::Tool(format!("cannot run tc: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Tool(format!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// tc's words for one direction: rate, ceiling and burst, in bits and bytes so that no unit of
/// tc's is misread (its `kbps` is 1000 bytes, libvirt's kilobyte 1024).
fn htb_class(rate: &pb::BandwidthRate) -> Vec<String> {
    let bits = |kib: u64| format!("{}bit", kib.saturating_mul(8192));
    let mut words = vec!["rate".to_string(), bits(rate.average_kib_s)];
    if rate.peak_kib_s > 0 {
        words.extend(["ceil".to_string(), bits(rate.peak_kib_s)]);
    }
    if rate.burst_kib > 0 {
        words.extend([
            "burst".to_string(),
            format!("{}b", rate.burst_kib.saturating_mul(1024)),
        ]);
    }
    words
}

/// Shapes `dev`'s egress to `rate`.
async fn shape(dev: &str, rate: &pb::BandwidthRate) -> Result<()> {
    tc(&[
        "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
    ])
    .await?;
    let class = htb_class(rate);
    let mut args = vec![
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
    ];
    args.extend(class.iter().map(String::as_str));
    // The class keeps htb's default leaf (pfifo): sfq is a module this kernel may not have.
    tc(&args).await
}

/// Applies `bandwidth` to the port's `tap` (whose old limits, if any, go first).
pub async fn apply(
    netlink: &Netlink,
    tap: &str,
    port_uuid: &str,
    bandwidth: &pb::Bandwidth,
) -> Result<()> {
    clear(netlink, tap, port_uuid).await;
    if let Some(inbound) = bandwidth.inbound.as_ref().filter(|r| r.average_kib_s > 0) {
        shape(tap, inbound).await?;
    }
    if let Some(outbound) = bandwidth.outbound.as_ref().filter(|r| r.average_kib_s > 0) {
        let ifb = ifb_name(port_uuid);
        netlink.add_ifb(&ifb).await?;
        tc(&["qdisc", "add", "dev", tap, "handle", "ffff:", "ingress"]).await?;
        tc(&[
            "filter", "add", "dev", tap, "parent", "ffff:", "protocol", "all", "u32", "match",
            "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", &ifb,
        ])
        .await?;
        shape(&ifb, outbound).await?;
    }
    Ok(())
}

/// Removes a port's limits and its ifb device; what is not there is skipped.
pub async fn clear(netlink: &Netlink, tap: &str, port_uuid: &str) {
    let _ = tc(&["qdisc", "del", "dev", tap, "root"]).await;
    let _ = tc(&["qdisc", "del", "dev", tap, "ingress"]).await;
    let _ = netlink.delete(&ifb_name(port_uuid)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_exact_bits_and_bytes() {
        let words = htb_class(&pb::BandwidthRate {
            average_kib_s: 512,
            peak_kib_s: 1024,
            burst_kib: 64,
            floor_kib_s: 0,
        });
        assert_eq!(
            words,
            [
                "rate",
                "4194304bit",
                "ceil",
                "8388608bit",
                "burst",
                "65536b"
            ]
        );
        assert!(ifb_name("0a1b2c3d-0000-4000-8000-000000000001").len() <= 15);
    }
}
