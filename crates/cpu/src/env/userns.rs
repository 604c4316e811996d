//! Rootless environments: a user namespace in which the environment's root
//! is an unprivileged range of host ids, so that nothing an environment does
//! as root counts as root for the host's kernel (keyrings, files on host
//! mounts, rlimits per user, signals).
//!
//! Each live environment of every node on the host holds its own range of
//! [`IDS_PER_ENV`] ids, claimed by an exclusive `flock` on a file in
//! [`LEASE_DIR`], then held shared by the node and by pid 1:
//! ranges are never shared, not even by two nodes on one host, and a
//! range is free again the moment the last process holding its lock is gone
//! (pid 1 holds it too, so the range outlives a crashed node exactly as long
//! as the environment's processes do).
//!
//! The namespaces of a rootless environment other than the user namespace
//! stay owned by the host's: its root has capabilities only over its own
//! files (whose owners the FUSE layer shifts, see [`fusefs::IdShift`]), and
//! none over its mounts, network or host name.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub use fusefs::IdShift;

/// Ids of one environment: 0..65535 inside, which covers `nobody` (65534).
pub const IDS_PER_ENV: u32 = 65536;

/// The first host id handed out: far above the ids of real host users,
/// above the range systemd hands out to its containers
/// (0x00080000–0x6FFFFFFF), and, with [`SLOTS`], below 0x7FFE0000 and the
/// upper half of the id space that some tools take for negative.
pub const FIRST_ID: u32 = 0x7000_0000;

/// How many environments may be rootless at once on one host.
pub const SLOTS: u32 = 4094;

/// Where the ranges' lock files are: host-wide, so that every node on the
/// host sees every claim.
pub const LEASE_DIR: &str = "/run/colony/ids";

/// A claimed range of host ids, held while this value (or a process that
/// took a [`hold`] on it) lives.
#[derive(Debug)]
pub struct Lease {
    pub ids: IdShift,
    /// Held for its flock: the claim itself.
    _lock: File,
    path: std::path::PathBuf,
}

impl Lease {
    /// Claims the lowest free range.
    pub fn claim() -> io::Result<Lease> {
        Self::claim_in(Path::new(LEASE_DIR))
    }

    fn claim_in(dir: &Path) -> io::Result<Lease> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
        for slot in 0..SLOTS {
            let path = dir.join(slot.to_string());
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                })?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // Held shared from here on, so the environment's pid 1 can
                // take the lock too (by path: no descriptor to hand down,
                // so the helper starts without a fork of this process). The
                // conversion is not atomic: another claimer may take the
                // range in between, and then this one moves on.
                // SAFETY: as above.
                if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
                    continue;
                }
                let ids = IdShift::new(FIRST_ID + slot * IDS_PER_ENV, IDS_PER_ENV)
                    .expect("the slots fit below 2^32");
                return Ok(Lease {
                    ids,
                    _lock: lock,
                    path,
                });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("locking {}: {e}", path.display()),
                ));
            }
        }
        Err(io::Error::other(format!(
            "all {SLOTS} id ranges for rootless environments are in use on this host"
        )))
    }

    /// The lock file, for a process that must hold the range too ([`hold`]).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes a shared hold on the range whose lock file is `path` (in the
/// environment's pid 1, beside the node's): the returned file must stay
/// open for as long as the range is in use.
pub fn hold(path: &Path) -> io::Result<File> {
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("holding the id range of {}: {e}", path.display()),
        ));
    }
    Ok(lock)
}

/// Maps ids `0..count` inside the user namespace of `pid` to the range
/// (`proc` is a descriptor of the host's `/proc`: the caller may by now see
/// another one at that path).
pub fn write_maps(proc: &File, pid: i32, ids: IdShift) -> io::Result<()> {
    let line = format!("0 {} {}\n", ids.base(), ids.count());
    for map in ["uid_map", "gid_map"] {
        let path = std::ffi::CString::new(format!("{pid}/{map}")).expect("no NUL");
        // SAFETY: openat relative to a directory descriptor we own, with a
        // NUL-terminated path.
        let fd = unsafe { libc::openat(proc.as_raw_fd(), path.as_ptr(), libc::O_WRONLY) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("opening {map}: {e}")));
        }
        // SAFETY: a descriptor we just opened, and a valid buffer.
        let written = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        let e = io::Error::last_os_error();
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
        if written != line.len() as isize {
            return Err(io::Error::new(e.kind(), format!("writing {map}: {e}")));
        }
    }
    Ok(())
}

/// Becomes root of the user namespace this process is in (after `unshare`
/// or `setns` of it, with the namespace's maps written): real, effective and
/// saved ids 0, and no supplementary groups of the host.
/// Whether this host lets a process that is not root make a user
/// namespace (some kernels, or their security modules, allow it to root
/// only). Asked once, of a child that gives up root and tries.
///
/// Where it can, each rootless environment's user namespace is made by its
/// pid 1 after it has become the environment's own host id, so the
/// namespace is owned by that id, not by host root: the kernel charges
/// what a namespace's processes hold per user (inotify instances and
/// watches, among others) to its owner one level up, and an environment
/// owned by host root shared host root's allowance with every other
/// tenant and with the host itself.
pub fn owned_namespaces_work() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        // SAFETY: the child makes raw system calls only (no allocation, no
        // locks: this process may have other threads) and leaves by _exit.
        unsafe {
            match libc::fork() {
                -1 => false,
                0 => {
                    let nobody = 65534 as libc::c_long;
                    let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
                        == 0
                        && libc::syscall(libc::SYS_setresgid, nobody, nobody, nobody) == 0
                        && libc::syscall(libc::SYS_setresuid, nobody, nobody, nobody) == 0
                        && libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER as libc::c_long)
                            == 0;
                    libc::_exit(if ok { 0 } else { 1 })
                }
                child => {
                    let mut status = 0;
                    let works = libc::waitpid(child, &mut status, 0) == child
                        && libc::WIFEXITED(status)
                        && libc::WEXITSTATUS(status) == 0;
                    if !works {
                        tracing::warn!(
                            "this host lets only root make user namespaces: rootless environments' \
                             namespaces are owned by host root, and share its per-user allowances \
                             (inotify instances and watches) with each other and the host"
                        );
                    }
                    works
                }
            }
        }
    })
}

/// Becomes host id `owner` (user and group, no supplementary groups), for
/// a pid 1 about to make its user namespace (see [`owned_namespaces_work`]).
pub fn become_owner(owner: u32) -> io::Result<()> {
    // SAFETY: plain id-setting calls with valid arguments, in a
    // single-threaded process.
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(owner, owner, owner) != 0
            || libc::setresuid(owner, owner, owner) != 0
    };
    if failed {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("becoming the environment's host id {owner}: {e}"),
        ));
    }
    Ok(())
}

pub fn become_root() -> io::Result<()> {
    // SAFETY: plain id-setting calls with valid arguments.
    let failed = unsafe {
        libc::setresgid(0, 0, 0) != 0
            || libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresuid(0, 0, 0) != 0
    };
    if failed {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("becoming root of the user namespace: {e}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_claims_get_two_ranges_and_a_dropped_one_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::claim_in(dir.path()).unwrap();
        let b = Lease::claim_in(dir.path()).unwrap();
        assert_eq!(a.ids.base(), FIRST_ID);
        assert_eq!(b.ids.base(), FIRST_ID + IDS_PER_ENV);
        drop(a);
        let c = Lease::claim_in(dir.path()).unwrap();
        assert_eq!(c.ids.base(), FIRST_ID, "the freed range is reused");
        assert!(
            FIRST_ID as u64 + (SLOTS * IDS_PER_ENV) as u64 <= 0x7FFE_0000,
            "every slot fits below systemd's reserved top"
        );
    }

    #[test]
    fn a_range_pid_1_holds_outlives_the_nodes_lease() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::claim_in(dir.path()).unwrap();
        let held = hold(a.path()).unwrap();
        drop(a);
        let b = Lease::claim_in(dir.path()).unwrap();
        assert_eq!(b.ids.base(), FIRST_ID + IDS_PER_ENV, "slot 0 is still held");
        drop(held);
        // Free once the hold is gone (a child that another test forks may
        // carry a copy of the descriptor until its exec: allow for that).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let c = Lease::claim_in(dir.path()).unwrap();
            if c.ids.base() == FIRST_ID {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "slot 0 never freed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // A hold needs the range not to be claimed by someone else.
        assert!(hold(&dir.path().join("nonexistent")).is_err());
    }

    #[test]
    fn a_range_held_by_another_process_is_not_claimed() {
        let dir = tempfile::tempdir().unwrap();
        // A child holding the lock of slot 0, as pid 1 of an environment does.
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path().join("0"), "").unwrap();
        let mut holder = std::process::Command::new("flock")
            .arg("--no-fork")
            .arg(dir.path().join("0"))
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let lease = loop {
            let lease = Lease::claim_in(dir.path()).unwrap();
            if lease.ids.base() != FIRST_ID || std::time::Instant::now() > deadline {
                break lease;
            }
            drop(lease);
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(lease.ids.base(), FIRST_ID + IDS_PER_ENV);
        holder.kill().unwrap();
        holder.wait().unwrap();
    }
}
