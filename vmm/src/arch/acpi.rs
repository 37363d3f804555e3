//! ACPI tables: RSDP, XSDT, FADT (classic PM1 fixed hardware: power button and S5 through I/O
//! ports), FACS, DSDT (declares `_S5_`), and MADT (one local APIC per vCPU, the IOAPIC, and the
//! SCI as a level-triggered interrupt). Linux finds CPUs and powers off through these.

use crate::vstate::memory::GuestRam;
use acpi_tables::Aml;
use acpi_tables::aml::{Name, Package};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{ACPI_END, ACPI_START, IOAPIC_START, LAPIC_START};
use crate::devices::acpi_pm::{PM_TMR_PORT, PM1A_CNT_PORT, PM1A_EVT_PORT, SCI_IRQ, SLP_TYP_S5};

const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_TABLE_ID: [u8; 8] = *b"VIREOVMM";
const OEM_REVISION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes; the BIOS area has {available}")]
    TooLarge { needed: u64, available: u64 },
    #[error("writing ACPI tables: {0}")]
    GuestWrite(#[from] vm_memory::GuestMemoryError),
}

/// A Generic Address Structure for an I/O port register of `bit_width` bits.
fn io_gas(port: u16, bit_width: u8) -> [u8; 12] {
    let access_size = match bit_width {
        8 => 1,
        16 => 2,
        _ => 3,
    };
    let mut gas = [0u8; 12];
    gas[0] = 1; // system I/O space
    gas[1] = bit_width;
    gas[3] = access_size;
    gas[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    gas
}

/// The PCI host bridge, so the guest's ACPI finds bus 0: configuration by ports 0xCF8-0xCFF
/// (and ECAM through the MCFG), BARs in the window below ECAM.
fn pci_root_bridge(aml: &mut Vec<u8>) {
    use crate::devices::pci::{BAR_WINDOW_END, BAR_WINDOW_START};
    use acpi_tables::aml::{
        AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, ResourceTemplate,
    };
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let bus_numbers = AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let window_start = u32::try_from(BAR_WINDOW_START).unwrap_or(0);
    let window_end = u32::try_from(BAR_WINDOW_END - 1).unwrap_or(0);
    let bars = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        window_start,
        window_end,
        None,
    );
    let resources = ResourceTemplate::new(vec![&bus_numbers, &config_ports, &bars]);
    let hid_name = Name::new("_HID".into(), &hid);
    let cid_name = Name::new("_CID".into(), &cid);
    let segment = Name::new("_SEG".into(), &0u8);
    let base_bus = Name::new("_BBN".into(), &0u8);
    let uid = Name::new("_UID".into(), &0u8);
    let crs = Name::new("_CRS".into(), &resources);
    Device::new(
        "_SB_.PCI0".into(),
        vec![&hid_name, &cid_name, &segment, &base_bus, &uid, &crs],
    )
    .to_aml_bytes(aml);
}

fn dsdt() -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let s5 = Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &0u8, &0u8]);
    let mut aml = Vec::new();
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut aml);
    pci_root_bridge(&mut aml);
    dsdt.append_slice(&aml);
    dsdt
}

fn facs() -> Vec<u8> {
    let mut facs = vec![0u8; 64];
    facs[0..4].copy_from_slice(b"FACS");
    facs[4..8].copy_from_slice(&64u32.to_le_bytes());
    facs[32] = 2; // version
    facs
}

/// FADT field offsets (ACPI 6.x).
mod fadt {
    pub const FIRMWARE_CTRL: usize = 36;
    pub const DSDT: usize = 40;
    pub const SCI_INT: usize = 46;
    pub const PM1A_EVT_BLK: usize = 56;
    pub const PM1A_CNT_BLK: usize = 64;
    pub const PM_TMR_BLK: usize = 76;
    pub const PM1_EVT_LEN: usize = 88;
    pub const PM1_CNT_LEN: usize = 89;
    pub const PM_TMR_LEN: usize = 91;
    pub const P_LVL2_LAT: usize = 96;
    pub const P_LVL3_LAT: usize = 98;
    pub const CENTURY: usize = 108;
    pub const FLAGS: usize = 112;
    pub const MINOR_VERSION: usize = 131;
    pub const X_FIRMWARE_CTRL: usize = 132;
    pub const X_DSDT: usize = 140;
    pub const X_PM1A_EVT_BLK: usize = 148;
    pub const X_PM1A_CNT_BLK: usize = 172;
    pub const X_PM_TMR_BLK: usize = 208;
    pub const LENGTH: u32 = 276;
    /// WBINVD works, C1 supported, no sleep button (bit 5); bit 4 clear = fixed power button.
    pub const FLAGS_VALUE: u32 = (1 << 0) | (1 << 2) | (1 << 5);
}

fn fadt(dsdt_address: u64, facs_address: u64) -> Sdt {
    let mut table = Sdt::new(
        *b"FACP",
        fadt::LENGTH,
        6,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let low32 = |address: u64| u32::try_from(address).unwrap_or_default();
    table.write_u32(fadt::FIRMWARE_CTRL, low32(facs_address));
    table.write_u32(fadt::DSDT, low32(dsdt_address));
    table.write_u16(fadt::SCI_INT, u16::from(SCI_IRQ));
    table.write_u32(fadt::PM1A_EVT_BLK, u32::from(PM1A_EVT_PORT));
    table.write_u32(fadt::PM1A_CNT_BLK, u32::from(PM1A_CNT_PORT));
    table.write_u32(fadt::PM_TMR_BLK, u32::from(PM_TMR_PORT));
    table.write_u8(fadt::PM1_EVT_LEN, 4);
    table.write_u8(fadt::PM1_CNT_LEN, 2);
    table.write_u8(fadt::PM_TMR_LEN, 4);
    // Latencies above the limits: no C2/C3.
    table.write_u16(fadt::P_LVL2_LAT, 101);
    table.write_u16(fadt::P_LVL3_LAT, 1001);
    table.write_u8(fadt::CENTURY, crate::devices::rtc::CMOS_CENTURY);
    table.write_u32(fadt::FLAGS, fadt::FLAGS_VALUE);
    table.write_u8(fadt::MINOR_VERSION, 3);
    table.write_u64(fadt::X_FIRMWARE_CTRL, facs_address);
    table.write_u64(fadt::X_DSDT, dsdt_address);
    table.write_bytes(fadt::X_PM1A_EVT_BLK, &io_gas(PM1A_EVT_PORT, 32));
    table.write_bytes(fadt::X_PM1A_CNT_BLK, &io_gas(PM1A_CNT_PORT, 16));
    table.write_bytes(fadt::X_PM_TMR_BLK, &io_gas(PM_TMR_PORT, 32));
    table
}

fn madt(vcpu_count: u8) -> Sdt {
    let mut table = Sdt::new(*b"APIC", 44, 4, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.write_u32(36, u32::try_from(LAPIC_START).unwrap_or_default());
    table.write_u32(40, 1); // PCAT_COMPAT: 8259 PICs present
    let mut entries = Vec::new();
    for id in 0..vcpu_count {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, enabled.
        entries.extend_from_slice(&[0, 8, id, id]);
        entries.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, id, reserved, address, GSI base.
    entries.extend_from_slice(&[1, 12, vcpu_count, 0]);
    entries.extend_from_slice(
        &u32::try_from(IOAPIC_START)
            .unwrap_or_default()
            .to_le_bytes(),
    );
    entries.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source overrides: the PIT's IRQ 0 on GSI 2; the SCI level-triggered, active high.
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (SCI_IRQ, u32::from(SCI_IRQ), 0x000d)] {
        entries.extend_from_slice(&[2, 10, 0, irq]);
        entries.extend_from_slice(&gsi.to_le_bytes());
        entries.extend_from_slice(&flags.to_le_bytes());
    }
    // Local APIC NMI on LINT1 of every processor.
    entries.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    table.append_slice(&entries);
    table
}

/// MCFG: the ECAM window of PCI segment 0, bus 0.
fn mcfg() -> Sdt {
    let mut table = Sdt::new(*b"MCFG", 44, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut entry = Vec::new();
    entry.extend_from_slice(&crate::devices::pci::ECAM_START.to_le_bytes());
    entry.extend_from_slice(&0u16.to_le_bytes()); // segment
    entry.extend_from_slice(&[0, 0]); // start and end bus
    entry.extend_from_slice(&0u32.to_le_bytes());
    table.append_slice(&entry);
    table
}

fn xsdt(entries: &[u64]) -> Sdt {
    let mut table = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|entry| entry.to_le_bytes())
        .collect();
    table.append_slice(&bytes);
    table
}

fn align(address: u64, to: u64) -> u64 {
    address.div_ceil(to) * to
}

/// Builds every table and writes them at `ACPI_START`; the RSDP comes first.
pub fn write_tables(mem: &GuestRam, vcpu_count: u8) -> Result<(), AcpiError> {
    let facs_address = align(ACPI_START + 64, 64);
    let facs = facs();
    let dsdt_address = align(facs_address + facs.len() as u64, 16);
    let dsdt = dsdt();
    let fadt_address = align(dsdt_address + dsdt.len() as u64, 16);
    let fadt = fadt(dsdt_address, facs_address);
    let madt_address = align(fadt_address + fadt.len() as u64, 16);
    let madt = madt(vcpu_count);
    let mcfg_address = align(madt_address + madt.len() as u64, 16);
    let mcfg = mcfg();
    let xsdt_address = align(mcfg_address + mcfg.len() as u64, 16);
    let xsdt = xsdt(&[fadt_address, madt_address, mcfg_address]);
    let end = xsdt_address + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            needed: end - ACPI_START,
            available: ACPI_END - ACPI_START,
        });
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_address).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(ACPI_START))?;
    mem.write_slice(&facs, GuestAddress(facs_address))?;
    mem.write_slice(dsdt.as_slice(), GuestAddress(dsdt_address))?;
    mem.write_slice(fadt.as_slice(), GuestAddress(fadt_address))?;
    mem.write_slice(madt.as_slice(), GuestAddress(madt_address))?;
    mem.write_slice(mcfg.as_slice(), GuestAddress(mcfg_address))?;
    mem.write_slice(xsdt.as_slice(), GuestAddress(xsdt_address))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)) == 0
    }

    #[test]
    fn tables_are_well_formed() {
        let madt = madt(2);
        assert!(checksum_ok(madt.as_slice()));
        let length = u32::from_le_bytes(madt.as_slice()[4..8].try_into().unwrap()) as usize;
        assert_eq!(length, madt.len());
        assert_eq!(&madt.as_slice()[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&madt.as_slice()[52..56], &[0, 8, 1, 1]);

        let fadt = fadt(0x1000, 0x2000);
        assert!(checksum_ok(fadt.as_slice()));
        assert_eq!(fadt.len(), 276);
        assert_eq!(
            u32::from_le_bytes(fadt.as_slice()[64..68].try_into().unwrap()),
            u32::from(PM1A_CNT_PORT)
        );

        let dsdt = dsdt();
        assert!(checksum_ok(dsdt.as_slice()));
        let body = &dsdt.as_slice()[36..];
        assert!(body.windows(4).any(|w| w == b"_S5_"), "DSDT declares _S5_");
    }
}
