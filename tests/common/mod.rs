//! Helpers shared by the integration tests.

use std::path::Path;

/// The names of the files in `dir`, sorted.
#[allow(dead_code)] // not every test binary lists files
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A deterministic xorshift stream, so mutation tests repeat.
#[allow(dead_code)] // not every test binary mutates files
pub struct Xorshift(pub u64);

#[allow(dead_code)]
impl Xorshift {
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
#[allow(dead_code)] // not every test binary edits files
pub mod detector_file;
pub mod fixture_net;
