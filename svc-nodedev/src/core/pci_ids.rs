//! Vendor and product names from the pci.ids database (Debian's `pci.ids` package), when the
//! host has it; without it devices are shown by their numbers only, as libvirt does.

use std::collections::HashMap;

const LOCATIONS: [&str; 2] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

#[derive(Default)]
pub struct PciIds {
    vendors: HashMap<u32, String>,
    products: HashMap<(u32, u32), String>,
}

impl PciIds {
    pub fn load() -> PciIds {
        LOCATIONS
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .map(|text| PciIds::parse(&text))
            .unwrap_or_default()
    }

    /// Vendor lines start in column 0, their devices with one tab; subsystems (two tabs) and
    /// the device classes at the end of the file are not needed.
    pub fn parse(text: &str) -> PciIds {
        let mut ids = PciIds::default();
        let mut vendor = None;
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line.starts_with("C ") {
                break;
            }
            let entry = |rest: &str| {
                let (id, name) = rest.split_once("  ")?;
                Some((
                    u32::from_str_radix(id.trim(), 16).ok()?,
                    name.trim().to_string(),
                ))
            };
            if let Some(rest) = line.strip_prefix('\t') {
                if rest.starts_with('\t') {
                    continue;
                }
                if let (Some(vendor), Some((product, name))) = (vendor, entry(rest)) {
                    ids.products.insert((vendor, product), name);
                }
            } else if let Some((id, name)) = entry(line) {
                vendor = Some(id);
                ids.vendors.insert(id, name);
            }
        }
        ids
    }

    /// (vendor name, product name); empty where unknown.
    pub fn lookup(&self, vendor: u32, product: u32) -> (String, String) {
        (
            self.vendors.get(&vendor).cloned().unwrap_or_default(),
            self.products
                .get(&(vendor, product))
                .cloned()
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendors_and_products() {
        let ids = PciIds::parse(
            "# comment\n1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n\t\t1af4 1100  QEMU\nC 00  Unclassified\n",
        );
        assert_eq!(
            ids.lookup(0x1af4, 0x1041),
            ("Red Hat, Inc.".into(), "Virtio 1.0 network device".into())
        );
        assert_eq!(ids.lookup(0x8086, 1), (String::new(), String::new()));
    }
}
