//! Which device a path stands for, so that one device under two names (a symlink, a hard link,
//! `/dev/disk/by-*` next to `/dev/sdX`) is recognised as one: a block device by its device number
//! (`st_rdev`), any other file, such as an image file, by its file system and inode (`st_dev`,
//! `st_ino`). Symlinks are followed, as every program that opens the path follows them.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The identity of what a path opens.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeviceId {
    /// A block device: its device number, whichever node names it.
    Block { rdev: u64 },
    /// A regular file (an image) or anything else: its file system and inode.
    File { dev: u64, ino: u64 },
}

impl DeviceId {
    /// The identity of what `path` names, following symlinks.
    pub fn of(path: &Path) -> io::Result<DeviceId> {
        let md = std::fs::metadata(path)?;
        Ok(if md.file_type().is_block_device() {
            DeviceId::Block { rdev: md.rdev() }
        } else {
            DeviceId::File {
                dev: md.dev(),
                ino: md.ino(),
            }
        })
    }

    /// Whether `a` and `b` name the same device: the same path, or both exist and are one.
    pub fn same(a: &Path, b: &Path) -> bool {
        a == b
            || match (DeviceId::of(a), DeviceId::of(b)) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Block { rdev } => write!(
                f,
                "block device {}:{}",
                nix::sys::stat::major(*rdev),
                nix::sys::stat::minor(*rdev)
            ),
            DeviceId::File { dev, ino } => write!(f, "file {dev}:{ino}"),
        }
    }
}

impl std::str::FromStr for DeviceId {
    type Err = String;
    /// Parses what [`fmt::Display`] wrote, for state files that record an identity.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a device identity");
        let pair = |t: &str| -> Result<(u64, u64), String> {
            let (a, b) = t.split_once(':').ok_or_else(bad)?;
            Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
        };
        if let Some(t) = s.strip_prefix("block device ") {
            let (major, minor) = pair(t)?;
            Ok(DeviceId::Block {
                rdev: nix::sys::stat::makedev(major, minor),
            })
        } else if let Some(t) = s.strip_prefix("file ") {
            let (dev, ino) = pair(t)?;
            Ok(DeviceId::File { dev, ino })
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_and_a_hard_link_are_the_file_they_name() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::write(&img, b"x").unwrap();
        std::os::unix::fs::symlink(&img, d.path().join("alias")).unwrap();
        std::fs::hard_link(&img, d.path().join("hard")).unwrap();
        std::fs::write(d.path().join("other"), b"x").unwrap();
        assert!(DeviceId::same(&img, &d.path().join("alias")));
        assert!(DeviceId::same(&img, &d.path().join("hard")));
        assert!(!DeviceId::same(&img, &d.path().join("other")));
        assert!(!DeviceId::same(&img, &d.path().join("missing")));
    }

    #[test]
    fn identities_round_trip_through_their_text() {
        for id in [
            DeviceId::File { dev: 2049, ino: 77 },
            DeviceId::Block {
                rdev: nix::sys::stat::makedev(7, 3),
            },
        ] {
            assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
        }
    }
}
