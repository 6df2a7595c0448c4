//! The `mkvps` queue attribute: the master key registers of a CCA or EP11 domain, one register a
//! line, exactly as `cca_mkvps_show()` and `ep11_mkvps_show()` in the kernel's `zcrypt_cex4.c`
//! print them. [`Mkvps`]'s `Display` writes that text and [`parse_mkvps`] reads it back.
//!
//! CCA (3, 6 or 9 lines: AES, then APKA and ASYM on newer kernels), NEW/CUR/OLD each:
//! ```text
//! AES NEW: full 0x1a7dfdeaffeedac4
//! AES CUR: valid 0x5e4f3a2b1c0d9e8f
//! AES OLD: invalid 0x0000000000000000
//! ```
//! The kernel copies a pattern only for a full NEW or a valid CUR/OLD register and prints zeros
//! otherwise; ASYM patterns are 16 bytes. EP11 (2 lines, CUR first, 32-byte patterns):
//! ```text
//! WK CUR: valid 0x<64 hex digits>
//! WK NEW: empty -
//! ```
//! A register the kernel could not query (queue offline, adapter unreachable) reads `- -`.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::SysfsError;
use crate::mkvp::Mkvp;
use crate::registers::{RegState, RegView};

/// One register as a `mkvps` line shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reading {
    /// State and, where the state has one, the pattern.
    Known(RegView),
    /// `- -`: the kernel could not ask the adapter. Serialised as `null`.
    Unknown,
}

impl Reading {
    /// The reading of a register whose state carries no pattern.
    pub const fn without_pattern(state: RegState) -> Reading {
        Reading::Known(RegView { state, mkvp: None })
    }

    /// The pattern of the register's key when the key is complete (full, committed or valid):
    /// a key one can re-encipher to, or that keys are enciphered with.
    pub fn complete_mkvp(&self) -> Option<Mkvp> {
        match self {
            Reading::Known(RegView {
                state: RegState::Full | RegState::Committed | RegState::Valid,
                mkvp,
            }) => *mkvp,
            _ => None,
        }
    }
}

/// One master key type's registers of one queue; `old` is `None` for EP11 (no OLD register).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TypeRegisters {
    pub new: Reading,
    pub current: Reading,
    pub old: Option<Reading>,
}

/// NEW, CURRENT and OLD of one CCA master key type.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CcaTypeMkvps {
    pub new: Reading,
    pub current: Reading,
    pub old: Reading,
}

impl CcaTypeMkvps {
    /// All three registers unknown (`- -`).
    pub const UNKNOWN: CcaTypeMkvps = CcaTypeMkvps {
        new: Reading::Unknown,
        current: Reading::Unknown,
        old: Reading::Unknown,
    };
}

/// The `mkvps` of a CCA queue. Older kernels print AES only, or AES and APKA; `asym` is printed
/// only after `apka`, as the kernel does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CcaMkvps {
    pub aes: CcaTypeMkvps,
    pub apka: Option<CcaTypeMkvps>,
    pub asym: Option<CcaTypeMkvps>,
}

/// The `mkvps` of an EP11 queue: the wrapping key registers (EP11 has no OLD).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ep11Mkvps {
    pub current: Reading,
    pub new: Reading,
}

/// A parsed `mkvps` file.
// One per queue and short-lived: boxing the CCA variant would buy nothing but indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Mkvps {
    Cca(CcaMkvps),
    Ep11(Ep11Mkvps),
}

/// What one line may say: its register's states, and which of them carry a pattern.
struct Slot {
    label: &'static str,
    states: &'static [RegState],
    with_pattern: &'static [RegState],
}

const CCA_NEW: Slot = Slot {
    label: "NEW",
    states: &[RegState::Empty, RegState::Partial, RegState::Full],
    with_pattern: &[RegState::Full],
};
const CCA_CUR: Slot = Slot {
    label: "CUR",
    states: &[RegState::Invalid, RegState::Valid],
    with_pattern: &[RegState::Valid],
};
const CCA_OLD: Slot = Slot {
    label: "OLD",
    ..CCA_CUR
};
const EP11_CUR: Slot = Slot {
    label: "CUR",
    ..CCA_CUR
};
const EP11_NEW: Slot = Slot {
    label: "NEW",
    states: &[RegState::Empty, RegState::Uncommitted, RegState::Committed],
    with_pattern: &[RegState::Uncommitted, RegState::Committed],
};

/// How a line without a pattern prints its pattern field: CCA prints zeros of the pattern's
/// width, EP11 a dash.
#[derive(Copy, Clone)]
enum Style {
    Zeros,
    Dash,
}

/// One line of the layout: `<name> <slot>:`, the pattern width in bytes and the style.
struct Line {
    name: &'static str,
    slot: &'static Slot,
    width: usize,
    style: Style,
}

const fn cca(name: &'static str, slot: &'static Slot, width: usize) -> Line {
    Line {
        name,
        slot,
        width,
        style: Style::Zeros,
    }
}

/// The CCA lines in the kernel's order; a file holds the first 3, 6 or all 9.
const CCA_LAYOUT: [Line; 9] = [
    cca("AES", &CCA_NEW, 8),
    cca("AES", &CCA_CUR, 8),
    cca("AES", &CCA_OLD, 8),
    cca("APKA", &CCA_NEW, 8),
    cca("APKA", &CCA_CUR, 8),
    cca("APKA", &CCA_OLD, 8),
    cca("ASYM", &CCA_NEW, 16),
    cca("ASYM", &CCA_CUR, 16),
    cca("ASYM", &CCA_OLD, 16),
];

const EP11_LAYOUT: [Line; 2] = [
    Line {
        name: "WK",
        slot: &EP11_CUR,
        width: 32,
        style: Style::Dash,
    },
    Line {
        name: "WK",
        slot: &EP11_NEW,
        width: 32,
        style: Style::Dash,
    },
];

impl Line {
    fn head(&self) -> String {
        format!("{} {}", self.name, self.slot.label)
    }

    fn format(&self, reading: Reading, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.head();
        let view = match reading {
            Reading::Unknown => return writeln!(out, "{head}: - -"),
            Reading::Known(v) => v,
        };
        let pattern = view
            .mkvp
            .filter(|_| self.slot.with_pattern.contains(&view.state));
        let field = match (pattern, self.style) {
            (Some(p), _) => format!("0x{p}"),
            (None, Style::Zeros) => format!("0x{}", "0".repeat(2 * self.width)),
            (None, Style::Dash) => "-".to_string(),
        };
        writeln!(out, "{head}: {} {field}", view.state.word())
    }

    /// Parses what follows `<head>: `.
    fn parse(&self, rest: &str) -> Result<Reading, String> {
        let mut fields = rest.split(' ');
        let (Some(word), Some(field), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err("expected a state and a pattern separated by one space".into());
        };
        if (word, field) == ("-", "-") {
            return Ok(Reading::Unknown);
        }
        let state = self
            .slot
            .states
            .iter()
            .copied()
            .find(|s| s.word() == word)
            .ok_or_else(|| {
                let words: Vec<_> = self.slot.states.iter().map(|s| s.word()).collect();
                format!(
                    "unknown state '{word}' for {} (expected {} or '- -')",
                    self.head(),
                    words.join(", ")
                )
            })?;
        let mkvp = self.parse_pattern(field)?;
        let carries = self.slot.with_pattern.contains(&state);
        match (self.style, carries, mkvp) {
            (Style::Dash, true, None) => Err(format!("a {word} register shows its pattern")),
            (Style::Dash, false, Some(_)) => {
                Err(format!("a {word} register has no pattern: expected '-'"))
            }
            (_, carries, mkvp) => Ok(Reading::Known(RegView {
                state,
                // The kernel prints zeros for a register without a pattern; they name no key.
                mkvp: mkvp.filter(|_| carries),
            })),
        }
    }

    fn parse_pattern(&self, field: &str) -> Result<Option<Mkvp>, String> {
        if matches!(self.style, Style::Dash) && field == "-" {
            return Ok(None);
        }
        let digits = 2 * self.width;
        let hex = field
            .strip_prefix("0x")
            .filter(|h| h.len() == digits && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                format!("the pattern must be 0x and {digits} hex digits, not '{field}'")
            })?;
        let bytes = hex::decode(hex).map_err(|e| format!("bad pattern '{field}': {e}"))?;
        Ok(Mkvp::from_slice(&bytes))
    }
}

impl Mkvps {
    /// The registers of master key type `t`, if this queue has them (AES and APKA on CCA,
    /// EP11 on EP11).
    pub fn of_type(&self, t: crate::registers::MkType) -> Option<TypeRegisters> {
        use crate::registers::MkType;
        let cca = |m: CcaTypeMkvps| TypeRegisters {
            new: m.new,
            current: m.current,
            old: Some(m.old),
        };
        match (self, t) {
            (Mkvps::Cca(m), MkType::Aes) => Some(cca(m.aes)),
            (Mkvps::Cca(m), MkType::Apka) => m.apka.map(cca),
            (Mkvps::Ep11(m), MkType::Ep11) => Some(TypeRegisters {
                new: m.new,
                current: m.current,
                old: None,
            }),
            _ => None,
        }
    }

    fn layout(&self) -> &'static [Line] {
        match self {
            Mkvps::Cca(_) => &CCA_LAYOUT,
            Mkvps::Ep11(_) => &EP11_LAYOUT,
        }
    }

    /// The readings in the order the kernel prints them.
    fn readings(&self) -> Vec<Reading> {
        match self {
            Mkvps::Ep11(e) => vec![e.current, e.new],
            Mkvps::Cca(c) => {
                let later = c.apka.into_iter().chain(c.apka.and(c.asym));
                std::iter::once(c.aes)
                    .chain(later)
                    .flat_map(|t| [t.new, t.current, t.old])
                    .collect()
            }
        }
    }

    fn from_readings(ep11: bool, r: &[Reading]) -> Mkvps {
        if ep11 {
            return Mkvps::Ep11(Ep11Mkvps {
                current: r[0],
                new: r[1],
            });
        }
        let ty = |i: usize| {
            r.get(3 * i..3 * i + 3).map(|t| CcaTypeMkvps {
                new: t[0],
                current: t[1],
                old: t[2],
            })
        };
        Mkvps::Cca(CcaMkvps {
            aes: ty(0).unwrap_or(CcaTypeMkvps::UNKNOWN),
            apka: ty(1),
            asym: ty(2),
        })
    }
}

/// The kernel's text, newline-terminated lines.
impl fmt::Display for Mkvps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.layout()
            .iter()
            .zip(self.readings())
            .try_for_each(|(line, reading)| line.format(reading, f))
    }
}

/// Parses the text of a `mkvps` file. Strict: every line must be one the kernel prints, in the
/// kernel's order, or the error names the line and what is wrong with it.
pub fn parse_mkvps(text: &str) -> Result<Mkvps, SysfsError> {
    parse_mkvps_at(text, Path::new("mkvps"))
}

/// [`parse_mkvps`] for the file at `path` (named in errors).
pub(super) fn parse_mkvps_at(text: &str, path: &Path) -> Result<Mkvps, SysfsError> {
    let err = |line: usize, t: &str, why: String| SysfsError::Mkvps {
        path: path.to_path_buf(),
        line,
        text: t.to_string(),
        why,
    };
    let lines: Vec<&str> = text
        .strip_suffix('\n')
        .unwrap_or(text)
        .split('\n')
        .collect();
    let ep11 = lines[0].starts_with("WK ");
    let (layout, counts): (&[Line], &[usize]) = if ep11 {
        (&EP11_LAYOUT, &[2])
    } else {
        (&CCA_LAYOUT, &[3, 6, 9])
    };
    let mut readings = Vec::with_capacity(lines.len());
    for (i, text) in lines.iter().enumerate() {
        let expected = layout.get(i).ok_or_else(|| {
            err(
                i + 1,
                text,
                format!("a file has at most {} lines", layout.len()),
            )
        })?;
        let reading = parse_line(expected, text).map_err(|why| err(i + 1, text, why))?;
        readings.push(reading);
    }
    if !counts.contains(&readings.len()) {
        let last = lines.last().copied().unwrap_or_default();
        let why = format!(
            "the file ends here, but a {} mkvps file has {} lines",
            if ep11 { "EP11" } else { "CCA" },
            if ep11 {
                "2"
            } else {
                "3, 6 or 9 (AES, APKA, ASYM)"
            }
        );
        return Err(err(lines.len(), last, why));
    }
    Ok(Mkvps::from_readings(ep11, &readings))
}

fn parse_line(expected: &Line, text: &str) -> Result<Reading, String> {
    let head = expected.head();
    let (found, rest) = text
        .split_once(": ")
        .ok_or_else(|| format!("expected '{head}: <state> <pattern>'"))?;
    if found != head {
        return Err(format!(
            "expected the register '{head}' here, not '{found}'"
        ));
    }
    expected.parse(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn known(state: RegState, hex: &str) -> Reading {
        Reading::Known(RegView {
            state,
            mkvp: Some(hex.parse().unwrap()),
        })
    }

    const CCA9: &str = "\
AES NEW: full 0x1a7dfdeaffeedac4
AES CUR: valid 0x5e4f3a2b1c0d9e8f
AES OLD: invalid 0x0000000000000000
APKA NEW: empty 0x0000000000000000
APKA CUR: valid 0x0123456789abcdef
APKA OLD: valid 0xfedcba9876543210
ASYM NEW: empty 0x00000000000000000000000000000000
ASYM CUR: invalid 0x00000000000000000000000000000000
ASYM OLD: invalid 0x00000000000000000000000000000000
";

    #[test]
    fn parses_the_kernels_cca_text_and_prints_it_back() {
        let m = parse_mkvps(CCA9).unwrap();
        let Mkvps::Cca(c) = m else { panic!("not CCA") };
        assert_eq!(c.aes.new, known(RegState::Full, "1a7dfdeaffeedac4"));
        assert_eq!(c.aes.current, known(RegState::Valid, "5e4f3a2b1c0d9e8f"));
        assert_eq!(c.aes.old, Reading::without_pattern(RegState::Invalid));
        let apka = c.apka.unwrap();
        assert_eq!(apka.new, Reading::without_pattern(RegState::Empty));
        assert_eq!(apka.old, known(RegState::Valid, "fedcba9876543210"));
        let asym = c.asym.unwrap();
        assert_eq!(asym.current, Reading::without_pattern(RegState::Invalid));
        assert_eq!(m.to_string(), CCA9);
    }

    #[test]
    fn parses_old_kernels_with_aes_only_or_aes_and_apka() {
        let aes_only: String = CCA9.lines().take(3).map(|l| format!("{l}\n")).collect();
        let Mkvps::Cca(c) = parse_mkvps(&aes_only).unwrap() else {
            panic!()
        };
        assert_eq!((c.apka, c.asym), (None, None));
        assert_eq!(c.aes.current, known(RegState::Valid, "5e4f3a2b1c0d9e8f"));

        let aes_apka: String = CCA9.lines().take(6).map(|l| format!("{l}\n")).collect();
        let m = parse_mkvps(&aes_apka).unwrap();
        let Mkvps::Cca(c) = m else { panic!() };
        assert!(c.apka.is_some() && c.asym.is_none());
        assert_eq!(m.to_string(), aes_apka);
    }

    #[test]
    fn parses_the_kernels_ep11_text() {
        let wkvp = "a".repeat(64);
        let text = format!("WK CUR: valid 0x{wkvp}\nWK NEW: empty -\n");
        let m = parse_mkvps(&text).unwrap();
        assert_eq!(
            m,
            Mkvps::Ep11(Ep11Mkvps {
                current: known(RegState::Valid, &wkvp),
                new: Reading::without_pattern(RegState::Empty),
            })
        );
        assert_eq!(m.to_string(), text);
        let text = format!("WK CUR: invalid -\nWK NEW: committed 0x{wkvp}\n");
        let Mkvps::Ep11(e) = parse_mkvps(&text).unwrap() else {
            panic!()
        };
        assert_eq!(e.new, known(RegState::Committed, &wkvp));
        assert_eq!(e.current, Reading::without_pattern(RegState::Invalid));
    }

    #[test]
    fn parses_unknown_registers() {
        let m = parse_mkvps("WK CUR: - -\nWK NEW: - -\n").unwrap();
        assert_eq!(
            m,
            Mkvps::Ep11(Ep11Mkvps {
                current: Reading::Unknown,
                new: Reading::Unknown
            })
        );
        let cca = "AES NEW: - -\nAES CUR: - -\nAES OLD: - -\n";
        let m = parse_mkvps(cca).unwrap();
        assert_eq!(
            m,
            Mkvps::Cca(CcaMkvps {
                aes: CcaTypeMkvps::UNKNOWN,
                apka: None,
                asym: None
            })
        );
        assert_eq!(m.to_string(), cca);
    }

    #[test]
    fn zeros_of_a_register_without_pattern_name_no_key() {
        let t = "AES NEW: partial 0x0000000000000000\nAES CUR: invalid 0x0000000000000000\nAES OLD: invalid 0x0000000000000000\n";
        let Mkvps::Cca(c) = parse_mkvps(t).unwrap() else {
            panic!()
        };
        assert_eq!(c.aes.new, Reading::without_pattern(RegState::Partial));
    }

    fn error_line(text: &str) -> usize {
        match parse_mkvps(text) {
            Err(SysfsError::Mkvps { line, .. }) => line,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn malformed_files_are_errors_naming_the_line() {
        let wk = "0".repeat(64);
        let cases: &[(&str, usize)] = &[
            ("", 1),
            ("\n", 1),
            ("AES NEW: bogus 0x0000000000000000\n", 1),
            ("AES NEW: valid 0x0000000000000000\n", 1),
            ("AES NEW: empty 0x00000000000000\n", 1),
            ("AES NEW: empty 0x000000000000000g\n", 1),
            ("AES NEW: empty 0000000000000000\n", 1),
            ("AES NEW:  empty 0x0000000000000000\n", 1),
            ("AES NEW: empty 0x0000000000000000 extra\n", 1),
            ("DES NEW: empty 0x0000000000000000\n", 1),
            ("AES NEW: empty 0x0000000000000000\nAES OLD: - -\n", 2),
            ("AES NEW: - -\nAES CUR: - -\n", 2),
            (
                "AES NEW: - -\nAES CUR: - -\nAES OLD: - -\nASYM NEW: - -\n",
                4,
            ),
            (
                "AES NEW: - -\nAES CUR: - -\nAES OLD: - -\nAPKA NEW: - -\n",
                4,
            ),
            ("AES NEW: - -\nAES CUR: - -\nAES OLD: - -\n\n", 4),
            ("WK CUR: valid -\nWK NEW: empty -\n", 1),
            ("WK CUR: valid 0x00\nWK NEW: empty -\n", 1),
            ("WK CUR: invalid -\nWK NEW: full -\n", 2),
            ("WK CUR: invalid -\nWK NEW: partial -\n", 2),
            ("WK CUR: invalid -\n", 1),
            ("WK CUR: - -\nWK NEW: - -\nWK NEW: - -\n", 3),
        ];
        for (text, line) in cases {
            assert_eq!(error_line(text), *line, "{text:?}");
        }
        let dash_with_pattern = format!("WK CUR: invalid 0x{wk}\nWK NEW: empty -\n");
        assert_eq!(error_line(&dash_with_pattern), 1);
    }

    #[test]
    fn error_message_tells_what_is_wrong() {
        let e = parse_mkvps("AES NEW: bogus 0x0000000000000000\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 1"), "{msg}");
        assert!(msg.contains("unknown state 'bogus'"), "{msg}");
        assert!(msg.contains("empty, partial, full"), "{msg}");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse_mkvps(&s);
        }

        #[test]
        fn parse_never_panics_on_near_kernel_text(
            lines in proptest::collection::vec(
                "(AES|APKA|ASYM|WK|X) (NEW|CUR|OLD): (empty|full|valid|-|committed) (0x[0-9a-f]{0,66}|-)",
                0..12,
            )
        ) {
            let _ = parse_mkvps(&lines.join("\n"));
        }
    }
}
