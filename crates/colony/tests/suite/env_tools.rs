//! The tools developers point at a remote machine, pointed at an
//! environment's login: `sshfs` (over colony's own SFTP server), `scp -r`,
//! `rsync` and `git` over ssh both ways, and what an editor's remote mode
//! does (a script run by `bash` on stdin starts a server inside, which is
//! then reached through a forward). The root they run in is busybox with
//! the host's `bash`, `rsync` and `git` copied in, with their libraries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::grid::{SSH_OPTS, busybox_root, every_busybox_applet, spawn_port, wait_for};
use crate::common::node::{Node, can_mount};
use crate::common::run::run_with_input;

/// Copies `binary` into `root` at the same path, with every library it
/// loads (and the loader), as `ldd` lists them.
fn copy_with_libraries(root: &Path, binary: &str) {
    let mut files = vec![PathBuf::from(binary)];
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libz.so.1 => /lib/…/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    for file in files {
        let to = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if !to.exists() {
            std::fs::copy(&file, &to).unwrap();
        }
    }
}

/// A busybox root with bash, rsync and git (and git's server programs).
fn dev_root(dir: &Path) -> PathBuf {
    let root = busybox_root(dir, "a root for developers' tools\n");
    every_busybox_applet(&root);
    for binary in ["/bin/bash", "/usr/bin/rsync", "/usr/bin/git"] {
        copy_with_libraries(&root, binary);
    }
    // git runs its helpers from its exec path, and its server programs by
    // the names ssh asks for.
    let core = root.join("usr/lib/git-core");
    std::fs::create_dir_all(&core).unwrap();
    std::fs::copy("/usr/bin/git", core.join("git")).unwrap();
    for name in ["git-upload-pack", "git-receive-pack"] {
        std::os::unix::fs::symlink("git", root.join("usr/bin").join(name)).unwrap();
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    root
}

/// A node with alice's `devtools` root, and her environment on it.
fn node_with_tools() -> (Node, u16) {
    let g = node_with_root(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "devtools"]));
    (g, port)
}

/// A node with alice's `devtools` root, with `more` binaries in it.
fn node_with_root(more: &[&str]) -> Node {
    let mut g = Node::new();
    let root = dev_root(g.tmp.path());
    for binary in more {
        copy_with_libraries(&root, binary);
    }
    g.colony(&[
        "import",
        "devtools",
        root.to_str().unwrap(),
        "--user",
        "alice",
    ]);
    g.start(&["--ram-cache", "256M"]);
    g
}

/// The ssh command line the tools are given (`-e`, `GIT_SSH_COMMAND`).
fn ssh_command(g: &Node, port: u16) -> String {
    format!(
        "ssh -p {port} -i {} {}",
        g.tmp.path().join("alice").display(),
        SSH_OPTS.join(" ")
    )
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree of a few files in nested directories, with a symlink.
fn sample_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("src/deep")).unwrap();
    std::fs::write(tree.join("README"), "hello\n").unwrap();
    std::fs::write(tree.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(tree.join("src/deep/data.bin"), big).unwrap();
    std::os::unix::fs::symlink("src/main.c", tree.join("main")).unwrap();
    tree
}

/// `diff -r` of two trees finds nothing.
fn same_trees(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn sshfs_mounts_an_environment_and_df_shows_its_cache() {
    if !can_mount() {
        return;
    }
    let (g, port) = node_with_tools();
    let mnt = g.tmp.path().join("sshfs");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("sshfs")
        .arg("-p")
        .arg(port.to_string())
        .arg("-o")
        .arg(format!(
            "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes,IdentitiesOnly=yes",
            g.tmp.path().join("alice").display()
        ))
        .arg("alice@127.0.0.1:/root")
        .arg(&mnt)
        .output()
        .unwrap();
    ok(mounted, "sshfs");
    let unmount = || {
        let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    };
    // Create, write, rename over an existing file, symlink, hard link.
    let checks = std::panic::catch_unwind(|| {
        std::fs::write(mnt.join("notes.txt"), "first\n").unwrap();
        std::fs::write(mnt.join("draft.txt"), "second\n").unwrap();
        std::fs::rename(mnt.join("draft.txt"), mnt.join("notes.txt")).unwrap();
        std::os::unix::fs::symlink("notes.txt", mnt.join("link")).unwrap();
        std::fs::hard_link(mnt.join("notes.txt"), mnt.join("hard")).unwrap();
        std::fs::create_dir(mnt.join("dir")).unwrap();
        std::fs::write(mnt.join("dir/inner"), vec![9u8; 100_000]).unwrap();
        // df: the environment's cache (256 MiB of changes), not made up.
        let df = Command::new("df")
            .args(["-B1", "--output=size"])
            .arg(&mnt)
            .output()
            .unwrap();
        let size: u64 = String::from_utf8_lossy(&df.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            (200 << 20..=256 << 20).contains(&size),
            "df says {size} bytes"
        );
    });
    unmount();
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    // What was done through the mount is in the environment.
    let seen = g.env_ok(
        port,
        "cat /root/notes.txt; readlink /root/link; stat -c %h /root/hard; wc -c < /root/dir/inner; ls /root",
    );
    assert_eq!(
        seen,
        "second\nnotes.txt\n2\n100000\ndir\nhard\nlink\nnotes.txt\n"
    );
}

#[test]
fn scp_rsync_and_git_work_both_ways() {
    if !can_mount() {
        return;
    }
    let (g, port) = node_with_tools();
    let tree = sample_tree(g.tmp.path());
    let ssh = ssh_command(&g, port);

    // scp -r up and back.
    let scp = |from: &str, to: &str| {
        let out = Command::new("scp")
            .args(["-r", "-P", &port.to_string(), "-i"])
            .arg(g.tmp.path().join("alice"))
            .args(SSH_OPTS)
            .args([from, to])
            .output()
            .unwrap();
        ok(out, &format!("scp {from} {to}"));
    };
    scp(tree.to_str().unwrap(), "alice@127.0.0.1:/root/by-scp");
    let back = g.tmp.path().join("scp-back");
    scp("alice@127.0.0.1:/root/by-scp", back.to_str().unwrap());
    // scp follows links: compare the files, not the link.
    assert_eq!(
        std::fs::read(back.join("src/deep/data.bin")).unwrap(),
        std::fs::read(tree.join("src/deep/data.bin")).unwrap()
    );

    // rsync -a up and back, links and modes kept.
    let rsync = |from: &str, to: &str| {
        let out = Command::new("rsync")
            .args(["-a", "-e", &ssh, from, to])
            .output()
            .unwrap();
        ok(out, &format!("rsync {from} {to}"));
    };
    rsync(
        &format!("{}/", tree.display()),
        "alice@127.0.0.1:/root/by-rsync/",
    );
    let back = g.tmp.path().join("rsync-back");
    rsync(
        "alice@127.0.0.1:/root/by-rsync/",
        &format!("{}/", back.display()),
    );
    same_trees(&tree, &back);
    assert_eq!(
        g.env_ok(port, "readlink /root/by-rsync/main"),
        "src/main.c\n"
    );

    // git: a bare repository inside, pushed to and cloned from over ssh.
    g.env_ok(port, "git init -q --bare -b main /root/repo.git");
    let work = g.tmp.path().join("work");
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("/usr/bin/git")
            .current_dir(dir)
            .env("GIT_SSH_COMMAND", &ssh)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .output()
            .unwrap();
        ok(out, &format!("git {args:?}"))
    };
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("hello.txt"), "from the laptop\n").unwrap();
    git(&work, &["add", "hello.txt"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(
        &work,
        &["push", "-q", "alice@127.0.0.1:/root/repo.git", "main"],
    );
    let clone = g.tmp.path().join("clone");
    git(
        g.tmp.path(),
        &[
            "clone",
            "-q",
            "alice@127.0.0.1:/root/repo.git",
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("hello.txt")).unwrap(),
        "from the laptop\n"
    );
    assert_eq!(
        g.env_ok(port, "git --git-dir=/root/repo.git log --format=%s main"),
        "first\n"
    );
}

/// What VS Code's Remote-SSH does, in outline: `ssh host bash` with a
/// script on stdin that starts its server inside and prints where it
/// listens; then a forward to that port.
#[test]
fn an_editors_remote_mode_starts_a_server_inside_and_reaches_it() {
    if !can_mount() {
        return;
    }
    let (g, port) = node_with_tools();
    let script = "set -e\n\
                  mkdir -p /root/.editor-server\n\
                  echo 'editor server' > /root/.editor-server/index.html\n\
                  httpd -p 127.0.0.1:8765 -h /root/.editor-server </dev/null >/dev/null 2>&1\n\
                  echo \"listeningOn==8765==\"\n";
    let mut cmd = g.command("ssh");
    cmd.args(["-p", &port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-T", "alice@127.0.0.1", "bash"]);
    let printed = ok(run_with_input(cmd, script), "the editor's script");
    let listening: u16 = printed
        .lines()
        .find_map(|l| l.strip_prefix("listeningOn=="))
        .and_then(|l| l.trim_end_matches("==").parse().ok())
        .unwrap_or_else(|| panic!("{printed:?}"));
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _forward = crate::common::grid::Reaped(
        g.command("ssh")
            .args(["-p", &port.to_string(), "-i"])
            .arg(g.tmp.path().join("alice"))
            .args(SSH_OPTS)
            .args([
                "-N",
                "-L",
                &format!("127.0.0.1:{local}:127.0.0.1:{listening}"),
                "alice@127.0.0.1",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut page = String::new();
    wait_for(15, "the editor's server through the forward", || {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", &format!("http://127.0.0.1:{local}/")])
            .output()
            .unwrap();
        page = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert_eq!(page, "editor server\n");
}

/// `ssh -A`: the user's agent inside, only for an environment spawned with
/// `agent=yes`, in a directory only its root may enter, gone with the
/// login.
#[test]
fn agent_forwarding_is_opt_in_and_ends_with_the_login() {
    if !can_mount() {
        return;
    }
    let g = node_with_root(&["/usr/bin/ssh-add"]);
    // The laptop's agent, holding a key of its own.
    let agent = g.tmp.path().join("agent.sock");
    let _agent = crate::common::grid::Reaped(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&agent)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(10, "the agent", || agent.exists());
    let key = g.tmp.path().join("laptop");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "laptop-key", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &agent)
        .output()
        .unwrap();
    ok(added, "ssh-add");
    let with_agent = |port: u16, command: &str| {
        let mut cmd = g.command("ssh");
        cmd.env("SSH_AUTH_SOCK", &agent)
            .args(["-A", "-p", &port.to_string(), "-i"])
            .arg(g.tmp.path().join("alice"))
            .args(SSH_OPTS)
            .args(["-T", "alice@127.0.0.1", command]);
        run_with_input(cmd, "")
    };

    // Spawned without agent=yes: -A gives nothing inside.
    let port = spawn_port(&g.ok("alice", &["spawn", "devtools"]));
    let out = with_agent(port, "echo \"[$SSH_AUTH_SOCK]\"; ssh-add -l");
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");
    g.ok("alice", &["boom", "devtools"]);

    // With it: the key is listed inside, from a directory of mode 0700.
    let port = spawn_port(&g.ok("alice", &["spawn", "devtools", "agent=yes"]));
    let out = with_agent(
        port,
        "ssh-add -l && stat -c %a \"$(dirname \"$SSH_AUTH_SOCK\")\"",
    );
    let listed = ok(out, "ssh-add -l inside");
    assert!(listed.contains("laptop-key"), "{listed}");
    assert!(listed.ends_with("\n700\n"), "{listed}");
    // Gone with the login.
    wait_for(10, "the agent's socket to go with its login", || {
        !g.env_ok(port, "ls /tmp").contains("ssh-colony-")
    });
    g.ok("alice", &["boom", "devtools"]);
}
