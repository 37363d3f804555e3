//! MSI delivery through irqfds: each distinct message (address, data) the guest programs gets a
//! GSI route and an eventfd KVM listens on, so a device thread raises it with one eventfd write
//! and nothing else in the process is involved. Routes are made on first use; past
//! `MAX_MSI_ROUTES` (a guest rewriting its MSI-X tables without end) messages go out with
//! KVM_SIGNAL_MSI instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry, kvm_msi,
};
use vmm_sys_util::eventfd::EventFd;

use super::vm::Vm;

/// GSIs 0-23 are the IOAPIC's pins (0-15 also the PICs'); MSI routes come after them.
const IOAPIC_PINS: u32 = 24;
const PIC_PINS: u32 = 16;
const MAX_MSI_ROUTES: usize = 1024;

pub struct MsiRoutes {
    vm: Arc<Vm>,
    /// Message → (GSI, the irqfd that raises it).
    routes: Mutex<HashMap<(u64, u32), (u32, EventFd)>>,
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = irqchip;
    entry.u.irqchip.pin = pin;
    entry
}

fn msi_route(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi.address_lo = u32::try_from(address & 0xffff_ffff).unwrap_or(0);
    entry.u.msi.address_hi = u32::try_from(address >> 32).unwrap_or(0);
    entry.u.msi.data = data;
    entry
}

/// The routes KVM sets up with its in-kernel irqchip; a new table must keep them (the serial
/// port's irqfd and the PIT use them).
fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        entries.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < PIC_PINS {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip_route(gsi, pic, gsi % 8));
        }
    }
    entries
}

impl MsiRoutes {
    pub fn new(vm: Arc<Vm>) -> MsiRoutes {
        MsiRoutes {
            vm,
            routes: Mutex::default(),
        }
    }

    /// How many messages have an irqfd route.
    pub fn count(&self) -> usize {
        self.routes.lock().map_or(0, |routes| routes.len())
    }

    /// Raises the MSI `(address, data)` in the guest.
    pub fn send(&self, address: u64, data: u32) {
        if let Ok(mut routes) = self.routes.lock() {
            if let Some((_, event)) = routes.get(&(address, data)) {
                if event.write(1).is_ok() {
                    return;
                }
            } else if routes.len() < MAX_MSI_ROUTES
                && let Some(event) = self.add_route(&mut routes, address, data)
                && event.write(1).is_ok()
            {
                return;
            }
        }
        let message = kvm_msi {
            address_lo: u32::try_from(address & 0xffff_ffff).unwrap_or(0),
            address_hi: u32::try_from(address >> 32).unwrap_or(0),
            data,
            ..Default::default()
        };
        let _ = self.vm.fd.signal_msi(message);
    }

    /// An irqfd that raises the MSI `(address, data)`, for a device that signals KVM itself (an
    /// assigned host device); None past the route limit or when KVM refuses.
    pub fn irqfd(&self, address: u64, data: u32) -> Option<EventFd> {
        let mut routes = self.routes.lock().ok()?;
        if let Some((_, event)) = routes.get(&(address, data)) {
            return event.try_clone().ok();
        }
        if routes.len() >= MAX_MSI_ROUTES {
            return None;
        }
        self.add_route(&mut routes, address, data)?.try_clone().ok()
    }

    /// Installs a route for the message and its irqfd; None if KVM refuses either.
    fn add_route<'a>(
        &self,
        routes: &'a mut HashMap<(u64, u32), (u32, EventFd)>,
        address: u64,
        data: u32,
    ) -> Option<&'a EventFd> {
        let gsi = IOAPIC_PINS + u32::try_from(routes.len()).ok()?;
        let mut entries = irqchip_routes();
        entries.extend(
            routes
                .iter()
                .map(|(&(address, data), &(gsi, _))| msi_route(gsi, address, data)),
        );
        entries.push(msi_route(gsi, address, data));
        let table = KvmIrqRouting::from_entries(&entries).ok()?;
        self.vm.fd.set_gsi_routing(&table).ok()?;
        let event = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        self.vm.fd.register_irqfd(&event, gsi).ok()?;
        routes.insert((address, data), (gsi, event));
        routes.get(&(address, data)).map(|(_, event)| event)
    }
}
