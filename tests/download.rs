//! The downloader against a small HTTP server on 127.0.0.1 started by each
//! test: good files, wrong checksums, 404s, connections cut mid-file,
//! mirrors, and files already present.
#![cfg(feature = "download")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::listing;
use md5::{Digest, Md5};
use oodkit::Error;
use oodkit::datasets::download::{self, RemoteFile};

/// What the server answers for a path.
#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    /// Announce the full length, send only the first `usize` bytes, close.
    Cut(Vec<u8>, usize),
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 that answers from a fixed table
/// (404 for anything else) and counts the requests per path. It stops when
/// dropped.
struct Server {
    addr: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: Vec<(&str, Reply)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes: HashMap<String, Reply> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (hits2, stop2) = (Arc::clone(&hits), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &routes, &hits2);
                }
            }
        });
        Server {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, routes: &HashMap<String, Reply>, hits: &Mutex<HashMap<String, usize>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header == "\r\n" => break,
            Ok(_) => {}
        }
    }
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let mut out = stream;
    let (status, body, send) = match routes.get(&path) {
        Some(Reply::Ok(b)) => ("200 OK", b.clone(), b.len()),
        Some(Reply::Cut(b, n)) => ("200 OK", b.clone(), *n),
        None => ("404 Not Found", b"not here".to_vec(), 8),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&body[..send]);
    let _ = out.flush();
    // Dropping the stream closes the connection (mid-body for a Cut reply).
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn payload() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect()
}

fn remote(name: &str, urls: Vec<String>, md5: String) -> RemoteFile {
    RemoteFile {
        name: name.into(),
        urls,
        md5,
        content_md5: None,
    }
}

#[test]
fn a_good_file_is_fetched_checked_and_kept() {
    let data = payload();
    let server = Server::start(vec![("/f.bin", Reply::Ok(data.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sub");
    let file = remote("f.bin", vec![server.url("/f.bin")], md5_hex(&data));
    let path = download::fetch(&file, &target).unwrap();
    assert_eq!(path, target.join("f.bin"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(listing(&target), vec!["f.bin"]);
    // Present and valid: not fetched again.
    download::fetch(&file, &target).unwrap();
    assert_eq!(server.hits("/f.bin"), 1);
}

#[test]
fn a_wrong_checksum_leaves_nothing_behind() {
    let data = payload();
    let server = Server::start(vec![("/f.bin", Reply::Ok(data.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let file = remote("f.bin", vec![server.url("/f.bin")], "0".repeat(32));
    let err = download::fetch(&file, dir.path()).unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("checksum {}", md5_hex(&data))),
        "{msg}"
    );
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn a_404_is_an_error_naming_the_url() {
    let server = Server::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let file = remote("f.bin", vec![server.url("/nowhere.bin")], "0".repeat(32));
    let msg = download::fetch(&file, dir.path()).unwrap_err().to_string();
    assert!(msg.contains("404") && msg.contains("/nowhere.bin"), "{msg}");
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn a_connection_cut_mid_file_leaves_nothing_behind() {
    let data = payload();
    let server = Server::start(vec![("/f.bin", Reply::Cut(data.clone(), 70_000))]);
    let dir = tempfile::tempdir().unwrap();
    let file = remote("f.bin", vec![server.url("/f.bin")], md5_hex(&data));
    let err = download::fetch(&file, dir.path()).unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err:?}");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn mirrors_are_tried_in_order_until_one_is_good() {
    let data = payload();
    let server = Server::start(vec![
        ("/cut.bin", Reply::Cut(data.clone(), 10)),
        ("/good.bin", Reply::Ok(data.clone())),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let urls = vec![
        server.url("/missing.bin"),
        server.url("/cut.bin"),
        server.url("/good.bin"),
    ];
    let path = download::fetch(&remote("f.bin", urls, md5_hex(&data)), dir.path()).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(
        (
            server.hits("/missing.bin"),
            server.hits("/cut.bin"),
            server.hits("/good.bin")
        ),
        (1, 1, 1)
    );
}

#[test]
fn a_corrupt_local_copy_is_replaced() {
    let data = payload();
    let server = Server::start(vec![("/f.bin", Reply::Ok(data.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), b"half a file").unwrap();
    let file = remote("f.bin", vec![server.url("/f.bin")], md5_hex(&data));
    download::fetch(&file, dir.path()).unwrap();
    assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), data);
    assert_eq!(server.hits("/f.bin"), 1);
}

#[test]
fn a_recompressed_or_decompressed_copy_with_the_right_content_is_accepted() {
    use flate2::{Compression, write::GzEncoder};
    let content = payload();
    let gz = |level| {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(&content).unwrap();
        e.finish().unwrap()
    };
    let (served, local) = (gz(1), gz(9));
    assert_ne!(served, local);
    let server = Server::start(vec![("/c.gz", Reply::Ok(served.clone()))]);
    let file = RemoteFile {
        name: "c.gz".into(),
        urls: vec![server.url("/c.gz")],
        md5: md5_hex(&served),
        content_md5: Some(md5_hex(&content)),
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.gz"), &local).unwrap();
    assert_eq!(
        download::fetch(&file, dir.path()).unwrap(),
        dir.path().join("c.gz")
    );
    let plain_dir = tempfile::tempdir().unwrap();
    std::fs::write(plain_dir.path().join("c"), &content).unwrap();
    assert_eq!(
        download::fetch(&file, plain_dir.path()).unwrap(),
        plain_dir.path().join("c")
    );
    assert_eq!(server.hits("/c.gz"), 0);
}

/// A gzipped tar holding `cifar-10-batches-bin/` with full-size batch files
/// whose records all have label `label` and zero pixels.
fn cifar_archive(label: u8) -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    let mut batch = vec![0u8; 10_000 * 3073];
    batch.iter_mut().step_by(3073).for_each(|b| *b = label);
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("cifar-10-batches-bin/{name}"), bytes)
            .unwrap();
    };
    add(
        "batches.meta.txt",
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    );
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        add(name, &batch);
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn cifar10_archive_is_fetched_unpacked_and_loadable() {
    let archive = cifar_archive(6);
    let server = Server::start(vec![("/cifar.tar.gz", Reply::Ok(archive.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let file = remote(
        "cifar-10-binary.tar.gz",
        vec![server.url("/cifar.tar.gz")],
        md5_hex(&archive),
    );
    download::cifar10_from(&file, dir.path()).unwrap();
    assert_eq!(
        listing(dir.path()),
        vec!["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    );
    let test = oodkit::datasets::cifar10::load(dir.path(), oodkit::datasets::Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    assert!(test.labels().iter().all(|&l| l == 6));
    // Complete already: nothing is fetched again.
    download::cifar10_from(&file, dir.path()).unwrap();
    assert_eq!(server.hits("/cifar.tar.gz"), 1);
}

#[test]
fn a_cifar10_archive_without_the_batches_folder_is_an_error_and_leaves_no_staging() {
    use flate2::{Compression, write::GzEncoder};
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_cksum();
    builder
        .append_data(&mut header, "other/readme.txt", &b"hello"[..])
        .unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let server = Server::start(vec![("/x.tar.gz", Reply::Ok(archive.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let file = remote("x.tar.gz", vec![server.url("/x.tar.gz")], md5_hex(&archive));
    let msg = download::cifar10_from(&file, dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cifar-10-batches-bin"), "{msg}");
    assert_eq!(listing(dir.path()), vec!["x.tar.gz"]);
}
