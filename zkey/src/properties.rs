//! The per-key properties file `<name>.info`, in the reference's format, and a typed view of it.
//!
//! # File format (matches s390-tools `zkey/properties.c`)
//! ```text
//! key-type=CCA-AESDATA
//! cipher=paes
//! ...
//! __hash__=<64 lowercase hex>
//! ```
//! - One `name=value` per line, split at the first `=` (values may contain `=`); lines starting
//!   with `#` and empty lines are ignored and not hashed.
//! - The last property line is `__hash__=`, the lowercase hex SHA-256 over, for each property
//!   in file order, the bytes of its name immediately followed by the bytes of its value: no
//!   `=`, no newline, no separator of any kind. This is exactly what `properties_save()` and
//!   `properties_load()` feed to `EVP_DigestUpdate`, so files are interchangeable with the
//!   reference's. (That means `a=bc` and `ab=c` hash alike; the hash detects accidental and
//!   casual edits, it is not a MAC, and no one without write access to the repository can
//!   change a file anyway.)
//!
//! # The MAC line
//! zkey adds `__mac__=<64 lowercase hex>` as the last property before `__hash__`: an HMAC
//! computed inside the adapter (see [`crate::integrity`]) over the key's name and every other
//! property, in an unambiguous encoding. The `__hash__` covers it like any other property, so
//! the reference still reads the file; unlike the hash, nobody without the adapter can make a
//! matching MAC for edited properties or for another key's name. Files of the old format have
//! no MAC line.
//!
//! Stricter than the reference, because a file it would accept in these cases was not written
//! by any zkey: a property after `__hash__`, a second `__hash__`, a duplicated property name, a
//! missing hash, a non-UTF-8 line and a carriage return are errors, not silently tolerated.
//!
//! # Typed view
//! [`KeyProperties`] holds the properties zkey understands as typed values, and keeps every
//! other property (a newer zkey's, or a KMS plug-in's) verbatim, so that rewriting a file never
//! loses what this version does not understand. Known properties are written in a fixed order,
//! unknown ones after them in the order they were read.
//!
//! Timestamps use the reference's `strftime("%F %T")` on local time: `YYYY-MM-DD HH:MM:SS`.

use std::fmt;
use std::str::FromStr;

use ap_sim::apqn::{self, Apqn};
use sha2::{Digest, Sha256};

use crate::volume::{self, SectorSize, Volume, VolumeType};

/// The name of the integrity line.
pub const HASH_PROPERTY: &str = "__hash__";
/// The name of the authentication line (see the module documentation).
pub const MAC_PROPERTY: &str = "__mac__";

/// Property names, as the reference spells them.
pub mod names {
    pub const KEY_TYPE: &str = "key-type";
    pub const CIPHER: &str = "cipher";
    pub const IV_MODE: &str = "iv-mode";
    pub const DESCRIPTION: &str = "description";
    pub const VOLUMES: &str = "volumes";
    pub const APQNS: &str = "apqns";
    pub const SECTOR_SIZE: &str = "sector-size";
    pub const VOLUME_TYPE: &str = "volume-type";
    pub const VERIFICATION_PATTERN: &str = "verification-pattern";
    pub const CREATION_TIME: &str = "creation-time";
    pub const UPDATE_TIME: &str = "update-time";
    pub const REENCIPHER_TIME: &str = "reencipher-time";
    pub const KMS: &str = "kms";
    pub const KMS_KEY_ID: &str = "kms-key-id";
    pub const KMS_KEY_LABEL: &str = "kms-key-label";
    pub const KMS_XTS_KEY1_ID: &str = "kms-xts-key1-id";
    pub const KMS_XTS_KEY1_LABEL: &str = "kms-xts-key1-label";
    pub const KMS_XTS_KEY2_ID: &str = "kms-xts-key2-id";
    pub const KMS_XTS_KEY2_LABEL: &str = "kms-xts-key2-label";

    /// Every property [`super::KeyProperties`] holds as a typed field, in the order written.
    pub const KNOWN: &[&str] = &[
        KEY_TYPE,
        CIPHER,
        IV_MODE,
        DESCRIPTION,
        VOLUMES,
        APQNS,
        SECTOR_SIZE,
        VOLUME_TYPE,
        VERIFICATION_PATTERN,
        CREATION_TIME,
        UPDATE_TIME,
        REENCIPHER_TIME,
        KMS,
        KMS_KEY_ID,
        KMS_KEY_LABEL,
        KMS_XTS_KEY1_ID,
        KMS_XTS_KEY1_LABEL,
        KMS_XTS_KEY2_ID,
        KMS_XTS_KEY2_LABEL,
    ];
}

/// The key type a `.info` without `key-type` means (files from before other types existed).
pub const DEFAULT_KEY_TYPE: &str = "CCA-AESDATA";

/// Why a properties file or a property is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertiesError {
    #[error("line {line} is not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("line {line} is malformed: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("line {line} repeats property '{name}'")]
    Duplicate { line: usize, name: String },
    #[error("line {line} follows the {HASH_PROPERTY} line, which must be the last property")]
    AfterHash { line: usize },
    #[error("the {HASH_PROPERTY} integrity line is missing")]
    MissingHash,
    #[error("the {HASH_PROPERTY} integrity line does not match the content (stored {stored}, computed {computed}): the file was changed outside zkey")]
    HashMismatch { stored: String, computed: String },
    #[error("'{0}' cannot be a property name: use printable characters without '=' and spaces, not starting with '#'")]
    InvalidName(String),
    #[error("the value of property '{name}' contains a newline, carriage return or NUL")]
    InvalidValueChars { name: String },
    #[error("property '{name}' has an invalid value '{value}': {reason}")]
    InvalidValue {
        name: String,
        value: String,
        reason: String,
    },
    #[error("property '{0}' is managed by zkey itself: set it through its typed field")]
    ReservedName(String),
}

/// An ordered list of `name=value` properties, as stored in a `.info` file, and the MAC line
/// that authenticates them, if there is one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    entries: Vec<(String, String)>,
    mac: Option<String>,
}

fn check_name(name: &str) -> Result<(), PropertiesError> {
    let ok = !name.is_empty()
        && !name.starts_with('#')
        && name.chars().all(|c| c.is_ascii_graphic() && c != '=');
    if ok {
        Ok(())
    } else {
        Err(PropertiesError::InvalidName(
            name.escape_debug().to_string(),
        ))
    }
}

fn check_value(name: &str, value: &str) -> Result<(), PropertiesError> {
    if value.contains(['\n', '\r', '\0']) {
        Err(PropertiesError::InvalidValueChars {
            name: name.to_string(),
        })
    } else {
        Ok(())
    }
}

impl Properties {
    pub fn new() -> Self {
        Properties::default()
    }

    /// Parses and verifies a `.info` file's content (see the module documentation).
    pub fn parse(data: &[u8]) -> Result<Self, PropertiesError> {
        let mut props = Properties::new();
        let mut stored_hash: Option<String> = None;
        for (idx, raw) in data.split(|b| *b == b'\n').enumerate() {
            let line_no = idx + 1;
            let line =
                std::str::from_utf8(raw).map_err(|_| PropertiesError::NotUtf8 { line: line_no })?;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if stored_hash.is_some() {
                return Err(PropertiesError::AfterHash { line: line_no });
            }
            let (name, value) = line.split_once('=').ok_or(PropertiesError::Malformed {
                line: line_no,
                reason: "expected name=value",
            })?;
            if name == HASH_PROPERTY {
                stored_hash = Some(value.to_string());
                continue;
            }
            if name == MAC_PROPERTY {
                if props.mac.is_some() {
                    return Err(PropertiesError::Duplicate {
                        line: line_no,
                        name: name.to_string(),
                    });
                }
                props.mac = Some(value.to_string());
                continue;
            }
            if props.mac.is_some() {
                return Err(PropertiesError::Malformed {
                    line: line_no,
                    reason: "a property follows the __mac__ line, which must be the last before __hash__",
                });
            }
            check_name(name).map_err(|_| PropertiesError::Malformed {
                line: line_no,
                reason: "the name must be printable characters without spaces",
            })?;
            check_value(name, value).map_err(|_| PropertiesError::Malformed {
                line: line_no,
                reason: "the value contains a carriage return or NUL",
            })?;
            if props.get(name).is_some() {
                return Err(PropertiesError::Duplicate {
                    line: line_no,
                    name: name.to_string(),
                });
            }
            props.entries.push((name.to_string(), value.to_string()));
        }
        let stored = stored_hash.ok_or(PropertiesError::MissingHash)?;
        let computed = props.digest();
        // The reference compares with strcmp against lowercase hex; so do we.
        if stored != computed {
            return Err(PropertiesError::HashMismatch { stored, computed });
        }
        Ok(props)
    }

    /// The integrity hash of the current properties and MAC line (lowercase hex SHA-256).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (name, value) in self.lines() {
            h.update(name.as_bytes());
            h.update(value.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Every line before `__hash__`: the properties, then the MAC line.
    fn lines(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter()
            .chain(self.mac.as_deref().map(|m| (MAC_PROPERTY, m)))
    }

    /// The stored MAC line's value, if the file has one (files of the old format have none).
    pub fn mac(&self) -> Option<&str> {
        self.mac.as_deref()
    }

    /// Sets (or with `None` drops) the MAC line.
    pub fn set_mac(&mut self, mac: Option<String>) {
        self.mac = mac;
    }

    /// What the MAC covers: a domain label, the key's name and every property (not the MAC
    /// line), each length-prefixed, so that no two different (name, properties) give the
    /// same bytes (the reference's hash input cannot tell `a=bc` from `ab=c`).
    pub fn mac_input(&self, key_name: &str) -> Vec<u8> {
        let mut out = b"zkey .info v1\0".to_vec();
        let mut field = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
            out.extend_from_slice(b);
        };
        field(key_name.as_bytes());
        for (name, value) in &self.entries {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        out
    }

    /// The file content, ending with the `__hash__` line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.lines() {
            out.push_str(name);
            out.push('=');
            out.push_str(value);
            out.push('\n');
        }
        out.push_str(HASH_PROPERTY);
        out.push('=');
        out.push_str(&self.digest());
        out.push('\n');
        out
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a property, replacing its value in place or appending it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PropertiesError> {
        check_name(name)?;
        if name == HASH_PROPERTY || name == MAC_PROPERTY {
            return Err(PropertiesError::ReservedName(name.to_string()));
        }
        check_value(name, value)?;
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.entries.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        let pos = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(pos).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A time stamp in the reference's format `YYYY-MM-DD HH:MM:SS` (local time).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(String);

impl Timestamp {
    /// The current local time.
    pub fn now() -> Self {
        Timestamp(infra::time::local_now())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 19
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            });
        if shape_ok {
            Ok(Timestamp(s.to_string()))
        } else {
            Err("expected YYYY-MM-DD HH:MM:SS".to_string())
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The VP is the suite's one type (`ap_sim::vp`).
pub use ap_sim::VerificationPattern;

/// The typed view of a key's properties (see the module documentation).
///
/// Fields are public because every field type only holds valid values; free-text fields are
/// checked for characters the file cannot hold when the properties are rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyProperties {
    /// Upper case, e.g. `CCA-AESDATA`, `CCA-AESCIPHER`, `EP11-AES`. The token layer interprets it.
    pub key_type: String,
    /// `paes` for AES keys.
    pub cipher: Option<String>,
    /// `plain64`.
    pub iv_mode: Option<String>,
    pub description: Option<String>,
    pub volumes: Vec<Volume>,
    /// Empty means "not restricted to APQNs": any suitable APQN may be used.
    pub apqns: Vec<Apqn>,
    pub sector_size: SectorSize,
    pub volume_type: VolumeType,
    pub verification_pattern: Option<VerificationPattern>,
    pub creation_time: Option<Timestamp>,
    pub update_time: Option<Timestamp>,
    pub reencipher_time: Option<Timestamp>,
    /// The KMS plug-in name; `None` or `LOCAL` is a local key (see [`Self::is_kms_bound`]).
    pub kms: Option<String>,
    pub kms_key_id: Option<String>,
    pub kms_key_label: Option<String>,
    pub kms_xts_key1_id: Option<String>,
    pub kms_xts_key1_label: Option<String>,
    pub kms_xts_key2_id: Option<String>,
    pub kms_xts_key2_label: Option<String>,
    /// Properties this version does not know, kept verbatim and in order.
    pub other: OtherProperties,
}

/// Properties without a typed field in [`KeyProperties`] (a newer zkey's, a plug-in's), kept
/// verbatim and in order. Known names are refused, so that a typed field and a raw copy can
/// never disagree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtherProperties(Vec<(String, String)>);

impl OtherProperties {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PropertiesError> {
        check_name(name)?;
        if name == HASH_PROPERTY || name == MAC_PROPERTY || names::KNOWN.contains(&name) {
            return Err(PropertiesError::ReservedName(name.to_string()));
        }
        check_value(name, value)?;
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.0.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        let pos = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(pos).1)
    }
}

impl Default for KeyProperties {
    fn default() -> Self {
        KeyProperties {
            key_type: DEFAULT_KEY_TYPE.to_string(),
            cipher: None,
            iv_mode: None,
            description: None,
            volumes: Vec::new(),
            apqns: Vec::new(),
            sector_size: SectorSize::DEFAULT,
            volume_type: VolumeType::WHEN_MISSING,
            verification_pattern: None,
            creation_time: None,
            update_time: None,
            reencipher_time: None,
            kms: None,
            kms_key_id: None,
            kms_key_label: None,
            kms_xts_key1_id: None,
            kms_xts_key1_label: None,
            kms_xts_key2_id: None,
            kms_xts_key2_label: None,
            other: OtherProperties::default(),
        }
    }
}

fn invalid(name: &str, value: &str, reason: impl fmt::Display) -> PropertiesError {
    PropertiesError::InvalidValue {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn typed<T: FromStr>(name: &str, value: &str) -> Result<T, PropertiesError>
where
    T::Err: fmt::Display,
{
    value.parse().map_err(|e| invalid(name, value, e))
}

impl KeyProperties {
    /// Parses and verifies a `.info` file's content.
    pub fn parse(data: &[u8]) -> Result<Self, PropertiesError> {
        Self::from_properties(&Properties::parse(data)?)
    }

    /// Renders the `.info` file content, with a fresh `__hash__`.
    pub fn render(&self) -> Result<String, PropertiesError> {
        Ok(self.to_properties()?.render())
    }

    /// The typed view of already verified properties.
    pub fn from_properties(props: &Properties) -> Result<Self, PropertiesError> {
        use names::*;
        let mut kp = KeyProperties::default();
        for (name, value) in props.iter() {
            let text = || Some(value.to_string());
            match name {
                KEY_TYPE => {
                    if value.trim().is_empty() {
                        return Err(invalid(name, value, "the key type is empty"));
                    }
                    kp.key_type = value.to_ascii_uppercase();
                }
                CIPHER => kp.cipher = text(),
                IV_MODE => kp.iv_mode = text(),
                DESCRIPTION => kp.description = text(),
                VOLUMES => {
                    kp.volumes =
                        volume::parse_volume_list(value).map_err(|e| invalid(name, value, e))?
                }
                APQNS => {
                    // The reference writes `apqns=` once the last APQN is removed.
                    kp.apqns = if value.trim().is_empty() {
                        Vec::new()
                    } else {
                        apqn::parse_list(value).map_err(|e| invalid(name, value, e))?
                    }
                }
                SECTOR_SIZE => kp.sector_size = typed(name, value)?,
                VOLUME_TYPE => kp.volume_type = typed(name, value)?,
                VERIFICATION_PATTERN => kp.verification_pattern = Some(typed(name, value)?),
                CREATION_TIME => kp.creation_time = Some(typed(name, value)?),
                UPDATE_TIME => kp.update_time = Some(typed(name, value)?),
                REENCIPHER_TIME => kp.reencipher_time = Some(typed(name, value)?),
                KMS => kp.kms = text(),
                KMS_KEY_ID => kp.kms_key_id = text(),
                KMS_KEY_LABEL => kp.kms_key_label = text(),
                KMS_XTS_KEY1_ID => kp.kms_xts_key1_id = text(),
                KMS_XTS_KEY1_LABEL => kp.kms_xts_key1_label = text(),
                KMS_XTS_KEY2_ID => kp.kms_xts_key2_id = text(),
                KMS_XTS_KEY2_LABEL => kp.kms_xts_key2_label = text(),
                // Names were checked by `Properties`, and `KNOWN` ones are matched above.
                _ => kp.other.0.push((name.to_string(), value.to_string())),
            }
        }
        Ok(kp)
    }

    /// The properties in file order: known ones first, unknown ones after.
    pub fn to_properties(&self) -> Result<Properties, PropertiesError> {
        use names::*;
        let mut p = Properties::new();
        let key_type = self.key_type.to_ascii_uppercase();
        if key_type.trim().is_empty() {
            return Err(invalid(KEY_TYPE, &key_type, "the key type is empty"));
        }
        p.set(KEY_TYPE, &key_type)?;
        let mut opt = |name: &str, v: &Option<String>| match v {
            Some(v) => p.set(name, v),
            None => Ok(()),
        };
        opt(CIPHER, &self.cipher)?;
        opt(IV_MODE, &self.iv_mode)?;
        opt(DESCRIPTION, &self.description)?;
        if !self.volumes.is_empty() {
            p.set(VOLUMES, &volume::format_volume_list(&self.volumes))?;
        }
        if !self.apqns.is_empty() {
            p.set(APQNS, &apqn::format_list(&self.apqns))?;
        }
        p.set(SECTOR_SIZE, &self.sector_size.to_string())?;
        p.set(VOLUME_TYPE, self.volume_type.as_property())?;
        let mut opt_display = |name: &str, v: Option<String>| match v {
            Some(v) => p.set(name, &v),
            None => Ok(()),
        };
        opt_display(
            VERIFICATION_PATTERN,
            self.verification_pattern.map(|v| v.to_string()),
        )?;
        opt_display(
            CREATION_TIME,
            self.creation_time.as_ref().map(|t| t.0.clone()),
        )?;
        opt_display(UPDATE_TIME, self.update_time.as_ref().map(|t| t.0.clone()))?;
        opt_display(
            REENCIPHER_TIME,
            self.reencipher_time.as_ref().map(|t| t.0.clone()),
        )?;
        let mut opt = |name: &str, v: &Option<String>| match v {
            Some(v) => p.set(name, v),
            None => Ok(()),
        };
        opt(KMS, &self.kms)?;
        opt(KMS_KEY_ID, &self.kms_key_id)?;
        opt(KMS_KEY_LABEL, &self.kms_key_label)?;
        opt(KMS_XTS_KEY1_ID, &self.kms_xts_key1_id)?;
        opt(KMS_XTS_KEY1_LABEL, &self.kms_xts_key1_label)?;
        opt(KMS_XTS_KEY2_ID, &self.kms_xts_key2_id)?;
        opt(KMS_XTS_KEY2_LABEL, &self.kms_xts_key2_label)?;
        for (name, value) in self.other.iter() {
            p.set(name, value)?;
        }
        Ok(p)
    }

    /// Whether the key is bound to a KMS plug-in (`kms` set and not `LOCAL`, any case).
    pub fn is_kms_bound(&self) -> bool {
        self.kms
            .as_deref()
            .is_some_and(|k| !k.eq_ignore_ascii_case("LOCAL"))
    }

    /// An unknown property's value (shorthand for `self.other.get`).
    pub fn other(&self, name: &str) -> Option<&str> {
        self.other.get(name)
    }

    /// Sets an unknown property (shorthand for `self.other.set`).
    pub fn set_other(&mut self, name: &str, value: &str) -> Result<(), PropertiesError> {
        self.other.set(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha_hex(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn hash_is_over_concatenated_names_and_values() {
        let mut p = Properties::new();
        p.set("cipher", "paes").unwrap();
        p.set("iv-mode", "plain64").unwrap();
        // The reference's byte stream: name, value, name, value, nothing in between.
        let expected = sha_hex("cipherpaesiv-modeplain64");
        assert_eq!(p.digest(), expected);
        assert_eq!(
            p.render(),
            format!("cipher=paes\niv-mode=plain64\n__hash__={expected}\n")
        );
        assert_eq!(Properties::parse(p.render().as_bytes()).unwrap(), p);
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let h = sha_hex("ab=c");
        let text = format!("# a comment\n\na=b=c\n#x=y\n__hash__={h}\n# trailing\n");
        let p = Properties::parse(text.as_bytes()).unwrap();
        assert_eq!(p.get("a"), Some("b=c"));
        assert_eq!(p.len(), 1);
        // No final newline is fine too.
        assert!(Properties::parse(format!("a=b=c\n__hash__={h}").as_bytes()).is_ok());
    }

    #[test]
    fn tampering_and_malformed_files_are_errors() {
        let mut p = Properties::new();
        p.set("description", "payroll").unwrap();
        let good = p.render();
        let tampered = good.replace("payroll", "payroli");
        assert!(matches!(
            Properties::parse(tampered.as_bytes()),
            Err(PropertiesError::HashMismatch { .. })
        ));
        let upper = good.replace(&p.digest(), &p.digest().to_uppercase());
        assert!(matches!(
            Properties::parse(upper.as_bytes()),
            Err(PropertiesError::HashMismatch { .. })
        ));
        assert_eq!(
            Properties::parse(b"description=payroll\n"),
            Err(PropertiesError::MissingHash)
        );
        assert!(matches!(
            Properties::parse(format!("{good}x=y\n").as_bytes()),
            Err(PropertiesError::AfterHash { line: 3 })
        ));
        assert!(matches!(
            Properties::parse(format!("junk\n{good}").as_bytes()),
            Err(PropertiesError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            Properties::parse(format!("description=a\n{good}").as_bytes()),
            Err(PropertiesError::Duplicate { line: 2, .. })
        ));
        assert!(matches!(
            Properties::parse(b"a=\xff\n__hash__=00\n"),
            Err(PropertiesError::NotUtf8 { line: 1 })
        ));
        assert!(matches!(
            Properties::parse(good.replace('\n', "\r\n").as_bytes()),
            Err(PropertiesError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn the_mac_line_is_last_before_the_hash_and_covered_by_it() {
        let mut p = Properties::new();
        p.set("description", "payroll").unwrap();
        p.set_mac(Some("ab".repeat(32)));
        let text = p.render();
        // The reference hashes the MAC line like any property, so it still reads the file.
        let expected = sha_hex(&format!("descriptionpayroll__mac__{}", "ab".repeat(32)));
        assert_eq!(
            text,
            format!(
                "description=payroll\n__mac__={}\n__hash__={expected}\n",
                "ab".repeat(32)
            )
        );
        let again = Properties::parse(text.as_bytes()).unwrap();
        assert_eq!(again, p);
        assert_eq!(again.mac(), Some("ab".repeat(32).as_str()));
        assert_eq!(again.iter().count(), 1, "the MAC line is not a property");
        assert!(matches!(
            p.set(MAC_PROPERTY, "x"),
            Err(PropertiesError::ReservedName(_))
        ));
        let after = format!(
            "__mac__=00\ndescription=x\n__hash__={}\n",
            sha_hex("__mac__00descriptionx")
        );
        assert!(matches!(
            Properties::parse(after.as_bytes()),
            Err(PropertiesError::Malformed { line: 2, .. })
        ));
    }

    #[test]
    fn the_mac_input_tells_names_values_and_key_names_apart() {
        let one = |pairs: &[(&str, &str)], key: &str| {
            let mut p = Properties::new();
            for (n, v) in pairs {
                p.set(n, v).unwrap();
            }
            p.mac_input(key)
        };
        // Alike for the reference's hash, different for the MAC.
        assert_ne!(one(&[("a", "bc")], "k"), one(&[("ab", "c")], "k"));
        assert_ne!(one(&[("a", "b")], "k1"), one(&[("a", "b")], "k2"));
        assert_ne!(one(&[("a", "b")], "ka"), one(&[("a", "b")], "k"));
        // The MAC line itself is not covered: it cannot cover itself.
        let mut p = Properties::new();
        p.set("a", "b").unwrap();
        let before = p.mac_input("k");
        p.set_mac(Some("00".into()));
        assert_eq!(p.mac_input("k"), before);
    }

    #[test]
    fn set_refuses_what_the_file_cannot_hold() {
        let mut p = Properties::new();
        assert!(p.set("a=b", "x").is_err());
        assert!(p.set("#a", "x").is_err());
        assert!(p.set("a b", "x").is_err());
        assert!(p.set("", "x").is_err());
        assert!(p.set(HASH_PROPERTY, "x").is_err());
        assert!(p.set("a", "x\ny").is_err());
        p.set("a", "1").unwrap();
        p.set("b", "2").unwrap();
        p.set("a", "3").unwrap();
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![("a", "3"), ("b", "2")]);
        assert_eq!(p.remove("a"), Some("3".into()));
    }

    fn sample() -> KeyProperties {
        KeyProperties {
            key_type: "CCA-AESCIPHER".into(),
            cipher: Some("paes".into()),
            iv_mode: Some("plain64".into()),
            description: Some("payroll volumes, 2nd site".into()),
            volumes: vec![
                "/dev/dasdb1:enc_b".parse().unwrap(),
                "UUID=abc:enc_c".parse().unwrap(),
            ],
            apqns: apqn::parse_list("8.2f,9.2f").unwrap(),
            sector_size: SectorSize::new(4096).unwrap(),
            volume_type: VolumeType::Luks2,
            verification_pattern: Some("ab".repeat(32).parse().unwrap()),
            creation_time: Some("2024-01-02 03:04:05".parse().unwrap()),
            update_time: None,
            reencipher_time: None,
            kms: Some("KMIP".into()),
            kms_key_id: Some("id-1".into()),
            kms_key_label: Some("label 1".into()),
            ..KeyProperties::default()
        }
    }

    #[test]
    fn typed_round_trip_in_reference_spelling() {
        let kp = sample();
        let text = kp.render().unwrap();
        assert!(text.starts_with("key-type=CCA-AESCIPHER\ncipher=paes\n"));
        assert!(text.contains("\napqns=08.002f,09.002f\n"));
        assert!(text.contains("\nvolume-type=LUKS2\n"));
        assert!(text.contains("\nsector-size=4096\n"));
        assert!(text.contains("\nvolumes=/dev/dasdb1:enc_b,UUID=abc:enc_c\n"));
        assert_eq!(KeyProperties::parse(text.as_bytes()).unwrap(), kp);
        assert!(kp.is_kms_bound());
    }

    #[test]
    fn defaults_for_missing_properties() {
        let kp = KeyProperties::parse(Properties::new().render().as_bytes()).unwrap();
        assert_eq!(kp.key_type, DEFAULT_KEY_TYPE);
        assert_eq!(kp.volume_type, VolumeType::Plain);
        assert!(kp.sector_size.is_default());
        assert!(!kp.is_kms_bound());
        let mut p = Properties::new();
        p.set("kms", "local").unwrap();
        p.set("apqns", "").unwrap();
        p.set("key-type", "ep11-aes").unwrap();
        let kp = KeyProperties::from_properties(&p).unwrap();
        assert!(!kp.is_kms_bound());
        assert!(kp.apqns.is_empty());
        assert_eq!(kp.key_type, "EP11-AES");
    }

    #[test]
    fn unknown_properties_survive_a_rewrite() {
        let mut p = Properties::new();
        p.set("digest", "sha256").unwrap();
        p.set("cipher", "paes").unwrap();
        p.set("future-thing", "a=b, c").unwrap();
        let mut kp = KeyProperties::from_properties(&p).unwrap();
        kp.description = Some("new".into());
        let again = KeyProperties::parse(kp.render().unwrap().as_bytes()).unwrap();
        assert_eq!(again.other("digest"), Some("sha256"));
        assert_eq!(again.other("future-thing"), Some("a=b, c"));
        assert_eq!(
            again.other.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            vec!["digest", "future-thing"]
        );
        let mut kp = again;
        assert!(matches!(
            kp.set_other("cipher", "x"),
            Err(PropertiesError::ReservedName(_))
        ));
        kp.set_other("zz", "1").unwrap();
        assert_eq!(kp.other.remove("zz"), Some("1".into()));
    }

    #[test]
    fn invalid_typed_values_are_errors() {
        for (name, value) in [
            ("sector-size", "513"),
            ("volume-type", "raw"),
            ("apqns", "08"),
            ("volumes", "/dev/a"),
            ("verification-pattern", "abc"),
            ("creation-time", "yesterday"),
            ("key-type", ""),
        ] {
            let mut p = Properties::new();
            p.set(name, value).unwrap();
            assert!(
                matches!(
                    KeyProperties::from_properties(&p),
                    Err(PropertiesError::InvalidValue { .. })
                ),
                "{name}={value} accepted"
            );
        }
        let kp = KeyProperties {
            description: Some("two\nlines".into()),
            ..KeyProperties::default()
        };
        assert!(matches!(
            kp.render(),
            Err(PropertiesError::InvalidValueChars { .. })
        ));
    }

    #[test]
    fn timestamp_now_has_reference_format() {
        let now = Timestamp::now();
        assert!(now.as_str().parse::<Timestamp>().is_ok(), "{now}");
        assert!(now.as_str().starts_with("20"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Properties::parse(&data);
            let _ = KeyProperties::parse(&data);
        }

        #[test]
        fn parse_never_panics_on_near_valid_text(
            lines in proptest::collection::vec("[a-z_#=-]{0,6}=?[ -~]{0,12}", 0..8)
        ) {
            let mut p = Properties::new();
            for l in &lines {
                if let Some((n, v)) = l.split_once('=') {
                    let _ = p.set(n, v);
                }
            }
            let text = format!("{}\n{}", lines.join("\n"), p.render());
            let _ = KeyProperties::parse(text.as_bytes());
        }

        #[test]
        fn render_parse_round_trip(
            entries in proptest::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,20}"), 0..8)
        ) {
            let mut p = Properties::new();
            for (n, v) in &entries {
                p.set(n, v).unwrap();
            }
            prop_assert_eq!(Properties::parse(p.render().as_bytes()).unwrap(), p);
        }
    }
}
