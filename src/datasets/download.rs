//! Fetching the public datasets into a local folder, with checksums.
//!
//! Each file is written to a temporary file in the target folder and renamed
//! into place only after its MD5 checksum matches, so an interrupted or
//! corrupt download never leaves a file that a later load would trust. Files
//! already present and valid are not fetched again. Mirrors are tried in
//! order until one gives the right bytes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use super::cifar10::FOLDER as CIFAR_FOLDER;
use crate::error::{Error, Result};

/// A file to fetch: its name in the target folder, where to get it (tried in
/// order) and its MD5 checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name in the target folder.
    pub name: String,
    /// Mirror URLs, tried in order.
    pub urls: Vec<String>,
    /// MD5 of the file as served (lowercase hex).
    pub md5: String,
    /// For a gzipped file: MD5 of its decompressed content. A local copy
    /// whose content matches is accepted even when it was compressed
    /// differently, and so is the decompressed file itself.
    pub content_md5: Option<String>,
}

const MNIST_MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];

/// (file, md5 of the .gz as published, md5 of its content)
const MNIST_FILES: [(&str, &str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "6bbc9ace898e44ae57da46a324031adb",
    ),
    (
        "train-labels-idx1-ubyte",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "a25bea736e30d166cdddb491f175f624",
    ),
    (
        "t10k-images-idx3-ubyte",
        "9fb629c4189551a2d022fa330f9573f3",
        "2646ac647ad5339dbf082846283269ea",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "ec29112dd5afa0611ce80d1b7f02629c",
        "27ae3e4e09519cfbb04c329615203637",
    ),
];

/// The four MNIST files, with their mirrors and checksums.
pub fn mnist_files() -> Vec<RemoteFile> {
    MNIST_FILES
        .iter()
        .map(|&(name, md5, content_md5)| RemoteFile {
            name: format!("{name}.gz"),
            urls: MNIST_MIRRORS
                .iter()
                .map(|m| format!("{m}{name}.gz"))
                .collect(),
            md5: md5.into(),
            content_md5: Some(content_md5.into()),
        })
        .collect()
}

/// Fetches the four MNIST files into `dir` (the folder
/// [`mnist::load`](super::mnist::load) reads), skipping those already there.
pub fn mnist(dir: impl AsRef<Path>) -> Result<()> {
    for file in mnist_files() {
        fetch(&file, dir.as_ref())?;
    }
    Ok(())
}

/// The official CIFAR-10 binary archive.
pub fn cifar10_archive() -> RemoteFile {
    RemoteFile {
        name: "cifar-10-binary.tar.gz".into(),
        urls: vec!["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz".into()],
        md5: "c32a1d4ab5d03f1284b67883e8d87530".into(),
        content_md5: None,
    }
}

const CIFAR_BATCH_BYTES: u64 = 10_000 * 3073;

/// Fetches the CIFAR-10 binary archive into `dir` and unpacks it there, as
/// `dir/cifar-10-batches-bin/` (what [`cifar10::load`](super::cifar10::load)
/// reads). Nothing is fetched when the unpacked files are already complete.
pub fn cifar10(dir: impl AsRef<Path>) -> Result<()> {
    cifar10_from(&cifar10_archive(), dir)
}

/// Like [`cifar10`], from another source of the binary archive (a mirror, a
/// local server); `archive.name` is the file name it is saved under.
pub fn cifar10_from(archive: &RemoteFile, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    if cifar10_complete(&dir.join(CIFAR_FOLDER)) {
        return Ok(());
    }
    let archive = fetch(archive, dir)?;
    unpack_tar_gz(&archive, dir, CIFAR_FOLDER)?;
    if !cifar10_complete(&dir.join(CIFAR_FOLDER)) {
        return Err(Error::corrupt(
            &archive,
            None,
            format!(
                "the archive does not hold the six CIFAR-10 batch files and batches.meta.txt in {CIFAR_FOLDER}/"
            ),
        ));
    }
    Ok(())
}

fn cifar10_complete(folder: &Path) -> bool {
    let batches = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()]);
    folder.join("batches.meta.txt").is_file()
        && batches
            .into_iter()
            .all(|b| std::fs::metadata(folder.join(b)).is_ok_and(|m| m.len() == CIFAR_BATCH_BYTES))
}

/// The two SVHN cropped-digits files (train and test).
pub fn svhn_files() -> Vec<RemoteFile> {
    [
        ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    ]
    .iter()
    .map(|&(name, md5)| RemoteFile {
        name: name.into(),
        urls: vec![format!("http://ufldl.stanford.edu/housenumbers/{name}")],
        md5: md5.into(),
        content_md5: None,
    })
    .collect()
}

/// Fetches SVHN's `train_32x32.mat` and `test_32x32.mat` into `dir` (the
/// folder [`svhn::load`](super::svhn::load) reads).
pub fn svhn(dir: impl AsRef<Path>) -> Result<()> {
    for file in svhn_files() {
        fetch(&file, dir.as_ref())?;
    }
    Ok(())
}

/// Fetches `file` into `dir` (created if needed) and returns its path.
///
/// A valid local copy is returned as is. Otherwise each URL is tried in
/// turn; the bytes go to a temporary file that is renamed into place only
/// once the checksum matches. When every URL fails the error lists what went
/// wrong with each.
pub fn fetch(file: &RemoteFile, dir: impl AsRef<Path>) -> Result<PathBuf> {
    let dir = dir.as_ref();
    if let Some(existing) = valid_local_copy(file, dir)? {
        return Ok(existing);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let target = dir.join(&file.name);
    let part = PartFile(dir.join(format!(".{}.{}.part", file.name, std::process::id())));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into();

    let mut failures = Vec::new();
    for url in &file.urls {
        match download_to(&agent, url, &part.0) {
            Ok(md5) if md5 == file.md5 => {
                std::fs::rename(&part.0, &target).map_err(|e| Error::io(&target, e))?;
                return Ok(target);
            }
            Ok(md5) => failures.push(format!("{url}: checksum {md5}, expected {}", file.md5)),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    Err(Error::Download {
        file: file.name.clone(),
        reason: if failures.is_empty() {
            "no URL to fetch it from".into()
        } else {
            failures.join("; ")
        },
    })
}

/// A temporary download, removed when dropped unless it was renamed away.
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Streams `url` into `path`, showing progress; returns the MD5 of the bytes.
fn download_to(agent: &ureq::Agent, url: &str, path: &Path) -> std::result::Result<String, String> {
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = match total {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());

    let mut reader = response.into_body().into_reader();
    let out = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = BufWriter::new(out);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("connection failed mid-file: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        bar.inc(n as u64);
    }
    out.flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    bar.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

/// A local copy of `file` in `dir` that passes its checksum, if any.
fn valid_local_copy(file: &RemoteFile, dir: &Path) -> Result<Option<PathBuf>> {
    let path = dir.join(&file.name);
    if path.is_file() {
        if md5_of(&path, false)? == file.md5 {
            return Ok(Some(path));
        }
        if let Some(content) = &file.content_md5
            && md5_of(&path, true).ok().as_ref() == Some(content)
        {
            return Ok(Some(path));
        }
    }
    // The decompressed file itself (e.g. `train-images-idx3-ubyte`).
    if let (Some(content), Some(plain)) = (&file.content_md5, file.name.strip_suffix(".gz")) {
        let plain = dir.join(plain);
        if plain.is_file() && &md5_of(&plain, false)? == content {
            return Ok(Some(plain));
        }
    }
    Ok(None)
}

/// MD5 of a file's bytes, or of its gunzipped content.
fn md5_of(path: &Path, gunzip: bool) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader: Box<dyn Read> = if gunzip {
        Box::new(GzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks `folder/` from the gzipped tar `archive` into `dir`, through a
/// temporary folder so that a failed unpack leaves nothing half-written.
fn unpack_tar_gz(archive: &Path, dir: &Path, folder: &str) -> Result<()> {
    let staging = dir.join(format!(".unpack.{}.part", std::process::id()));
    let _cleanup = PartDir(staging.clone());
    let f = File::open(archive).map_err(|e| Error::io(archive, e))?;
    tar::Archive::new(GzDecoder::new(BufReader::new(f)))
        .unpack(&staging)
        .map_err(|e| Error::corrupt(archive, None, format!("cannot unpack: {e}")))?;
    let unpacked = staging.join(folder);
    if !unpacked.is_dir() {
        return Err(Error::corrupt(
            archive,
            None,
            format!("the archive has no {folder}/ folder"),
        ));
    }
    let target = dir.join(folder);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    std::fs::rename(&unpacked, &target).map_err(|e| Error::io(&target, e))
}

/// A temporary folder, removed with its content when dropped.
struct PartDir(PathBuf);

impl Drop for PartDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
