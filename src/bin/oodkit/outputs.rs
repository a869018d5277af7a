//! Where a command writes: never over one of its own inputs, nor over
//! something that is not a regular file (files are written whole by
//! `oodkit::datasets::write_atomically`).

use std::fs;
use std::path::{Path, PathBuf};

use oodkit::{Error, Result};

/// The files and folders a command reads, by the flag that named them.
#[derive(Default)]
pub struct Inputs<'a>(Vec<(&'static str, &'a Path)>);

impl<'a> Inputs<'a> {
    /// Adds what `flag` named, when it was given.
    pub fn with(mut self, flag: &'static str, path: Option<&'a Path>) -> Self {
        if let Some(path) = path {
            self.0.push((flag, path));
        }
        self
    }

    /// Errors when the file `output` (given with `flag`) exists and is not
    /// a regular file, or is one of the inputs, or lies in an input folder.
    pub fn check_file(&self, flag: &str, output: &Path) -> Result<()> {
        if let Ok(meta) = fs::metadata(output)
            && !meta.is_file()
        {
            return Err(refused(
                flag,
                output,
                "exists and is not a regular file (a folder, a pipe or a device): name a new \
                 file, or a regular file to replace",
            ));
        }
        self.check_against_inputs(flag, output)
    }

    /// Errors when the folder `output` (given with `flag`, where files are
    /// written) exists and is not a folder, or is or lies in an input folder,
    /// or is an input file.
    pub fn check_folder(&self, flag: &str, output: &Path) -> Result<()> {
        if let Ok(meta) = fs::metadata(output)
            && !meta.is_dir()
        {
            return Err(refused(
                flag,
                output,
                "exists and is not a folder: name a folder (it is created if missing)",
            ));
        }
        self.check_against_inputs(flag, output)
    }

    /// Checks a report's outputs, when given: `--json` (a file) and
    /// `--plots` (a folder).
    pub fn check_reports(&self, json: Option<&Path>, plots: Option<&Path>) -> Result<()> {
        if let Some(path) = json {
            self.check_file("--json", path)?;
        }
        if let Some(dir) = plots {
            self.check_folder("--plots", dir)?;
        }
        Ok(())
    }

    fn check_against_inputs(&self, flag: &str, output: &Path) -> Result<()> {
        let Some(target) = resolved(output) else {
            return Ok(());
        };
        for &(input_flag, input) in &self.0 {
            let Ok(source) = input.canonicalize() else {
                continue;
            };
            if target == source || same_inode(output, input) {
                return Err(refused(
                    flag,
                    output,
                    &format!(
                        "is {input_flag} {}, which this command reads: write to another path",
                        input.display()
                    ),
                ));
            }
            if source.is_dir() && target.starts_with(&source) {
                return Err(refused(
                    flag,
                    output,
                    &format!(
                        "is inside {input_flag} {}, a folder this command reads: write outside it",
                        input.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `path` with its folder's symbolic links and `..` resolved (the path
/// itself too when it exists), `None` when its folder does not exist.
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(path) = path.canonicalize() {
        return Some(path);
    }
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(name))
}

/// Whether two existing paths are one file (hard links included).
#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &Path) -> bool {
    false
}

fn refused(flag: &str, output: &Path, why: &str) -> Error {
    Error::InvalidParameter {
        name: "output",
        value: format!("{flag} {}", output.display()),
        reason: why.into(),
    }
}
