//! Persistent tap devices, made with the tun driver's ioctls (netlink cannot make them): a guest
//! port's tap outlives this call and is opened by name by the engine (QEMU or vireo-vmm).

use std::os::fd::AsRawFd;

/// `_IOW('T', 202, int)` and `_IOW('T', 203, int)` of <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the persistent tap `name` (down, no address; the caller attaches it).
pub fn create(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{name}' is not a tap name (1-15 bytes)"),
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = InterfaceRequest {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `request` is a valid ifreq for TUNSETIFF and lives across the call; the fd is ours.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument; the fd is the tap just attached.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
