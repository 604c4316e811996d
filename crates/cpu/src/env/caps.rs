//! Capabilities of processes in an environment: Docker's default set without
//! CAP_MKNOD (a device node made on the environment's FUSE root would reach
//! host devices) and without CAP_NET_RAW (with `net=host` an environment
//! shares the node's network, where raw sockets could read other tenants'
//! traffic), with
//! no_new_privs so setuid files cannot add any back.

use std::io;

/// The capabilities kept (Linux numbering): chown, dac_override, fowner,
/// fsetid, kill, setgid, setuid, setpcap, net_bind_service, sys_chroot,
/// audit_write, setfcap.
pub const KEPT: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31];

const CAP_LAST: u32 = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability not in [`KEPT`] from the bounding, permitted,
/// effective, inheritable and ambient sets, then sets no_new_privs. Call in
/// the process that is about to exec the environment's program.
pub fn restrict() -> io::Result<()> {
    for cap in 0..=CAP_LAST {
        if !KEPT.contains(&cap) {
            // SAFETY: prctl with integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let mut data = [CapData::default(); 2];
    for &cap in KEPT {
        let slot = &mut data[(cap / 32) as usize];
        let bit = 1u32 << (cap % 32);
        slot.effective |= bit;
        slot.permitted |= bit;
        slot.inheritable |= bit;
    }
    let header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    // SAFETY: capset with a v3 header and two data words, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
