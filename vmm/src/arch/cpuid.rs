//! CPUID for each vCPU: what KVM supports, with this vCPU's APIC ID and a topology of one socket
//! with N single-threaded cores, and the hypervisor bit set.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_AMD_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY_EXT: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xB level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores (x2APIC ID shift of the core level).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `apic_id` of `vcpu_count`.
pub fn adjust(entries: &mut [kvm_cpuid_entry2], apic_id: u32, vcpu_count: u32) {
    let count = vcpu_count.max(1);
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | ((count & 0xff) << 16) | ((apic_id & 0xff) << 24);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                entry.eax =
                    (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            LEAF_TOPOLOGY => {
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = id_bits(count);
                        entry.ebx = count;
                        entry.ecx = (LEVEL_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            LEAF_AMD_ADDRESS_SIZES => {
                entry.ecx = (entry.ecx & !0xf0ff) | ((count - 1) & 0xff) | (id_bits(count) << 12);
            }
            LEAF_AMD_TOPOLOGY_EXT => {
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0800,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology() {
        let mut entries = vec![
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0x8000_0008, 0),
            entry(4, 0),
        ];
        entries[4].eax = 3 << 5;
        adjust(&mut entries, 2, 3);
        assert_eq!(entries[0].ebx >> 24, 2);
        assert_eq!((entries[0].ebx >> 16) & 0xff, 3);
        assert_eq!(entries[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(entries[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(entries[0].edx & EDX_HTT, 0);
        assert_eq!((entries[2].eax, entries[2].ebx, entries[2].edx), (2, 3, 2));
        assert_eq!(entries[3].ecx & 0xff, 2);
        assert_eq!(entries[4].eax >> 26, 2);
        assert_eq!((entries[4].eax >> 14) & 0xfff, 2, "L3 shared by all cores");
        let mut single = vec![entry(1, 0)];
        adjust(&mut single, 0, 1);
        assert_eq!(single[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn id_bits_cover_the_count() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
