//! Reading the files a user names (a secure key, a clear key, a passphrase, a certificate),
//! bounded by the largest file of that format.
//!
//! A path on the command line can be anything: `/dev/zero`, a FIFO, a multi-gigabyte log. An
//! unbounded read of it never ends or fills memory, and the command appears to hang. Every such
//! read goes through [`read_bounded`] (or [`read_bounded_from`] for stdin and readers that were
//! positioned first): it reads at most `max + 1` bytes, so it ends quickly on any input, and a
//! file larger than `max` is refused with what kind of file was expected. Devices and FIFOs are
//! read like files (process substitution `<(...)` keeps working); `/dev/zero` is simply too large.
//! What is read is kept in zeroizing memory, since these files often hold secrets.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The kind of file being read and the largest such file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// What the file is, for messages: "secure key", "clear AES key", "passphrase file".
    pub what: &'static str,
    pub max: u64,
}

impl Bound {
    pub const fn new(what: &'static str, max: u64) -> Self {
        Bound { what, max }
    }
}

/// cryptsetup's default limit on a passphrase key file read without `--keyfile-size` (8 MiB),
/// also the limit of a zkey dummy passphrase file, which becomes a LUKS2 passphrase.
pub const PASSPHRASE: Bound = Bound::new("passphrase file", 8 * 1024 * 1024);
/// A PEM certificate or CA bundle, a CSR, a configuration file: text files of a few KiB.
pub const TEXT_FILE_MAX: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "{path} is larger than any {what} ({max} bytes max): it is not one; name the right file"
    )]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        max: u64,
    },
    #[error("cannot read the {what} {path}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// Reads `path` whole, refusing it when it is larger than `bound.max` (see the module
/// documentation).
pub fn read_bounded(path: &Path, bound: Bound) -> Result<Zeroizing<Vec<u8>>, InputError> {
    let err = |source| InputError::Io {
        path: path.to_path_buf(),
        what: bound.what,
        source,
    };
    let f = File::open(path).map_err(err)?;
    read_bounded_from(f, path, bound)
}

/// [`read_bounded`] of one of the suite's own files (a configuration, a key file): a symbolic
/// link at `path` is refused, not followed ([`crate::durable::open_nofollow`]).
pub fn read_own(path: &Path, bound: Bound) -> Result<Zeroizing<Vec<u8>>, InputError> {
    let f = crate::durable::open_nofollow(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        what: bound.what,
        source,
    })?;
    read_bounded_from(f, path, bound)
}

/// [`read_bounded`] of an open reader (stdin, a file after a seek); `path` names it in errors.
pub fn read_bounded_from(
    reader: impl Read,
    path: &Path,
    bound: Bound,
) -> Result<Zeroizing<Vec<u8>>, InputError> {
    let mut buf = Zeroizing::new(Vec::new());
    reader
        .take(bound.max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| InputError::Io {
            path: path.to_path_buf(),
            what: bound.what,
            source,
        })?;
    if buf.len() as u64 > bound.max {
        return Err(InputError::TooLarge {
            path: path.to_path_buf(),
            what: bound.what,
            max: bound.max,
        });
    }
    Ok(buf)
}

/// One line (without its newline) from `reader`, e.g. a passphrase piped to stdin, reading at
/// most `bound.max + 1` bytes: endless input without a newline is refused, not read forever.
pub fn read_line_bounded(
    reader: impl io::BufRead,
    path: &Path,
    bound: Bound,
) -> Result<Zeroizing<Vec<u8>>, InputError> {
    let mut line = Zeroizing::new(Vec::new());
    reader
        .take(bound.max.saturating_add(1))
        .read_until(b'\n', &mut line)
        .map_err(|source| InputError::Io {
            path: path.to_path_buf(),
            what: bound.what,
            source,
        })?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() as u64 > bound.max {
        return Err(InputError::TooLarge {
            path: path.to_path_buf(),
            what: bound.what,
            max: bound.max,
        });
    }
    Ok(line)
}

/// [`read_bounded`] of a text file (UTF-8), e.g. a certificate or a configuration file.
pub fn read_text_bounded(path: &Path, what: &'static str) -> Result<String, InputError> {
    text(
        path,
        what,
        read_bounded(path, Bound::new(what, TEXT_FILE_MAX))?,
    )
}

/// [`read_own`] of a text file of the suite's own (a configuration).
pub fn read_own_text(path: &Path, what: &'static str) -> Result<String, InputError> {
    text(path, what, read_own(path, Bound::new(what, TEXT_FILE_MAX))?)
}

fn text(path: &Path, what: &'static str, bytes: Zeroizing<Vec<u8>>) -> Result<String, InputError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| InputError::Io {
        path: path.to_path_buf(),
        what,
        source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const KEY: Bound = Bound::new("secure key", 64);

    #[test]
    fn an_endless_device_is_refused_at_once_and_names_the_format() {
        let t = Instant::now();
        let e = read_bounded(Path::new("/dev/zero"), KEY).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e.to_string(),
            "/dev/zero is larger than any secure key (64 bytes max): it is not one; name the right file"
        );
    }

    #[test]
    fn up_to_the_bound_is_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, [7u8; 64]).unwrap();
        assert_eq!(read_bounded(&p, KEY).unwrap().as_slice(), &[7u8; 64]);
        std::fs::write(&p, [7u8; 65]).unwrap();
        assert!(matches!(
            read_bounded(&p, KEY),
            Err(InputError::TooLarge { max: 64, .. })
        ));
        let e = read_bounded(&d.path().join("missing"), KEY).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read the secure key "),
            "{e}"
        );
        assert!(read_text_bounded(Path::new("/dev/zero"), "certificate").is_err());
    }

    #[test]
    fn a_line_without_end_is_refused_and_a_line_is_read_without_its_newline() {
        let zero = std::io::BufReader::new(File::open("/dev/zero").unwrap());
        assert!(matches!(
            read_line_bounded(zero, Path::new("stdin"), KEY),
            Err(InputError::TooLarge { max: 64, .. })
        ));
        let two = &b"secret\nnext\n"[..];
        assert_eq!(
            read_line_bounded(two, Path::new("stdin"), KEY)
                .unwrap()
                .as_slice(),
            b"secret"
        );
        let exact = [b'x'; 64];
        assert_eq!(
            read_line_bounded(&exact[..], Path::new("stdin"), KEY)
                .unwrap()
                .len(),
            64
        );
    }
}
