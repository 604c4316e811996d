//! The environments' helper processes' entry: the init helper (started
//! with [`HELPER_VAR`] set to `init`, its request on stdin) and `__env-exec`
//! (a program run inside a running environment). They are run from
//! `colony-env`, a small binary beside `colony` holding only this crate's
//! environment code, or from the colony binary itself where there is none
//! built from the same sources ([`helper_for`]).
//! Each job execs a helper twice (its init, its command), and the colony
//! binary is large: exec'ing it cost about 2 ms of CPU and 340 page faults
//! each time, `colony-env` a fraction of that.

use std::path::{Path, PathBuf};

use super::HELPER_VAR;

/// The file name of the small helper binary.
pub const HELPER_BINARY: &str = "colony-env";

/// What tells this build's helper code from another's: a hash of the
/// sources both binaries run it from, the same in `colony` and
/// `colony-env` only when both were built from them.
pub const BUILD_TOKEN: u64 = fnv1a(&[
    include_bytes!("mod.rs"),
    include_bytes!("helper.rs"),
    include_bytes!("launch.rs"),
    include_bytes!("seccomp.rs"),
    include_bytes!("caps.rs"),
    include_bytes!("cgroup.rs"),
    include_bytes!("userns.rs"),
    include_bytes!("net.rs"),
    include_bytes!("../services/mod.rs"),
    include_bytes!("../services/sftp.rs"),
    include_bytes!("../services/forward.rs"),
]);

const fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            hash ^= parts[i][j] as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            j += 1;
        }
        i += 1;
    }
    hash
}

/// The argument that makes a helper print its [`BUILD_TOKEN`].
const BUILD_TOKEN_ARG: &str = "--build-token";

/// The helper a node running as `exe` starts: `colony-env` beside it if
/// it was built from the same sources (`cargo build --bin colony`, or a
/// copy of colony alone, leaves an older one behind, whose checks may lag
/// the node's: it is not used, and the log says so), else `exe` itself.
pub fn helper_for(exe: &Path) -> PathBuf {
    let small = exe.with_file_name(HELPER_BINARY);
    if !exe.is_absolute() || !small.is_file() {
        return exe.to_path_buf();
    }
    let answer = std::process::Command::new(&small)
        .arg(BUILD_TOKEN_ARG)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let expected = format!("{BUILD_TOKEN:016x}");
    match answer {
        Ok(out)
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == expected =>
        {
            small
        }
        _ => {
            tracing::warn!(
                helper = %small.display(),
                "{HELPER_BINARY} is from another build than this node; environments' helpers run from the node's own binary (build both: cargo build -p colony)"
            );
            exe.to_path_buf()
        }
    }
}

/// If this process was started as one of the helpers, runs it and never
/// returns; otherwise returns at once. Call it first thing in `main`,
/// before any thread starts (namespace work needs a single thread).
pub fn run_if_asked() {
    if std::env::var_os(HELPER_VAR).is_some_and(|v| v == "init") {
        let request = super::InitRequest::read(&mut std::io::stdin().lock());
        match request {
            Ok(r) => super::launch::init_main(&r),
            Err(e) => {
                println!("error {e}");
                std::process::exit(2)
            }
        }
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == BUILD_TOKEN_ARG) {
        println!("{BUILD_TOKEN:016x}");
        std::process::exit(0)
    }
    if args.get(1).is_some_and(|a| a == "__env-exec") {
        exec_helper(&args[1..]);
    }
}

/// Marks every descriptor this process inherited past stdin, stdout and
/// stderr close-on-exec. A supervisor, `flock` or a CI runner may start
/// the node holding open files or directories; without this, every
/// process the node runs (environments' pid 1 and logins, slirp4netns)
/// would inherit them, and a tenant could reach the host through
/// `/proc/self/fd/N`. The node's own files are opened close-on-exec by
/// the standard library, so after this nothing leaks by accident.
pub fn close_inherited_descriptors() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; no memory is passed.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if done != 0 {
        // Kernels before 5.11: mark them one by one.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect();
            for fd in fds {
                // SAFETY: fcntl on a descriptor number; a stale one fails harmlessly.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// This program's name, for its messages.
fn program() -> String {
    std::env::args()
        .next()
        .and_then(|a| Some(Path::new(&a).file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| HELPER_BINARY.to_string())
}

/// `HELPER __env-exec [--pty] [--term T] [--agent SOCKET] -- ARGV…`, with
/// where to enter in its environment ([`super::EXEC_REQUEST_VAR`]).
fn exec_helper(args: &[String]) -> ! {
    let (mut pty, mut term, mut agent) = (false, None, None);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--term" => {
                term = args.get(i + 1).cloned();
                i += 2;
            }
            "--pty" => {
                pty = true;
                i += 1;
            }
            "--agent" => {
                agent = args.get(i + 1).cloned();
                i += 2;
            }
            "--" => break,
            other => {
                eprintln!("{}: {}: unexpected argument {other}", program(), args[0]);
                std::process::exit(2)
            }
        }
    }
    let request = std::env::var(super::EXEC_REQUEST_VAR)
        .ok()
        .and_then(|text| super::ExecRequest::parse(&text));
    match request {
        Some(request) if i + 1 < args.len() => super::launch::exec_main(
            &request,
            pty,
            term.as_deref(),
            agent.as_deref(),
            &args[i + 1..],
            crate::services::BUILTINS,
        ),
        _ => {
            eprintln!(
                "{}: {} is run by the grid node with arguments it supplies",
                program(),
                args[0]
            );
            std::process::exit(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_helper_beside_the_node_is_used_only_when_built_with_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (exe, small) = (dir.path().join("colony"), dir.path().join(HELPER_BINARY));
        let helper = |script: &str| {
            std::fs::write(&small, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        std::fs::write(&exe, b"").unwrap();
        assert_eq!(helper_for(&exe), exe, "none beside it");
        std::fs::create_dir(&small).unwrap();
        assert_eq!(helper_for(&exe), exe, "a directory is not a helper");
        std::fs::remove_dir(&small).unwrap();
        helper(&format!(
            "[ \"$1\" = {BUILD_TOKEN_ARG} ] && echo {BUILD_TOKEN:016x}"
        ));
        assert_eq!(helper_for(&exe), small, "built with it");
        helper("echo 0123456789abcdef");
        assert_eq!(helper_for(&exe), exe, "another build's");
        helper("exit 2");
        assert_eq!(helper_for(&exe), exe, "one that knows no token");
        assert_eq!(
            helper_for(Path::new("colony")),
            Path::new("colony"),
            "a relative path is not looked beside"
        );
    }
}
