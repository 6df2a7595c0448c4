//! Volume associations of a key: which dm-crypt volumes use it, how, and how lists of
//! associations (volumes or APQNs) are edited by `zkey change`.
//!
//! A [`Volume`] is `device:dm-name`, the form crypttab and cryptsetup generation need; both
//! parts are checked here once so that every later consumer can print them into generated
//! configuration without re-validating. Whether the device is a block device is a property of
//! the running system, not of the string, and is left to the command that associates it.

use std::fmt;
use std::str::FromStr;

/// A volume associated with a key: a block device and the device-mapper name it is opened as.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Volume {
    device: String,
    dm_name: String,
}

/// Why a string is not a `device:dm-name` volume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("volume '{0}' has no dm-crypt mapping name: write it as DEVICE:DM-NAME, e.g. /dev/dasdb1:enc_dasdb1")]
    MissingDmName(String),
    #[error(
        "volume '{0}' has more than one ':': write it as DEVICE:DM-NAME with exactly one colon"
    )]
    TooManyColons(String),
    #[error("volume '{0}' has no device: write it as DEVICE:DM-NAME, e.g. /dev/dasdb1:enc_dasdb1")]
    MissingDevice(String),
    #[error("volume '{0}' contains a wildcard (* ? [): name the volume exactly")]
    Wildcard(String),
    #[error(
        "volume '{0}' contains ',', whitespace or a control character, which cannot be stored"
    )]
    BadChar(String),
    #[error("volume device '{0}' must be an absolute path (/dev/...) or UUID=<uuid>")]
    RelativeDevice(String),
}

impl Volume {
    /// Builds a volume from its two parts, with the same checks as parsing `device:dm_name`.
    pub fn new(device: &str, dm_name: &str) -> Result<Self, VolumeError> {
        format!("{device}:{dm_name}").parse()
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn dm_name(&self) -> &str {
        &self.dm_name
    }

    /// The device as a path a command opens: `UUID=...` is `/dev/disk/by-uuid/...`.
    pub fn device_path(&self) -> std::path::PathBuf {
        crate::crypttab::device_path(&self.device)
    }

    /// Whether both volumes are on one device: spelled the same, or two names of one device
    /// that exists now (a symlink, a hard link to an image, two nodes of one block device), as
    /// the device and inode, or device number, they resolve to say.
    pub fn same_device(&self, other: &Volume) -> bool {
        self.device == other.device
            || infra::device::DeviceId::same(&self.device_path(), &other.device_path())
    }
}

impl FromStr for Volume {
    type Err = VolumeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains(['*', '?', '[']) {
            return Err(VolumeError::Wildcard(s.to_string()));
        }
        // `,` separates list entries in the `.info` file and whitespace separates crypttab
        // fields, so neither may appear inside a stored volume.
        if s.chars()
            .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        {
            return Err(VolumeError::BadChar(s.escape_debug().to_string()));
        }
        let (device, dm_name) = s
            .split_once(':')
            .ok_or_else(|| VolumeError::MissingDmName(s.to_string()))?;
        if dm_name.contains(':') {
            return Err(VolumeError::TooManyColons(s.to_string()));
        }
        if dm_name.is_empty() {
            return Err(VolumeError::MissingDmName(s.to_string()));
        }
        if device.is_empty() {
            return Err(VolumeError::MissingDevice(s.to_string()));
        }
        let uuid = device.strip_prefix("UUID=");
        if !(device.starts_with('/') || uuid.is_some_and(|u| !u.is_empty())) {
            return Err(VolumeError::RelativeDevice(device.to_string()));
        }
        Ok(Volume {
            device: device.to_string(),
            dm_name: dm_name.to_string(),
        })
    }
}

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.device, self.dm_name)
    }
}

/// A volume must exist as a block device or an image file, unless it is named by UUID (the
/// device may be attached later under that name).
pub fn check_device(v: &Volume) -> Result<(), crate::ZkeyError> {
    use std::os::unix::fs::FileTypeExt;
    if v.device().starts_with("UUID=") {
        return Ok(());
    }
    let md = std::fs::metadata(v.device()).map_err(|e| {
        crate::ZkeyError::Invalid(format!(
            "volume device {}: {e} (use --no-volume-check for a device that does not exist yet)",
            v.device()
        ))
    })?;
    if !(md.file_type().is_block_device() || md.is_file()) {
        return Err(crate::ZkeyError::Invalid(format!("volume device {} is neither a block device nor an image file (use --no-volume-check to associate it anyway)", v.device())));
    }
    Ok(())
}

/// Parses a comma-separated volume list as stored in `.info`; an empty string is no volumes.
/// Duplicates are dropped, as `ap_sim::apqn::parse_list` does for APQNs.
pub fn parse_volume_list(s: &str) -> Result<Vec<Volume>, VolumeError> {
    let mut out: Vec<Volume> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let v: Volume = part.parse()?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Formats a volume list the way [`parse_volume_list`] reads it.
pub fn format_volume_list(volumes: &[Volume]) -> String {
    volumes
        .iter()
        .map(Volume::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// How a volume uses the key.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum VolumeType {
    /// dm-crypt plain mode: the secure key file is the volume key.
    Plain,
    /// LUKS2: the secure key is the volume key inside a LUKS2 header.
    Luks2,
}

impl VolumeType {
    /// What a `.info` without `volume-type` means: such files predate LUKS2 support.
    pub const WHEN_MISSING: VolumeType = VolumeType::Plain;
    /// What `zkey generate` uses when the user names none (the reference's default).
    pub const DEFAULT_FOR_NEW_KEYS: VolumeType = VolumeType::Luks2;

    /// The form stored in `.info`: upper case, as the reference writes it.
    pub fn as_property(self) -> &'static str {
        match self {
            VolumeType::Plain => "PLAIN",
            VolumeType::Luks2 => "LUKS2",
        }
    }
}

/// Why a string is not a volume type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a volume type: use plain or luks2")]
pub struct VolumeTypeError(pub String);

impl FromStr for VolumeType {
    type Err = VolumeTypeError;
    /// Case-insensitive: users type `luks2`, the file holds `LUKS2`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plain" => Ok(VolumeType::Plain),
            "luks2" => Ok(VolumeType::Luks2),
            _ => Err(VolumeTypeError(s.to_string())),
        }
    }
}

impl fmt::Display for VolumeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VolumeType::Plain => "plain",
            VolumeType::Luks2 => "luks2",
        })
    }
}

/// A dm-crypt sector size: 0 (the dm-crypt default) or a power of two from 512 to 4096.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SectorSize(u32);

/// Why a number is not a sector size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a sector size: use 0 (default) or 512, 1024, 2048 or 4096")]
pub struct SectorSizeError(pub String);

impl SectorSize {
    /// The dm-crypt default (no `sector-size` option is generated).
    pub const DEFAULT: SectorSize = SectorSize(0);

    pub fn new(bytes: u32) -> Result<Self, SectorSizeError> {
        if bytes == 0 || ((512..=4096).contains(&bytes) && bytes.is_power_of_two()) {
            Ok(SectorSize(bytes))
        } else {
            Err(SectorSizeError(bytes.to_string()))
        }
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    pub fn is_default(self) -> bool {
        self.0 == 0
    }
}

impl FromStr for SectorSize {
    type Err = SectorSizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SectorSizeError(s.to_string()));
        }
        let n: u32 = t.parse().map_err(|_| SectorSizeError(s.to_string()))?;
        SectorSize::new(n)
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A `zkey change` edit of an association list (`--apqns`, `--volumes`): `+a,b` adds,
/// `-a,b` removes, a list without a prefix replaces. The prefix applies to the whole list;
/// repeating the same prefix on later items is tolerated, mixing prefixes is an error, because
/// the reference gives `+a,-b` no meaning and guessing one could drop an association silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit<T> {
    Add(Vec<T>),
    Remove(Vec<T>),
    Replace(Vec<T>),
}

/// Why an edit cannot be parsed; `E` is the item's own parse error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditParseError<E> {
    #[error(transparent)]
    Item(E),
    #[error("'{0}' mixes '+', '-' and plain entries: add (+a,b), remove (-a,b) or replace (a,b) in separate changes")]
    Mixed(String),
    #[error("nothing to add or remove in '{0}': name at least one entry after the '+' or '-'")]
    Empty(String),
    #[error("'{0}' is given more than once")]
    Duplicate(String),
}

/// Why an edit cannot be applied to the current list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditApplyError {
    #[error("'{0}' is already associated with this key")]
    AlreadyPresent(String),
    #[error("'{0}' is not associated with this key, so it cannot be removed")]
    NotPresent(String),
}

impl<T> Edit<T>
where
    T: FromStr + PartialEq + fmt::Display,
{
    /// Parses `+a,b`, `-a,b` or `a,b`. An empty replacement list (`""`) clears the list.
    pub fn parse(s: &str) -> Result<Self, EditParseError<T::Err>> {
        #[derive(PartialEq, Clone, Copy)]
        enum Op {
            Add,
            Remove,
            Replace,
        }
        let mut op: Option<Op> = None;
        let mut items: Vec<T> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (this, body) = if let Some(b) = part.strip_prefix('+') {
                (Op::Add, b)
            } else if let Some(b) = part.strip_prefix('-') {
                (Op::Remove, b)
            } else {
                (Op::Replace, part)
            };
            // Later items may omit the prefix (`+a,b`) but may not name a different one.
            let effective = match op {
                None => this,
                Some(prev) if this == prev || this == Op::Replace => prev,
                Some(_) => return Err(EditParseError::Mixed(s.to_string())),
            };
            op = Some(effective);
            if body.trim().is_empty() {
                return Err(EditParseError::Empty(s.to_string()));
            }
            let item: T = body.trim().parse().map_err(EditParseError::Item)?;
            if items.contains(&item) {
                return Err(EditParseError::Duplicate(item.to_string()));
            }
            items.push(item);
        }
        match op {
            // An empty string (or only commas) replaces the list with nothing.
            None => Ok(Edit::Replace(Vec::new())),
            Some(Op::Add) => Ok(Edit::Add(items)),
            Some(Op::Remove) => Ok(Edit::Remove(items)),
            Some(Op::Replace) => Ok(Edit::Replace(items)),
        }
    }
}

impl<T> Edit<T>
where
    T: PartialEq + Clone + fmt::Display,
{
    /// The items the edit names (added, removed or the new list).
    pub fn items(&self) -> &[T] {
        match self {
            Edit::Add(v) | Edit::Remove(v) | Edit::Replace(v) => v,
        }
    }

    /// Applies the edit; on error `list` is unchanged. Adding an entry already present and
    /// removing one that is absent are errors, as in the reference, so a typo is noticed.
    pub fn apply(&self, list: &mut Vec<T>) -> Result<(), EditApplyError> {
        let mut out = list.clone();
        match self {
            Edit::Add(items) => {
                for item in items {
                    if out.contains(item) {
                        return Err(EditApplyError::AlreadyPresent(item.to_string()));
                    }
                    out.push(item.clone());
                }
            }
            Edit::Remove(items) => {
                for item in items {
                    let pos = out
                        .iter()
                        .position(|x| x == item)
                        .ok_or_else(|| EditApplyError::NotPresent(item.to_string()))?;
                    out.remove(pos);
                }
            }
            Edit::Replace(items) => out = items.clone(),
        }
        *list = out;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ap_sim::apqn::Apqn;

    #[test]
    fn volume_parsing() {
        let v: Volume = "/dev/dasdb1:enc_b".parse().unwrap();
        assert_eq!((v.device(), v.dm_name()), ("/dev/dasdb1", "enc_b"));
        assert_eq!(v.to_string(), "/dev/dasdb1:enc_b");
        let u: Volume = "UUID=1234-abcd:enc".parse().unwrap();
        assert_eq!(u.device(), "UUID=1234-abcd");
        type Check = fn(&VolumeError) -> bool;
        let cases: [(&str, Check); 9] = [
            ("/dev/x", |e| matches!(e, VolumeError::MissingDmName(_))),
            ("/dev/x:", |e| matches!(e, VolumeError::MissingDmName(_))),
            (":dm", |e| matches!(e, VolumeError::MissingDevice(_))),
            ("/dev/x:a:b", |e| matches!(e, VolumeError::TooManyColons(_))),
            ("/dev/*:a", |e| matches!(e, VolumeError::Wildcard(_))),
            ("/dev/x:a?", |e| matches!(e, VolumeError::Wildcard(_))),
            ("/dev/x:a,b", |e| matches!(e, VolumeError::BadChar(_))),
            ("dasdb1:a", |e| matches!(e, VolumeError::RelativeDevice(_))),
            ("UUID=:a", |e| matches!(e, VolumeError::RelativeDevice(_))),
        ];
        for (s, check) in cases {
            let e = s.parse::<Volume>().unwrap_err();
            assert!(check(&e), "{s:?} gave {e:?}");
        }
        assert!(Volume::new("/dev/a", "b:c").is_err());
    }

    #[test]
    fn volume_list_round_trip() {
        let l = parse_volume_list("/dev/a:x, /dev/b:y,/dev/a:x").unwrap();
        assert_eq!(format_volume_list(&l), "/dev/a:x,/dev/b:y");
        assert!(parse_volume_list("").unwrap().is_empty());
        assert!(parse_volume_list("/dev/a").is_err());
    }

    #[test]
    fn volume_type_and_sector_size() {
        assert_eq!("LUKS2".parse::<VolumeType>().unwrap(), VolumeType::Luks2);
        assert_eq!("plain".parse::<VolumeType>().unwrap(), VolumeType::Plain);
        assert!("integrity".parse::<VolumeType>().is_err());
        assert_eq!(VolumeType::Luks2.as_property(), "LUKS2");
        for ok in [0, 512, 1024, 2048, 4096] {
            assert_eq!(SectorSize::new(ok).unwrap().bytes(), ok);
        }
        for bad in [1, 256, 513, 768, 8192] {
            assert!(SectorSize::new(bad).is_err(), "{bad}");
        }
        for bad in ["", "-512", "+512", "0x200", "99999999999"] {
            assert!(bad.parse::<SectorSize>().is_err(), "{bad:?}");
        }
        assert!(SectorSize::DEFAULT.is_default());
    }

    #[test]
    fn edits_parse_and_apply() {
        let a = |s: &str| s.parse::<Apqn>().unwrap();
        let mut list = vec![a("01.0001")];
        let add = Edit::<Apqn>::parse("+2.2,03.0003").unwrap();
        assert_eq!(add, Edit::Add(vec![a("02.0002"), a("03.0003")]));
        add.apply(&mut list).unwrap();
        assert_eq!(list.len(), 3);
        // Adding again fails and leaves the list untouched.
        assert!(matches!(
            Edit::<Apqn>::parse("+03.0003").unwrap().apply(&mut list),
            Err(EditApplyError::AlreadyPresent(_))
        ));
        assert_eq!(list.len(), 3);
        Edit::<Apqn>::parse("-1.1")
            .unwrap()
            .apply(&mut list)
            .unwrap();
        assert_eq!(list, vec![a("02.0002"), a("03.0003")]);
        assert!(matches!(
            Edit::<Apqn>::parse("-1.1").unwrap().apply(&mut list),
            Err(EditApplyError::NotPresent(_))
        ));
        Edit::<Apqn>::parse("5.5")
            .unwrap()
            .apply(&mut list)
            .unwrap();
        assert_eq!(list, vec![a("05.0005")]);
        Edit::<Apqn>::parse("").unwrap().apply(&mut list).unwrap();
        assert!(list.is_empty());

        assert!(matches!(
            Edit::<Apqn>::parse("+1.1,-2.2"),
            Err(EditParseError::Mixed(_))
        ));
        assert!(matches!(
            Edit::<Apqn>::parse("1.1,+2.2"),
            Err(EditParseError::Mixed(_))
        ));
        assert!(matches!(
            Edit::<Apqn>::parse("+"),
            Err(EditParseError::Empty(_))
        ));
        assert!(matches!(
            Edit::<Apqn>::parse("1.1,01.0001"),
            Err(EditParseError::Duplicate(_))
        ));
        assert!(matches!(
            Edit::<Apqn>::parse("+zz"),
            Err(EditParseError::Item(_))
        ));
        let v = Edit::<Volume>::parse("-/dev/a:x").unwrap();
        assert_eq!(v, Edit::Remove(vec!["/dev/a:x".parse().unwrap()]));
    }
}
