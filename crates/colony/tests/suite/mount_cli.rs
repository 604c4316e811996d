//! `colony mount` through the real kernel FUSE client, and `colony save`.
//! These need root and /dev/fuse, as CI has.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::node::can_mount;
use crate::common::run::{COLONY, ok, run};

fn colony(store: &Path, args: &[&str]) -> String {
    ok(&run(args, &[("COLONY_STORE", store.as_os_str())], b""))
        .trim()
        .to_string()
}

/// A running `colony mount`; unmounted (SIGTERM) on drop.
struct Mount {
    child: Child,
    dir: PathBuf,
}

impl Mount {
    fn start(store: &Path, root: &str, dir: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new(COLONY)
            .args(["mount", root])
            .arg(dir)
            .args(extra)
            .env("COLONY_STORE", store)
            .env_remove("venti")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("mounted vac:"), "unexpected {line:?}");
        Mount {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn save(&self) -> String {
        let out = Command::new(COLONY)
            .arg("save")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "colony mount exited with {status}");
        assert!(!is_mounted(&self.dir), "still mounted after SIGTERM");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or(dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
}

/// Every file kind a root file system holds.
fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/deep")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("etc/hostname"), b"colony\n").unwrap();
    std::fs::write(
        dir.join("etc/big"),
        (0..200_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(dir.join("etc/deep/empty"), b"").unwrap();
    std::os::unix::fs::symlink("hostname", dir.join("etc/link")).unwrap();
    std::fs::set_permissions(dir.join("etc/big"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for (path, mode, dev) in [
        ("etc/null", libc::S_IFCHR | 0o666, (1 << 8) | 3),
        ("etc/fifo", libc::S_IFIFO | 0o600, 0),
    ] {
        let c = std::ffi::CString::new(dir.join(path).to_str().unwrap()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), mode, dev) }, 0);
    }
    let c = std::ffi::CString::new(dir.join("etc/hostname").to_str().unwrap()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 1234, 5678) }, 0);
}

/// (relative path → what we promise to keep) for a tree.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let content = if ft.is_file() {
                venti::Score::of(&std::fs::read(&p).unwrap()).to_string()
            } else if ft.is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            let size = if ft.is_dir() { 0 } else { md.size() };
            let mtime = if ft.is_dir() || ft.is_symlink() {
                0
            } else {
                md.mtime()
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.push((
                rel,
                format!(
                    "{:o} {}:{} {size} {mtime} {} {content}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.rdev()
                ),
            ));
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_mounted_archive_shows_the_source_tree_exactly() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    make_tree(&src);
    let root = colony(&store, &["vac", src.join(".").to_str().unwrap()]);
    let m = Mount::start(&store, &root, &tmp.path().join("mnt"), &[]);
    assert_eq!(snapshot(&m.dir), snapshot(&src));
    m.stop();
}

/// Runs the same workload on the mount and on a plain directory.
fn workload(base: &Path) {
    let w = |p: &str, d: &[u8]| std::fs::write(base.join(p), d).unwrap();
    w("etc/new", b"new file\n");
    std::fs::create_dir_all(base.join("var/lib/dpkg")).unwrap();
    // dpkg-style: write a temporary, then rename it over the real name.
    for i in 0..20 {
        w(
            "var/lib/dpkg/status-new",
            format!("generation {i}\n").as_bytes(),
        );
        std::fs::rename(
            base.join("var/lib/dpkg/status-new"),
            base.join("var/lib/dpkg/status"),
        )
        .unwrap();
    }
    std::fs::rename(base.join("etc/new"), base.join("var/new")).unwrap();
    std::fs::rename(base.join("etc/deep"), base.join("var/deep")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(base.join("etc/big"))
        .unwrap();
    f.set_len(100_001).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"patched", 50_000).unwrap();
    drop(f);
    std::fs::remove_file(base.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("/somewhere/else", base.join("etc/link")).unwrap();
    std::fs::set_permissions(
        base.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(base.join("etc/fifo")).unwrap();
    std::fs::create_dir(base.join("tmp/x")).unwrap();
    std::fs::remove_dir(base.join("tmp/x")).unwrap();
    let mut big = std::fs::OpenOptions::new()
        .append(true)
        .open(base.join("var/new"))
        .unwrap();
    std::io::Write::write_all(&mut big, &vec![b'z'; 70_000]).unwrap();
}

fn without_times(snap: Vec<(String, String)>) -> Vec<(String, String)> {
    // Times of files the workload touched differ between the two runs.
    snap.into_iter()
        .map(|(p, s)| {
            let mut parts: Vec<&str> = s.split(' ').collect();
            parts[3] = "-";
            (p, parts.join(" "))
        })
        .collect()
}

#[test]
fn a_write_rename_truncate_delete_workload_matches_a_plain_directory() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    make_tree(&src);
    let root = colony(&store, &["vac", src.join(".").to_str().unwrap()]);
    let m = Mount::start(&store, &root, &tmp.path().join("mnt"), &[]);
    let plain = tmp.path().join("plain");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&plain)
            .status()
            .unwrap()
            .success()
    );
    workload(&plain);
    workload(&m.dir);
    assert_eq!(
        without_times(snapshot(&m.dir)),
        without_times(snapshot(&plain))
    );

    // Saved and extracted, the result is the same tree again.
    let saved = m.save();
    m.stop();
    let out = tmp.path().join("out");
    colony(&store, &["unvac", &saved, out.to_str().unwrap()]);
    assert_eq!(
        without_times(snapshot(&out)),
        without_times(snapshot(&plain))
    );
}

#[test]
fn a_tar_unpacked_onto_the_mount_survives_save_and_unvac() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let root = colony(&store, &["vac", empty.join(".").to_str().unwrap()]);
    let m = Mount::start(&store, &root, &tmp.path().join("mnt"), &[]);
    let src = tmp.path().join("src");
    make_tree(&src);
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let mut untar = Command::new("tar")
        .arg("-C")
        .arg(&m.dir)
        .args(["-xpf", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &tar.stdout).unwrap();
    drop(untar.stdin.take());
    assert!(untar.wait().unwrap().success());
    let saved = m.save();
    m.stop();
    let out = tmp.path().join("out");
    colony(&store, &["unvac", &saved, out.to_str().unwrap()]);
    assert_eq!(snapshot(&out), snapshot(&src));
}

#[test]
fn a_full_cache_is_enospc_and_deleting_makes_room() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    make_tree(&src);
    let root = colony(&store, &["vac", src.join(".").to_str().unwrap()]);
    let m = Mount::start(&store, &root, &tmp.path().join("mnt"), &["--cache", "2M"]);
    let big = vec![7u8; 3 << 20];
    let err = std::fs::write(m.dir.join("fill"), &big).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Everything else still reads fine.
    assert_eq!(
        std::fs::read(m.dir.join("etc/hostname")).unwrap(),
        b"colony\n"
    );
    std::fs::remove_file(m.dir.join("fill")).unwrap();
    std::fs::write(m.dir.join("small"), vec![1u8; 1 << 20]).unwrap();
    let saved = m.save();
    m.stop();
    let listing = colony(&store, &["unvac", "-t", &saved]);
    assert!(
        listing.lines().any(|l| l == "small") && !listing.lines().any(|l| l == "fill"),
        "{listing}"
    );
}

#[test]
fn a_busybox_root_runs_commands_under_chroot() {
    if !can_mount() {
        return;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        panic!("busybox-static is needed (.ci/run installs it)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("rootfs");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::copy(busybox, src.join("bin/busybox")).unwrap();
    for tool in ["sh", "ls", "cat", "echo", "mkdir", "rm", "sort"] {
        std::os::unix::fs::symlink("busybox", src.join("bin").join(tool)).unwrap();
    }
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), b"welcome to the colony\n").unwrap();
    let root = colony(&store, &["vac", src.join(".").to_str().unwrap()]);
    let m = Mount::start(&store, &root, &tmp.path().join("mnt"), &[]);
    let out = Command::new("chroot")
        .arg(&m.dir)
        .args(["/bin/sh", "-c", "cat /etc/motd; mkdir -p /home/ant; echo made > /home/ant/file; ls /home/ant; cat /home/ant/file"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "welcome to the colony\nfile\nmade\n"
    );
    let saved = m.save();
    m.stop();
    // The change is in the saved root.
    let listing = colony(&store, &["unvac", "-t", &saved, "home"]);
    assert_eq!(listing, "home/ant\nhome/ant/file");
}

#[test]
fn save_reports_a_missing_mount_and_mount_a_missing_root() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(COLONY)
        .args(["save"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no colony mount answers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(COLONY)
        .args(["mount", "vac:6f8f2141577ba09cd814316ef160871cc2dcadcc"])
        .arg(tmp.path())
        .env("COLONY_STORE", tmp.path().join("store"))
        .env_remove("venti")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in the store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_same_file_system_over_fuse_and_9p() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    make_tree(&src);
    let root = colony(&store, &["vac", src.join(".").to_str().unwrap()]);
    // Pick a free port for the 9P listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::start(
        &store,
        &root,
        &tmp.path().join("mnt"),
        &[
            "--listen",
            &format!("tcp!127.0.0.1!{port}"),
            "--9p-allow-root",
        ],
    );
    let mut c = ninep::Client::connect(&addr, 8216).unwrap();
    c.attach(0, "0").unwrap();
    // Read over 9P what FUSE shows.
    c.walk(0, 1, &["etc", "hostname"]).unwrap();
    c.open(1, ninep::fcall::OREAD).unwrap();
    assert_eq!(
        c.read_all(1).unwrap(),
        std::fs::read(m.dir.join("etc/hostname")).unwrap()
    );
    // Write over 9P, read through the kernel.
    c.walk(0, 2, &["etc"]).unwrap();
    c.create(2, "from-9p", 0o644, ninep::fcall::OWRITE).unwrap();
    c.write_all(2, 0, b"written by a Plan 9 client\n").unwrap();
    c.clunk(2).unwrap();
    assert_eq!(
        std::fs::read(m.dir.join("etc/from-9p")).unwrap(),
        b"written by a Plan 9 client\n"
    );
    // And the other way round.
    std::fs::write(m.dir.join("etc/from-fuse"), b"via the kernel").unwrap();
    c.walk(0, 3, &["etc", "from-fuse"]).unwrap();
    c.open(3, ninep::fcall::OREAD).unwrap();
    assert_eq!(c.read_all(3).unwrap(), b"via the kernel");
    let saved = m.save();
    m.stop();
    let listing = colony(&store, &["unvac", "-t", &saved, "etc"]);
    assert!(
        listing.contains("etc/from-9p") && listing.contains("etc/from-fuse"),
        "{listing}"
    );
}

#[test]
fn other_users_see_the_mount_with_real_permission_checks() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("public"), b"anyone may read this\n").unwrap();
    std::fs::write(src.join("secret"), b"root only\n").unwrap();
    std::fs::set_permissions(src.join("public"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let root = colony(&store, &["vac", src.join(".").to_str().unwrap()]);
    let m = Mount::start(&store, &root, &tmp.path().join("mnt"), &[]);
    let as_nobody = |cmd: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                cmd,
            ])
            .current_dir("/")
            .output()
            .unwrap()
    };
    let mnt = m.dir.display().to_string();
    let out = as_nobody(&format!("cat {mnt}/public"));
    assert!(
        out.status.success(),
        "allow_other: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"anyone may read this\n");
    let out = as_nobody(&format!("cat {mnt}/secret"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody(&format!("echo x > {mnt}/new"));
    assert!(!out.status.success(), "the root directory is 0755 root");
    // Hard links work while mounted.
    std::fs::hard_link(m.dir.join("public"), m.dir.join("public.link")).unwrap();
    assert_eq!(std::fs::metadata(m.dir.join("public")).unwrap().nlink(), 2);
    // statfs reports the change cache: 100M in 8 KiB blocks.
    let c = std::ffi::CString::new(mnt.clone()).unwrap();
    // SAFETY: valid path and a zeroed statvfs to fill.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut vfs) }, 0);
    assert_eq!(vfs.f_blocks * vfs.f_frsize, (100 << 20) / 8192 * 8192);
    m.stop();
}

/// The 9P export over mutual TLS, reached by a plain 9P client through a
/// tunnel on its machine (as Plan 9's `9p` through `tlsclient`); a plain
/// client on the TLS port itself gets nothing.
#[test]
fn nine_p_over_mutual_tls_through_a_tunnel() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    make_tree(&src);
    let root = colony(&store, &["vac", src.join(".").to_str().unwrap()]);
    let (ca, node, laptop) = (
        tmp.path().join("ca"),
        tmp.path().join("node"),
        tmp.path().join("laptop"),
    );
    let grid = |args: &[&str]| {
        let out = Command::new(COLONY).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    grid(&["grid", "ca", "init", "--ca", ca.to_str().unwrap()]);
    for (name, dir, role) in [("fs", &node, "cpu"), ("laptop", &laptop, "client")] {
        grid(&[
            "grid",
            "ca",
            "issue",
            name,
            "--role",
            role,
            "--ca",
            ca.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ]);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = Mount::start(
        &store,
        &root,
        &tmp.path().join("mnt"),
        &[
            "--listen",
            &format!("tls!127.0.0.1!{port}"),
            "--tls",
            node.to_str().unwrap(),
            "--9p-allow-root",
        ],
    );
    let mut tunnel = Command::new(COLONY)
        .args(["tunnel", "--listen", "tcp!127.0.0.1!0", "--to"])
        .arg(format!("tls!127.0.0.1!{port}"))
        .args(["--peer-roles", "cpu", "--cert"])
        .arg(&laptop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tunnel.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let local = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let mut c = ninep::Client::connect(&local, 8216).unwrap();
    c.attach(0, "0").unwrap();
    c.walk(0, 1, &["etc", "hostname"]).unwrap();
    c.open(1, ninep::fcall::OREAD).unwrap();
    assert_eq!(
        c.read_all(1).unwrap(),
        std::fs::read(m.dir.join("etc/hostname")).unwrap()
    );
    // Plain 9P on the TLS port: no version reply, only a closed connection.
    assert!(ninep::Client::connect(format!("127.0.0.1:{port}"), 8216).is_err());
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    m.stop();
}
