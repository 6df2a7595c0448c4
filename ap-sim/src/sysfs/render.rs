//! Writing the simulated bus as the kernel's sysfs tree.
//!
//! ```text
//! devices/ap/card08/{type,hwtype,...,driver -> cex4card}
//! devices/ap/card08/08.002f/{online,...,mkvps,driver -> cex4queue}
//! bus/ap/{ap_domain,apmask,...}
//! bus/ap/devices/{card08 -> ../../../devices/ap/card08, 08.002f -> ...}
//! bus/ap/drivers/{cex4card,cex4queue}/
//! ```
//! Every file is replaced atomically and only when its content changes, so a concurrent reader
//! sees each file whole and a render of an unchanged bus touches nothing. New devices get their
//! files before their links appear; vanished devices lose their links before their directories.
//!
//! Values the simulator does not model (request counters, load, queue depth, bus timers) are
//! rendered as constant, plausible values for an idle LPAR.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::mkvps::{CcaMkvps, CcaTypeMkvps, Ep11Mkvps, Mkvps, Reading};
use super::read::{parse_card_name, parse_queue_name};
use super::{CARD_DRIVER, QUEUE_DRIVER};
use crate::adapter::{Bus, Card, Mode, Queue, QueueKeys, Status};
use crate::apqn::Apqn;
use crate::durable::{create_dir_all_mode, open_nofollow, replace_atomic};
use crate::registers::{CcaRegisters, Ep11Registers, RegState, RegView};

/// The modes sysfs gives: directories 0755, attributes 0444, or 0644 where the kernel has a
/// store function for them. Set explicitly, so a umask of 000 does not open the tree to all.
const DIR_MODE: u32 = 0o755;
const READ_ONLY: u32 = 0o444;
const WRITABLE: u32 = 0o644;
/// The writable attributes (ap_bus.c BUS_ATTR_RW, ap_card.c / ap_queue.c / zcrypt_card.c /
/// zcrypt_queue.c DEVICE_ATTR_RW).
const BUS_WRITABLE: &[&str] = &[
    "ap_domain",
    "config_time",
    "poll_thread",
    "poll_timeout",
    "apmask",
    "aqmask",
];
const CARD_WRITABLE: &[&str] = &["online", "config", "request_count"];
const QUEUE_WRITABLE: &[&str] = &["online", "request_count", "reset"];
/// `max_msg_size` of every card: the kernel's default (12 KiB) for adapters without an ML field.
const MAX_MSG_SIZE: u32 = 12288;
/// `depth`: the real queue depth, as kernels since 2026 show it (older ones showed TAPQ's
/// depth - 1 and lszcrypt added 1); lszcrypt prints it as is, QDEPTH 08.
const DEPTH: u32 = 8;
/// The highest domain id of a z15/z16 LPAR, widened when the bus holds higher domains.
const MAX_DOMAIN_ID: u16 = 84;
const FEATURES: &str = "APSC APXA QACT RC8A";
/// The kernel's default `poll_timeout` (ns).
const POLL_TIMEOUT_NS: u64 = 250_000;

/// Renders `bus` under `root` (the simulator's `DIR/sys`), removing devices no longer on the bus.
pub fn render(bus: &Bus, root: &Path) -> io::Result<()> {
    let devices = root.join("devices/ap");
    let ap = root.join("bus/ap");
    let card_drv = ap.join("drivers").join(CARD_DRIVER);
    let queue_drv = ap.join("drivers").join(QUEUE_DRIVER);
    for dir in [&devices, &ap.join("devices"), &card_drv, &queue_drv] {
        create_dir_all_mode(dir, DIR_MODE)?;
    }
    sync_files(&ap, &bus_attributes(bus), BUS_WRITABLE)?;
    let domain = default_domain(bus);
    for (id, card) in &bus.cards {
        render_card(&devices, *id, card, domain)?;
    }
    sync_links(
        &ap.join("devices"),
        &device_links(bus, "../../../devices/ap"),
    )?;
    sync_links(&card_drv, &card_links(bus, "../../../../devices/ap"))?;
    sync_links(&queue_drv, &queue_links(bus, "../../../../devices/ap"))?;
    remove_stale_devices(bus, &devices)
}

fn card_name(id: u8) -> String {
    format!("card{id:02x}")
}

/// The device path of every queue, relative to `devices/ap`.
fn queue_path(apqn: Apqn) -> String {
    format!("{}/{apqn}", card_name(apqn.card()))
}

fn card_links(bus: &Bus, base: &str) -> BTreeMap<String, PathBuf> {
    bus.cards
        .keys()
        .map(|id| (card_name(*id), Path::new(base).join(card_name(*id))))
        .collect()
}

fn queue_links(bus: &Bus, base: &str) -> BTreeMap<String, PathBuf> {
    bus.apqns()
        .map(|a| (a.to_string(), Path::new(base).join(queue_path(a))))
        .collect()
}

fn device_links(bus: &Bus, base: &str) -> BTreeMap<String, PathBuf> {
    let mut links = card_links(bus, base);
    links.extend(queue_links(bus, base));
    links
}

// ----- bus attributes -----

/// The AP bus picks the lowest usage domain with a working APQN as its default domain.
fn default_domain(bus: &Bus) -> Option<u16> {
    bus.cards
        .values()
        .filter(|c| c.config && !c.chkstop)
        .flat_map(|c| c.queues.keys().copied())
        .min()
}

/// A 256-bit mask as the kernel prints it: `0x` and 64 hex digits, bit 0 the MSB of byte 0.
fn mask(ids: impl IntoIterator<Item = usize>) -> String {
    let mut bytes = [0u8; 32];
    for id in ids.into_iter().filter(|i| *i < 256) {
        bytes[id / 8] |= 0x80 >> (id % 8);
    }
    format!("0x{}", hex::encode(bytes))
}

fn bus_attributes(bus: &Bus) -> Vec<(&'static str, String)> {
    let domains: BTreeSet<u16> = bus.apqns().map(Apqn::domain).collect();
    let max_domain = match domains.last() {
        Some(d) if *d > MAX_DOMAIN_ID => 255,
        _ => MAX_DOMAIN_ID,
    };
    let queues = bus.apqns().count();
    let usage = mask(domains.iter().map(|d| *d as usize));
    vec![
        (
            "ap_domain",
            default_domain(bus).map_or("-1".into(), |d| d.to_string()),
        ),
        ("ap_max_domain_id", max_domain.to_string()),
        ("ap_max_adapter_id", "255".into()),
        (
            "ap_adapter_mask",
            mask(bus.cards.keys().map(|c| *c as usize)),
        ),
        ("ap_usage_domain_mask", usage.clone()),
        // An LPAR normally controls the domains it uses.
        ("ap_control_domain_mask", usage),
        // No ids are reserved for vfio_ap: the default drivers may use every APQN.
        ("apmask", mask(0..256)),
        ("aqmask", mask(0..256)),
        ("config_time", "30".into()),
        ("poll_thread", "0".into()),
        ("poll_timeout", POLL_TIMEOUT_NS.to_string()),
        ("ap_interrupts", "1".into()),
        ("scans", "1".into()),
        // Every queue is bound to cex4queue.
        ("bindings", format!("{queues}/{queues} (complete)")),
        ("features", FEATURES.into()),
    ]
}

// ----- cards -----

fn flag(b: bool) -> String {
    u8::from(b).to_string()
}

fn render_card(devices: &Path, id: u8, card: &Card, domain: Option<u16>) -> io::Result<()> {
    let dir = devices.join(card_name(id));
    create_dir_all_mode(&dir, DIR_MODE)?;
    sync_files(&dir, &card_attributes(card, domain), CARD_WRITABLE)?;
    ensure_link(&dir.join("driver"), &driver_target(1, CARD_DRIVER))?;
    for (dom, queue) in &card.queues {
        render_queue(&dir, Apqn::new(id, *dom), card, queue)?;
    }
    Ok(())
}

/// The `driver` link of a device `depth` directories below `devices/ap`.
fn driver_target(depth: usize, driver: &str) -> PathBuf {
    let up = "../".repeat(depth + 2);
    PathBuf::from(format!("{up}bus/ap/drivers/{driver}"))
}

fn card_attributes(card: &Card, domain: Option<u16>) -> Vec<(&'static str, String)> {
    let ty = card.card_type;
    let mut attrs = vec![
        ("type", ty.to_string()),
        ("hwtype", ty.hwtype().to_string()),
        ("raw_hwtype", ty.hwtype().to_string()),
        ("depth", DEPTH.to_string()),
        ("max_msg_size", MAX_MSG_SIZE.to_string()),
        ("ap_functions", format!("0x{:08X}", ty.ap_functions())),
        // The kernel's card `online` folds in config and chkstop (zcrypt_card.c).
        ("online", flag(Bus::card_status(card) == Status::Online)),
        ("config", flag(card.config)),
        ("chkstop", flag(card.chkstop)),
        ("request_count", "0".into()),
        ("requestq_count", "0".into()),
        ("pendingq_count", "0".into()),
        ("modalias", format!("ap:t{:02X}", ty.hwtype())),
        ("load", "0".into()),
    ];
    attrs.extend(card_info_attributes(card, domain));
    attrs
}

/// The attributes the kernel fills by sending a request to the adapter (zcrypt_cex4.c): empty
/// when the request cannot be delivered. CCA asks the queue of the default domain, EP11 any
/// queue of the card.
fn card_info_attributes(card: &Card, domain: Option<u16>) -> Vec<(&'static str, String)> {
    let usable = |q: &Queue| Bus::queue_status(card, q) == Status::Online;
    match card.mode() {
        Mode::Accelerator => vec![],
        Mode::Cca => {
            let reachable = domain.and_then(|d| card.queues.get(&d)).is_some_and(usable);
            vec![("serialnr", answered(reachable, card.serialnr.clone()))]
        }
        Mode::Ep11 => {
            let reachable = card.queues.values().any(usable);
            let (major, minor) = card.fw_version;
            let ordinal = card.api_ordinal;
            vec![
                ("serialnr", answered(reachable, card.serialnr.clone())),
                // The kernel leaves out a zero ordinal or firmware version.
                (
                    "API_ordinalnr",
                    answered(reachable && ordinal > 0, ordinal.to_string()),
                ),
                (
                    "FW_version",
                    answered(
                        reachable && (major, minor) != (0, 0),
                        format!("{major}.{minor}"),
                    ),
                ),
                // The simulator certifies no operation mode (FIPS, BSI, ...).
                ("op_modes", String::new()),
            ]
        }
    }
}

/// `value` if the adapter answered the request for it, else the empty line the kernel prints.
fn answered(reachable: bool, value: String) -> String {
    if reachable {
        value
    } else {
        String::new()
    }
}

// ----- queues -----

fn render_queue(card_dir: &Path, apqn: Apqn, card: &Card, queue: &Queue) -> io::Result<()> {
    let dir = card_dir.join(apqn.to_string());
    create_dir_all_mode(&dir, DIR_MODE)?;
    sync_files(&dir, &queue_attributes(card, queue), QUEUE_WRITABLE)?;
    ensure_link(&dir.join("driver"), &driver_target(2, QUEUE_DRIVER))
}

fn queue_attributes(card: &Card, queue: &Queue) -> Vec<(&'static str, String)> {
    let status = Bus::queue_status(card, queue);
    // TAPQ answers (and interrupts work) unless the queue is deconfigured or check-stopped.
    let tapq = card.config && !card.chkstop && !queue.chkstop;
    let interrupt = if tapq {
        "Interrupts enabled."
    } else {
        "Interrupts disabled."
    };
    let mut attrs = vec![
        ("online", flag(status == Status::Online)),
        ("config", flag(card.config)),
        ("chkstop", flag(card.chkstop || queue.chkstop)),
        (
            "ap_functions",
            format!("0x{:08X}", card.card_type.ap_functions()),
        ),
        ("request_count", "0".into()),
        ("requestq_count", "0".into()),
        ("pendingq_count", "0".into()),
        ("reset", "No Reset Timer set.".into()),
        ("interrupt", interrupt.into()),
        ("load", "0".into()),
    ];
    if let Some(m) = queue_mkvps(&queue.keys, status == Status::Online) {
        // `Display` already ends every line with a newline; `sync_files` adds one more.
        let text = m.to_string();
        attrs.push(("mkvps", text.trim_end_matches('\n').to_string()));
    }
    if card.mode() == Mode::Ep11 {
        attrs.push(("op_modes", String::new()));
    }
    attrs
}

/// What the kernel's `mkvps` shows for a queue's registers. The kernel asks the adapter each
/// time; when the queue cannot take requests (offline, deconfigured, check-stopped) the request
/// fails and every line reads `- -`. For EP11 the kernel does not even try while the queue is
/// offline. For CCA it would first consult its info cache, which holds whatever an earlier
/// request saw; the simulator renders the uncached result, which is what a freshly booted
/// system shows. The reference zkey fails with EIO on `- -` lines, as it does on a real system.
pub(super) fn queue_mkvps(keys: &QueueKeys, usable: bool) -> Option<Mkvps> {
    match keys {
        QueueKeys::Accelerator => None,
        QueueKeys::Cca { aes, apka } => Some(Mkvps::Cca(CcaMkvps {
            aes: cca_type(aes, usable),
            apka: Some(cca_type(apka, usable)),
            asym: Some(if usable {
                ASYM_UNLOADED
            } else {
                CcaTypeMkvps::UNKNOWN
            }),
        })),
        QueueKeys::Ep11 { wk } => Some(Mkvps::Ep11(if usable {
            ep11(wk)
        } else {
            Ep11Mkvps {
                current: Reading::Unknown,
                new: Reading::Unknown,
            }
        })),
    }
}

/// The simulator models no ASYM master key: its registers are empty and invalid.
const ASYM_UNLOADED: CcaTypeMkvps = CcaTypeMkvps {
    new: Reading::without_pattern(RegState::Empty),
    current: Reading::without_pattern(RegState::Invalid),
    old: Reading::without_pattern(RegState::Invalid),
};

fn cca_type(r: &CcaRegisters, usable: bool) -> CcaTypeMkvps {
    if !usable {
        return CcaTypeMkvps::UNKNOWN;
    }
    CcaTypeMkvps {
        new: Reading::Known(r.new_view()),
        current: Reading::Known(r.current_view()),
        old: Reading::Known(r.old_view()),
    }
}

fn ep11(wk: &Ep11Registers) -> Ep11Mkvps {
    Ep11Mkvps {
        current: Reading::Known(wk.current_view()),
        new: Reading::Known(ep11_kernel_view(wk.new_view())),
    }
}

/// The kernel knows only empty, uncommitted and committed for an EP11 NEW register: key parts
/// loaded but not yet final read as empty.
pub(super) fn ep11_kernel_view(v: RegView) -> RegView {
    match v.state {
        RegState::Partial => RegView {
            state: RegState::Empty,
            mkvp: None,
        },
        _ => v,
    }
}

// ----- files, links and stale devices -----

/// Writes every attribute of a device directory (each `value` plus the newline sysfs_emit
/// ends it with; `writable` ones 0644, the others 0444) and removes regular files that are no
/// longer attributes of it.
fn sync_files(dir: &Path, attrs: &[(&'static str, String)], writable: &[&str]) -> io::Result<()> {
    for (name, value) in attrs {
        let mode = if writable.contains(name) {
            WRITABLE
        } else {
            READ_ONLY
        };
        write_if_changed(&dir.join(name), format!("{value}\n").as_bytes(), mode)?;
    }
    let names: BTreeSet<&str> = attrs.iter().map(|(n, _)| *n).collect();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let stale = entry.file_type()?.is_file()
            && entry
                .file_name()
                .to_str()
                .is_none_or(|n| !names.contains(n));
        if stale {
            ignore_missing(fs::remove_file(entry.path()))?;
        }
    }
    Ok(())
}

/// A file whose content and mode are already right is not touched; anything else there (a
/// link included) is replaced, never followed.
fn write_if_changed(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let same = open_nofollow(path).ok().is_some_and(|mut f| {
        let mut old = Vec::new();
        f.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == mode)
            && f.read_to_end(&mut old).is_ok()
            && old == data
    });
    if same {
        Ok(())
    } else {
        replace_atomic(path, data, mode)
    }
}

/// Makes `link` a symlink to `target`, atomically (a reader never finds it missing).
fn ensure_link(link: &Path, target: &Path) -> io::Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let name = link.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = link.with_file_name(format!(
        ".{}.tmp.{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    ignore_missing(fs::remove_file(&tmp))?;
    symlink(target, &tmp)?;
    fs::rename(&tmp, link).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Makes the symlinks in `dir` exactly `links` (name -> target). Other entries are left alone.
fn sync_links(dir: &Path, links: &BTreeMap<String, PathBuf>) -> io::Result<()> {
    for (name, target) in links {
        ensure_link(&dir.join(name), target)?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let wanted = entry
            .file_name()
            .to_str()
            .is_some_and(|n| links.contains_key(n));
        if entry.file_type()?.is_symlink() && !wanted {
            ignore_missing(fs::remove_file(entry.path()))?;
        }
    }
    Ok(())
}

/// Removes card and queue directories whose device is no longer on the bus.
fn remove_stale_devices(bus: &Bus, devices: &Path) -> io::Result<()> {
    for (name, path) in subdirs(devices)? {
        let Some(id) = parse_card_name(&name) else {
            continue;
        };
        match bus.card(id) {
            Some(card) => remove_stale_queues(id, card, &path)?,
            None => ignore_missing(fs::remove_dir_all(&path))?,
        }
    }
    Ok(())
}

fn remove_stale_queues(id: u8, card: &Card, card_dir: &Path) -> io::Result<()> {
    for (name, path) in subdirs(card_dir)? {
        let stale = parse_queue_name(&name)
            .is_some_and(|a| a.card() != id || !card.queues.contains_key(&a.domain()));
        if stale {
            ignore_missing(fs::remove_dir_all(&path))?;
        }
    }
    Ok(())
}

fn subdirs(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let (true, Ok(name)) = (entry.file_type()?.is_dir(), entry.file_name().into_string()) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// The result of a removal, where something already gone is fine (a concurrent render, or a
/// crash, got there first).
fn ignore_missing(removal: io::Result<()>) -> io::Result<()> {
    match removal {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
