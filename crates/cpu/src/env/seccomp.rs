//! The syscall filter of every process in an environment, with the semantics
//! of Docker's default seccomp profile: what it refuses answers `EPERM`
//! (programs see an ordinary "operation not permitted" and degrade), nothing
//! is killed, and everything else is allowed.
//!
//! Docker's profile is an allow-list; this is the same boundary written as
//! the calls it refuses to a container without CAP_SYS_ADMIN, CAP_SYS_PTRACE
//! and the other capabilities our environments never hold — so the table
//! below reads as the list of what a tenant may not do, each with its reason.
//! `clone3` answers `ENOSYS`, as in Docker: its flags sit in memory a filter
//! cannot read, and libc falls back to `clone`, whose flags it can.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// When a refused call is refused.
#[derive(Clone, Copy)]
enum When {
    /// Always.
    Always,
    /// When its flags argument (number `arg`) holds CLONE_NEWUSER.
    NewUserNamespace { arg: u8 },
    /// When its first argument is not one of Docker's safe personalities.
    UnsafePersonality,
    /// When its first argument (a socket's address family) is this one.
    Family(i32),
}

/// The refused calls: (number, name, when, why).
#[rustfmt::skip]
const REFUSED: &[(i64, &str, When, &str)] = &[
    (libc::SYS_add_key, "add_key", When::Always, "kernel keyrings are not namespaced: keys would land in the host's keyrings"),
    (libc::SYS_keyctl, "keyctl", When::Always, "kernel keyrings are not namespaced"),
    (libc::SYS_request_key, "request_key", When::Always, "kernel keyrings are not namespaced"),
    (libc::SYS_unshare, "unshare", When::NewUserNamespace { arg: 0 }, "a user namespace opens kernel surface meant for its owner only"),
    (libc::SYS_clone, "clone", When::NewUserNamespace { arg: 0 }, "a user namespace opens kernel surface meant for its owner only"),
    (libc::SYS_setns, "setns", When::Always, "joining other namespaces"),
    (libc::SYS_perf_event_open, "perf_event_open", When::Always, "observes the host's kernel and other tenants"),
    (libc::SYS_bpf, "bpf", When::Always, "loads programs into the kernel"),
    (libc::SYS_userfaultfd, "userfaultfd", When::Always, "a classic tool for kernel race exploits"),
    (libc::SYS_kexec_load, "kexec_load", When::Always, "replaces the running kernel"),
    (libc::SYS_kexec_file_load, "kexec_file_load", When::Always, "replaces the running kernel"),
    (libc::SYS_init_module, "init_module", When::Always, "loads kernel modules"),
    (libc::SYS_finit_module, "finit_module", When::Always, "loads kernel modules"),
    (libc::SYS_delete_module, "delete_module", When::Always, "unloads kernel modules"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at", When::Always, "opens host files by handle, past the root (the 'shocker' escape)"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at", When::Always, "the other half of open_by_handle_at"),
    (libc::SYS_mount, "mount", When::Always, "the mount table is the environment's boundary"),
    (libc::SYS_umount2, "umount2", When::Always, "the mount table is the environment's boundary"),
    (libc::SYS_pivot_root, "pivot_root", When::Always, "the mount table is the environment's boundary"),
    (libc::SYS_fsopen, "fsopen", When::Always, "the new mount API"),
    (libc::SYS_fsconfig, "fsconfig", When::Always, "the new mount API"),
    (libc::SYS_fsmount, "fsmount", When::Always, "the new mount API"),
    (libc::SYS_fspick, "fspick", When::Always, "the new mount API"),
    (libc::SYS_open_tree, "open_tree", When::Always, "the new mount API"),
    (libc::SYS_move_mount, "move_mount", When::Always, "the new mount API"),
    (libc::SYS_mount_setattr, "mount_setattr", When::Always, "the new mount API"),
    (libc::SYS_swapon, "swapon", When::Always, "the host's swap"),
    (libc::SYS_swapoff, "swapoff", When::Always, "the host's swap"),
    (libc::SYS_reboot, "reboot", When::Always, "the host's power"),
    (libc::SYS_settimeofday, "settimeofday", When::Always, "the host's clock"),
    (libc::SYS_clock_settime, "clock_settime", When::Always, "the host's clock"),
    (libc::SYS_clock_adjtime, "clock_adjtime", When::Always, "the host's clock"),
    (libc::SYS_adjtimex, "adjtimex", When::Always, "the host's clock (Docker allows reading it; setting needs CAP_SYS_TIME, which is dropped)"),
    (libc::SYS_acct, "acct", When::Always, "process accounting is host-wide"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie", When::Always, "kernel profiling"),
    (libc::SYS_personality, "personality", When::UnsafePersonality, "odd personalities disable address-space randomisation and more"),
    (libc::SYS_quotactl, "quotactl", When::Always, "host file-system quotas"),
    (libc::SYS_syslog, "syslog", When::Always, "the host kernel's log"),
    (libc::SYS_iopl, "iopl", When::Always, "raw I/O ports"),
    (libc::SYS_ioperm, "ioperm", When::Always, "raw I/O ports"),
    (libc::SYS_kcmp, "kcmp", When::Always, "compares kernel objects of other processes"),
    (libc::SYS_process_vm_readv, "process_vm_readv", When::Always, "reads other processes' memory (ptrace of own children still works)"),
    (libc::SYS_process_vm_writev, "process_vm_writev", When::Always, "writes other processes' memory"),
    (libc::SYS_get_mempolicy, "get_mempolicy", When::Always, "NUMA policy of the host"),
    (libc::SYS_set_mempolicy, "set_mempolicy", When::Always, "NUMA policy of the host"),
    (libc::SYS_mbind, "mbind", When::Always, "NUMA policy of the host"),
    (libc::SYS_move_pages, "move_pages", When::Always, "NUMA placement of other processes"),
    (libc::SYS_uselib, "uselib", When::Always, "obsolete, and a past exploit path"),
    (libc::SYS_ustat, "ustat", When::Always, "obsolete"),
    (libc::SYS_sysfs, "sysfs", When::Always, "obsolete"),
    (libc::SYS_nfsservctl, "nfsservctl", When::Always, "obsolete"),
    (libc::SYS__sysctl, "_sysctl", When::Always, "obsolete"),
    (libc::SYS_vhangup, "vhangup", When::Always, "hangs up the host's terminals"),
    (libc::SYS_socket, "socket", When::Family(libc::AF_VSOCK), "vsock ports belong to the whole virtual machine, not a namespace (Docker refuses AF_VSOCK too)"),
    (libc::SYS_io_uring_setup, "io_uring_setup", When::Always, "a large kernel surface with a history of escapes (Docker refuses it too)"),
    (libc::SYS_io_uring_enter, "io_uring_enter", When::Always, "see io_uring_setup"),
    (libc::SYS_io_uring_register, "io_uring_register", When::Always, "see io_uring_setup"),
];

/// Personalities Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and the query 0xffffffff.
const SAFE_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The names of the refused calls, for tests and documentation.
pub fn refused_names() -> impl Iterator<Item = &'static str> {
    REFUSED.iter().map(|(_, name, _, _)| *name)
}

fn arch() -> io::Result<TargetArch> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| io::Error::other(format!("seccomp: {e:?}")))
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> io::Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| io::Error::other(format!("seccomp: {e}")))
}

fn rules_for(when: When) -> io::Result<Vec<SeccompRule>> {
    let rule = |conditions| {
        SeccompRule::new(conditions).map_err(|e| io::Error::other(format!("seccomp: {e}")))
    };
    Ok(match when {
        When::Always => Vec::new(),
        When::NewUserNamespace { arg } => {
            let flag = libc::CLONE_NEWUSER as u64;
            vec![rule(vec![condition(
                arg,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])?]
        }
        When::Family(family) => vec![rule(vec![condition(0, SeccompCmpOp::Eq, family as u64)?])?],
        When::UnsafePersonality => {
            let conditions = SAFE_PERSONALITIES
                .iter()
                .map(|&p| condition(0, SeccompCmpOp::Ne, p))
                .collect::<io::Result<Vec<_>>>()?;
            vec![rule(conditions)?]
        }
    })
}

/// The two compiled filters: the refusals (EPERM), and clone3 (ENOSYS).
fn programs() -> io::Result<[BpfProgram; 2]> {
    let arch = arch()?;
    let mut refused = BTreeMap::new();
    for &(nr, _, when, _) in REFUSED {
        refused.insert(nr, rules_for(when)?);
    }
    let compile = |rules, errno: i32| -> io::Result<BpfProgram> {
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .and_then(TryInto::try_into)
        .map_err(|e| io::Error::other(format!("seccomp: {e}")))
    };
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    Ok([
        compile(refused, libc::EPERM)?,
        compile(clone3, libc::ENOSYS)?,
    ])
}

/// Installs the filter on the calling thread; it holds for everything the
/// thread execs or forks afterwards and cannot be removed. Needs
/// no_new_privs or CAP_SYS_ADMIN.
pub fn install() -> io::Result<()> {
    for program in programs()? {
        seccompiler::apply_filter(&program)
            .map_err(|e| io::Error::other(format!("seccomp: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_machine_and_lists_each_call_once() {
        let [refused, clone3] = programs().unwrap();
        assert!(!refused.is_empty() && !clone3.is_empty());
        let mut names: Vec<_> = refused_names().collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a call listed twice");
    }

    /// In a child process (a filter cannot be removed): refused calls are
    /// EPERM, clone3 is ENOSYS, and ordinary calls still work.
    #[test]
    fn refused_calls_are_eperm_and_the_rest_still_work() {
        // SAFETY: fork in a test; the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = (|| {
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                if install().is_err() {
                    return 10;
                }
                let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
                // SAFETY: raw syscalls with harmless arguments.
                unsafe {
                    if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1
                        || errno() != libc::EPERM
                    {
                        return 11;
                    }
                    if libc::unshare(libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                        return 12;
                    }
                    if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                        return 13;
                    }
                    if libc::personality(0xffff_ffff) == -1 {
                        return 14;
                    }
                    if libc::personality(0x0040000) != -1 || errno() != libc::EPERM {
                        return 15; // ADDR_NO_RANDOMIZE
                    }
                    if libc::getpid() <= 0 {
                        return 16;
                    }
                    // vsock is refused as the filter's EPERM (without the
                    // filter: a socket, or EAFNOSUPPORT where the kernel
                    // has no vsock); other families still open.
                    if libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) != -1
                        || errno() != libc::EPERM
                    {
                        return 17;
                    }
                    let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    if unix < 0 {
                        return 18;
                    }
                    libc::close(unix);
                }
                0
            })();
            // SAFETY: leaving the forked child without running the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "see the return codes above");
    }
}
