//! colony's integration tests, in one binary (one link of the test
//! harness instead of one per file): each module drives the real `colony`
//! binary, with real peers (OpenSSH, FUSE, Garage, plan9port-compatible
//! clients, network namespaces), and shares the harness in `common`.
//!
//! `cargo test -p colony --test suite grid_ssh::` runs one module's tests.

mod common;

mod env_forwards;
mod env_idle;
mod env_tools;
mod garage;
mod gc;
mod grid_links;
mod grid_replication;
mod grid_split;
mod grid_ssh;
mod hub_cli;
mod hubshell;
mod jobs_run;
mod mount_cli;
mod vac_cli;
mod venti_cli;
mod venti_faults;
