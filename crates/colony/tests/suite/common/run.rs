//! Running the `colony` binary as a user would and reading what it said:
//! one way for every module (each had its own copy).

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Output, Stdio};

pub const COLONY: &str = env!("CARGO_BIN_EXE_colony");

/// `colony ARGS`, with `env` set and `stdin` as its input. A developer's
/// `$venti` (plan9port's default server) never redirects a test.
pub fn run(args: &[&str], env: &[(&str, &OsStr)], stdin: &[u8]) -> Output {
    let mut child = Command::new(COLONY)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("venti")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that does not read its input may close it first.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// Runs `cmd` with `input` on its stdin and collects its output.
pub fn run_with_input(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written as the output is read, as a terminal's user or a pipe
    // would (a command that does not read its input may close it first).
    let mut stdin = child.stdin.take().unwrap();
    let input = input.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The stdout of a command that must have succeeded (its stderr in the
/// failure).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The stderr of a command that must have failed (its stdout in the
/// failure).
pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a command said: its stdout if it succeeded, else its stderr.
pub fn outcome(out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8(out.stdout.clone()).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `colony gc` beside the node running on `state`: its report, or its
/// refusal.
pub fn gc(state: &std::path::Path) -> Result<String, String> {
    outcome(
        &Command::new(COLONY)
            .args(["gc", "--state"])
            .arg(state)
            .output()
            .unwrap(),
    )
}
