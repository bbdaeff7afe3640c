//! Publishes metrics through node_exporter's textfile collector: the whole exposition
//! is written to `NAME.prom.tmp` in the target directory, fsynced, and renamed over
//! `NAME.prom`, so the collector never reads a half-written file.
//!
//! This is not a general file-writing helper: it writes only this exporter's text and
//! never adds timestamps (the collector rejects them).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prometheus::Registry;

/// Writes the registry to one `.prom` file, atomically.
#[derive(Debug, Clone)]
pub struct TextfileWriter {
    target: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl TextfileWriter {
    /// `target` is the final file, e.g. `/var/lib/prometheus/node-exporter/gocache_warden.prom`;
    /// its name must end in `.prom` (the collector ignores anything else).
    pub fn new(target: impl Into<PathBuf>) -> Result<TextfileWriter> {
        let target = target.into();
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".prom") && n.len() > ".prom".len())
            .with_context(|| {
                format!(
                    "textfile \"{}\" must be a file name ending in .prom",
                    target.display()
                )
            })?
            .to_string();
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => bail!("textfile \"{}\" must name a directory", target.display()),
        };
        let tmp = dir.join(format!("{name}.tmp"));
        Ok(TextfileWriter { target, tmp, dir })
    }

    /// The final `.prom` path.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Encodes `registry` and replaces the file with it.
    /// Removes the textfile (the agent is stopping: its figures stop being current). A file
    /// that is already gone is not an error.
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    pub fn write(&self, registry: &Registry) -> Result<()> {
        let text = super::encode_text(registry)?;
        self.write_text(&text)
    }

    /// Replaces the file with `text`: write the temporary file, fsync it, rename it
    /// over the target, fsync the directory so the rename survives a crash.
    pub fn write_text(&self, text: &str) -> Result<()> {
        let tmp = &self.tmp;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
            .with_context(|| format!("cannot create \"{}\"", tmp.display()))?;
        // node_exporter usually runs as another user; the umask must not hide the file.
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot chmod \"{}\"", tmp.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write \"{}\"", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot fsync \"{}\"", tmp.display()))?;
        drop(f);
        fs::rename(tmp, &self.target).with_context(|| {
            format!(
                "cannot rename \"{}\" to \"{}\"",
                tmp.display(),
                self.target.display()
            )
        })?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot fsync directory \"{}\"", self.dir.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_names_the_collector_ignores() {
        assert!(TextfileWriter::new("/tmp/x.txt").is_err());
        assert!(TextfileWriter::new("/tmp/.prom").is_err());
        assert!(TextfileWriter::new("x.prom").is_err());
        let w = TextfileWriter::new("/tmp/a/gocache_warden.prom").unwrap();
        assert_eq!(w.tmp, Path::new("/tmp/a/gocache_warden.prom.tmp"));
    }
}
