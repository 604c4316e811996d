//! What a person types at a hub shell, split into input for the shell and
//! the attachment's own `%` commands (`%detach`, `%attach NAME`, …), which
//! count only at the start of a line. Shared by the environments' hub
//! shells (over SSH) and `colony hub` (a terminal on any hubfs).

/// A hub shell's name (its hubs are NAME0, NAME1, …): letters, digits,
/// `-` and `_`, at most 32.
pub fn check_shell_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!(
            "bad shell name {name:?}: use letters, digits, - and _, at most 32"
        ));
    }
    Ok(())
}

/// An attachment's view of the keys typed: what goes to the shell, and the
/// `%` commands taken out of the stream.
pub struct Typed {
    at_line_start: bool,
    /// A `%…` line being held back until Enter.
    held: Option<Vec<u8>>,
}

/// What a run of typed bytes comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    Shell(Vec<u8>),
    Command(String),
    /// What to show of a `%` line being typed (the shell does not see it,
    /// so its terminal does not echo it).
    Echo(Vec<u8>),
}

impl Default for Typed {
    fn default() -> Self {
        Typed::new()
    }
}

impl Typed {
    pub fn new() -> Typed {
        Typed {
            at_line_start: true,
            held: None,
        }
    }

    /// Splits typed bytes into input for the shell and `%` commands.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Key> {
        let mut out = Vec::new();
        let mut plain = Vec::new();
        for &b in data {
            if let Some(held) = &mut self.held {
                match b {
                    b'\r' | b'\n' => {
                        let line = String::from_utf8_lossy(held).into_owned();
                        self.held = None;
                        self.at_line_start = true;
                        if !plain.is_empty() {
                            out.push(Key::Shell(std::mem::take(&mut plain)));
                        }
                        out.push(Key::Command(line));
                    }
                    0x7f | 0x08 => {
                        held.pop();
                        out.push(Key::Echo(b"\x08 \x08".to_vec()));
                        if held.is_empty() {
                            self.held = None;
                        }
                    }
                    _ => {
                        held.push(b);
                        out.push(Key::Echo(vec![b]));
                    }
                }
                continue;
            }
            if self.at_line_start && b == b'%' {
                if !plain.is_empty() {
                    out.push(Key::Shell(std::mem::take(&mut plain)));
                }
                self.held = Some(vec![b]);
                out.push(Key::Echo(vec![b]));
                continue;
            }
            self.at_line_start = matches!(b, b'\r' | b'\n' | 0x03 | 0x15);
            plain.push(b);
        }
        if !plain.is_empty() {
            out.push(Key::Shell(plain));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_lines_at_a_line_start_are_commands() {
        let mut t = Typed::new();
        let commands = |keys: Vec<Key>| -> Vec<Key> {
            keys.into_iter()
                .filter(|k| !matches!(k, Key::Echo(_)))
                .collect()
        };
        assert_eq!(
            commands(t.feed(b"ls\r%det")),
            vec![Key::Shell(b"ls\r".to_vec())]
        );
        assert_eq!(
            commands(t.feed(b"ach\r")),
            vec![Key::Command("%detach".into())]
        );
        // Not at a line start: for the shell.
        assert_eq!(
            t.feed(b"echo 50%\r"),
            vec![Key::Shell(b"echo 50%\r".to_vec())]
        );
        // Rubbed out, a held line goes back to being typing.
        assert_eq!(commands(t.feed(b"%\x7fx")), vec![Key::Shell(b"x".to_vec())]);
        assert_eq!(
            commands(t.feed(b"\r%list\r")),
            vec![Key::Shell(b"\r".to_vec()), Key::Command("%list".into())]
        );
        // What is held is shown as typed.
        assert_eq!(
            t.feed(b"%s"),
            vec![Key::Echo(b"%".to_vec()), Key::Echo(b"s".to_vec())]
        );
    }
}
