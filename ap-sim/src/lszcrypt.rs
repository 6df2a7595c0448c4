//! lszcrypt-style listings of an AP bus read through [`SysfsTree`](crate::sysfs::SysfsTree).
//!
//! [`table`] prints what s390-tools' `lszcrypt` (and `lszcrypt -V`) prints, so admins see the
//! simulator the way they see a real system: a header, a line of dashes, then every card
//! followed by its queues. Values follow lszcrypt's rules: MODE comes from the `ap_functions`
//! bits, REQUESTS and PENDING read `-` for deconfigured devices, QDEPTH is the `depth` file's
//! value as is (`%02d`) and FUNCTIONS spells the ten function bits as letters
//! (`S M C D A X N H F R`, `-` where unset). Columns have lszcrypt's fixed widths, joined by one
//! blank, every cell padded (so `-V` lines end in DRIVER's padding, as lszcrypt's do); a longer
//! value overflows its column and shifts the rest of the line, as with lszcrypt.
//!
//! [`json`] gives the same information for scripts, with this schema (stable; new fields may be
//! added):
//! ```text
//! { "cards": [ { <CardInfo fields>, "queues": [ { <QueueInfo fields> }, ... ] }, ... ],
//!   "unattached_queues": [ { <QueueInfo fields> }, ... ] }
//! ```
//! `CardInfo`: `id` ("08"), `card_type` ("CEX8C"), `mode` ("cca" | "ep11" | "accelerator" |
//! null), `hwtype`, `depth`, `functions` ("0x92000000"), `online`, `config`, `chkstop`,
//! `status` ("online" | "offline" | "deconfig" | "chkstop"), `serialnr`, `request_count`,
//! `requestq_count`, `pendingq_count`, `driver`. `QueueInfo`: `apqn` ("08.002f") and the same
//! card fields except `id` and `serialnr`, plus `mkvps` (null, or `{"kind": "cca", "aes": {"new",
//! "current", "old"}, "apka", "asym"}` / `{"kind": "ep11", "current", "new"}`, each register
//! `{"state", "mkvp"}` or null when the kernel could not query it). `unattached_queues` holds
//! queues whose card is not in the listing (normally none).

use serde_json::Value;

use crate::adapter::{Mode, Status};
use crate::sysfs::{CardInfo, QueueInfo};

/// A column: header, lszcrypt's width and alignment.
struct Column {
    header: &'static str,
    width: usize,
    right: bool,
}

const fn col(header: &'static str, width: usize, right: bool) -> Column {
    Column {
        header,
        width,
        right,
    }
}

const DEFAULT_COLUMNS: [Column; 5] = [
    col("CARD.DOM", 8, false),
    col("TYPE", 5, false),
    col("MODE", 11, false),
    col("STATUS", 10, false),
    col("REQUESTS", 8, true),
];

const VERBOSE_COLUMNS: [Column; 5] = [
    col("PENDING", 8, true),
    col("HWTYPE", 6, true),
    col("QDEPTH", 6, true),
    col("FUNCTIONS", 10, false),
    col("DRIVER", 11, false),
];

/// lszcrypt's letters for the `ap_functions` bits, from the most significant bit.
const FUNCTION_LETTERS: [(u32, char); 10] = [
    (0x8000_0000, 'S'),
    (0x4000_0000, 'M'),
    (0x2000_0000, 'C'),
    (0x1000_0000, 'D'),
    (0x0800_0000, 'A'),
    (0x0400_0000, 'X'),
    (0x0200_0000, 'N'),
    (0x0100_0000, 'H'),
    (0x0080_0000, 'F'),
    (0x0040_0000, 'R'),
];

/// What a row shows, common to card and queue rows.
struct Row<'a> {
    name: String,
    card_type: &'a str,
    mode: Option<Mode>,
    status: Status,
    config: bool,
    requests: Option<u64>,
    pending: u64,
    hwtype: u32,
    depth: u32,
    functions: u32,
    driver: Option<&'a str>,
}

impl<'a> Row<'a> {
    fn card(c: &'a CardInfo) -> Self {
        Row {
            name: format!("{:02x}", c.id),
            card_type: &c.card_type,
            mode: c.mode,
            status: c.status,
            config: c.config,
            requests: Some(c.request_count),
            pending: c.pendingq_count + c.requestq_count,
            hwtype: c.hwtype,
            depth: c.depth,
            functions: c.functions,
            driver: c.driver.as_deref(),
        }
    }

    fn queue(q: &'a QueueInfo) -> Self {
        Row {
            name: q.apqn.to_string(),
            card_type: &q.card_type,
            mode: q.mode,
            status: q.status,
            config: q.config,
            requests: q.request_count,
            pending: q.pendingq_count + q.requestq_count,
            hwtype: q.hwtype,
            depth: q.depth,
            functions: q.functions,
            driver: q.driver.as_deref(),
        }
    }

    fn cells(&self, verbose: bool) -> Vec<String> {
        // A deconfigured device has no request counters to show.
        let counted = |n: Option<u64>| match n.filter(|_| self.config) {
            Some(n) => n.to_string(),
            None => "-".into(),
        };
        let mut cells = vec![
            self.name.clone(),
            self.card_type.to_string(),
            self.mode.map_or("Unknown", Mode::lszcrypt_name).to_string(),
            self.status.word().to_string(),
            counted(self.requests),
        ];
        if verbose {
            cells.extend([
                counted(Some(self.pending)),
                self.hwtype.to_string(),
                format!("{:02}", self.depth),
                function_letters(self.functions),
                self.driver.unwrap_or("-no-driver-").to_string(),
            ]);
        }
        cells
    }
}

fn function_letters(functions: u32) -> String {
    FUNCTION_LETTERS
        .iter()
        .map(|(bit, c)| if functions & bit != 0 { *c } else { '-' })
        .collect()
}

/// Cards in the order given, each followed by its queues; then queues without a listed card.
fn rows<'a>(cards: &'a [CardInfo], queues: &'a [QueueInfo]) -> Vec<Row<'a>> {
    let mut rows = Vec::with_capacity(cards.len() + queues.len());
    for c in cards {
        rows.push(Row::card(c));
        rows.extend(queues_of(queues, c.id).map(Row::queue));
    }
    rows.extend(unattached(cards, queues).map(Row::queue));
    rows
}

fn queues_of(queues: &[QueueInfo], card: u8) -> impl Iterator<Item = &QueueInfo> {
    queues.iter().filter(move |q| q.apqn.card() == card)
}

fn unattached<'a>(
    cards: &'a [CardInfo],
    queues: &'a [QueueInfo],
) -> impl Iterator<Item = &'a QueueInfo> {
    queues
        .iter()
        .filter(|q| !cards.iter().any(|c| c.id == q.apqn.card()))
}

/// The lszcrypt listing (`verbose`: `lszcrypt -V`), one line per card and queue.
pub fn table(cards: &[CardInfo], queues: &[QueueInfo], verbose: bool) -> String {
    let columns: Vec<&Column> = DEFAULT_COLUMNS
        .iter()
        .chain(VERBOSE_COLUMNS.iter().filter(|_| verbose))
        .collect();
    let body: Vec<Vec<String>> = rows(cards, queues)
        .iter()
        .map(|r| r.cells(verbose))
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_string()).collect();
    let mut out = line(&columns, &headers);
    let width: usize = columns.iter().map(|c| c.width).sum();
    out.push_str(&"-".repeat(width + columns.len() - 1));
    out.push('\n');
    for cells in &body {
        out.push_str(&line(&columns, cells));
    }
    out
}

fn line(columns: &[&Column], cells: &[String]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .zip(cells)
        .map(|(c, v)| {
            let w = c.width;
            if c.right {
                format!("{v:>w$}")
            } else {
                format!("{v:<w$}")
            }
        })
        .collect();
    format!("{}\n", fields.join(" "))
}

/// The listing as JSON, in the schema the module documentation describes.
pub fn json(cards: &[CardInfo], queues: &[QueueInfo]) -> Value {
    let listed: Vec<Value> = cards
        .iter()
        .map(|c| {
            let mut v = to_value(c);
            v["queues"] = queues_of(queues, c.id).map(to_value).collect();
            v
        })
        .collect();
    let unattached: Vec<Value> = unattached(cards, queues).map(to_value).collect();
    serde_json::json!({ "cards": listed, "unattached_queues": unattached })
}

fn to_value(v: impl serde::Serialize) -> Value {
    // Plain structs of strings, numbers and options: serialising them cannot fail.
    serde_json::to_value(v).expect("sysfs listings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apqn::Apqn;

    fn card(id: u8, ty: &str, mode: Mode, functions: u32, status: Status) -> CardInfo {
        CardInfo {
            id,
            card_type: ty.into(),
            mode: Some(mode),
            hwtype: 14,
            depth: 7,
            functions,
            online: status == Status::Online,
            config: status != Status::Deconfig,
            chkstop: status == Status::Chkstop,
            status,
            serialnr: None,
            request_count: 5,
            requestq_count: 1,
            pendingq_count: 2,
            driver: Some("cex4card".into()),
        }
    }

    fn queue(c: &CardInfo, domain: u16, status: Status, requests: Option<u64>) -> QueueInfo {
        QueueInfo {
            apqn: Apqn::new(c.id, domain),
            card_type: c.card_type.clone(),
            mode: c.mode,
            hwtype: c.hwtype,
            depth: c.depth,
            functions: c.functions,
            online: status == Status::Online,
            config: status != Status::Deconfig,
            chkstop: status == Status::Chkstop,
            status,
            mkvps: None,
            request_count: requests,
            requestq_count: 0,
            pendingq_count: 3,
            driver: Some("cex4queue".into()),
        }
    }

    fn sample() -> (Vec<CardInfo>, Vec<QueueInfo>) {
        let c08 = card(0x08, "CEX8C", Mode::Cca, 0x9200_0000, Status::Online);
        let c0a = card(0x0a, "CEX8P", Mode::Ep11, 0x8600_0000, Status::Deconfig);
        let queues = vec![
            queue(&c08, 0x2f, Status::Online, Some(3)),
            queue(&c08, 0x30, Status::Chkstop, None),
            queue(&c0a, 0x2f, Status::Deconfig, Some(0)),
        ];
        (vec![c08, c0a], queues)
    }

    /// Lines as s390-tools' lszcrypt prints them (util_rec "wide" format: fixed widths, one
    /// blank between columns, every cell padded).
    #[test]
    fn table_matches_lszcrypt_layout() {
        let (cards, queues) = sample();
        let expected = "\
CARD.DOM TYPE  MODE        STATUS     REQUESTS
----------------------------------------------
08       CEX8C CCA-Coproc  online            5
08.002f  CEX8C CCA-Coproc  online            3
08.0030  CEX8C CCA-Coproc  chkstop           -
0a       CEX8P EP11-Coproc deconfig          -
0a.002f  CEX8P EP11-Coproc deconfig          -
";
        assert_eq!(table(&cards, &queues, false), expected);
    }

    #[test]
    fn verbose_table_adds_lszcrypt_v_columns() {
        let (cards, queues) = sample();
        let expected = [
            "CARD.DOM TYPE  MODE        STATUS     REQUESTS  PENDING HWTYPE QDEPTH FUNCTIONS  DRIVER     ",
            "--------------------------------------------------------------------------------------------",
            "08       CEX8C CCA-Coproc  online            5        3     14     07 S--D--N--- cex4card   ",
            "08.002f  CEX8C CCA-Coproc  online            3        3     14     07 S--D--N--- cex4queue  ",
            "08.0030  CEX8C CCA-Coproc  chkstop           -        3     14     07 S--D--N--- cex4queue  ",
            "0a       CEX8P EP11-Coproc deconfig          -        -     14     07 S----XN--- cex4card   ",
            "0a.002f  CEX8P EP11-Coproc deconfig          -        -     14     07 S----XN--- cex4queue  ",
        ];
        let text = table(&cards, &queues, true);
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn long_values_overflow_their_column_as_in_lszcrypt() {
        let (mut cards, _) = sample();
        cards.truncate(1);
        cards[0].mode = None;
        cards[0].request_count = 1_234_567_890;
        cards[0].driver = None;
        cards[0].functions = 0xFFC0_0000;
        let line = table(&cards, &[], true).lines().nth(2).unwrap().to_string();
        assert_eq!(
            line,
            "08       CEX8C Unknown     online     1234567890        3     14     07 SMCDAXNHFR -no-driver-"
        );
    }

    #[test]
    fn queues_without_a_listed_card_are_still_shown() {
        let (cards, queues) = sample();
        let text = table(&cards[1..], &queues, false);
        let names: Vec<&str> = text.lines().skip(2).map(|l| &l[..7]).collect();
        assert_eq!(names, ["0a     ", "0a.002f", "08.002f", "08.0030"]);
        let j = json(&cards[1..], &queues);
        assert_eq!(j["unattached_queues"][0]["apqn"], "08.002f");
    }

    #[test]
    fn json_nests_queues_under_their_card() {
        let (cards, queues) = sample();
        let j = json(&cards, &queues);
        assert_eq!(j["cards"].as_array().unwrap().len(), 2);
        let c = &j["cards"][0];
        assert_eq!(c["id"], "08");
        assert_eq!(c["card_type"], "CEX8C");
        assert_eq!(c["mode"], "cca");
        assert_eq!(c["status"], "online");
        assert_eq!(c["functions"], "0x92000000");
        let q: Vec<&str> = c["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["apqn"].as_str().unwrap())
            .collect();
        assert_eq!(q, ["08.002f", "08.0030"]);
        assert_eq!(c["queues"][1]["status"], "chkstop");
        assert_eq!(c["queues"][1]["request_count"], Value::Null);
        assert_eq!(j["cards"][1]["queues"][0]["status"], "deconfig");
        assert_eq!(j["unattached_queues"], serde_json::json!([]));
    }

    #[test]
    fn lists_a_rendered_simulator() {
        let d = tempfile::tempdir().unwrap();
        let bus = crate::sim::Simulator::init(d.path(), &Default::default(), false)
            .and_then(|s| s.bus())
            .unwrap();
        let tree = crate::sysfs::SysfsTree::new(d.path().join("sys"));
        assert_eq!(tree.cards().unwrap().len(), bus.cards.len());
        let text = table(&tree.cards().unwrap(), &tree.queues().unwrap(), false);
        let expected = "\
CARD.DOM TYPE  MODE        STATUS     REQUESTS
----------------------------------------------
08       CEX8C CCA-Coproc  online            0
08.002f  CEX8C CCA-Coproc  online            0
09       CEX8C CCA-Coproc  online            0
09.002f  CEX8C CCA-Coproc  online            0
0a       CEX8P EP11-Coproc online            0
0a.002f  CEX8P EP11-Coproc online            0
0b       CEX8P EP11-Coproc online            0
0b.002f  CEX8P EP11-Coproc online            0
0c       CEX8A Accelerator online            0
0c.002f  CEX8A Accelerator online            0
";
        assert_eq!(text, expected);
    }
}
