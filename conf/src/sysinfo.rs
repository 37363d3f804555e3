//! libvirt sysinfo XML (`virsh sysinfo`): the host's SMBIOS facts.

use crate::xml::{XmlError, XmlWriter};

/// Formats SMBIOS sections given as (section, [(entry name, value)]); empty sections are omitted.
pub fn format(sections: &[(&str, Vec<(&str, String)>)]) -> Result<String, XmlError> {
    let mut xml = XmlWriter::new();
    xml.open("sysinfo", &[("type", "smbios")])?;
    for (section, entries) in sections.iter().filter(|(_, entries)| !entries.is_empty()) {
        xml.open(section, &[])?;
        for (name, value) in entries {
            xml.text("entry", &[("name", name)], value)?;
        }
        xml.close(section)?;
    }
    xml.close("sysinfo")?;
    Ok(xml.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_golden() {
        let sections = vec![
            (
                "bios",
                vec![
                    ("vendor", "SeaBIOS".to_string()),
                    ("version", "1.16.2".to_string()),
                ],
            ),
            ("system", vec![("manufacturer", "QEMU & Co".to_string())]),
            ("processor", vec![]),
        ];
        let xml = super::format(&sections).unwrap();
        assert_eq!(
            xml,
            include_str!("../tests/golden/sysinfo.xml"),
            "got:\n{xml}"
        );
    }
}
