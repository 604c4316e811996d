//! What runs in an environment for its owner, on the container runtime of
//! `crate::env`: the SSH login ([`door`]), its SFTP subsystem ([`sftp`]),
//! its forwards ([`forward`]), and the persistent shells on hubs
//! ([`hubshell`]).

pub mod door;
pub mod forward;
pub mod hubshell;
pub mod sftp;

/// The built-ins, by the name a login's command gives: `__sftp-server`,
/// what the door runs for `ssh -s sftp` when the root has no sftp-server,
/// and `__socket`, which makes a forward's socket inside.
pub const BUILTINS: &[(&str, crate::env::launch::Builtin)] = &[
    ("__sftp-server", |_| {
        sftp::serve(std::io::stdin().lock(), std::io::stdout().lock())
    }),
    (forward::BUILTIN, forward::builtin),
];
