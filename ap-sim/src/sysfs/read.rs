//! Reading an AP bus sysfs tree: the simulator's, or a real `/sys`.
//!
//! Devices are found through `bus/ap/devices/` (entries `cardXX` and `XX.YYYY`), as lszcrypt and
//! zkey find them. Attributes that older kernels lack are optional: `config` and `chkstop`
//! (assumed configured and not check-stopped), `mkvps`, `serialnr` and `driver` (`None`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use super::mkvps::{parse_mkvps_at, Mkvps};
use super::SysfsError;
use crate::adapter::{Mode, Status};
use crate::apqn::Apqn;

/// `ap_functions` bits that tell the mode, in the order lszcrypt tests them.
const MODE_BITS: [(u32, Mode); 3] = [
    (0x1000_0000, Mode::Cca),
    (0x0800_0000, Mode::Accelerator),
    (0x0400_0000, Mode::Ep11),
];

/// One card (adapter) as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CardInfo {
    #[serde(serialize_with = "hex2")]
    pub id: u8,
    /// `type` as the kernel prints it (`CEX8C`), `-` when the attribute is missing.
    pub card_type: String,
    /// From `ap_functions`, as lszcrypt derives it; `None` if no mode bit is set.
    pub mode: Option<Mode>,
    pub hwtype: u32,
    pub depth: u32,
    #[serde(serialize_with = "hex8")]
    pub functions: u32,
    /// The `online` attribute: 1 only if the card is configured, not check-stopped and online.
    pub online: bool,
    pub config: bool,
    pub chkstop: bool,
    pub status: Status,
    pub serialnr: Option<String>,
    pub request_count: u64,
    pub requestq_count: u64,
    pub pendingq_count: u64,
    /// The bound driver's name (`cex4card`, `vfio_ap`, ...).
    pub driver: Option<String>,
}

/// One queue (APQN) as sysfs shows it, with the card attributes that decide how it is used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    pub apqn: Apqn,
    pub card_type: String,
    pub mode: Option<Mode>,
    pub hwtype: u32,
    pub depth: u32,
    #[serde(serialize_with = "hex8")]
    pub functions: u32,
    /// Usable: the queue, its card and the configuration all say online.
    pub online: bool,
    pub config: bool,
    /// The card or the queue is check-stopped.
    pub chkstop: bool,
    pub status: Status,
    /// `None` where the file is absent (accelerators, old kernels, queues bound to vfio_ap).
    pub mkvps: Option<Mkvps>,
    /// `None` when the kernel prints `-` (a queue never initialised).
    pub request_count: Option<u64>,
    pub requestq_count: u64,
    pub pendingq_count: u64,
    pub driver: Option<String>,
}

fn hex2<S: Serializer>(v: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:02x}"))
}

fn hex8<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("0x{v:08X}"))
}

/// Reading access to a sysfs tree rooted at `root` (what `SYSFS_ROOT` names; `/sys` normally).
#[derive(Clone, Debug)]
pub struct SysfsTree {
    root: PathBuf,
}

impl SysfsTree {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SysfsTree { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn devices(&self) -> PathBuf {
        self.root.join("bus/ap/devices")
    }

    /// Every card, by id.
    pub fn cards(&self) -> Result<Vec<CardInfo>, SysfsError> {
        let ids: Vec<u8> = self.entries(parse_card_name)?;
        let dev = self.devices();
        ids.into_iter()
            .filter(|id| dev.join(card_name(*id)).exists())
            .map(|id| read_card(&dev.join(card_name(id)), id))
            .collect()
    }

    /// Every queue, by APQN.
    pub fn queues(&self) -> Result<Vec<QueueInfo>, SysfsError> {
        let apqns: Vec<Apqn> = self.entries(parse_queue_name)?;
        let mut out = Vec::with_capacity(apqns.len());
        for apqn in apqns {
            // A device removed between listing and reading is simply gone.
            if let Some(q) = self.queue(apqn)? {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// One queue; `None` if the bus has no such APQN.
    pub fn queue(&self, apqn: Apqn) -> Result<Option<QueueInfo>, SysfsError> {
        let dev = self.devices();
        if !dev.is_dir() {
            return Err(SysfsError::NoApBus { path: dev });
        }
        let qdir = dev.join(apqn.to_string());
        if !qdir.exists() {
            return Ok(None);
        }
        let card = read_card(&dev.join(card_name(apqn.card())), apqn.card())?;
        read_queue(&qdir, apqn, &card).map(Some)
    }

    /// The names in `bus/ap/devices` that `parse` accepts, sorted.
    fn entries<T: Ord>(&self, parse: fn(&str) -> Option<T>) -> Result<Vec<T>, SysfsError> {
        let dev = self.devices();
        let rd = match fs::read_dir(&dev) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SysfsError::NoApBus { path: dev })
            }
            other => other.map_err(SysfsError::io(&dev))?,
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(SysfsError::io(&dev))?;
            if let Some(v) = entry.file_name().to_str().and_then(parse) {
                out.push(v);
            }
        }
        out.sort();
        Ok(out)
    }
}

fn card_name(id: u8) -> String {
    format!("card{id:02x}")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `cardXX` -> XX, the kernel's device name of a card; nothing else.
pub(super) fn parse_card_name(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("card").filter(|h| is_hex(h, 2))?;
    u8::from_str_radix(hex, 16).ok()
}

/// `XX.YYYY`, the kernel's device name of a queue; nothing else.
pub(super) fn parse_queue_name(name: &str) -> Option<Apqn> {
    let (c, d) = name.split_once('.')?;
    (is_hex(c, 2) && is_hex(d, 4)).then_some(())?;
    name.parse().ok()
}

/// The status lszcrypt shows: deconfigured and check-stopped win over offline.
fn status(config: bool, chkstop: bool, online: bool) -> Status {
    match (config, chkstop, online) {
        (false, _, _) => Status::Deconfig,
        (_, true, _) => Status::Chkstop,
        (_, _, false) => Status::Offline,
        _ => Status::Online,
    }
}

fn read_card(dir: &Path, id: u8) -> Result<CardInfo, SysfsError> {
    let a = Attrs(dir);
    let functions = a.hex("ap_functions")?;
    let config = a.flag("config")?.unwrap_or(true);
    let chkstop = a.flag("chkstop")?.unwrap_or(false);
    let online = a.flag("online")?.unwrap_or(false);
    Ok(CardInfo {
        id,
        card_type: a.text("type")?.unwrap_or_else(|| "-".into()),
        mode: MODE_BITS
            .iter()
            .find(|(bit, _)| functions & bit != 0)
            .map(|(_, m)| *m),
        hwtype: a.number("hwtype")?,
        depth: a.number_or("depth", 0)?,
        functions,
        online,
        config,
        chkstop,
        status: status(config, chkstop, online),
        serialnr: a.text("serialnr")?.filter(|s| !s.is_empty()),
        request_count: a.number_or("request_count", 0)?,
        requestq_count: a.number_or("requestq_count", 0)?,
        pendingq_count: a.number_or("pendingq_count", 0)?,
        driver: a.driver(),
    })
}

fn read_queue(dir: &Path, apqn: Apqn, card: &CardInfo) -> Result<QueueInfo, SysfsError> {
    let a = Attrs(dir);
    let config = card.config && a.flag("config")?.unwrap_or(true);
    let chkstop = card.chkstop || a.flag("chkstop")?.unwrap_or(false);
    let online = card.online && config && a.flag("online")?.unwrap_or(false);
    Ok(QueueInfo {
        apqn,
        card_type: card.card_type.clone(),
        mode: card.mode,
        hwtype: card.hwtype,
        depth: card.depth,
        functions: card.functions,
        online,
        config,
        chkstop,
        status: status(config, chkstop, online),
        mkvps: a.mkvps()?,
        request_count: match a.text("request_count")? {
            Some(s) if s != "-" => Some(a.parse("request_count", &s)?),
            _ => None,
        },
        requestq_count: a.number_or("requestq_count", 0)?,
        pendingq_count: a.number_or("pendingq_count", 0)?,
        driver: a.driver(),
    })
}

/// The attribute files of one device directory.
struct Attrs<'a>(&'a Path);

impl Attrs<'_> {
    /// The content without the trailing newline; `None` if the attribute does not exist.
    fn text(&self, name: &str) -> Result<Option<String>, SysfsError> {
        let path = self.0.join(name);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.strip_suffix('\n').unwrap_or(&s).to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SysfsError::Io { path, source: e }),
        }
    }

    fn bad(&self, name: &str, content: &str, why: &str) -> SysfsError {
        SysfsError::Attribute {
            path: self.0.join(name),
            content: content.to_string(),
            why: why.to_string(),
        }
    }

    fn required(&self, name: &str) -> Result<String, SysfsError> {
        self.text(name)?.ok_or_else(|| SysfsError::Io {
            path: self.0.join(name),
            source: io::Error::new(io::ErrorKind::NotFound, "attribute missing"),
        })
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, s: &str) -> Result<T, SysfsError> {
        s.trim()
            .parse()
            .map_err(|_| self.bad(name, s, "expected a decimal number"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, SysfsError> {
        self.parse(name, &self.required(name)?)
    }

    fn number_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, SysfsError> {
        match self.text(name)? {
            None => Ok(default),
            Some(s) => self.parse(name, &s),
        }
    }

    fn hex(&self, name: &str) -> Result<u32, SysfsError> {
        let s = self.required(name)?;
        let digits = s.trim().strip_prefix("0x").or(s.trim().strip_prefix("0X"));
        digits
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.bad(name, &s, "expected 0x and hex digits"))
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, SysfsError> {
        match self.text(name)?.as_deref() {
            None => Ok(None),
            Some("0") => Ok(Some(false)),
            Some("1") => Ok(Some(true)),
            Some(other) => Err(self.bad(name, other, "expected 0 or 1")),
        }
    }

    fn mkvps(&self) -> Result<Option<Mkvps>, SysfsError> {
        let path = self.0.join("mkvps");
        self.text("mkvps")?
            .map(|t| parse_mkvps_at(&t, &path))
            .transpose()
    }

    fn driver(&self) -> Option<String> {
        let target = fs::read_link(self.0.join("driver")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }
}
