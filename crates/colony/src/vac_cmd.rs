//! `colony vac` and `colony unvac`: archive trees and tar streams into the
//! block store, and list or extract them, as plan9port's vac and unvac do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Args};
use vac::extract::ExtractOptions;
use vac::tree::{BlockSizes, Tree};
use vac::walk::DirImporter;
use venti::{BlockStore, LogStore};

use crate::progress::Progress;

/// Where blocks live: `-h ADDR` or `$venti` for a venti server, `--store`
/// for a store directory or a bucket, else the embedded store directory.
#[derive(Args)]
pub struct StoreArg {
    /// Venti server address [default: $venti, else the embedded store].
    #[arg(short = 'h', long = "host", env = "venti", conflicts_with = "store")]
    pub host: Option<String>,
    /// A store directory, or s3://BUCKET/PREFIX (credentials from the
    /// environment or the S3 settings file, never the command line).
    #[arg(long)]
    pub store: Option<String>,
    #[arg(long, action = ArgAction::Help, help = "Print help")]
    help: Option<bool>,
}

impl StoreArg {
    pub fn open(&self) -> Result<Arc<dyn BlockStore>> {
        if let Some(addr) = self.host.as_deref().filter(|a| !a.is_empty()) {
            return Ok(Arc::new(crate::paths::remote_store(addr)?));
        }
        if let Some(spec) = &self.store {
            return crate::stores::open(spec);
        }
        let dir = crate::paths::default_store_dir()?;
        let store = LogStore::open(&dir).map_err(|e| match e {
            venti::StoreError::Busy(_) => anyhow::anyhow!(
                "{e} (a colony server is probably using it: pass -h ADDR to go through the server)"
            ),
            e => e.into(),
        })?;
        Ok(Arc::new(store))
    }
}

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct VacArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Write the vac:SCORE line to this file instead of standard output.
    #[arg(short = 'f')]
    out: Option<PathBuf>,
    /// A previous archive of the same tree: files whose size and mtime are
    /// unchanged reuse its blocks without being read.
    #[arg(short = 'd')]
    prev: Option<String>,
    /// Archive a tar stream (a file, or - for standard input) instead of paths.
    #[arg(long, value_name = "FILE")]
    tar: Option<PathBuf>,
    /// Paths to archive. `DIR/.` (or `.`) puts DIR's contents at the archive root;
    /// any other path becomes one entry of the root named after its last component.
    paths: Vec<PathBuf>,
}

pub fn vac(args: VacArgs) -> Result<()> {
    if args.tar.is_some() != args.paths.is_empty() {
        bail!("give either paths to archive or --tar FILE, not both and not neither");
    }
    let store = args.store.open()?;
    let sizes = BlockSizes::default();
    let prev_score = args
        .prev
        .as_deref()
        .map(vac::resolve_root_arg)
        .transpose()?;
    let prev_archive = match &prev_score {
        Some(score) => Some(
            vac::Archive::open(store.as_ref(), score)
                .with_context(|| format!("opening the -d archive vac:{score}"))?,
        ),
        None => None,
    };
    let progress = Progress::new("archiving");
    let mut tree = Tree::default();
    match &args.tar {
        Some(path) => {
            let mut input: Box<dyn std::io::Read> = if path.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(
                    std::fs::File::open(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                )
            };
            vac::tar::import_tar(store.as_ref(), sizes, &mut tree, &mut input, &progress)?;
        }
        None => {
            let mut importer =
                DirImporter::new(store.as_ref(), sizes, &progress, prev_archive.as_ref());
            for path in &args.paths {
                importer.add(&mut tree, path)?;
            }
        }
    }
    let score = tree.write(store.as_ref(), sizes, prev_score)?;
    progress.finish();
    let line = format!("{}\n", vac::format_vac(&score));
    match &args.out {
        Some(path) => write_atomically(path, line.as_bytes())?,
        None => std::io::stdout().write_all(line.as_bytes())?,
    }
    if progress.warnings() > 0 {
        eprintln!(
            "colony: vac: {} paths could not be archived (see above); the archive holds the rest",
            progress.warnings()
        );
    }
    Ok(())
}

/// Writes a small file so that it is either whole or absent.
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct UnvacArgs {
    #[command(flatten)]
    store: StoreArg,
    /// List the archive instead of extracting it.
    #[arg(short = 't')]
    list: bool,
    /// With -t, print modes, owners, sizes and times.
    #[arg(short = 'v')]
    verbose: bool,
    /// vac:SCORE, a bare score, or a .vac file.
    archive: String,
    /// Where to extract (default: the current directory), then the paths in
    /// the archive to extract or list (default: everything). With -t, all
    /// arguments after the archive are paths.
    rest: Vec<String>,
}

pub fn unvac(args: UnvacArgs) -> Result<()> {
    let store = args.store.open()?;
    let score = vac::resolve_root_arg(&args.archive)?;
    let archive = vac::Archive::open(store.as_ref(), &score)?;
    if args.list {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if args.rest.is_empty() {
            vac::extract::list(&archive, archive.root(), "", args.verbose, &mut out)?;
        }
        for path in &args.rest {
            let node = archive.walk(path)?;
            vac::extract::list(
                &archive,
                &node,
                path.trim_matches('/'),
                args.verbose,
                &mut out,
            )?;
        }
        out.flush()?;
        return Ok(());
    }
    let (dest, paths) = match args.rest.split_first() {
        Some((dest, paths)) => (PathBuf::from(dest), paths.to_vec()),
        None => (PathBuf::from("."), Vec::new()),
    };
    let options = ExtractOptions::for_current_user();
    let progress = Progress::new("extracting");
    if paths.is_empty() {
        vac::extract::extract(&archive, archive.root(), &dest, options, &progress)?;
    }
    for path in &paths {
        let node = archive.walk(path)?;
        let target = dest.join(path.trim_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        vac::extract::extract(&archive, &node, &target, options, &progress)?;
    }
    progress.finish();
    if progress.warnings() > 0 {
        eprintln!(
            "colony: unvac: {} entries were not extracted (see above)",
            progress.warnings()
        );
    }
    Ok(())
}
