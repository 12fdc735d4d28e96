#![allow(dead_code)] // each target uses a part of it
//! The input format of the text targets: a few header lines, then the body as raw bytes, so that
//! a seed is a readable file (`fuzz/seeds/<target>/`) and a crash is one to read.

/// The first `n` lines (UTF-8, else `None`: the input is skipped) and the bytes after them.
pub fn split(data: &[u8], n: usize) -> Option<(Vec<&str>, &[u8])> {
    let mut lines = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == b'\n')?;
        lines.push(std::str::from_utf8(&rest[..end]).ok()?);
        rest = &rest[end + 1..];
    }
    Some((lines, rest))
}

/// A header line's words: the values a request sent, template values.
pub fn words(line: &str) -> Vec<String> {
    line.split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}
