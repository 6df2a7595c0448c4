//! The AP bus as sysfs shows it: rendering the simulator's tree, and reading any tree (a real
//! `/sys` included).
//!
//! Tools such as lszcrypt and zkey know the AP bus only through sysfs (`$SYSFS_ROOT`, default
//! `/sys`). [`render`] writes the simulated [`Bus`](crate::adapter::Bus) under a root in the
//! kernel's exact layout and file formats (`drivers/s390/crypto/ap_*.c`, `zcrypt_*.c`), so that
//! those tools work unchanged on the simulator; [`SysfsTree`] reads such a tree back into typed
//! values, and [`parse_mkvps`] parses the one attribute with a structured format.
//!
//! Only master key verification patterns ever reach the tree; the master keys themselves stay in
//! the simulator's private state file.
//!
//! Submodules: [`mkvps`] (the `mkvps` attribute, both directions), `render` (writing the tree) and
//! `read` (reading it).

use std::io;
use std::path::{Path, PathBuf};

pub mod mkvps;
mod read;
mod render;

pub use mkvps::{parse_mkvps, CcaMkvps, CcaTypeMkvps, Ep11Mkvps, Mkvps, Reading, TypeRegisters};
pub use read::{CardInfo, QueueInfo, SysfsTree};
pub use render::render;

/// The card and queue driver names the tree binds devices to (lszcrypt's DRIVER column).
pub const CARD_DRIVER: &str = "cex4card";
pub const QUEUE_DRIVER: &str = "cex4queue";

/// Why a sysfs tree could not be read. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} does not exist: this is not an AP bus sysfs tree (is the 'ap' kernel module loaded, or does SYSFS_ROOT point to the wrong directory?)")]
    NoApBus { path: PathBuf },
    #[error("{path}: unexpected content {content:?}: {why}")]
    Attribute {
        path: PathBuf,
        content: String,
        why: String,
    },
    #[error("{path}, line {line} {text:?}: {why}")]
    Mkvps {
        path: PathBuf,
        line: usize,
        text: String,
        why: String,
    },
}

impl SysfsError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> SysfsError + '_ {
        move |source| SysfsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::adapter::{Bus, Card, CardType, Mode, Queue, QueueKeys, Status};
    use crate::apqn::Apqn;
    use crate::mkvp::MasterKey;
    use crate::registers::{CcaNew, CcaRegisters, Ep11New, Ep11Registers, RegState, RegView};

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    fn queue(keys: QueueKeys, online: bool) -> Queue {
        Queue {
            online,
            chkstop: false,
            keys,
        }
    }

    fn card(ty: &str, serial: &str, online: bool, config: bool, keys: QueueKeys) -> Card {
        let card_type: CardType = ty.parse().unwrap();
        let ep11 = card_type.mode() == Mode::Ep11;
        Card {
            card_type,
            serialnr: serial.into(),
            online,
            config,
            chkstop: false,
            api_ordinal: if ep11 { 6 } else { 0 },
            fw_version: if ep11 { (7, 19) } else { (0, 0) },
            queues: BTreeMap::from([(0x2f, queue(keys, online))]),
        }
    }

    fn cca_keys() -> QueueKeys {
        QueueKeys::Cca {
            aes: CcaRegisters {
                new: CcaNew::Full(key(1)),
                current: Some(key(2)),
                old: None,
            },
            apka: CcaRegisters::with_current(key(3)),
        }
    }

    fn ep11_keys() -> QueueKeys {
        QueueKeys::Ep11 {
            wk: Ep11Registers {
                new: Ep11New::Committed(key(4)),
                current: Some(key(5)),
            },
        }
    }

    /// CCA 08, EP11 0a, accelerator 0c, an offline CCA card 0d and a deconfigured EP11 card 0e,
    /// each with domain 0x2f.
    fn bus() -> Bus {
        Bus {
            cards: BTreeMap::from([
                (0x08, card("CEX8C", "SIMC0008", true, true, cca_keys())),
                (0x0a, card("CEX8P", "SIMP000A", true, true, ep11_keys())),
                (
                    0x0c,
                    card("CEX8A", "SIMA000C", true, true, QueueKeys::Accelerator),
                ),
                (0x0d, card("CEX8C", "SIMC000D", false, true, cca_keys())),
                (0x0e, card("CEX8P", "SIMP000E", true, false, ep11_keys())),
            ]),
        }
    }

    fn rendered(bus: &Bus) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        render(bus, d.path()).unwrap();
        d
    }

    fn read(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn assert_files(root: &Path, dir: &str, expected: &[(&str, &str)]) {
        for (name, content) in expected {
            assert_eq!(
                read(root, &format!("{dir}/{name}")),
                *content,
                "{dir}/{name}"
            );
        }
    }

    const ZERO16: &str = "0x0000000000000000";
    const ZERO32: &str = "0x00000000000000000000000000000000";

    #[test]
    fn renders_a_cca_card_and_queue_like_the_kernel() {
        let d = rendered(&bus());
        let card = "devices/ap/card08";
        assert_files(
            d.path(),
            card,
            &[
                ("type", "CEX8C\n"),
                ("hwtype", "14\n"),
                ("raw_hwtype", "14\n"),
                ("depth", "8\n"),
                ("max_msg_size", "12288\n"),
                ("ap_functions", "0x92000000\n"),
                ("online", "1\n"),
                ("config", "1\n"),
                ("chkstop", "0\n"),
                ("request_count", "0\n"),
                ("requestq_count", "0\n"),
                ("pendingq_count", "0\n"),
                ("modalias", "ap:t0E\n"),
                ("load", "0\n"),
                ("serialnr", "SIMC0008\n"),
            ],
        );
        let mkvps = format!(
            "AES NEW: full 0xce041765675ad4d9\n\
             AES CUR: valid 0xf1386fff8b06ac98\n\
             AES OLD: invalid {ZERO16}\n\
             APKA NEW: empty {ZERO16}\n\
             APKA CUR: valid 0x131c41585fc6b26c\n\
             APKA OLD: invalid {ZERO16}\n\
             ASYM NEW: empty {ZERO32}\n\
             ASYM CUR: invalid {ZERO32}\n\
             ASYM OLD: invalid {ZERO32}\n"
        );
        assert_files(
            d.path(),
            &format!("{card}/08.002f"),
            &[
                ("online", "1\n"),
                ("config", "1\n"),
                ("chkstop", "0\n"),
                ("ap_functions", "0x92000000\n"),
                ("request_count", "0\n"),
                ("requestq_count", "0\n"),
                ("pendingq_count", "0\n"),
                ("reset", "No Reset Timer set.\n"),
                ("interrupt", "Interrupts enabled.\n"),
                ("load", "0\n"),
                ("mkvps", &mkvps),
            ],
        );
        assert!(!d.path().join(card).join("08.002f/op_modes").exists());
    }

    #[test]
    fn renders_ep11_and_accelerator_cards_like_the_kernel() {
        let d = rendered(&bus());
        assert_files(
            d.path(),
            "devices/ap/card0a",
            &[
                ("type", "CEX8P\n"),
                ("ap_functions", "0x86000000\n"),
                ("serialnr", "SIMP000A\n"),
                ("API_ordinalnr", "6\n"),
                ("FW_version", "7.19\n"),
                ("op_modes", "\n"),
            ],
        );
        let wkvp_cur = "90cbc3c7c7634183ae482172520c1b8d85ee10f1ca0b4744fdbe7da2245141bb";
        let wkvp_new = "db1a2656e1809de78fb29dddf24a1c75fbf7c6dc1f1341f485457c713ce49fa0";
        assert_files(
            d.path(),
            "devices/ap/card0a/0a.002f",
            &[
                (
                    "mkvps",
                    &format!("WK CUR: valid 0x{wkvp_cur}\nWK NEW: committed 0x{wkvp_new}\n"),
                ),
                ("op_modes", "\n"),
            ],
        );
        let accel = d.path().join("devices/ap/card0c");
        assert_eq!(read(&accel, "type"), "CEX8A\n");
        assert_eq!(read(&accel, "ap_functions"), "0xEA000000\n");
        assert!(!accel.join("serialnr").exists());
        assert!(accel.join("0c.002f/online").exists());
        assert!(!accel.join("0c.002f/mkvps").exists());
    }

    #[test]
    fn offline_and_deconfigured_cards_cannot_be_asked_for_registers() {
        let d = rendered(&bus());
        let cca_unknown: String = ["AES", "APKA", "ASYM"]
            .iter()
            .flat_map(|t| ["NEW", "CUR", "OLD"].map(|s| format!("{t} {s}: - -\n")))
            .collect();
        assert_files(
            d.path(),
            "devices/ap/card0d",
            &[("online", "0\n"), ("config", "1\n"), ("serialnr", "\n")],
        );
        assert_files(
            d.path(),
            "devices/ap/card0d/0d.002f",
            &[("online", "0\n"), ("mkvps", &cca_unknown)],
        );
        assert_files(
            d.path(),
            "devices/ap/card0e",
            &[
                ("online", "0\n"),
                ("config", "0\n"),
                ("serialnr", "\n"),
                ("API_ordinalnr", "\n"),
                ("FW_version", "\n"),
            ],
        );
        assert_files(
            d.path(),
            "devices/ap/card0e/0e.002f",
            &[
                ("online", "0\n"),
                ("config", "0\n"),
                ("interrupt", "Interrupts disabled.\n"),
                ("mkvps", "WK CUR: - -\nWK NEW: - -\n"),
            ],
        );
    }

    #[test]
    fn an_ep11_wrapping_key_in_parts_reads_as_empty() {
        let mut bus = bus();
        let q = bus.queue_mut(Apqn::new(0x0a, 0x2f)).unwrap();
        q.keys = QueueKeys::Ep11 {
            wk: Ep11Registers {
                new: Ep11New::Partial(key(6)),
                current: None,
            },
        };
        let d = rendered(&bus);
        assert_eq!(
            read(d.path(), "devices/ap/card0a/0a.002f/mkvps"),
            "WK CUR: invalid -\nWK NEW: empty -\n"
        );
    }

    #[test]
    fn renders_bus_attributes() {
        let d = rendered(&bus());
        let ones = format!("0x{}\n", "f".repeat(64));
        let zeros = "0".repeat(52);
        assert_files(
            d.path(),
            "bus/ap",
            &[
                ("ap_domain", "47\n"),
                ("ap_max_domain_id", "84\n"),
                ("ap_max_adapter_id", "255\n"),
                // cards 08, 0a, 0c, 0d, 0e: byte 1 = 1010 1110
                ("ap_adapter_mask", &format!("0x00ae{}\n", "0".repeat(60))),
                // domain 47 = byte 5, bit 7: 0x01
                ("ap_usage_domain_mask", &format!("0x000000000001{zeros}\n")),
                (
                    "ap_control_domain_mask",
                    &format!("0x000000000001{zeros}\n"),
                ),
                ("apmask", &ones),
                ("aqmask", &ones),
                ("config_time", "30\n"),
                ("poll_thread", "0\n"),
                ("poll_timeout", "250000\n"),
                ("ap_interrupts", "1\n"),
                ("scans", "1\n"),
                ("bindings", "5/5 (complete)\n"),
                ("features", "APSC APXA QACT RC8A\n"),
            ],
        );
    }

    #[test]
    fn links_devices_and_drivers_relatively() {
        let d = rendered(&bus());
        let link = |rel: &str| fs::read_link(d.path().join(rel)).unwrap();
        assert_eq!(
            link("bus/ap/devices/card08"),
            Path::new("../../../devices/ap/card08")
        );
        assert_eq!(
            link("bus/ap/devices/08.002f"),
            Path::new("../../../devices/ap/card08/08.002f")
        );
        assert_eq!(
            link("devices/ap/card08/driver"),
            Path::new("../../../bus/ap/drivers/cex4card")
        );
        assert_eq!(
            link("devices/ap/card08/08.002f/driver"),
            Path::new("../../../../bus/ap/drivers/cex4queue")
        );
        assert_eq!(
            link("bus/ap/drivers/cex4queue/08.002f"),
            Path::new("../../../../devices/ap/card08/08.002f")
        );
        // The links resolve: tools read queues through them.
        assert_eq!(
            read(d.path(), "bus/ap/devices/card08/08.002f/online"),
            "1\n"
        );
        assert_eq!(
            read(
                d.path(),
                "bus/ap/devices/08.002f/driver/../cex4card/card08/type"
            ),
            "CEX8C\n"
        );
    }

    #[test]
    fn reads_back_cards_and_queues() {
        let d = rendered(&bus());
        let tree = SysfsTree::new(d.path());
        let cards = tree.cards().unwrap();
        let ids: Vec<u8> = cards.iter().map(|c| c.id).collect();
        assert_eq!(ids, [0x08, 0x0a, 0x0c, 0x0d, 0x0e]);
        let c08 = &cards[0];
        assert_eq!(
            (c08.card_type.as_str(), c08.mode, c08.hwtype, c08.functions),
            ("CEX8C", Some(Mode::Cca), 14, 0x9200_0000)
        );
        assert_eq!(c08.serialnr.as_deref(), Some("SIMC0008"));
        assert_eq!(c08.driver.as_deref(), Some(CARD_DRIVER));
        let statuses: Vec<Status> = cards.iter().map(|c| c.status).collect();
        use Status::*;
        assert_eq!(statuses, [Online, Online, Online, Offline, Deconfig]);
        assert_eq!(cards[3].serialnr, None);

        let queues = tree.queues().unwrap();
        let statuses: Vec<Status> = queues.iter().map(|q| q.status).collect();
        assert_eq!(statuses, [Online, Online, Online, Offline, Deconfig]);
        assert_eq!(queues[2].mkvps, None);
        assert_eq!(queues[2].mode, Some(Mode::Accelerator));
        assert_eq!(queues[0].driver.as_deref(), Some(QUEUE_DRIVER));
        assert!(tree.queue(Apqn::new(0x08, 0x30)).unwrap().is_none());
    }

    /// What the kernel shows of registers: EP11 `partial` reads as `empty`.
    fn kernel(v: RegView) -> Reading {
        Reading::Known(render::ep11_kernel_view(v))
    }

    #[test]
    fn round_trip_gives_back_the_registers() {
        let bus = bus();
        let d = rendered(&bus);
        let tree = SysfsTree::new(d.path());
        for apqn in bus.apqns() {
            let (card, q) = bus.queue(apqn).unwrap();
            let info = tree.queue(apqn).unwrap().unwrap();
            let usable = Bus::queue_status(card, q) == Status::Online;
            assert_eq!(info.online, usable, "{apqn}");
            let got = info.mkvps;
            match (&q.keys, got) {
                (QueueKeys::Accelerator, None) => {}
                (QueueKeys::Cca { aes, apka }, Some(Mkvps::Cca(m))) if usable => {
                    for (r, t) in [(aes, m.aes), (apka, m.apka.unwrap())] {
                        assert_eq!(t.new, kernel(r.new_view()), "{apqn}");
                        assert_eq!(t.current, kernel(r.current_view()), "{apqn}");
                        assert_eq!(t.old, kernel(r.old_view()), "{apqn}");
                    }
                    let asym = m.asym.unwrap();
                    assert_eq!(asym.new, Reading::without_pattern(RegState::Empty));
                }
                (QueueKeys::Ep11 { wk }, Some(Mkvps::Ep11(m))) if usable => {
                    assert_eq!(m.current, kernel(wk.current_view()), "{apqn}");
                    assert_eq!(m.new, kernel(wk.new_view()), "{apqn}");
                }
                (_, Some(m)) => assert!(
                    m.to_string().lines().all(|l| l.ends_with(": - -")),
                    "{apqn}"
                ),
                (keys, m) => panic!("{apqn}: {keys:?} rendered as {m:?}"),
            }
        }
    }

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(&p, out);
            }
            out.push(p);
        }
    }

    fn tree_of(root: &Path) -> Vec<PathBuf> {
        let mut v = Vec::new();
        walk(root, &mut v);
        v.sort();
        v
    }

    #[test]
    fn no_master_key_appears_in_the_tree() {
        let d = rendered(&bus());
        let secrets: Vec<String> = (1..=6)
            .map(|b| hex::encode(key(b).as_bytes()))
            .flat_map(|h| [h.to_uppercase(), h.clone(), h[..16].to_string()])
            .collect();
        for p in tree_of(d.path()) {
            if fs::symlink_metadata(&p).unwrap().is_file() {
                let text = fs::read_to_string(&p).unwrap();
                for s in &secrets {
                    assert!(
                        !text.contains(s.as_str()),
                        "{} holds a master key",
                        p.display()
                    );
                }
            }
        }
    }

    fn stamps(root: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
        tree_of(root)
            .into_iter()
            .map(|p| {
                let m = fs::symlink_metadata(&p).unwrap();
                (p, m.ino(), m.mtime(), m.mtime_nsec())
            })
            .collect()
    }

    #[test]
    fn rerendering_an_unchanged_bus_rewrites_nothing() {
        let bus = bus();
        let d = rendered(&bus);
        let before = stamps(d.path());
        render(&bus, d.path()).unwrap();
        assert_eq!(stamps(d.path()), before);
    }

    #[test]
    fn a_change_rewrites_only_the_changed_file() {
        let mut bus = bus();
        let d = rendered(&bus);
        let before = stamps(d.path());
        bus.queue_mut(Apqn::new(0x08, 0x2f)).unwrap().keys = cca_keys_after_set();
        render(&bus, d.path()).unwrap();
        // A directory's mtime follows the renames in it; only files and links matter here.
        let changed: Vec<PathBuf> = stamps(d.path())
            .into_iter()
            .zip(before)
            .filter(|(a, b)| a != b && !fs::symlink_metadata(&a.0).unwrap().is_dir())
            .map(|(a, _)| a.0)
            .collect();
        assert_eq!(changed, [d.path().join("devices/ap/card08/08.002f/mkvps")]);
    }

    fn cca_keys_after_set() -> QueueKeys {
        let QueueKeys::Cca { mut aes, apka } = cca_keys() else {
            unreachable!()
        };
        aes.set().unwrap();
        QueueKeys::Cca { aes, apka }
    }

    #[test]
    fn removing_a_card_removes_its_directory_and_links() {
        let mut bus = bus();
        let d = rendered(&bus);
        bus.cards.remove(&0x08);
        bus.cards.get_mut(&0x0a).unwrap().queues.remove(&0x2f);
        render(&bus, d.path()).unwrap();
        for gone in [
            "devices/ap/card08",
            "bus/ap/devices/card08",
            "bus/ap/devices/08.002f",
            "bus/ap/drivers/cex4card/card08",
            "bus/ap/drivers/cex4queue/08.002f",
            "devices/ap/card0a/0a.002f",
            "bus/ap/devices/0a.002f",
        ] {
            assert!(
                fs::symlink_metadata(d.path().join(gone)).is_err(),
                "{gone} remains"
            );
        }
        assert!(d.path().join("bus/ap/devices/card0a").exists());
        let apqns: Vec<Apqn> = SysfsTree::new(d.path())
            .queues()
            .unwrap()
            .iter()
            .map(|q| q.apqn)
            .collect();
        assert_eq!(
            apqns,
            [
                Apqn::new(0x0c, 0x2f),
                Apqn::new(0x0d, 0x2f),
                Apqn::new(0x0e, 0x2f)
            ]
        );
    }

    #[test]
    fn reader_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = SysfsTree::new(d.path()).cards().unwrap_err();
        assert!(matches!(e, SysfsError::NoApBus { .. }), "{e}");
        assert!(e.to_string().contains("SYSFS_ROOT"), "{e}");

        render(&bus(), d.path()).unwrap();
        let mkvps = d.path().join("devices/ap/card08/08.002f/mkvps");
        fs::write(&mkvps, "AES NEW: bogus 0x0000000000000000\n").unwrap();
        let e = SysfsTree::new(d.path()).queues().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("08.002f/mkvps, line 1"), "{msg}");

        fs::write(d.path().join("devices/ap/card0a/online"), "yes\n").unwrap();
        let e = SysfsTree::new(d.path()).cards().unwrap_err();
        assert!(e.to_string().contains("card0a/online"), "{e}");
        assert!(e.to_string().contains("expected 0 or 1"), "{e}");
    }

    #[test]
    fn reads_old_kernels_without_config_chkstop_and_mkvps() {
        let d = rendered(&bus());
        let card = d.path().join("devices/ap/card08");
        for f in [
            "config",
            "chkstop",
            "08.002f/config",
            "08.002f/chkstop",
            "08.002f/mkvps",
        ] {
            fs::remove_file(card.join(f)).unwrap();
        }
        let q = SysfsTree::new(d.path())
            .queue(Apqn::new(0x08, 0x2f))
            .unwrap()
            .unwrap();
        assert_eq!(
            (q.status, q.config, q.chkstop, q.mkvps),
            (Status::Online, true, false, None)
        );
    }

    #[test]
    fn a_checkstopped_queue_reads_as_chkstop() {
        let mut bus = bus();
        bus.queue_mut(Apqn::new(0x08, 0x2f)).unwrap().chkstop = true;
        let d = rendered(&bus);
        assert_eq!(read(d.path(), "devices/ap/card08/08.002f/chkstop"), "1\n");
        let q = SysfsTree::new(d.path())
            .queue(Apqn::new(0x08, 0x2f))
            .unwrap()
            .unwrap();
        assert_eq!((q.status, q.online), (Status::Chkstop, false));
    }

    #[test]
    fn json_field_names_are_stable() {
        let d = rendered(&bus());
        let tree = SysfsTree::new(d.path());
        let card = serde_json::to_value(&tree.cards().unwrap()[0]).unwrap();
        assert_eq!(card["id"], "08");
        assert_eq!(card["functions"], "0x92000000");
        assert_eq!(card["status"], "online");
        let q = serde_json::to_value(tree.queue(Apqn::new(0x08, 0x2f)).unwrap()).unwrap();
        assert_eq!(q["apqn"], "08.002f");
        assert_eq!(q["mkvps"]["kind"], "cca");
        assert_eq!(q["mkvps"]["aes"]["current"]["state"], "valid");
        assert_eq!(q["mkvps"]["aes"]["current"]["mkvp"], "f1386fff8b06ac98");
        assert_eq!(q["mkvps"]["aes"]["old"]["mkvp"], serde_json::Value::Null);
    }
}
