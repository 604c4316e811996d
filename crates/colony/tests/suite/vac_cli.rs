//! `colony vac` and `colony unvac` as a user runs them: the embedded store by
//! default, a venti server with -h, tar on standard input, and bad input.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::run::{COLONY, failed, ok, run};

fn colony(store: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run(args, &[("COLONY_STORE", store.as_os_str())], stdin)
}

fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/apt")).unwrap();
    std::fs::write(dir.join("etc/hostname"), b"node1\n").unwrap();
    std::fs::write(dir.join("etc/apt/sources"), vec![b'x'; 20000]).unwrap();
    std::os::unix::fs::symlink("hostname", dir.join("etc/name")).unwrap();
}

#[test]
fn archive_list_and_extract_with_the_embedded_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let vacfile = tmp.path().join("root.vac");

    let out = colony(
        &store,
        &[
            "vac",
            "-f",
            vacfile.to_str().unwrap(),
            src.join(".").to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok(&out).is_empty(), "with -f the score goes to the file");
    let line = std::fs::read_to_string(&vacfile).unwrap();
    assert!(
        line.starts_with("vac:") && line.len() == 45 && line.ends_with('\n'),
        "{line:?}"
    );

    let listing = ok(&colony(
        &store,
        &["unvac", "-t", vacfile.to_str().unwrap()],
        b"",
    ));
    assert_eq!(
        listing,
        "etc\netc/apt\netc/apt/sources\netc/hostname\netc/name\n"
    );
    let long = ok(&colony(
        &store,
        &["unvac", "-tv", line.trim(), "etc/name"],
        b"",
    ));
    assert!(
        long.starts_with("Lrwxrwxrwx") && long.trim_end().ends_with("etc/name -> hostname"),
        "{long}"
    );

    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    ok(&colony(
        &store,
        &["unvac", line.trim(), dest.to_str().unwrap()],
        b"",
    ));
    assert_eq!(
        std::fs::read(dest.join("etc/apt/sources")).unwrap(),
        vec![b'x'; 20000]
    );
    assert_eq!(
        std::fs::read_link(dest.join("etc/name")).unwrap(),
        Path::new("hostname")
    );

    // Only some paths.
    let part = tmp.path().join("part");
    ok(&colony(
        &store,
        &["unvac", line.trim(), part.to_str().unwrap(), "etc/hostname"],
        b"",
    ));
    assert_eq!(
        std::fs::read(part.join("etc/hostname")).unwrap(),
        b"node1\n"
    );
    assert!(!part.join("etc/apt").exists());

    // A named path (not DIR/.) becomes one entry of the root, as in plan9port vac.
    let score = ok(&colony(
        &store,
        &["vac", src.join("etc").to_str().unwrap()],
        b"",
    ));
    let listing = ok(&colony(&store, &["unvac", "-t", score.trim()], b""));
    assert!(listing.starts_with("etc\netc/apt\n"), "{listing}");

    // -d: the previous archive is recorded and unchanged files are reused.
    let again = ok(&colony(
        &store,
        &[
            "vac",
            "-d",
            vacfile.to_str().unwrap(),
            src.join(".").to_str().unwrap(),
        ],
        b"",
    ));
    assert!(again.starts_with("vac:"));
}

#[test]
fn a_tar_stream_through_a_venti_server() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let mut server = Command::new(COLONY)
        .args(["venti", "serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(tmp.path().join("server-store"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let unused_store = tmp.path().join("never-created");

    let tar = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let score = ok(&colony(
        &unused_store,
        &["vac", "-h", &addr, "--tar", "-"],
        &tar.stdout,
    ));
    let listing = ok(&colony(
        &unused_store,
        &["unvac", "-h", &addr, "-t", score.trim()],
        b"",
    ));
    assert_eq!(
        listing,
        "etc\netc/apt\netc/apt/sources\netc/hostname\netc/name\n"
    );
    // The same tree from the directory gives the same root.
    let from_dir = ok(&colony(
        &unused_store,
        &["vac", "-h", &addr, src.join(".").to_str().unwrap()],
        b"",
    ));
    assert_eq!(from_dir, score);
    assert!(
        !unused_store.exists(),
        "with -h nothing touches the embedded store"
    );

    // While the server holds its store, opening it directly is refused with a hint.
    let err = failed(&colony(
        &tmp.path().join("server-store"),
        &["unvac", "-t", score.trim()],
        b"",
    ));
    assert!(
        err.contains("in use by another process") && err.contains("-h"),
        "{err}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn bad_input_gets_clear_errors_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let missing = "vac:6f8f2141577ba09cd814316ef160871cc2dcadcc";
    let err = failed(&colony(&store, &["unvac", "-t", missing], b""));
    assert!(err.contains("is not in the store"), "{err}");

    let err = failed(&colony(
        &store,
        &["vac", tmp.path().join("does-not-exist").to_str().unwrap()],
        b"",
    ));
    assert!(
        err.contains("does-not-exist") && err.contains("No such file"),
        "{err}"
    );

    let src = tmp.path().join("src");
    sample_tree(&src);
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let out_file = tmp.path().join("out.vac");
    let out = colony(
        &store,
        &["vac", "-f", out_file.to_str().unwrap(), "--tar", "-"],
        &tar.stdout[..3000],
    );
    let err = failed(&out);
    assert!(err.contains("tar stream ended early"), "{err}");
    assert!(
        out.stdout.is_empty() && !out_file.exists(),
        "nothing reported as success"
    );

    let score = ok(&colony(
        &store,
        &["vac", src.join(".").to_str().unwrap()],
        b"",
    ));
    let err = failed(&colony(
        &store,
        &["unvac", "-t", score.trim(), "etc/nope"],
        b"",
    ));
    assert!(
        err.contains("etc/nope: no such file or directory in the archive"),
        "{err}"
    );

    let not_vac = tmp.path().join("bogus.vac");
    std::fs::write(&not_vac, "this is not a vac file at all, not even close\n").unwrap();
    let err = failed(&colony(
        &store,
        &["unvac", "-t", not_vac.to_str().unwrap()],
        b"",
    ));
    assert!(err.contains("not a vac file"), "{err}");

    let err = failed(&colony(&store, &["vac"], b""));
    assert!(err.contains("give either paths"), "{err}");
}
