//! Where a bucket is and how to reach it: `s3://BUCKET/PREFIX`, with the
//! endpoint, region and credentials from a configuration file or the usual
//! `AWS_*` variables. Secrets are never taken from the command line (where
//! `ps` shows them) and never printed: [`Settings`]'s `Debug` hides them.
//!
//! The file is `$COLONY_S3_CONFIG`, else `/etc/colony/s3.conf`, else
//! `~/.config/colony/s3.conf`, of `key = value` lines (`#` comments):
//!
//! ```text
//! endpoint = http://127.0.0.1:3900
//! region = garage
//! access_key_id = GK…
//! secret_access_key = …
//! cache = /var/cache/colony/s3     # the local index and block cache
//! cache_size = 2G
//! pack_size = 16M
//! ```
//!
//! The variables win over the file: `AWS_ENDPOINT_URL`, `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, and `COLONY_S3_CACHE`.

use std::path::{Path, PathBuf};

/// A parsed `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl S3Url {
    pub fn parse(text: &str) -> Result<S3Url, String> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{text:?} is not an s3://BUCKET/PREFIX address"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !ok {
            return Err(format!(
                "bad bucket name {bucket:?} in {text}: 3 to 63 lowercase letters, digits, '-' and '.'"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(format!("bad prefix {prefix:?} in {text}"));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Everything needed to open a bucket as a store.
#[derive(Clone)]
pub struct Settings {
    pub url: S3Url,
    /// `http(s)://HOST:PORT`; none for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The local index and block cache.
    pub cache: PathBuf,
    pub cache_bytes: u64,
    /// A pack is sent once it holds this many bytes.
    pub pack_bytes: usize,
    /// The file read, if any (for error messages).
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url.to_string())
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"(hidden)")
            .field("cache", &self.cache)
            .finish()
    }
}

pub const DEFAULT_PACK_BYTES: usize = 16 << 20;
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;

/// What the settings read of the process's environment: a variable's
/// value by name. The binary passes the real environment; this crate never
/// reads it itself.
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

fn config_file(env: Environment) -> Result<Option<PathBuf>, String> {
    if let Some(path) = env("COLONY_S3_CONFIG") {
        let path = PathBuf::from(path);
        if !path.exists() {
            return Err(format!(
                "COLONY_S3_CONFIG names {}, which does not exist",
                path.display()
            ));
        }
        return Ok(Some(path));
    }
    let mut candidates = vec![PathBuf::from("/etc/colony/s3.conf")];
    if let Some(home) = env("HOME") {
        candidates.push(Path::new(&home).join(".config/colony/s3.conf"));
    }
    Ok(candidates.into_iter().find(|p| p.exists()))
}

/// The file's `key = value` pairs.
fn read_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading S3 settings {}: {e}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            format!(
                "{}:{}: expected key = value, got {line:?}",
                path.display(),
                n + 1
            )
        })?;
        let key = k.trim();
        const KNOWN: [&str; 8] = [
            "endpoint",
            "region",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "cache",
            "cache_size",
            "pack_size",
        ];
        if !KNOWN.contains(&key) {
            return Err(format!(
                "{}:{}: unknown setting {key:?} (known: {})",
                path.display(),
                n + 1,
                KNOWN.join(", ")
            ));
        }
        pairs.push((key.to_string(), v.trim().to_string()));
    }
    // A secret in a file others can read is worth a word.
    #[cfg(unix)]
    if pairs.iter().any(|(k, _)| k == "secret_access_key") {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(file = %path.display(), "the S3 secret key's file is readable by others: chmod 600 it");
        }
    }
    Ok(pairs)
}

impl Settings {
    /// The settings for `url`: the file, then the variables of `env` over it.
    pub fn load(url: &str, env: Environment) -> Result<Settings, String> {
        let url = S3Url::parse(url)?;
        let file = config_file(env)?;
        let pairs = match &file {
            Some(path) => read_file(path)?,
            None => Vec::new(),
        };
        let from_file = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let endpoint = var("AWS_ENDPOINT_URL")
            .or_else(|| var("AWS_ENDPOINT"))
            .or_else(|| from_file("endpoint"));
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| from_file("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let key = var("AWS_ACCESS_KEY_ID").or_else(|| from_file("access_key_id"));
        let secret = var("AWS_SECRET_ACCESS_KEY").or_else(|| from_file("secret_access_key"));
        let (Some(access_key_id), Some(secret_access_key)) = (key, secret) else {
            let place = match &file {
                Some(f) => format!("access_key_id and secret_access_key in {}", f.display()),
                None => "access_key_id and secret_access_key in ~/.config/colony/s3.conf (or $COLONY_S3_CONFIG)".into(),
            };
            return Err(format!(
                "no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or {place}"
            ));
        };
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(format!(
                "bad S3 endpoint {e:?}: give http://HOST:PORT or https://HOST"
            ));
        }
        let cache = match var("COLONY_S3_CACHE").or_else(|| from_file("cache")) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let base = var("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
                    .unwrap_or_else(|| PathBuf::from("/var/cache"));
                let mut dir = base.join("colony/s3").join(&url.bucket);
                if !url.prefix.is_empty() {
                    dir = dir.join(url.prefix.replace('/', "_"));
                }
                dir
            }
        };
        let cache_bytes = match from_file("cache_size") {
            Some(s) => units::parse_size(&s).map_err(|e| format!("cache_size: {e}"))?,
            None => DEFAULT_CACHE_BYTES,
        };
        let pack_bytes = match from_file("pack_size") {
            Some(s) => units::parse_size(&s).map_err(|e| format!("pack_size: {e}"))? as usize,
            None => DEFAULT_PACK_BYTES,
        };
        if !(64 << 10..=1 << 30).contains(&pack_bytes) {
            return Err(format!("pack_size {pack_bytes} is out of range: 64K to 1G"));
        }
        Ok(Settings {
            url,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN").or_else(|| from_file("session_token")),
            cache,
            cache_bytes,
            pack_bytes,
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_named() {
        assert_eq!(
            S3Url::parse("s3://colony/grid/a/").unwrap(),
            S3Url {
                bucket: "colony".into(),
                prefix: "grid/a".into()
            }
        );
        assert_eq!(S3Url::parse("s3://colony").unwrap().prefix, "");
        assert!(
            S3Url::parse("colony/x")
                .unwrap_err()
                .contains("not an s3://")
        );
        assert!(
            S3Url::parse("s3://Bad_Bucket/x")
                .unwrap_err()
                .contains("bad bucket")
        );
        assert!(
            S3Url::parse("s3://ok-bucket/a/../b")
                .unwrap_err()
                .contains("bad prefix")
        );
        assert_eq!(
            S3Url::parse("s3://abc/p").unwrap().to_string(),
            "s3://abc/p"
        );
    }

    #[test]
    fn secrets_are_not_shown() {
        let s = Settings {
            url: S3Url::parse("s3://abc").unwrap(),
            endpoint: None,
            region: "r".into(),
            access_key_id: "GKpublic".into(),
            secret_access_key: "very-secret".into(),
            session_token: None,
            cache: PathBuf::from("/tmp"),
            cache_bytes: 1,
            pack_bytes: 1,
            file: None,
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("GKpublic") && !shown.contains("very-secret"),
            "{shown}"
        );
    }
}
