//! The environments' helper processes' entry: the init helper (started
//! with [`HELPER_VAR`] set to `init`, its request on stdin) and `__env-exec`
//! (a program run inside a running environment). They are run from
//! `colony-env`, a small binary beside `colony` holding only this crate's
//! environment code, or from the colony binary itself where there is none.
//! Each job execs a helper twice (its init, its command), and the colony
//! binary is large: exec'ing it cost about 2 ms of CPU and 340 page faults
//! each time, `colony-env` a fraction of that.

use std::path::{Path, PathBuf};

use super::HELPER_VAR;

/// The file name of the small helper binary.
pub const HELPER_BINARY: &str = "colony-env";

/// The helper a node running as `exe` starts: `colony-env` beside it if
/// there is one, else `exe` itself.
pub fn helper_for(exe: &Path) -> PathBuf {
    let small = exe.with_file_name(HELPER_BINARY);
    if small.is_file() {
        small
    } else {
        exe.to_path_buf()
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
                eprintln!("{}: unexpected argument {other}", args[0]);
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
                "{} is run by the grid node with arguments it supplies",
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
    fn the_small_helper_beside_the_node_is_preferred_and_the_node_is_its_own_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("colony");
        std::fs::write(&exe, b"").unwrap();
        assert_eq!(helper_for(&exe), exe);
        std::fs::create_dir(dir.path().join(HELPER_BINARY)).unwrap();
        assert_eq!(helper_for(&exe), exe, "a directory is not a helper");
        std::fs::remove_dir(dir.path().join(HELPER_BINARY)).unwrap();
        std::fs::write(dir.path().join(HELPER_BINARY), b"").unwrap();
        assert_eq!(helper_for(&exe), dir.path().join(HELPER_BINARY));
    }
}
