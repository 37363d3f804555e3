//! Snapshot metadata as libvirt's `<domainsnapshot>` XML (snapshot-dumpxml), with the domain's
//! definition at the time of the snapshot inside.

use vireo_proto::compute::v1 as pb;

use crate::XmlError;
use crate::xml::XmlWriter;

/// libvirt's snapshot state words.
fn state_word(state: i32) -> &'static str {
    match pb::DomainState::try_from(state) {
        Ok(pb::DomainState::Running) => "running",
        Ok(pb::DomainState::Paused) => "paused",
        Ok(pb::DomainState::Crashed) => "crashed",
        Ok(pb::DomainState::Pmsuspended) => "pmsuspended",
        _ => "shutoff",
    }
}

/// `domain_xml` is the domain's libvirt XML when the snapshot was taken; `memory_file` names
/// the external memory state, if any.
pub fn format(
    snapshot: &pb::Snapshot,
    memory_file: Option<&str>,
    domain_xml: &str,
) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    x.open("domainsnapshot", &[])?;
    x.text("name", &[], &snapshot.name)?;
    if !snapshot.description.is_empty() {
        x.text("description", &[], &snapshot.description)?;
    }
    x.text("state", &[], state_word(snapshot.state))?;
    if !snapshot.parent.is_empty() {
        x.open("parent", &[])?;
        x.text("name", &[], &snapshot.parent)?;
        x.close("parent")?;
    }
    x.text(
        "creationTime",
        &[],
        &snapshot.creation_time_unix_s.to_string(),
    )?;
    let running = snapshot.state != pb::DomainState::Shutoff as i32;
    match memory_file {
        Some(file) => x.empty("memory", &[("snapshot", "external"), ("file", file)])?,
        None if running => x.empty("memory", &[("snapshot", "internal")])?,
        None => x.empty("memory", &[("snapshot", "no")])?,
    }
    let mut text = x.finish();
    for line in domain_xml.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("</domainsnapshot>\n");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_xml_holds_the_domain() {
        let snapshot = pb::Snapshot {
            name: "s1".into(),
            description: "before the upgrade".into(),
            parent: "s0".into(),
            creation_time_unix_s: 1_795_715_990,
            state: pb::DomainState::Running as i32,
            ..Default::default()
        };
        let xml = format(
            &snapshot,
            None,
            "<domain type='kvm'>\n  <name>g</name>\n</domain>\n",
        )
        .unwrap();
        assert_eq!(
            xml,
            "<domainsnapshot>\n  <name>s1</name>\n  <description>before the upgrade</description>\n  <state>running</state>\n  <parent>\n    <name>s0</name>\n  </parent>\n  <creationTime>1795715990</creationTime>\n  <memory snapshot='internal'/>\n  <domain type='kvm'>\n    <name>g</name>\n  </domain>\n</domainsnapshot>\n"
        );
    }
}
