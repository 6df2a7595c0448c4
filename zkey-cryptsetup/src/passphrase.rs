//! The passphrase that opens a keyslot, read the way cryptsetup reads it.
//!
//! - From the terminal: a prompt without echo, asked up to `--tries` times (default 3) when the
//!   passphrase is wrong. When stdin is not a terminal, one line is read from it (without its
//!   newline) and there is one try, as cryptsetup does.
//! - From a key file (`-d/--key-file F`, `-` = stdin): the bytes of the file as they are, newlines
//!   included, after skipping `-o/--keyfile-offset` bytes and up to `-l/--keyfile-size` bytes
//!   (exactly that many: a shorter file is an error). One try.
//!
//! The passphrase lives only in zeroizing buffers and is never shown: its `Debug` is redacted
//! and no error carries it.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Seek, SeekFrom};
use std::path::PathBuf;

use zeroize::Zeroizing;

/// cryptsetup's default limit on a key file read without `--keyfile-size`: 8 MiB.
pub const KEYFILE_MAX: u64 = infra::input::PASSPHRASE.max;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the key file '{path}': {source}")]
    KeyFile { path: String, source: io::Error },
    #[error("the key file '{path}' has {found} bytes after offset {offset}, fewer than the {wanted} requested by --keyfile-size")]
    ShortKeyFile {
        path: String,
        offset: u64,
        wanted: u64,
        found: u64,
    },
    #[error("the key file '{path}' is larger than any passphrase file ({KEYFILE_MAX} bytes max): use --keyfile-size")]
    LargeKeyFile { path: String },
    #[error("the passphrase read from {from} is empty")]
    Empty { from: String },
    #[error("cannot read the passphrase from the terminal: {0}")]
    Terminal(io::Error),
    #[error("no passphrase given")]
    NoMoreTries,
}

/// A passphrase. Zeroed on drop; never printed.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    pub fn new(bytes: Vec<u8>) -> Self {
        Passphrase(Zeroizing::new(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Where passphrases come from.
#[derive(Debug)]
pub enum Source {
    /// The terminal (or one line of stdin when it is not a terminal).
    Prompt { tries: u32 },
    /// A key file; `-` is stdin.
    KeyFile {
        path: PathBuf,
        offset: u64,
        size: Option<u64>,
    },
    /// A passphrase the caller already holds (library use, e.g. `zkey cryptsetup --run`).
    Given(Passphrase),
}

/// Where the passphrases of a [`Supplier`] came from and how many were tried: what the final
/// "no key available" error needs to tell the user the way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Typed on the terminal, `tries` times.
    Terminal { tries: u32 },
    /// One line of stdin, which is not a terminal: one try.
    Stdin,
    /// A key file (`-` = stdin), used as it is: one try.
    KeyFile { path: String },
    /// Given by the calling program.
    Given,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Terminal { tries } => write!(
                f,
                "{tries} {} on the terminal used up: check the passphrase (and the keyboard layout); -T/--tries N allows more tries",
                if *tries == 1 { "try" } else { "tries" }
            ),
            Origin::Stdin => f.write_str(
                "the passphrase was one line read from stdin, which is not a terminal, so there was one try: pipe the right passphrase, give it with -d/--key-file F, or run on a terminal to be asked up to -T/--tries times",
            ),
            Origin::KeyFile { path } => write!(
                f,
                "the key file '{path}'{} is used as it is, a trailing newline included, with one try: check its contents and -o/--keyfile-offset and -l/--keyfile-size",
                if path == "-" { " (stdin)" } else { "" }
            ),
            Origin::Given => f.write_str("the passphrase given by the calling program opens no keyslot of the volume key"),
        }
    }
}

/// Hands out passphrases for one device: as many as the source allows tries.
#[derive(Debug)]
pub struct Supplier {
    source: Source,
    given: u32,
    /// Set by the first prompt: whether stdin was a terminal.
    interactive: Option<bool>,
}

impl Supplier {
    pub fn new(source: Source) -> Self {
        Supplier {
            source,
            given: 0,
            interactive: None,
        }
    }

    /// Where the passphrases handed out so far came from, and how many there were.
    pub fn origin(&self) -> Origin {
        let handed = self.given.min(self.limit());
        match &self.source {
            Source::Prompt { .. } if self.interactive == Some(true) => {
                Origin::Terminal { tries: handed }
            }
            Source::Prompt { .. } => Origin::Stdin,
            Source::KeyFile { path, .. } => Origin::KeyFile {
                path: path.display().to_string(),
            },
            Source::Given(_) => Origin::Given,
        }
    }

    /// How many passphrases this source hands out at most.
    fn limit(&self) -> u32 {
        match &self.source {
            Source::Prompt { tries } if self.interactive != Some(false) => (*tries).max(1),
            _ => 1,
        }
    }

    /// The next passphrase to try for `device`, or `None` when the tries are used up.
    pub fn next(&mut self, device: &str) -> Result<Option<Passphrase>, Error> {
        if matches!(self.source, Source::Prompt { .. }) && self.interactive.is_none() {
            self.interactive = Some(io::stdin().is_terminal());
        }
        self.given += 1;
        if self.given > self.limit() {
            return Ok(None);
        }
        match &self.source {
            Source::Prompt { .. } if self.interactive == Some(true) => {
                let s = Zeroizing::new(
                    rpassword::prompt_password(format!("Enter passphrase for '{device}': "))
                        .map_err(Error::Terminal)?,
                );
                non_empty(s.as_bytes().to_vec(), "the terminal").map(Some)
            }
            Source::Prompt { .. } => {
                let line = infra::input::read_line_bounded(
                    io::stdin().lock(),
                    std::path::Path::new("stdin"),
                    infra::input::Bound::new("passphrase", KEYFILE_MAX),
                )
                .map_err(|e| Error::Terminal(io::Error::other(e.to_string())))?;
                non_empty(line.to_vec(), "stdin").map(Some)
            }
            Source::KeyFile { path, offset, size } => read_key_file(path, *offset, *size).map(Some),
            Source::Given(p) => Ok(Some(Passphrase::new(p.as_bytes().to_vec()))),
        }
    }
}

fn non_empty(bytes: Vec<u8>, from: &str) -> Result<Passphrase, Error> {
    let p = Passphrase::new(bytes);
    if p.as_bytes().is_empty() {
        return Err(Error::Empty { from: from.into() });
    }
    Ok(p)
}

/// Reads a key file as cryptsetup does: skip `offset` bytes, then read `size` bytes exactly, or
/// everything up to [`KEYFILE_MAX`] when `size` is `None`. `-` is stdin.
pub fn read_key_file(
    path: &std::path::Path,
    offset: u64,
    size: Option<u64>,
) -> Result<Passphrase, Error> {
    let shown = path.display().to_string();
    let err = |source| Error::KeyFile {
        path: shown.clone(),
        source,
    };
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        let mut stdin = io::stdin().lock();
        // stdin cannot seek: read and drop the offset.
        io::copy(&mut (&mut stdin).take(offset), &mut io::sink()).map_err(err)?;
        Box::new(stdin)
    } else {
        let mut f = File::open(path).map_err(err)?;
        f.seek(SeekFrom::Start(offset)).map_err(err)?;
        Box::new(f)
    };
    // With --keyfile-size the rest of the file is ignored, as by cryptsetup.
    let bound = infra::input::Bound::new("passphrase file", size.unwrap_or(KEYFILE_MAX));
    let buf = infra::input::read_bounded_from(reader.take(size.unwrap_or(u64::MAX)), path, bound)
        .map_err(|e| match e {
        infra::input::InputError::TooLarge { .. } => Error::LargeKeyFile {
            path: shown.clone(),
        },
        infra::input::InputError::Io { source, .. } => err(source),
    })?;
    if let Some(wanted) = size.filter(|w| (buf.len() as u64) < *w) {
        return Err(Error::ShortKeyFile {
            path: shown,
            offset,
            wanted,
            found: buf.len() as u64,
        });
    }
    non_empty(buf.to_vec(), &format!("the key file '{}'", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_offset_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"xxsecret\nmore").unwrap();
        assert_eq!(
            read_key_file(&p, 0, None).unwrap().as_bytes(),
            b"xxsecret\nmore"
        );
        assert_eq!(read_key_file(&p, 2, Some(6)).unwrap().as_bytes(), b"secret");
        assert!(matches!(
            read_key_file(&p, 10, Some(6)),
            Err(Error::ShortKeyFile { found: 3, .. })
        ));
        assert!(matches!(
            read_key_file(&p, 13, None),
            Err(Error::Empty { .. })
        ));
        let e = read_key_file(&dir.path().join("missing"), 0, None).unwrap_err();
        assert!(e.to_string().contains("missing"));
    }

    #[test]
    fn the_origin_names_the_way_out() {
        let mut s = Supplier::new(Source::KeyFile {
            path: "-".into(),
            offset: 0,
            size: None,
        });
        assert_eq!(s.origin(), Origin::KeyFile { path: "-".into() });
        assert!(s.origin().to_string().contains("'-' (stdin)"));
        assert!(s.origin().to_string().contains("-l/--keyfile-size"));
        s = Supplier::new(Source::Given(Passphrase::new(b"pw".to_vec())));
        s.next("d").unwrap();
        assert_eq!(s.origin(), Origin::Given);
        assert_eq!(
            Origin::Terminal { tries: 1 }.to_string(),
            "1 try on the terminal used up: check the passphrase (and the keyboard layout); -T/--tries N allows more tries"
        );
        assert!(Origin::Stdin.to_string().contains("not a terminal"));
    }

    #[test]
    fn given_is_one_try_and_redacted() {
        let mut s = Supplier::new(Source::Given(Passphrase::new(b"pw".to_vec())));
        let p = s.next("d").unwrap().unwrap();
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
        assert!(s.next("d").unwrap().is_none());
    }
}
