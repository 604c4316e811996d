//! Persistent shells in an environment, on hubs (the original's `hub -b -z
//! NAME` and `hubshell`): `ssh -t -p PORT you@node hub [NAME]` attaches to
//! the environment's shell NAME (default `main`), made on first use. The
//! shell runs on a pseudo-terminal whose output goes to hub `NAME1` and
//! whose input comes from hub `NAME0`; an attached session reads `NAME1`
//! from the oldest byte kept (so a reattach shows the recent screen) and
//! writes what is typed to `NAME0`. A dropped connection or `%detach`
//! leaves the shell running, with its working directory, variables and
//! jobs; two sessions attached to one name share it. Ctrl-C reaches the
//! shell's foreground job through the terminal, as on any terminal.
//!
//! Lines typed at the start of a line beginning with `%` are for the
//! attachment, not the shell: `%detach`, `%attach NAME` (to another shell,
//! made if needed), `%list`, `%status`.
//!
//! Each environment has a hub set of its own, in the node's process; only
//! the environment's owner reaches it (through the environment's login).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hubfs::HubSet;
use hubfs::hub::{Got, ReaderId};
pub use hubfs::typed::{Key, Typed};

use crate::env::Environment;

/// The default shell name.
pub const DEFAULT: &str = "main";

/// One running shell.
struct Shell {
    /// The pty's master: window changes go to it.
    master: Arc<File>,
    started: std::time::Instant,
}

/// The environment's hubs and the shells on them.
pub struct HubShells {
    pub hubs: Arc<HubSet>,
    shells: Mutex<HashMap<String, Shell>>,
}

impl Default for HubShells {
    fn default() -> Self {
        HubShells {
            hubs: Arc::new(HubSet::new(hubfs::Limits {
                // A generous scrollback, and room for many named shells.
                buffer: 1 << 20,
                hubs: 64,
                write: 1 << 20,
                ..hubfs::Limits::default()
            })),
            shells: Mutex::default(),
        }
    }
}

/// `hub` or `hub NAME` as an SSH command: the shell's name.
pub fn requested(command: &str) -> Option<Result<String, String>> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["hub"] => Some(Ok(DEFAULT.to_string())),
        ["hub", name] => Some(hubfs::typed::check_shell_name(name).map(|()| name.to_string())),
        ["hub", ..] => Some(Err("usage: hub [NAME]".into())),
        _ => None,
    }
}

impl HubShells {
    fn shells(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shell>> {
        self.shells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts shell `name` on a new pty unless it runs; `pty` opens one
    /// (master, slave) in the environment.
    pub fn ensure(
        self: &Arc<Self>,
        name: &str,
        env: &Environment,
        shell: &str,
        term: &str,
        pty: impl FnOnce() -> std::io::Result<(File, OwnedFd)>,
    ) -> std::io::Result<()> {
        let mut shells = self.shells();
        if shells.contains_key(name) {
            return Ok(());
        }
        let (input, output) = (format!("{name}0"), format!("{name}1"));
        for hub in [&input, &output] {
            if self.hubs.info(hub).is_err() {
                self.hubs
                    .create(hub, "owner", 0o600)
                    .map_err(std::io::Error::other)?;
            }
        }
        // A shell again on this name: its readers wait for output again.
        let _ = self.hubs.finish(&output, false);
        let (master, slave) = pty()?;
        let mut cmd = env.command(&[shell.to_string(), "-l".into()], true, Some(term));
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let mut child = cmd.spawn()?;
        drop(cmd);
        let master = Arc::new(master);
        // The terminal's output, to the output hub.
        {
            // Ends when the last holder of the terminal (the shell, or a
            // job it left) is gone.
            let (mut from, hubs, out) = (master.try_clone()?, self.hubs.clone(), output.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || hubs.write(&out, &buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        // The input hub, to the terminal.
        let input_reader = self
            .hubs
            .open_reader(&input)
            .map_err(std::io::Error::other)?;
        {
            let reader = input_reader;
            let (mut to, hubs, input) = (master.try_clone()?, self.hubs.clone(), input.clone());
            std::thread::spawn(move || {
                let never = AtomicBool::new(false);
                loop {
                    match hubs.read(&input, reader, 64 * 1024, &never) {
                        Ok(Got::Data(d)) => {
                            if to.write_all(&d).is_err() {
                                break;
                            }
                        }
                        Ok(Got::Eof) => continue,
                        Err(hubfs::HubError::Lost { .. }) => continue,
                        Err(_) => break,
                    }
                }
                hubs.close_reader(&input, reader);
            });
        }
        // The shell's end (not the terminal's: a background job may hold
        // that open) ends its attachments.
        {
            let (me, name, hubs, out) = (
                self.clone(),
                name.to_string(),
                self.hubs.clone(),
                output.clone(),
            );
            std::thread::spawn(move || {
                let _ = child.wait();
                me.shells().remove(&name);
                let _ = hubs.finish(&out, true);
                // And the thread feeding its input.
                hubs.close_reader(&input, input_reader);
            });
        }
        shells.insert(
            name.to_string(),
            Shell {
                master,
                started: std::time::Instant::now(),
            },
        );
        Ok(())
    }

    /// Sets the window size of shell `name`.
    pub fn resize(&self, name: &str, cols: u16, rows: u16) {
        if let Some(s) = self.shells().get(name) {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ on our pty master with a valid winsize.
            unsafe { libc::ioctl(s.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
    }

    /// `%list`: the shells and what their hubs hold.
    pub fn list(&self) -> String {
        let shells = self.shells();
        let mut names: Vec<&String> = shells.keys().collect();
        names.sort();
        let mut out = String::new();
        for n in names {
            let kept = self.hubs.info(&format!("{n}1")).map_or(0, |i| i.kept);
            out.push_str(&format!(
                "{n}\tup {}s\t{kept} bytes of output kept\r\n",
                shells[n].started.elapsed().as_secs()
            ));
        }
        out
    }

    pub fn running(&self, name: &str) -> bool {
        self.shells().contains_key(name)
    }
}

/// Where an attachment reads the shell's output.
pub struct Attached {
    pub hub: String,
    pub reader: ReaderId,
    pub done: Arc<AtomicBool>,
}

impl Attached {
    pub fn end(&self, hubs: &HubSet) {
        self.done.store(true, Ordering::Relaxed);
        hubs.close_reader(&self.hub, self.reader);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_command_names_a_shell() {
        assert_eq!(requested("hub"), Some(Ok("main".into())));
        assert_eq!(requested("hub work"), Some(Ok("work".into())));
        assert!(matches!(requested("hub ../x"), Some(Err(_))));
        assert!(matches!(requested("hub a b"), Some(Err(_))));
        assert_eq!(requested("hubble"), None);
        assert_eq!(requested("ls"), None);
    }
}
