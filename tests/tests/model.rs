//! A model-based test of rotation safety, the suite's central promise: *a rotation never loses
//! a key without the suite having said so first*.
//!
//! From a seed, reproducible random sequences of what a security officer (load NEW, random or
//! in key parts that may leave NEW partial, on a whole domain group or one APQN; EP11 commit;
//! SET on all or some APQNs; clear NEW; cards and APQNs offline and back online) and an
//! operator (generate and import keys, some with a LUKS2 volume whose passphrase zkey holds or
//! only the operator types; `zkey reencipher` in every direction and with filters;
//! `zkey-cryptsetup reencipher`; `zkey mkchange start/finalize/cancel`; `zkey validate --all`)
//! do are run against the real binaries. Realistic rotations (load NEW, stage, SET, complete)
//! are frequent, mistakes (a SET without staging, a NEW key split across a group, an APQN
//! offline while staging, a volume forgotten, a SET on part of a group) occasional.
//!
//! After every step the state is observed twice, through zkey (`zkey validate --json`: keys and
//! the readiness verdicts) and independently of it (the master key patterns in the key files
//! and LUKS2 headers against the registers of `ap-sim tke status --json`), and these hold:
//!
//! * **(a)** an object (repository key or LUKS2 volume) that could still be used or recovered
//!   before a SET (a token of it under a usable NEW, CURRENT or OLD master key) and cannot after
//!   it was reported `at-risk`, `lost` or `unknown` by the readiness model just before the SET,
//!   never `safe` or `staged` (and the same for the other TKE actions: clear, load, commit);
//! * **(b)** after a SET that readiness called safe (`safe_to_set`) and that covered every APQN
//!   of the pending change, the complete steps (`zkey mkchange finalize` if an operation is
//!   open, `zkey reencipher --complete`, `zkey-cryptsetup reencipher --complete` per staged
//!   volume) leave every key and volume valid, the changed ones under CURRENT with nothing
//!   pending, each verification pattern the one it had when it was made, and the data written
//!   through the FUSE data path when the volume was made readable (root and /dev/fuse only);
//! * **(c)** no command reports success for what it did not do: `zkey reencipher --to-new
//!   --staged` (and without a direction) stages every selected key that has a complete NEW key
//!   on all its APQNs, `--from-old` and `--complete` leave the keys they were due for under
//!   CURRENT, `zkey-cryptsetup reencipher --staged` leaves a pending re-encipher under NEW (or,
//!   from OLD, CURRENT), `--complete` none, `zkey mkchange start` means safe to SET for its
//!   scope and every key and volume of the change staged, `finalize` every key completed,
//!   `cancel` no staged copy left, `zkey validate --all` exits 3 exactly when readiness says
//!   at risk;
//! * and after every step: no operator command (zkey, zkey-cryptsetup) makes a recoverable key
//!   or volume unrecoverable; a `safe` or `staged` verdict is never given to an object the
//!   registers say is gone; `zkey validate` calls a key valid exactly when an online APQN it is
//!   bound to holds its master key as CURRENT (or, CCA, OLD); verification patterns never
//!   change; a refused TKE command changes no register.
//!
//! A failing sequence is shrunk (chunks, then single actions, each candidate re-run from
//! scratch, for at most `ZKEY_MODEL_SHRINK_SECONDS`) and the test panics with the seed, the
//! invariant, the detail and the minimal sequence as shell commands to paste.
//!
//! | environment | default | meaning |
//! |---|---|---|
//! | `ZKEY_MODEL_SEED` | `0x5eed2026` | the first sequence's seed (decimal or `0x` hex); sequence *i* has seed + *i* |
//! | `ZKEY_MODEL_CASES` | 12 | how many sequences |
//! | `ZKEY_MODEL_STEPS` | 25 | actions per sequence |
//! | `ZKEY_MODEL_SECONDS` | 150 | no new sequence is started after this many seconds |
//! | `ZKEY_MODEL_SHRINK_SECONDS` | 180 | the time the shrinker may take |
//! | `ZKEY_MODEL_KMS` | off | `1`: bind the repository to a PyKMIP server and add the KMS actions (`zkey kms reencipher`, `zkey kms refresh`) |
//!
//! A failure prints `ZKEY_MODEL_SEED=<seed> ZKEY_MODEL_CASES=1` to re-run just that sequence.
//! Run with `--nocapture` for one line per sequence (seed, steps, SETs done, how many SETs were
//! judged by (b)).
//!
//! The model found five bugs of the readiness model (their notes are at the `KNOWN_BUG_*`
//! constants below, all `false` now: they are fixed); `fixed_bugs_stay_fixed` runs each one's
//! minimal sequence with nothing excused and fails if one comes back. A bug found later can be
//! excused narrowly by setting a constant of its own to `true` until it is fixed. The
//! test `a_forged_safe_verdict_before_an_unstaged_set_is_caught` shows the invariants failing,
//! the shrinker and the script on a readiness model that calls everything safe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use tests::prng::SplitMix64;
use tests::registers::{file_mkvp, mkvp_matches, Registers, Slot};
use tests::{shrink, KmipServer, World};

// ------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------

const DEFAULT_SEED: u64 = 0x5eed_2026;

#[derive(Clone, Debug)]
struct Config {
    seed: u64,
    cases: u64,
    steps: usize,
    seconds: u64,
    shrink_seconds: u64,
    kms: bool,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        }
        _ => default,
    }
}

impl Config {
    fn from_env() -> Config {
        Config {
            seed: env_u64("ZKEY_MODEL_SEED", DEFAULT_SEED),
            cases: env_u64("ZKEY_MODEL_CASES", 12),
            steps: env_u64("ZKEY_MODEL_STEPS", 25) as usize,
            seconds: env_u64("ZKEY_MODEL_SECONDS", 150),
            shrink_seconds: env_u64("ZKEY_MODEL_SHRINK_SECONDS", 180),
            kms: std::env::var("ZKEY_MODEL_KMS").is_ok_and(|v| v == "1"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The machine (the default `ap-sim init`: CCA cards 08, 09, EP11 cards 0a, 0b, domain 002f)
// ------------------------------------------------------------------------------------------

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Group {
    Cca,
    Ep11,
}

impl Group {
    fn apqns(self) -> [&'static str; 2] {
        match self {
            Group::Cca => ["08.002f", "09.002f"],
            Group::Ep11 => ["0a.002f", "0b.002f"],
        }
    }
    fn cards(self) -> [&'static str; 2] {
        match self {
            Group::Cca => ["08", "09"],
            Group::Ep11 => ["0a", "0b"],
        }
    }
}

/// APQNs a command is given: a whole domain group or one APQN of it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Apqns {
    Group(Group),
    One(Group, usize),
}

impl Apqns {
    fn list(self) -> Vec<String> {
        match self {
            Apqns::Group(g) => g.apqns().iter().map(|s| s.to_string()).collect(),
            Apqns::One(g, i) => vec![g.apqns()[i].to_string()],
        }
    }
    fn arg(self) -> String {
        self.list().join(",")
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum MkType {
    Aes,
    Apka,
    Ep11,
}

impl MkType {
    fn name(self) -> &'static str {
        match self {
            MkType::Aes => "aes",
            MkType::Apka => "apka",
            MkType::Ep11 => "ep11",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum KeyType {
    AesData,
    AesCipher,
    Ep11Aes,
}

impl KeyType {
    fn name(self) -> &'static str {
        match self {
            KeyType::AesData => "CCA-AESDATA",
            KeyType::AesCipher => "CCA-AESCIPHER",
            KeyType::Ep11Aes => "EP11-AES",
        }
    }
    fn group(self) -> Group {
        match self {
            KeyType::Ep11Aes => Group::Ep11,
            _ => Group::Cca,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Target {
    Card(Group, usize),
    Apqn(Group, usize),
}

impl Target {
    fn arg(self) -> String {
        match self {
            Target::Card(g, i) => g.cards()[i].to_string(),
            Target::Apqn(g, i) => g.apqns()[i].to_string(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Actions
// ------------------------------------------------------------------------------------------

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Load {
    /// `--random`
    Random,
    /// `parts` key parts (FIRST, MIDDLE..., FINAL); without `complete` the FINAL part is never
    /// entered and NEW stays partial.
    Parts {
        parts: u8,
        complete: bool,
        value: u8,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum VolumeKind {
    None,
    /// `--gen-dummy-passphrase`: zkey holds the passphrase.
    Dummy,
    /// The operator types the passphrase.
    Typed,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Filter {
    All,
    Name(usize),
    Apqns(Apqns),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Renc {
    /// `--to-new --staged`
    ToNewStaged,
    /// `--complete`
    Complete,
    /// `--from-old --in-place`
    FromOld,
    /// No direction: zkey chooses per key.
    Auto,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum VolRenc {
    Staged,
    Complete,
    FromOldInPlace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    // The security officer.
    LoadNew {
        apqns: Apqns,
        mktype: MkType,
        load: Load,
    },
    Commit {
        apqns: Apqns,
    },
    /// The SET; with `complete`, the operator then runs the complete steps at once.
    Set {
        apqns: Apqns,
        mktype: MkType,
        complete: bool,
    },
    ClearNew {
        apqns: Apqns,
        mktype: MkType,
    },
    Offline(Target),
    Online(Target),
    // The operator.
    Generate {
        key: usize,
        key_type: KeyType,
        xts: bool,
        apqns: Apqns,
        volume: VolumeKind,
        /// Seed of the 64 KiB written through the volume's data path.
        data: u64,
        /// With the KMS enabled: a KMS-bound key (no `--local`).
        kms_bound: bool,
    },
    GenerateFile {
        file: usize,
        key_type: KeyType,
        xts: bool,
    },
    Import {
        file: usize,
        key: usize,
        apqns: Apqns,
    },
    Reencipher {
        filter: Filter,
        how: Renc,
    },
    VolumeReencipher {
        key: usize,
        how: VolRenc,
    },
    MkchangeStart {
        group: Group,
        types: &'static str,
    },
    MkchangeFinalize,
    MkchangeCancel,
    ValidateAll,
    /// Only with `ZKEY_MODEL_KMS=1` (the KMS actions are being fixed elsewhere).
    KmsReencipher {
        how: Renc,
    },
    KmsRefresh,
}

impl Action {
    fn is_tke(&self) -> bool {
        matches!(
            self,
            Action::LoadNew { .. }
                | Action::Commit { .. }
                | Action::Set { .. }
                | Action::ClearNew { .. }
                | Action::Offline(_)
                | Action::Online(_)
        )
    }
}

// ------------------------------------------------------------------------------------------
// The generator
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct GenKey {
    idx: usize,
    group: Group,
    volume: VolumeKind,
}

struct Gen {
    r: SplitMix64,
    kms: bool,
    keys: Vec<GenKey>,
    next_key: usize,
    files: Vec<usize>,
    next_file: usize,
    out: Vec<Action>,
    /// `Online` actions due once `out` is this long.
    due: Vec<(usize, Target)>,
}

/// What a rotation gets wrong, if anything.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Mistake {
    None,
    SkipStaging,
    OfflineWhileStaging,
    ForgetVolume,
    SplitNew,
    PartialSet,
    Abort,
}

/// The sequence of seed `seed`: `steps` actions.
fn generate(seed: u64, steps: usize, kms: bool) -> Vec<Action> {
    let mut g = Gen {
        r: SplitMix64::new(seed),
        kms,
        keys: Vec::new(),
        next_key: 0,
        files: Vec::new(),
        next_file: 0,
        out: Vec::new(),
        due: Vec::new(),
    };
    for _ in 0..g.r.range(2, 4) {
        g.key();
    }
    while g.out.len() < steps {
        g.flush_due();
        if g.r.chance(45) {
            g.rotation();
        } else {
            g.single();
        }
    }
    g.out.truncate(steps);
    g.out
}

impl Gen {
    fn push(&mut self, a: Action) {
        self.out.push(a);
        self.flush_due();
    }

    fn flush_due(&mut self) {
        while let Some(i) = self.due.iter().position(|(at, _)| *at <= self.out.len()) {
            let (_, t) = self.due.remove(i);
            self.out.push(Action::Online(t));
        }
    }

    fn group(&mut self) -> Group {
        if self.r.chance(55) {
            Group::Cca
        } else {
            Group::Ep11
        }
    }

    fn mktype_of(&mut self, g: Group) -> MkType {
        match g {
            Group::Ep11 => MkType::Ep11,
            Group::Cca if self.r.chance(8) => MkType::Apka,
            Group::Cca => MkType::Aes,
        }
    }

    fn apqns(&mut self, g: Group, one_percent: u64) -> Apqns {
        if self.r.chance(one_percent) {
            Apqns::One(g, self.r.below(2) as usize)
        } else {
            Apqns::Group(g)
        }
    }

    fn key(&mut self) {
        let key_type = *self.r.pick(&[
            KeyType::AesData,
            KeyType::AesData,
            KeyType::AesCipher,
            KeyType::Ep11Aes,
            KeyType::Ep11Aes,
        ]);
        let kms_bound = self.kms && key_type != KeyType::Ep11Aes && self.r.chance(40);
        let volume = if kms_bound {
            VolumeKind::None
        } else {
            [VolumeKind::None, VolumeKind::Dummy, VolumeKind::Typed][self.r.weighted(&[45, 30, 25])]
        };
        let xts = volume != VolumeKind::None || self.r.chance(40);
        let g = key_type.group();
        let apqns = self.apqns(g, 20);
        let idx = self.next_key;
        self.next_key += 1;
        let data = self.r.next_u64();
        self.keys.push(GenKey {
            idx,
            group: g,
            volume,
        });
        self.push(Action::Generate {
            key: idx,
            key_type,
            xts,
            apqns,
            volume,
            data,
            kms_bound,
        });
    }

    fn import(&mut self) {
        let key_type = *self
            .r
            .pick(&[KeyType::AesData, KeyType::AesCipher, KeyType::Ep11Aes]);
        let file = self.next_file;
        self.next_file += 1;
        self.files.push(file);
        let xts = self.r.chance(50);
        self.push(Action::GenerateFile {
            file,
            key_type,
            xts,
        });
        // Sometimes a rotation happens between making the file and importing it.
        if self.r.chance(30) {
            self.single();
        }
        let idx = self.next_key;
        self.next_key += 1;
        let g = key_type.group();
        let apqns = self.apqns(g, 20);
        self.keys.push(GenKey {
            idx,
            group: g,
            volume: VolumeKind::None,
        });
        self.push(Action::Import {
            file,
            key: idx,
            apqns,
        });
    }

    fn volumes_of(&self, g: Group) -> Vec<GenKey> {
        self.keys
            .iter()
            .filter(|k| k.group == g && k.volume != VolumeKind::None)
            .cloned()
            .collect()
    }

    fn offline_target(&mut self, g: Group) -> Target {
        let i = self.r.below(2) as usize;
        if self.r.chance(50) {
            Target::Card(g, i)
        } else {
            Target::Apqn(g, i)
        }
    }

    /// A master key change, as the procedure says, with at most one mistake.
    fn rotation(&mut self) {
        let g = self.group();
        let t = self.mktype_of(g);
        let mistake = [
            Mistake::None,
            Mistake::SkipStaging,
            Mistake::OfflineWhileStaging,
            Mistake::ForgetVolume,
            Mistake::SplitNew,
            Mistake::PartialSet,
            Mistake::Abort,
        ][self.r.weighted(&[70, 6, 6, 6, 5, 4, 3])];
        // 1. The security officer loads NEW.
        let (load_on, load) = if mistake == Mistake::SplitNew {
            if self.r.chance(50) {
                (Apqns::One(g, self.r.below(2) as usize), Load::Random)
            } else {
                (
                    Apqns::Group(g),
                    Load::Parts {
                        parts: 2 + self.r.below(2) as u8,
                        complete: false,
                        value: self.r.below(256) as u8,
                    },
                )
            }
        } else if self.r.chance(20) {
            (
                Apqns::Group(g),
                Load::Parts {
                    parts: 2 + self.r.below(2) as u8,
                    complete: true,
                    value: self.r.below(256) as u8,
                },
            )
        } else {
            (Apqns::Group(g), Load::Random)
        };
        self.push(Action::LoadNew {
            apqns: load_on,
            mktype: t,
            load,
        });
        if t == MkType::Ep11 && self.r.chance(92) {
            self.push(Action::Commit { apqns: load_on });
        }
        if t == MkType::Apka {
            // No repository key uses APKA: the SET is all there is to it (without the KMS).
            let complete = self.r.chance(80);
            self.push(Action::Set {
                apqns: Apqns::Group(g),
                mktype: t,
                complete,
            });
            return;
        }
        // 2. The operator stages.
        let offline = (mistake == Mistake::OfflineWhileStaging).then(|| self.offline_target(g));
        if let Some(o) = offline {
            self.push(Action::Offline(o));
        }
        let mut via_mkchange = false;
        if mistake != Mistake::SkipStaging {
            let vols = self.volumes_of(g);
            let forget = (mistake == Mistake::ForgetVolume && !vols.is_empty())
                .then(|| self.r.below(vols.len() as u64) as usize);
            if self.r.chance(30) {
                via_mkchange = true;
                let types = if t == MkType::Aes && self.r.chance(20) {
                    "aes,apka"
                } else {
                    t.name()
                };
                self.push(Action::MkchangeStart { group: g, types });
                // zkey stages the volumes whose passphrase it holds; the others are the
                // operator's.
                for (i, v) in vols.iter().enumerate() {
                    if v.volume == VolumeKind::Typed && Some(i) != forget {
                        self.push(Action::VolumeReencipher {
                            key: v.idx,
                            how: VolRenc::Staged,
                        });
                    }
                }
            } else {
                match self.r.weighted(&[40, 40, 20]) {
                    0 => self.push(Action::Reencipher {
                        filter: Filter::All,
                        how: Renc::ToNewStaged,
                    }),
                    1 => self.push(Action::Reencipher {
                        filter: Filter::Apqns(Apqns::Group(g)),
                        how: Renc::ToNewStaged,
                    }),
                    _ => {
                        let ks: Vec<usize> = self
                            .keys
                            .iter()
                            .filter(|k| k.group == g)
                            .map(|k| k.idx)
                            .collect();
                        for k in ks {
                            self.push(Action::Reencipher {
                                filter: Filter::Name(k),
                                how: Renc::ToNewStaged,
                            });
                        }
                    }
                }
                for (i, v) in vols.iter().enumerate() {
                    if Some(i) != forget {
                        self.push(Action::VolumeReencipher {
                            key: v.idx,
                            how: VolRenc::Staged,
                        });
                    }
                }
            }
            if self.kms && g == Group::Cca {
                self.push(Action::KmsReencipher {
                    how: Renc::ToNewStaged,
                });
            }
        }
        if let Some(o) = offline {
            self.push(Action::Online(o));
        }
        if self.r.chance(50) {
            self.push(Action::ValidateAll);
        }
        if mistake == Mistake::Abort {
            self.push(Action::ClearNew {
                apqns: Apqns::Group(g),
                mktype: t,
            });
            if via_mkchange {
                self.push(Action::MkchangeCancel);
            }
            return;
        }
        // 3. The SET, and the complete steps (usually at once).
        let complete = self.r.chance(85);
        if mistake == Mistake::PartialSet {
            let i = self.r.below(2) as usize;
            self.push(Action::Set {
                apqns: Apqns::One(g, i),
                mktype: t,
                complete,
            });
            if self.r.chance(50) {
                self.push(Action::Set {
                    apqns: Apqns::One(g, 1 - i),
                    mktype: t,
                    complete: true,
                });
            }
        } else {
            self.push(Action::Set {
                apqns: Apqns::Group(g),
                mktype: t,
                complete,
            });
        }
    }

    /// One action on its own.
    fn single(&mut self) {
        let n_keys = self.keys.len() as u64;
        let weights = [
            if n_keys < 7 { 8 } else { 0 }, // generate
            3,                              // generate a file and import it
            8,                              // zkey reencipher
            5,                              // zkey-cryptsetup reencipher
            5,                              // load NEW
            2,                              // commit
            3,                              // SET
            3,                              // clear NEW
            3,                              // offline
            3,                              // mkchange
            5,                              // validate --all
            if self.kms { 2 } else { 0 },   // KMS
        ];
        match self.r.weighted(&weights) {
            0 => self.key(),
            1 => self.import(),
            2 => {
                let how = [Renc::ToNewStaged, Renc::Complete, Renc::FromOld, Renc::Auto]
                    [self.r.weighted(&[35, 30, 20, 15])];
                let filter = match self.r.weighted(&[40, 30, 20, 10]) {
                    1 if n_keys > 0 => Filter::Name(self.keys[self.r.below(n_keys) as usize].idx),
                    2 => {
                        let g = self.group();
                        Filter::Apqns(Apqns::Group(g))
                    }
                    3 => {
                        let g = self.group();
                        Filter::Apqns(Apqns::One(g, self.r.below(2) as usize))
                    }
                    _ => Filter::All,
                };
                self.push(Action::Reencipher { filter, how });
            }
            3 => {
                let vols: Vec<usize> = self
                    .keys
                    .iter()
                    .filter(|k| k.volume != VolumeKind::None)
                    .map(|k| k.idx)
                    .collect();
                if vols.is_empty() {
                    return self.push(Action::ValidateAll);
                }
                let key = *self.r.pick(&vols);
                let how = [VolRenc::Staged, VolRenc::Complete, VolRenc::FromOldInPlace]
                    [self.r.weighted(&[45, 40, 15])];
                self.push(Action::VolumeReencipher { key, how });
            }
            4 => {
                let g = self.group();
                let mktype = self.mktype_of(g);
                let apqns = self.apqns(g, 30);
                let load = match self.r.weighted(&[60, 20, 20]) {
                    0 => Load::Random,
                    i => Load::Parts {
                        parts: 2 + self.r.below(2) as u8,
                        complete: i == 1,
                        value: self.r.below(256) as u8,
                    },
                };
                self.push(Action::LoadNew {
                    apqns,
                    mktype,
                    load,
                });
            }
            5 => {
                let apqns = self.apqns(Group::Ep11, 30);
                self.push(Action::Commit { apqns });
            }
            6 => {
                let g = self.group();
                let mktype = self.mktype_of(g);
                let apqns = self.apqns(g, 25);
                let complete = self.r.chance(50);
                self.push(Action::Set {
                    apqns,
                    mktype,
                    complete,
                });
            }
            7 => {
                let g = self.group();
                let mktype = self.mktype_of(g);
                let apqns = self.apqns(g, 30);
                self.push(Action::ClearNew { apqns, mktype });
            }
            8 => {
                let g = self.group();
                let t = self.offline_target(g);
                self.push(Action::Offline(t));
                if self.r.chance(85) {
                    let at = self.out.len() + self.r.range(1, 4) as usize;
                    self.due.push((at, t));
                }
            }
            9 => match self.r.weighted(&[40, 35, 25]) {
                0 => {
                    let group = self.group();
                    let types = match group {
                        Group::Cca => "aes",
                        Group::Ep11 => "ep11",
                    };
                    self.push(Action::MkchangeStart { group, types });
                }
                1 => self.push(Action::MkchangeFinalize),
                _ => self.push(Action::MkchangeCancel),
            },
            10 => self.push(Action::ValidateAll),
            _ => {
                if self.r.chance(40) {
                    self.push(Action::KmsRefresh);
                } else {
                    let how = if self.r.chance(50) {
                        Renc::ToNewStaged
                    } else {
                        Renc::Complete
                    };
                    self.push(Action::KmsReencipher { how });
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Observations
// ------------------------------------------------------------------------------------------

/// What a LUKS2 header says (`zkey-cryptsetup validate IMG --json`).
#[derive(Clone, Debug, Default)]
struct Header {
    formatted: bool,
    valid: bool,
    live_mkvp: Option<String>,
    live_vp: Option<String>,
    pending_mkvp: Option<String>,
    pending_vp: Option<String>,
    raw: String,
}

#[derive(Clone, Debug)]
struct KeyObs {
    mktype: String,
    apqns: Vec<String>,
    /// Pattern of the master key in `<name>.skey` and `<name>.renc`, read from the files.
    live: Option<String>,
    staged: Option<String>,
    valid: bool,
    register: Option<String>,
    vp: Option<String>,
    vp_mismatch: bool,
    staged_register: Option<String>,
}

#[derive(Clone, Debug)]
struct VolObs {
    key: String,
    mktype: String,
    header: Header,
}

#[derive(Clone, Debug)]
struct Obs {
    regs: Registers,
    keys: BTreeMap<String, KeyObs>,
    /// By `device:dm-name`, the volume's name in the readiness model.
    vols: BTreeMap<String, VolObs>,
    /// (kind, name) -> verdict.
    verdicts: BTreeMap<(String, String), String>,
    safe_to_set: bool,
    at_risk: bool,
    pending: Vec<(String, Vec<String>)>,
}

/// Known bug (found among the first 60 sequences of the default seed; its minimal sequence is
/// the first case of `fixed_bugs_stay_fixed`): a LUKS2 volume whose repository key is no longer usable (e.g. only the header was re-enciphered at
/// the previous EP11 change) is judged `safe` by the readiness model although a NEW master key
/// is loaded and its header is not staged, because `volume_verdict` asks whether NEW is loaded
/// *for the repository key's token* (`keyops::new_loaded`), which fails for a dead token; the
/// next SET then destroys the volume key. While this is `true`, invariant (a) does not flag a
/// volume lost with a `safe` verdict when its repository key was already unusable; every other
/// check still runs. Set it to `false` to see the bug.
const KNOWN_BUG_VOLUME_VERDICT_FOLLOWS_REPOSITORY_KEY: bool = false;

/// Known bug (seed 0x5eed2058): a LUKS2 header with a pending re-encipher is judged `staged` whenever some NEW master key is loaded, without
/// checking that the pending key is under *that* NEW key. After `zkey-cryptsetup reencipher
/// --staged`, `ap-sim tke clear-new` and a different NEW key loaded (and committed), readiness,
/// `zkey validate --all` (exit 0) and `zkey mkchange start` (exit 0, "SAFE TO SET") all call
/// the volume staged, and the EP11 SET destroys it (CCA: the SET after next). While this is
/// `true`, invariant (a) and the volume check of `mkchange start` skip volumes whose pending
/// re-encipher is under a master key that no register holds as NEW, and so do (b) and the
/// "a staged verdict means a register holds the key" check (seed 0x7004 with the KMS on: the
/// volume, already destroyed, is called staged again once the next NEW key is loaded).
///
/// The same root shows a second way (seed 0x5eed2063): a volume forgotten at one CCA change
/// (its key under OLD) and staged at the next one with `zkey-cryptsetup reencipher --staged`,
/// which stages OLD -> CURRENT (as the reference does), not to NEW; readiness calls it staged
/// and `validate --all` exits 0; after the SET the pending key is under OLD, `zkey-cryptsetup
/// reencipher --complete` refuses without a terminal ("answer with -q"), and the volume is one
/// SET away from being destroyed although the suite called the SET safe.
const KNOWN_BUG_STALE_VOLUME_STAGE_IS_STAGED: bool = false;

/// Known bug (found by the "lost means gone" check as soon as it was added; minimal sequence in
/// `fixed_bugs_stay_fixed`: a key bound to 08.002f, card 08 offline): a key whose bound
/// APQNs are all offline is reported `lost` ("its master key is gone, restore it from a KMS or a backup") although the offline APQN still holds its master
/// key as CURRENT: `keyops::risk` turns every failed verify into `Risk::Lost`. Not a loss, a
/// false alarm with a harmful advice; the README's `unknown` ("the suite cannot tell") fits.
/// The same for a LUKS2 volume whose APQNs are all offline (seed 0x100ad: its header key is
/// `Unusable` to `zkey-cryptsetup validate`, and readiness says "the volume key's master key is
/// gone"). While this is `true`, a `lost` verdict is only checked for keys and volumes whose
/// master key an online APQN holds.
const KNOWN_BUG_OFFLINE_KEY_IS_LOST: bool = false;

/// Known bug (seed 0x5eed2028): `safe_to_set` (and the exit code of `zkey validate --all`)
/// count every object, also those of a master key type no change is pending for. A CCA key
/// with a LUKS2 volume whose passphrase only the operator types is `unknown` while no AES
/// change is pending (by design, "without alarming"); as soon as an EP11
/// NEW key is committed, that AES volume makes readiness NOT SAFE TO SET and `validate --all`
/// exit 3, while `zkey mkchange start -t ep11` says SAFE TO SET (exit 0). A false alarm, and
/// the two commands disagree. While this is `true`, the "mkchange start implies safe_to_set"
/// check and the precondition of (b) ignore objects of master key types with nothing pending.
const KNOWN_BUG_UNRELATED_OBJECTS_BLOCK_SAFE_TO_SET: bool = false;

/// Known bug (seed 0x10021): a CCA key staged, SET, not completed, and SET again has a dead
/// live key and a staged copy under OLD, which `zkey reencipher --complete` recovers (by design:
/// "a staged key whose master key moved on twice is brought from OLD to CURRENT"). Readiness
/// calls it `lost`, "restore it from a KMS or from a backup", with no action, until someone
/// runs `--complete` anyway (`keyops::risk` knows CompletePending only for a staged copy under
/// CURRENT). Flagged, so no silent loss, but the wrong verdict and a harmful advice. While this is
/// `true`, the "lost means no register holds it" check skips keys with a staged copy under OLD.
const KNOWN_BUG_STAGED_UNDER_OLD_IS_LOST: bool = false;

/// Which known bugs the checks excuse (the constants above; the test
/// `fixed_bugs_stay_fixed` runs their sequences with none excused).
#[derive(Copy, Clone, Debug)]
struct Known {
    volume_verdict_follows_repository_key: bool,
    stale_volume_stage_is_staged: bool,
    offline_key_is_lost: bool,
    unrelated_objects_block_safe_to_set: bool,
    staged_under_old_is_lost: bool,
}

const KNOWN: Known = Known {
    volume_verdict_follows_repository_key: KNOWN_BUG_VOLUME_VERDICT_FOLLOWS_REPOSITORY_KEY,
    stale_volume_stage_is_staged: KNOWN_BUG_STALE_VOLUME_STAGE_IS_STAGED,
    offline_key_is_lost: KNOWN_BUG_OFFLINE_KEY_IS_LOST,
    unrelated_objects_block_safe_to_set: KNOWN_BUG_UNRELATED_OBJECTS_BLOCK_SAFE_TO_SET,
    staged_under_old_is_lost: KNOWN_BUG_STAGED_UNDER_OLD_IS_LOST,
};

const NONE_EXCUSED: Known = Known {
    volume_verdict_follows_repository_key: false,
    stale_volume_stage_is_staged: false,
    offline_key_is_lost: false,
    unrelated_objects_block_safe_to_set: false,
    staged_under_old_is_lost: false,
};

const ALL_SLOTS: [Slot; 3] = [Slot::New, Slot::Current, Slot::Old];
const IN_USE: [Slot; 2] = [Slot::Current, Slot::Old];

impl Obs {
    fn alive(&self, mktype: &str, apqns: &[String], mkvp: &Option<String>) -> bool {
        mkvp.as_deref()
            .is_some_and(|m| self.regs.holds(mktype, apqns, m, &ALL_SLOTS, true))
    }

    /// A token of the key is under a usable NEW, CURRENT or OLD master key of one of its
    /// APQNs (offline ones too: they come back).
    fn key_recoverable(&self, k: &KeyObs) -> bool {
        self.alive(&k.mktype, &k.apqns, &k.live) || self.alive(&k.mktype, &k.apqns, &k.staged)
    }

    /// The live key works now: an online APQN it is bound to holds its master key as CURRENT
    /// or OLD (EP11 has no OLD).
    fn key_usable(&self, k: &KeyObs) -> bool {
        k.live
            .as_deref()
            .is_some_and(|m| self.regs.holds(&k.mktype, &k.apqns, m, &IN_USE, false))
    }

    /// [`Obs::key_recoverable`] on online APQNs only.
    fn key_recoverable_online(&self, k: &KeyObs) -> bool {
        [&k.live, &k.staged]
            .into_iter()
            .flatten()
            .any(|m| self.regs.holds(&k.mktype, &k.apqns, m, &ALL_SLOTS, false))
    }

    fn vol_recoverable(&self, v: &VolObs) -> bool {
        !v.header.formatted
            || self.alive(&v.mktype, &[], &v.header.live_mkvp)
            || self.alive(&v.mktype, &[], &v.header.pending_mkvp)
    }

    /// `safe_to_set`, or (while [`KNOWN_BUG_UNRELATED_OBJECTS_BLOCK_SAFE_TO_SET`]) a change is
    /// pending and only objects of master key types with nothing pending are not ready.
    fn safe_to_set_for_pending(&self, excuse: bool) -> bool {
        if self.safe_to_set {
            return true;
        }
        let types: Vec<&str> = self.pending.iter().map(|(t, _)| t.as_str()).collect();
        let unrelated = |kind: &str, name: &str| {
            match kind {
                "key" => self.keys.get(name).map(|k| k.mktype.as_str()),
                "volume" => self.vols.get(name).map(|v| v.mktype.as_str()),
                _ => None,
            }
            .is_some_and(|t| !types.contains(&t))
        };
        excuse
            && !types.is_empty()
            && self
                .verdicts
                .iter()
                .filter(|(_, v)| !matches!(v.as_str(), "safe" | "staged"))
                .all(|((kind, name), _)| unrelated(kind, name))
    }

    /// The volume's header has a pending re-encipher, and its key is under no NEW key.
    fn stale_stage(&self, v: &VolObs) -> bool {
        v.header
            .pending_mkvp
            .as_deref()
            .is_some_and(|p| !self.regs.holds(&v.mktype, &[], p, &[Slot::New], true))
    }

    fn verdict(&self, kind: &str, name: &str) -> Option<&str> {
        self.verdicts
            .get(&(kind.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// The online APQNs of a master key type.
    fn online(&self, mktype: &str) -> Vec<String> {
        self.regs
            .with_type(mktype)
            .into_iter()
            .filter(|a| a.online)
            .map(|a| a.apqn.clone())
            .collect()
    }

    /// The one pattern that `slot` holds (usable) on every one of `apqns` (non-empty), if so.
    fn same_on_all(&self, mktype: &str, apqns: &[String], slot: Slot) -> Option<String> {
        let mut found: Option<String> = None;
        if apqns.is_empty() {
            return None;
        }
        for a in apqns {
            let r = self.regs.apqn(a)?.get(mktype)?.slot(slot)?;
            if !r.usable() {
                return None;
            }
            let m = r.mkvp.clone()?;
            match &found {
                Some(f) if !mkvp_matches(f, &m) => return None,
                _ => found = Some(m),
            }
        }
        found
    }

    fn all_online(&self, apqns: &[String]) -> bool {
        apqns
            .iter()
            .all(|a| self.regs.apqn(a).is_some_and(|r| r.online))
    }

    /// `mkvp` is the CURRENT key of some online APQN among `apqns` (all of the type if empty).
    fn current(&self, mktype: &str, apqns: &[String], mkvp: &Option<String>) -> bool {
        mkvp.as_deref()
            .is_some_and(|m| self.regs.holds(mktype, apqns, m, &[Slot::Current], false))
    }
}

fn mktype_of_key_type(t: &str) -> &'static str {
    if t.starts_with("EP11") {
        "ep11"
    } else {
        "aes"
    }
}

// ------------------------------------------------------------------------------------------
// Running a sequence
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Failure {
    invariant: String,
    step: usize,
    detail: String,
}

#[derive(Clone, Debug, Default)]
struct RunStats {
    steps: usize,
    sets: usize,
    safe_sets_checked: usize,
    skipped: usize,
}

#[derive(Clone, Debug)]
enum Pass {
    Dummy,
    Typed(String),
}

#[derive(Clone, Debug)]
struct VolRec {
    img: PathBuf,
    dm: String,
    pass: Pass,
    formatted: bool,
    vp: Option<String>,
    data: Option<PathBuf>,
    header: Header,
    stamp: Option<(SystemTime, u64)>,
}

#[derive(Clone, Debug)]
struct KeyRec {
    vp: Option<String>,
    volume: Option<VolRec>,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == 0
    }
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Test-only sabotage, to show that the invariants can fail.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
enum Sabotage {
    #[default]
    None,
    /// Pretend the readiness model called every object safe (a broken model).
    ForgeSafeVerdicts,
}

struct Ctx {
    w: World,
    _kms: Option<KmipServer>,
    fuse: bool,
    sabotage: Sabotage,
    known: Known,
    log: Vec<String>,
    keys: BTreeMap<String, KeyRec>,
    files: BTreeMap<usize, PathBuf>,
    obs: Option<Obs>,
    stats: RunStats,
    step: usize,
}

fn fuse_available() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    root && Path::new("/dev/fuse").exists()
}

fn key_name(i: usize) -> String {
    format!("k{i}")
}

type Res<T> = Result<T, Failure>;

/// An action's own check (c), run on the observations before and after it.
type Check = Box<dyn Fn(&Ctx, &Obs, &Obs) -> Res<()>>;

impl Ctx {
    fn new(kms: bool, sabotage: Sabotage, known: Known) -> Ctx {
        let mut w = World::new();
        w.set_env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2");
        w.set_env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000");
        let run = w.root.join("run");
        w.set_env("ZKEY_CRYPTSETUP_RUN_DIR", &run);
        let srv = kms.then(|| {
            let srv = KmipServer::start();
            w.bind_kmip(&srv, &Apqns::Group(Group::Cca).arg());
            srv
        });
        let mut log = vec!["ap-sim init".to_string()];
        if kms {
            log.push("# (the repository is bound to a PyKMIP server: see World::bind_kmip)".into());
        }
        Ctx {
            w,
            _kms: srv,
            fuse: fuse_available(),
            sabotage,
            known,
            log,
            keys: BTreeMap::new(),
            files: BTreeMap::new(),
            obs: None,
            stats: RunStats::default(),
            step: 0,
        }
    }

    fn fail<T>(&self, invariant: &str, detail: impl Into<String>) -> Res<T> {
        Err(Failure {
            invariant: invariant.to_string(),
            step: self.step,
            detail: detail.into(),
        })
    }

    fn shell_word(&self, s: &str) -> String {
        let root = self.w.root.display().to_string();
        let s = s.replace(&root, "$W");
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/:=,+-$@%".contains(c))
        {
            s
        } else {
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        }
    }

    fn note(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
    }

    /// Runs a command of the suite; `log` puts it into the reproduction script.
    fn exec(&mut self, bin: &str, args: &[String], stdin: Option<&str>, log: bool) -> Out {
        if log {
            let mut line = String::new();
            if let Some(i) = stdin {
                let _ = write!(line, "echo {} | ", self.shell_word(i.trim_end()));
            }
            line.push_str(bin);
            for a in args {
                line.push(' ');
                line.push_str(&self.shell_word(a));
            }
            self.log.push(line);
        }
        let mut c = self.w.cmd(bin);
        c.args(args);
        let o = match stdin {
            None => c.output().expect("spawn"),
            Some(input) => {
                let mut child = c
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn");
                let _ = child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(input.as_bytes());
                child.wait_with_output().expect("wait")
            }
        };
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn run_log(&mut self, bin: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.exec(bin, &a, stdin, true)
    }

    fn run_quiet(&mut self, bin: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.exec(bin, &a, stdin, false)
    }

    /// The passphrase arguments and stdin of a volume's key.
    fn pass_args(&self, name: &str, v: &VolRec) -> (Vec<String>, Option<String>) {
        match &v.pass {
            Pass::Dummy => (
                vec![
                    "-d".into(),
                    self.w
                        .repo
                        .join(format!("{name}.pass"))
                        .display()
                        .to_string(),
                ],
                None,
            ),
            Pass::Typed(p) => (vec![], Some(format!("{p}\n"))),
        }
    }

    fn zc(&mut self, name: &str, args: &[&str], log: bool) -> Out {
        let v = self.keys[name].volume.clone().expect("a volume");
        let (extra, stdin) = self.pass_args(name, &v);
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(extra);
        self.exec("zkey-cryptsetup", &a, stdin.as_deref(), log)
    }

    fn read_header(&mut self, name: &str) -> Res<Header> {
        let v = self.keys[name].volume.clone().expect("a volume");
        if !v.formatted {
            return Ok(Header::default());
        }
        let img = v.img.display().to_string();
        let o = self.zc(name, &["validate", &img, "--json"], false);
        let j: Value = match serde_json::from_str(&o.stdout) {
            Ok(j) => j,
            Err(_) => {
                return self.fail(
                    "oracle: zkey-cryptsetup validate --json",
                    format!("no JSON for {img} (exit {}): {}", o.code, o.text()),
                )
            }
        };
        let s = |v: &Value| v.as_str().map(str::to_string);
        let p = &j["reencipher_pending"];
        Ok(Header {
            formatted: true,
            valid: j["valid"].as_bool().unwrap_or(false),
            live_mkvp: s(&j["volume_key"]["mkvp"]),
            live_vp: s(&j["volume_key"]["verification_pattern"]),
            pending_mkvp: s(&p["key"]["mkvp"]),
            pending_vp: s(&p["verification_pattern"]),
            raw: o.stdout,
        })
    }

    fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Observes everything; `headers` forces re-reading every LUKS2 header (otherwise only
    /// those whose image changed).
    fn observe(&mut self, headers: bool) -> Res<Obs> {
        let regs = match Registers::read(&self.w) {
            Ok(r) => r,
            Err(e) => return self.fail("oracle: ap-sim tke status", e),
        };
        let o = self.run_quiet("zkey", &["validate", "--json"], None);
        let v: Value = match serde_json::from_str(&o.stdout) {
            Ok(v) => v,
            Err(_) if o.stdout.trim().is_empty() && !self.keys.is_empty() => {
                return self.fail(
                    "oracle: zkey validate --json",
                    format!("no output (exit {}): {}", o.code, o.stderr),
                )
            }
            Err(_) => Value::Null,
        };
        let mut keys = BTreeMap::new();
        for k in v["keys"].as_array().into_iter().flatten() {
            let name = k["name"].as_str().unwrap_or_default().to_string();
            let live = file_mkvp(&self.w.repo.join(format!("{name}.skey")));
            let staged = file_mkvp(&self.w.repo.join(format!("{name}.renc")));
            let mktype = live.as_ref().map(|l| l.1.clone()).unwrap_or_else(|| {
                mktype_of_key_type(k["key_type"].as_str().unwrap_or_default()).into()
            });
            keys.insert(
                name,
                KeyObs {
                    mktype,
                    apqns: k["apqns"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect(),
                    live: live.map(|l| l.0),
                    staged: staged.map(|s| s.0),
                    valid: k["valid"].as_bool().unwrap_or(false),
                    register: k["register"].as_str().map(str::to_string),
                    vp: k["verification_pattern"].as_str().map(str::to_string),
                    vp_mismatch: k["vp_mismatch"].as_bool().unwrap_or(false),
                    staged_register: k["staged"]["register"].as_str().map(str::to_string),
                },
            );
        }
        let r = &v["readiness"];
        let mut verdicts = BTreeMap::new();
        for o in r["objects"].as_array().into_iter().flatten() {
            let verdict = if self.sabotage == Sabotage::ForgeSafeVerdicts {
                "safe".to_string()
            } else {
                o["verdict"].as_str().unwrap_or_default().to_string()
            };
            verdicts.insert(
                (
                    o["kind"].as_str().unwrap_or_default().to_string(),
                    o["name"].as_str().unwrap_or_default().to_string(),
                ),
                verdict,
            );
        }
        let pending = r["pending"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["mktype"].as_str().unwrap_or_default().to_string(),
                    p["apqns"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect(),
                )
            })
            .collect();
        // The volumes, from their headers.
        let mut vols = BTreeMap::new();
        let names: Vec<String> = self.keys.keys().cloned().collect();
        for name in names {
            let Some(vr) = self.keys[&name].volume.clone() else {
                continue;
            };
            let stamp = Self::stamp(&vr.img);
            let header = if headers || stamp != vr.stamp {
                let h = self.read_header(&name)?;
                let rec = self.keys.get_mut(&name).unwrap().volume.as_mut().unwrap();
                rec.header = h.clone();
                rec.stamp = stamp;
                h
            } else {
                vr.header.clone()
            };
            let mktype = keys
                .get(&name)
                .map(|k: &KeyObs| k.mktype.clone())
                .unwrap_or_else(|| "aes".into());
            vols.insert(
                format!("{}:{}", vr.img.display(), vr.dm),
                VolObs {
                    key: name.clone(),
                    mktype,
                    header,
                },
            );
        }
        let forged = self.sabotage == Sabotage::ForgeSafeVerdicts;
        Ok(Obs {
            regs,
            keys,
            vols,
            verdicts,
            safe_to_set: forged || r["safe_to_set"].as_bool().unwrap_or(false),
            at_risk: !forged && r["at_risk"].as_bool().unwrap_or(false),
            pending,
        })
    }

    // --------------------------------------------------------------------------------------
    // Actions
    // --------------------------------------------------------------------------------------

    /// Runs one action and checks every invariant after it.
    fn step(&mut self, a: &Action) -> Res<()> {
        if self.obs.is_none() {
            self.obs = Some(self.observe(true)?);
        }
        let before = self.obs.clone().expect("observed");
        self.note(format!("# step {}: {a:?}", self.step));
        let mut headers = false;
        let mut check: Check = Box::new(|_, _, _| Ok(()));
        match a {
            Action::LoadNew {
                apqns,
                mktype,
                load,
            } => self.load_new(*apqns, *mktype, *load),
            Action::Commit { apqns } => {
                self.run_log("ap-sim", &["tke", "commit", "-a", &apqns.arg()], None);
            }
            Action::Set {
                apqns,
                mktype,
                complete,
            } => return self.set(&before, *apqns, *mktype, *complete),
            Action::ClearNew { apqns, mktype } => {
                self.run_log(
                    "ap-sim",
                    &["tke", "clear-new", "-a", &apqns.arg(), "-t", mktype.name()],
                    None,
                );
            }
            Action::Offline(t) => {
                self.run_log("ap-sim", &["chzcrypt", "-d", &t.arg()], None);
            }
            Action::Online(t) => {
                self.run_log("ap-sim", &["chzcrypt", "-e", &t.arg()], None);
            }
            Action::Generate {
                key,
                key_type,
                xts,
                apqns,
                volume,
                data,
                kms_bound,
            } => {
                headers = true;
                self.generate(*key, *key_type, *xts, *apqns, *volume, *data, *kms_bound)?;
            }
            Action::GenerateFile {
                file,
                key_type,
                xts,
            } => {
                let path = self.w.root.join(format!("f{file}.skey"));
                let p = path.display().to_string();
                let mut args = vec!["generate", &p, "-K", key_type.name()];
                if *xts {
                    args.push("--xts");
                }
                if self.run_log("zkey", &args, None).ok() {
                    self.files.insert(*file, path);
                }
            }
            Action::Import { file, key, apqns } => {
                let Some(path) = self.files.get(file).cloned() else {
                    return self.skip();
                };
                let name = key_name(*key);
                let p = path.display().to_string();
                let a = apqns.arg();
                let mut args = vec!["import", &p, "-N", &name, "-a", &a];
                if self._kms.is_some() {
                    args.push("--local");
                }
                if self.run_log("zkey", &args, None).ok() {
                    self.keys.insert(
                        name,
                        KeyRec {
                            vp: None,
                            volume: None,
                        },
                    );
                }
            }
            Action::Reencipher { filter, how } => {
                let (ok, sel) = match self.reencipher(*filter, *how) {
                    Some(x) => x,
                    None => return self.skip(),
                };
                if ok {
                    let how = *how;
                    check = Box::new(move |c, b, a| c.check_reencipher(b, a, &sel, how));
                }
            }
            Action::VolumeReencipher { key, how } => {
                let name = key_name(*key);
                let Some(v) = self.keys.get(&name).and_then(|k| k.volume.clone()) else {
                    return self.skip();
                };
                if !v.formatted {
                    return self.skip();
                }
                headers = true;
                let img = v.img.display().to_string();
                let args: Vec<&str> = match how {
                    VolRenc::Staged => vec!["reencipher", &img, "--staged"],
                    VolRenc::Complete => vec!["reencipher", &img, "--complete"],
                    VolRenc::FromOldInPlace => {
                        vec!["reencipher", &img, "--from-old", "--in-place", "-q"]
                    }
                };
                if self.zc(&name, &args, true).ok() {
                    let how = *how;
                    check = Box::new(move |c, b, a| c.check_volume_reencipher(b, a, &name, how));
                }
            }
            Action::MkchangeStart { group, types } => {
                headers = true;
                let g = Apqns::Group(*group).arg();
                let o = self.run_log("zkey", &["mkchange", "start", "-a", &g, "-t", types], None);
                if o.ok() {
                    let (group, types) = (*group, *types);
                    check = Box::new(move |c, b, a| c.check_mkchange_start(b, a, group, types));
                }
            }
            Action::MkchangeFinalize | Action::MkchangeCancel => {
                let Some(op) = self.open_operation() else {
                    return self.skip();
                };
                headers = true;
                let id = op["id"].as_str().unwrap_or_default().to_string();
                self.note(
                    "ID=$(zkey mkchange status --json | jq -r '[.operations[].operation | select(.state != \"DONE\" and .state != \"CANCELED\")][-1].id')",
                );
                let finalize = *a == Action::MkchangeFinalize;
                let args: Vec<String> = if finalize {
                    vec![
                        "mkchange".into(),
                        "finalize".into(),
                        "-i".into(),
                        id.clone(),
                    ]
                } else {
                    vec![
                        "mkchange".into(),
                        "cancel".into(),
                        "-i".into(),
                        id.clone(),
                        "-F".into(),
                    ]
                };
                let o = self.exec("zkey", &args, None, false);
                self.log.push(format!(
                    "zkey mkchange {} -i $ID{}",
                    if finalize { "finalize" } else { "cancel" },
                    if finalize { "" } else { " -F" }
                ));
                if o.ok() {
                    check = Box::new(move |c, b, a| c.check_mkchange_end(b, a, &op, finalize));
                }
            }
            Action::ValidateAll => {
                let o = self.run_log("zkey", &["validate", "--all"], None);
                let code = o.code;
                let text = o.text();
                check = Box::new(move |c, _, a| {
                    let want = if a.at_risk { 3 } else { 0 };
                    if code != want {
                        return c.fail(
                            "c: validate --all exit code",
                            format!(
                                "zkey validate --all exited {code}, readiness at_risk={} (expected {want}):\n{text}",
                                a.at_risk
                            ),
                        );
                    }
                    Ok(())
                });
            }
            Action::KmsReencipher { how } => {
                if self._kms.is_none() {
                    return self.skip();
                }
                let args: &[&str] = match how {
                    Renc::Complete => &["kms", "reencipher", "--complete"],
                    _ => &["kms", "reencipher", "--to-new", "--staged"],
                };
                self.run_log("zkey", args, None);
            }
            Action::KmsRefresh => {
                if self._kms.is_none() {
                    return self.skip();
                }
                self.run_log("zkey", &["kms", "refresh"], None);
            }
        }
        let after = self.observe(headers)?;
        self.check_common(&before, &after, a)?;
        check(self, &before, &after)?;
        self.obs = Some(after);
        Ok(())
    }

    fn skip(&mut self) -> Res<()> {
        self.log.pop();
        self.stats.skipped += 1;
        Ok(())
    }

    fn load_new(&mut self, apqns: Apqns, mktype: MkType, load: Load) {
        let a = apqns.arg();
        match load {
            Load::Random => {
                self.run_log(
                    "ap-sim",
                    &["tke", "load-new", "-a", &a, "-t", mktype.name(), "--random"],
                    None,
                );
            }
            Load::Parts {
                parts,
                complete,
                value,
            } => {
                let n = if complete { parts } else { parts - 1 };
                for i in 0..n {
                    let which = match i {
                        0 => "first",
                        _ if complete && i + 1 == parts => "final",
                        _ => "middle",
                    };
                    let b = value.wrapping_add(i.wrapping_mul(37));
                    let part = ap_sim::MasterKey::from_bytes([b; 32]);
                    let sum = format!("{:02X}", ap_sim::registers::part_checksum(&part));
                    let hex = format!("{b:02x}").repeat(32);
                    let o = self.run_log(
                        "ap-sim",
                        &[
                            "tke",
                            "load-new",
                            "-a",
                            &a,
                            "-t",
                            mktype.name(),
                            "--part",
                            which,
                            "--checksum",
                            &sum,
                            "--value",
                            "-",
                        ],
                        Some(&format!("{hex}\n")),
                    );
                    if !o.ok() {
                        break;
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn generate(
        &mut self,
        key: usize,
        key_type: KeyType,
        xts: bool,
        apqns: Apqns,
        volume: VolumeKind,
        data: u64,
        kms_bound: bool,
    ) -> Res<()> {
        let name = key_name(key);
        let img = self.w.root.join(format!("{name}.img"));
        let dm = format!("enc-{name}");
        let a = apqns.arg();
        let vol_arg = format!("{}:{dm}", img.display());
        let mut args = vec!["generate", "-N", &name, "-K", key_type.name()];
        if xts {
            args.push("--xts");
        }
        if !kms_bound {
            args.extend(["-a", &a]);
            if self._kms.is_some() {
                args.push("--local");
            }
        }
        if volume != VolumeKind::None {
            std::fs::File::create(&img)
                .and_then(|f| f.set_len(32 << 20))
                .expect("image file");
            self.note(format!(
                "truncate -s 32M {}",
                self.shell_word(&img.display().to_string())
            ));
            args.extend(["-l", &vol_arg]);
            if volume == VolumeKind::Dummy {
                args.push("--gen-dummy-passphrase");
            }
        }
        if !self.run_log("zkey", &args, None).ok() {
            return Ok(());
        }
        self.keys.insert(
            name.clone(),
            KeyRec {
                vp: None,
                volume: None,
            },
        );
        if volume == VolumeKind::None {
            return Ok(());
        }
        let pass = match volume {
            VolumeKind::Dummy => Pass::Dummy,
            _ => Pass::Typed(format!("pw-{name}")),
        };
        let stdin = match &pass {
            Pass::Typed(p) => Some(format!("{p}\n")),
            Pass::Dummy => None,
        };
        let formatted = self
            .run_log(
                "zkey",
                &["cryptsetup", "-N", &name, "--format", "--run"],
                stdin.as_deref(),
            )
            .ok();
        self.keys.get_mut(&name).unwrap().volume = Some(VolRec {
            img: img.clone(),
            dm: dm.clone(),
            pass,
            formatted,
            vp: None,
            data: None,
            header: Header::default(),
            stamp: None,
        });
        if !formatted {
            return Ok(());
        }
        let h = self.read_header(&name)?;
        if !h.valid {
            return self.fail(
                "fresh volume",
                format!(
                    "{name}: a volume just formatted does not validate: {}",
                    h.raw
                ),
            );
        }
        self.keys
            .get_mut(&name)
            .unwrap()
            .volume
            .as_mut()
            .unwrap()
            .vp = h.live_vp.clone();
        if self.fuse {
            let bytes = SplitMix64::new(data).bytes(64 << 10);
            let file = self.w.root.join(format!("{name}.data"));
            std::fs::write(&file, &bytes).expect("data file");
            self.note(format!(
                "head -c 65536 /dev/urandom > {}",
                self.shell_word(&file.display().to_string())
            ));
            self.with_open(&name, true, |f| {
                f.write_all(&bytes)?;
                f.sync_all()
            })?
            .map_err(|e| Failure {
                invariant: "fresh volume".into(),
                step: self.step,
                detail: format!("{name}: writing through the data path: {e}"),
            })?;
            self.keys
                .get_mut(&name)
                .unwrap()
                .volume
                .as_mut()
                .unwrap()
                .data = Some(file);
        }
        Ok(())
    }

    /// Opens the volume of key `name` through FUSE, runs `f` on the decrypted file, closes it.
    fn with_open<T>(
        &mut self,
        name: &str,
        write: bool,
        f: impl FnOnce(&mut std::fs::File) -> T,
    ) -> Res<T> {
        let v = self.keys[name].volume.clone().expect("a volume");
        let img = v.img.display().to_string();
        let o = self.zc(name, &["open", &img, &v.dm], true);
        if !o.ok() {
            return self.fail(
                if write {
                    "fresh volume"
                } else {
                    "b: data after a safe SET"
                },
                format!("{name}: zkey-cryptsetup open failed: {}", o.text()),
            );
        }
        let path = self.w.root.join("run").join(&v.dm);
        let data = self.shell_word(
            &self
                .w
                .root
                .join(format!("{name}.data"))
                .display()
                .to_string(),
        );
        self.note(if write {
            format!(
                "dd if={data} of=$ZKEY_CRYPTSETUP_RUN_DIR/{} conv=notrunc,fsync status=none",
                v.dm
            )
        } else {
            format!("cmp -n 65536 {data} $ZKEY_CRYPTSETUP_RUN_DIR/{}", v.dm)
        });
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map(|mut file| {
                let _ = file.seek(SeekFrom::Start(0));
                f(&mut file)
            });
        let dm = v.dm.clone();
        let c = self.run_log("zkey-cryptsetup", &["close", &dm], None);
        match out {
            Err(e) => self.fail(
                "data path",
                format!("{name}: opening {}: {e}", path.display()),
            ),
            Ok(_) if !c.ok() => self.fail(
                "data path",
                format!("{name}: zkey-cryptsetup close failed: {}", c.text()),
            ),
            Ok(t) => Ok(t),
        }
    }

    /// Runs `zkey reencipher`; the names of the keys it selected and whether it exited 0.
    /// `None` when the filter names a key that does not exist.
    fn reencipher(&mut self, filter: Filter, how: Renc) -> Option<(bool, Vec<String>)> {
        let before = self.obs.clone().expect("observed");
        let mut args: Vec<String> = vec!["reencipher".into()];
        let sel: Vec<String> = match filter {
            Filter::All => before.keys.keys().cloned().collect(),
            Filter::Name(i) => {
                let n = key_name(i);
                if !before.keys.contains_key(&n) {
                    return None;
                }
                args.extend(["-N".into(), n.clone()]);
                vec![n]
            }
            Filter::Apqns(a) => {
                let l = a.list();
                args.extend(["--apqns".into(), a.arg()]);
                before
                    .keys
                    .iter()
                    .filter(|(_, k)| k.apqns.iter().any(|x| l.contains(x)))
                    .map(|(n, _)| n.clone())
                    .collect()
            }
        };
        match how {
            Renc::ToNewStaged => args.extend(["--to-new".into(), "--staged".into()]),
            Renc::Complete => args.push("--complete".into()),
            Renc::FromOld => args.extend(["--from-old".into(), "--in-place".into()]),
            Renc::Auto => {}
        }
        let o = self.exec("zkey", &args, None, true);
        Some((o.ok(), sel))
    }

    fn open_operation(&mut self) -> Option<Value> {
        let o = self.run_quiet("zkey", &["mkchange", "status", "--json"], None);
        let v: Value = serde_json::from_str(&o.stdout).ok()?;
        v["operations"]
            .as_array()?
            .iter()
            .map(|o| o["operation"].clone())
            .rfind(|o| !matches!(o["state"].as_str(), Some("DONE") | Some("CANCELED")))
    }

    /// The SET, the checks of (a), and with `complete` the complete steps and the checks of (b).
    fn set(&mut self, before: &Obs, apqns: Apqns, mktype: MkType, complete: bool) -> Res<()> {
        self.note("zkey validate --json | jq .readiness   # the verdicts the SET is judged by");
        let o = self.run_log(
            "ap-sim",
            &[
                "tke",
                "set",
                "-a",
                &apqns.arg(),
                "-t",
                mktype.name(),
                "--yes",
            ],
            None,
        );
        let after = self.observe(false)?;
        let a = Action::Set {
            apqns,
            mktype,
            complete,
        };
        self.check_common(before, &after, &a)?;
        self.obs = Some(after.clone());
        if !o.ok() {
            return Ok(());
        }
        self.stats.sets += 1;
        if !complete {
            return Ok(());
        }
        // (b) holds only for a SET the readiness model called safe, over all of the pending
        // change's APQNs.
        let list = apqns.list();
        let covered = before
            .pending
            .iter()
            .find(|(t, _)| t == mktype.name())
            .is_some_and(|(_, p)| !p.is_empty() && p.iter().all(|x| list.contains(x)));
        let judged = before.safe_to_set_for_pending(self.known.unrelated_objects_block_safe_to_set)
            && covered;
        // The complete steps.
        if let Some(op) = self.open_operation() {
            let id = op["id"].as_str().unwrap_or_default().to_string();
            self.note(
                "ID=$(zkey mkchange status --json | jq -r '[.operations[].operation | select(.state != \"DONE\" and .state != \"CANCELED\")][-1].id')",
            );
            self.exec(
                "zkey",
                &["mkchange".into(), "finalize".into(), "-i".into(), id],
                None,
                false,
            );
            self.log.push("zkey mkchange finalize -i $ID".into());
        }
        if mktype != MkType::Apka {
            self.run_log(
                "zkey",
                &["reencipher", "--apqns", &apqns.arg(), "--complete"],
                None,
            );
        }
        let pending: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, k)| k.volume.as_ref().is_some_and(|v| v.formatted))
            .map(|(n, _)| n.clone())
            .collect();
        for name in pending {
            let h = self.read_header(&name)?;
            let t = after.keys.get(&name).map(|k| k.mktype.clone());
            if h.pending_mkvp.is_some() && t.as_deref() == Some(mktype.name()) {
                let img = self.keys[&name]
                    .volume
                    .as_ref()
                    .unwrap()
                    .img
                    .display()
                    .to_string();
                self.zc(&name, &["reencipher", &img, "--complete"], true);
            }
        }
        if self._kms.is_some() {
            self.run_log("zkey", &["kms", "reencipher", "--complete"], None);
        }
        let done = self.observe(true)?;
        self.check_common(
            &after,
            &done,
            &Action::Reencipher {
                filter: Filter::All,
                how: Renc::Complete,
            },
        )?;
        self.obs = Some(done.clone());
        if judged {
            self.stats.safe_sets_checked += 1;
            self.check_safe_set(before, &done, mktype)?;
        }
        Ok(())
    }

    // --------------------------------------------------------------------------------------
    // Invariants
    // --------------------------------------------------------------------------------------

    /// What holds after every step.
    fn check_common(&self, b: &Obs, a: &Obs, action: &Action) -> Res<()> {
        let tke = action.is_tke();
        // A refused TKE command changes no register; an operator command none at all.
        if !tke && a.regs != b.regs {
            return self.fail(
                "registers changed by an operator command",
                format!("{action:?}\nbefore: {:?}\nafter: {:?}", b.regs, a.regs),
            );
        }
        // (a) and: operator commands never lose anything.
        for (name, kb) in &b.keys {
            let Some(ka) = a.keys.get(name) else {
                continue;
            };
            if b.key_recoverable(kb) && !a.key_recoverable(ka) {
                let verdict = b.verdict("key", name).unwrap_or("(not reported)");
                if !tke {
                    return self.fail(
                        "an operator command lost a key",
                        format!(
                            "{action:?} made key {name} unrecoverable: before {kb:?}, after {ka:?}"
                        ),
                    );
                }
                if !matches!(verdict, "at-risk" | "lost" | "unknown") {
                    return self.fail(
                        if matches!(action, Action::Set { .. }) {
                            "a: a SET lost a key that readiness did not report at risk"
                        } else {
                            "a: a TKE command lost a key that readiness did not report at risk"
                        },
                        format!(
                            "{action:?}: key {name} was {verdict} before; before {kb:?}, after {ka:?}"
                        ),
                    );
                }
            }
        }
        for (vname, vb) in &b.vols {
            let Some(va) = a.vols.get(vname) else {
                continue;
            };
            if b.vol_recoverable(vb) && !a.vol_recoverable(va) {
                let verdict = b.verdict("volume", vname).unwrap_or("(not reported)");
                if !tke {
                    return self.fail(
                        "an operator command lost a volume",
                        format!(
                            "{action:?} made volume {vname} unrecoverable: before {:?}, after {:?}",
                            vb.header, va.header
                        ),
                    );
                }
                let key_dead = b.keys.get(&vb.key).is_none_or(|k| !b.key_usable(k));
                if self.known.volume_verdict_follows_repository_key && verdict == "safe" && key_dead
                {
                    continue;
                }
                if self.known.stale_volume_stage_is_staged
                    && verdict == "staged"
                    && b.stale_stage(vb)
                {
                    continue;
                }
                if !matches!(verdict, "at-risk" | "lost" | "unknown") {
                    return self.fail(
                        if matches!(action, Action::Set { .. }) {
                            "a: a SET lost a volume that readiness did not report at risk"
                        } else {
                            "a: a TKE command lost a volume that readiness did not report at risk"
                        },
                        format!(
                            "{action:?}: volume {vname} (key {}) was {verdict} before\nheader before: {}\nheader after: {}",
                            vb.key, vb.header.raw, va.header.raw
                        ),
                    );
                }
            }
        }
        // Verdicts agree with the registers; validity too; patterns never change.
        for (name, k) in &a.keys {
            let verdict = a.verdict("key", name).unwrap_or("(not reported)");
            // A key called lost is one whose master keys are in no register at all; one whose
            // master key sits on an offline APQN comes back when the APQN does.
            let only_offline = !a.key_recoverable_online(k);
            let staged_under_old = k
                .staged
                .as_deref()
                .is_some_and(|m| a.regs.holds(&k.mktype, &k.apqns, m, &[Slot::Old], true));
            if verdict == "lost"
                && a.key_recoverable(k)
                && !(self.known.offline_key_is_lost && only_offline)
                && !(self.known.staged_under_old_is_lost && staged_under_old)
            {
                return self.fail(
                    "a lost verdict for a key the registers still hold",
                    format!(
                        "key {name} is lost, but a register holds its master key: {k:?}\n{:?}",
                        a.regs
                    ),
                );
            }
            if matches!(verdict, "safe" | "staged") && !a.key_recoverable(k) {
                return self.fail(
                    "verdict vs registers",
                    format!("key {name} is {verdict}, but no register holds its master key: {k:?}"),
                );
            }
            if k.valid != a.key_usable(k) && !k.vp_mismatch {
                return self.fail(
                    "valid vs registers",
                    format!(
                        "zkey validate says key {name} valid={}, the registers say usable={}: {k:?}\n{:?}",
                        k.valid,
                        a.key_usable(k),
                        a.regs
                    ),
                );
            }
            let made = self.keys.get(name).and_then(|r| r.vp.clone());
            if k.vp_mismatch || (k.valid && made.is_some() && k.vp != made) {
                return self.fail(
                    "verification pattern changed",
                    format!(
                        "key {name}: made with {made:?}, now {:?} (vp_mismatch {})",
                        k.vp, k.vp_mismatch
                    ),
                );
            }
        }
        for (vname, v) in &a.vols {
            let verdict = a.verdict("volume", vname).unwrap_or("(not reported)");
            let online_too = [&v.header.live_mkvp, &v.header.pending_mkvp]
                .into_iter()
                .flatten()
                .any(|m| a.regs.holds(&v.mktype, &[], m, &ALL_SLOTS, false));
            if verdict == "lost"
                && v.header.formatted
                && a.vol_recoverable(v)
                && (online_too || !self.known.offline_key_is_lost)
            {
                return self.fail(
                    "a lost verdict for a volume the registers still hold",
                    format!(
                        "volume {vname} is lost, but a register holds its master key: {}",
                        v.header.raw
                    ),
                );
            }
            let excused =
                self.known.stale_volume_stage_is_staged && verdict == "staged" && a.stale_stage(v);
            if matches!(verdict, "safe" | "staged") && !a.vol_recoverable(v) && !excused {
                return self.fail(
                    "verdict vs registers",
                    format!(
                        "volume {vname} is {verdict}, but no register holds its master key: {}",
                        v.header.raw
                    ),
                );
            }
            let made = self
                .keys
                .get(&v.key)
                .and_then(|r| r.volume.as_ref())
                .and_then(|r| r.vp.clone());
            for vp in [&v.header.live_vp, &v.header.pending_vp]
                .into_iter()
                .flatten()
            {
                if made.as_ref().is_some_and(|m| m != vp) {
                    return self.fail(
                        "verification pattern changed",
                        format!(
                            "volume {vname}: made with {made:?}, now {vp}: {}",
                            v.header.raw
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// (b): after the complete steps of a SET readiness called safe.
    fn check_safe_set(&mut self, b: &Obs, a: &Obs, mktype: MkType) -> Res<()> {
        for (name, k) in &a.keys {
            let made = self.keys.get(name).and_then(|r| r.vp.clone());
            let changed = k.mktype == mktype.name();
            // Objects of another master key type are judged only if readiness called them ready
            // (with the unrelated-objects excuse, the others did not make the SET unsafe).
            if !changed
                && !b
                    .verdict("key", name)
                    .is_some_and(|v| matches!(v, "safe" | "staged"))
            {
                continue;
            }
            if !k.valid
                || (changed && (k.register.as_deref() != Some("current") || k.staged.is_some()))
                || k.vp != made
            {
                return self.fail(
                    "b: a key is not whole after a safe SET and its complete steps",
                    format!("key {name}: {k:?}, made with VP {made:?}"),
                );
            }
        }
        let names: Vec<(String, String)> = a
            .vols
            .iter()
            .map(|(n, v)| (n.clone(), v.key.clone()))
            .collect();
        for (vname, key) in names {
            let v = &a.vols[&vname];
            let made = self.keys[&key].volume.as_ref().and_then(|r| r.vp.clone());
            let h = &v.header;
            if !h.formatted {
                continue;
            }
            let stale = b.vols.get(&vname).is_some_and(|vb| {
                b.stale_stage(vb) && b.verdict("volume", &vname) == Some("staged")
            });
            if self.known.stale_volume_stage_is_staged && stale {
                continue;
            }
            let changed = v.mktype == mktype.name();
            if !changed
                && !b
                    .verdict("volume", &vname)
                    .is_some_and(|v| matches!(v, "safe" | "staged"))
            {
                continue;
            }
            if !h.valid
                || h.live_vp != made
                || (changed
                    && (h.pending_mkvp.is_some() || !a.current(&v.mktype, &[], &h.live_mkvp)))
            {
                return self.fail(
                    "b: a volume is not whole after a safe SET and its complete steps",
                    format!("volume {vname}: made with VP {made:?}: {}", h.raw),
                );
            }
            if let Some(file) = self.keys[&key].volume.as_ref().and_then(|r| r.data.clone()) {
                let want = std::fs::read(&file).expect("data file");
                let got = self.with_open(&key, false, |f| {
                    let mut buf = vec![0u8; want.len()];
                    f.read_exact(&mut buf).map(|_| buf)
                })?;
                if got.as_deref().ok() != Some(&want[..]) {
                    return self.fail(
                        "b: data after a safe SET",
                        format!("volume {vname}: the data written when it was made reads back differently"),
                    );
                }
            }
        }
        Ok(())
    }

    fn check_reencipher(&self, b: &Obs, a: &Obs, sel: &[String], how: Renc) -> Res<()> {
        for name in sel {
            let (Some(kb), Some(ka)) = (b.keys.get(name), a.keys.get(name)) else {
                continue;
            };
            if kb.mktype == "apka" || !b.all_online(&kb.apqns) || kb.apqns.is_empty() {
                continue;
            }
            let cur = b.same_on_all(&kb.mktype, &kb.apqns, Slot::Current);
            let new = b.same_on_all(&kb.mktype, &kb.apqns, Slot::New);
            let under_cur = kb.live.is_some()
                && cur
                    .as_ref()
                    .is_some_and(|c| mkvp_matches(c, kb.live.as_ref().unwrap()));
            let made = self.keys.get(name).and_then(|r| r.vp.clone());
            // --to-new --staged (and no direction): every key under CURRENT with one complete
            // NEW key on all its APQNs gets a staged copy under that NEW key.
            if matches!(how, Renc::ToNewStaged | Renc::Auto) && under_cur {
                if let Some(m) = &new {
                    let staged = ka.staged.as_ref().is_some_and(|s| mkvp_matches(s, m));
                    if !staged || ka.staged_register.as_deref() != Some("new") {
                        return self.fail(
                            "c: zkey reencipher reported success without staging",
                            format!(
                                "{how:?}: key {name} was under CURRENT with NEW {m} complete on {:?}, but after exit 0: {ka:?}",
                                kb.apqns
                            ),
                        );
                    }
                }
            }
            // --from-old (and no direction): a key under OLD on all its APQNs is under CURRENT.
            let old = b.same_on_all(&kb.mktype, &kb.apqns, Slot::Old);
            let under_old = !under_cur
                && kb.live.is_some()
                && old
                    .as_ref()
                    .is_some_and(|o| mkvp_matches(o, kb.live.as_ref().unwrap()));
            if matches!(how, Renc::FromOld | Renc::Auto) && under_old && kb.mktype != "ep11" {
                let ok = ka.live.is_some()
                    && cur
                        .as_ref()
                        .is_some_and(|c| mkvp_matches(c, ka.live.as_ref().unwrap()))
                    && ka.valid
                    && ka.vp == made;
                if !ok {
                    return self.fail(
                        "c: zkey reencipher --from-old reported success without re-enciphering",
                        format!("{how:?}: key {name} was under OLD; after exit 0: {ka:?}"),
                    );
                }
            }
            // --complete: a key whose staged copy was under CURRENT on all its APQNs is
            // installed.
            let staged_cur = kb.staged.is_some()
                && cur
                    .as_ref()
                    .is_some_and(|c| mkvp_matches(c, kb.staged.as_ref().unwrap()));
            if how == Renc::Complete && staged_cur {
                let ok = ka.staged.is_none()
                    && ka.live.is_some()
                    && mkvp_matches(ka.live.as_ref().unwrap(), kb.staged.as_ref().unwrap())
                    && ka.valid
                    && ka.vp == made;
                if !ok {
                    return self.fail(
                        "c: zkey reencipher --complete reported success without completing",
                        format!("key {name}: staged copy was under CURRENT; after exit 0: {ka:?}"),
                    );
                }
            }
        }
        Ok(())
    }

    fn check_volume_reencipher(&self, b: &Obs, a: &Obs, name: &str, how: VolRenc) -> Res<()> {
        let Some((vname, va)) = a.vols.iter().find(|(_, v)| v.key == name) else {
            return Ok(());
        };
        let Some(vb) = b.vols.get(vname) else {
            return Ok(());
        };
        let t = &vb.mktype;
        let online = b.online(t);
        let (hb, ha) = (&vb.header, &va.header);
        let made = self.keys[name].volume.as_ref().and_then(|r| r.vp.clone());
        match how {
            VolRenc::Staged => {
                let cur = b.same_on_all(t, &online, Slot::Current);
                let new = b.same_on_all(t, &online, Slot::New);
                let under_cur = hb.live_mkvp.is_some()
                    && cur
                        .as_ref()
                        .is_some_and(|c| mkvp_matches(c, hb.live_mkvp.as_ref().unwrap()));
                let ok = match (&ha.pending_mkvp, under_cur, &new) {
                    (None, _, _) => false,
                    (Some(p), true, Some(m)) => mkvp_matches(p, m),
                    (Some(p), _, _) => a.regs.holds(t, &[], p, &[Slot::New, Slot::Current], false),
                };
                if !ok {
                    return self.fail(
                        "c: zkey-cryptsetup reencipher --staged reported success without staging",
                        format!(
                            "volume {vname}: live key under CURRENT: {under_cur}, NEW on all online APQNs: {new:?}; after exit 0: {}",
                            ha.raw
                        ),
                    );
                }
            }
            VolRenc::Complete | VolRenc::FromOldInPlace => {
                let ok = ha.pending_mkvp.is_none()
                    && a.current(t, &[], &ha.live_mkvp)
                    && ha.live_vp == made;
                if !ok {
                    return self.fail(
                        "c: zkey-cryptsetup reencipher reported success without re-enciphering",
                        format!("{how:?}: volume {vname}: after exit 0: {}", ha.raw),
                    );
                }
            }
        }
        Ok(())
    }

    fn check_mkchange_start(&self, _b: &Obs, a: &Obs, group: Group, types: &str) -> Res<()> {
        let g: Vec<String> = Apqns::Group(group).list();
        let types: Vec<&str> = types.split(',').collect();
        let in_scope = |k: &KeyObs| {
            types.contains(&k.mktype.as_str())
                && (k.apqns.is_empty() || k.apqns.iter().any(|x| g.contains(x)))
        };
        let has_pending = a
            .pending
            .iter()
            .any(|(t, p)| types.contains(&t.as_str()) && p.iter().any(|x| g.contains(x)));
        if !has_pending {
            return self.fail(
                "c: zkey mkchange start succeeded with nothing to SET",
                format!("no pending change of {types:?} on {g:?}: {:?}", a.pending),
            );
        }
        // When the operation covers every pending change, the whole readiness model agrees.
        let covers_all = a
            .pending
            .iter()
            .all(|(t, p)| types.contains(&t.as_str()) && p.iter().all(|x| g.contains(x)));
        if covers_all && !a.safe_to_set_for_pending(self.known.unrelated_objects_block_safe_to_set)
        {
            return self.fail(
                "c: zkey mkchange start succeeded but readiness is not safe_to_set",
                format!("pending {:?}, verdicts {:?}", a.pending, a.verdicts),
            );
        }
        for (name, k) in &a.keys {
            if !in_scope(k) {
                continue;
            }
            let verdict = a.verdict("key", name).unwrap_or("(not reported)");
            let new = a.same_on_all(&k.mktype, &g, Slot::New);
            let staged = k
                .staged
                .as_ref()
                .is_some_and(|s| new.as_ref().is_some_and(|m| mkvp_matches(m, s)));
            if !matches!(verdict, "safe" | "staged") || !staged {
                return self.fail(
                    "c: zkey mkchange start succeeded without staging every key",
                    format!("key {name}: verdict {verdict}, NEW on {g:?} {new:?}: {k:?}"),
                );
            }
        }
        for (vname, v) in &a.vols {
            let Some(k) = a.keys.get(&v.key) else {
                continue;
            };
            if !in_scope(k) || !v.header.formatted {
                continue;
            }
            let verdict = a.verdict("volume", vname).unwrap_or("(not reported)");
            if self.known.stale_volume_stage_is_staged && verdict == "staged" && a.stale_stage(v) {
                continue;
            }
            let new = a.same_on_all(&k.mktype, &g, Slot::New);
            let staged = v
                .header
                .pending_mkvp
                .as_ref()
                .is_some_and(|p| new.as_ref().is_some_and(|m| mkvp_matches(m, p)));
            if !matches!(verdict, "safe" | "staged") || !staged {
                return self.fail(
                    "c: zkey mkchange start succeeded without staging every volume",
                    format!(
                        "volume {vname}: verdict {verdict}, NEW {new:?}: {}",
                        v.header.raw
                    ),
                );
            }
        }
        Ok(())
    }

    fn check_mkchange_end(&self, _b: &Obs, a: &Obs, op: &Value, finalize: bool) -> Res<()> {
        for item in op["keys"].as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap_or_default();
            let Some(k) = a.keys.get(name) else {
                continue;
            };
            if k.staged.is_some() {
                return self.fail(
                    if finalize {
                        "c: zkey mkchange finalize left a staged key"
                    } else {
                        "c: zkey mkchange cancel left a staged key"
                    },
                    format!("key {name}: {k:?}"),
                );
            }
            let made = self.keys.get(name).and_then(|r| r.vp.clone());
            if finalize && (!k.valid || k.register.as_deref() != Some("current") || k.vp != made) {
                return self.fail(
                    "c: zkey mkchange finalize reported success without completing",
                    format!("key {name}: {k:?}, made with VP {made:?}"),
                );
            }
        }
        if finalize {
            for item in op["volumes"].as_array().into_iter().flatten() {
                if item["passphrase_known"].as_bool() != Some(true) {
                    continue;
                }
                let vname = item["volume"].as_str().unwrap_or_default();
                let Some(v) = a.vols.get(vname) else {
                    continue;
                };
                if v.header.pending_mkvp.is_some()
                    || !a.current(&v.mktype, &[], &v.header.live_mkvp)
                {
                    return self.fail(
                        "c: zkey mkchange finalize reported success without completing a volume",
                        format!("volume {vname}: {}", v.header.raw),
                    );
                }
            }
        }
        Ok(())
    }

    /// Fills in each new key's verification pattern from the first observation that sees it.
    fn record_vps(&mut self) {
        let Some(obs) = &self.obs else { return };
        for (name, rec) in self.keys.iter_mut() {
            if rec.vp.is_none() {
                if let Some(k) = obs.keys.get(name) {
                    if k.valid {
                        rec.vp = k.vp.clone();
                    }
                }
            }
        }
    }
}

/// Runs a sequence from scratch: the failure, the statistics and the reproduction script.
fn run(
    actions: &[Action],
    kms: bool,
    sabotage: Sabotage,
) -> (Option<Failure>, RunStats, Vec<String>) {
    run_with(actions, kms, sabotage, KNOWN)
}

fn run_with(
    actions: &[Action],
    kms: bool,
    sabotage: Sabotage,
    known: Known,
) -> (Option<Failure>, RunStats, Vec<String>) {
    let mut c = Ctx::new(kms, sabotage, known);
    let mut failure = None;
    for (i, a) in actions.iter().enumerate() {
        c.step = i;
        if let Err(f) = c.step(a) {
            failure = Some(f);
            break;
        }
        c.record_vps();
        c.stats.steps += 1;
    }
    (failure, c.stats.clone(), c.log.clone())
}

fn script(log: &[String], f: &Failure) -> String {
    let bins = tests::bin_dir();
    let mut s = String::new();
    let _ = writeln!(s, "export W=$(mktemp -d) PATH={}:$PATH", bins.display());
    let _ = writeln!(
        s,
        "export AP_SIM_DIR=$W/ap-sim ZKEY_REPOSITORY=$W/repository ZKEY_CRYPTSETUP_RUN_DIR=$W/run"
    );
    let _ = writeln!(
        s,
        "export ZKEY_CRYPTSETUP_PBKDF=pbkdf2 ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS=1000 ZKEY_LOCK_WAIT=120"
    );
    let _ = writeln!(s, "unset SYSFS_ROOT");
    for l in log {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "# ^ step {} fails: {}", f.step, f.invariant);
    s
}

/// Shrinks a failing sequence and panics with the report.
fn report(seed: u64, actions: Vec<Action>, f: Failure, cfg: &Config, sabotage: Sabotage) -> String {
    let mut actions = actions;
    actions.truncate(f.step + 1);
    let invariant = f.invariant.clone();
    let deadline = Instant::now() + Duration::from_secs(cfg.shrink_seconds);
    let started = Instant::now();
    let (min, st) = shrink::shrink(
        actions,
        deadline,
        |cand| matches!(run(cand, cfg.kms, sabotage).0, Some(g) if g.invariant == invariant),
    );
    let (f2, _, log) = run(&min, cfg.kms, sabotage);
    let f2 = f2.unwrap_or(f.clone());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model: seed {seed:#x}: invariant violated: {}",
        f.invariant
    );
    let _ = writeln!(s, "{}", f.detail);
    let _ = writeln!(
        s,
        "\nre-run: ZKEY_MODEL_SEED={seed:#x} ZKEY_MODEL_CASES=1 ZKEY_MODEL_STEPS={} cargo test -p tests --test model -- --nocapture",
        cfg.steps
    );
    let _ = writeln!(
        s,
        "\nshrunk to {} actions ({} runs, {:.0}s{}):",
        min.len(),
        st.runs,
        started.elapsed().as_secs_f64(),
        if st.timed_out {
            ", stopped by the time limit"
        } else {
            ""
        }
    );
    for (i, a) in min.iter().enumerate() {
        let _ = writeln!(s, "  {i}: {a:?}");
    }
    let _ = writeln!(
        s,
        "\nthe minimal sequence fails with: {}\n{}",
        f2.invariant, f2.detail
    );
    let _ = writeln!(s, "\nas shell commands:\n{}", script(&log, &f2));
    s
}

#[test]
fn rotations_never_lose_a_key_the_suite_did_not_report() {
    let cfg = Config::from_env();
    let started = Instant::now();
    let budget = Duration::from_secs(cfg.seconds);
    let mut ran = 0;
    for i in 0..cfg.cases {
        if started.elapsed() >= budget {
            println!(
                "model: time budget of {}s used up after {ran} of {} sequences",
                cfg.seconds, cfg.cases
            );
            break;
        }
        let seed = cfg.seed.wrapping_add(i);
        let actions = generate(seed, cfg.steps, cfg.kms);
        let t = Instant::now();
        let (failure, st, _) = run(&actions, cfg.kms, Sabotage::None);
        ran += 1;
        println!(
            "model: seed {seed:#x}: {} steps ({} skipped), {} SETs, {} safe SETs checked, {:.1}s",
            st.steps,
            st.skipped,
            st.sets,
            st.safe_sets_checked,
            t.elapsed().as_secs_f64()
        );
        if let Some(f) = failure {
            panic!("{}", report(seed, actions, f, &cfg, Sabotage::None));
        }
    }
    println!(
        "model: {ran} sequences in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn sequences_are_reproducible_from_their_seed() {
    for seed in [0u64, 1, DEFAULT_SEED, u64::MAX] {
        let a = generate(seed, 40, false);
        assert_eq!(a, generate(seed, 40, false));
        assert_eq!(a.len(), 40);
    }
    assert_ne!(generate(1, 40, false), generate(2, 40, false));
    // Over many seeds the mix is realistic: rotations are common, mistakes occur.
    let all: Vec<Action> = (0..200).flat_map(|s| generate(s, 25, false)).collect();
    let sets = all
        .iter()
        .filter(|a| matches!(a, Action::Set { .. }))
        .count();
    let stages = all
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Reencipher {
                    how: Renc::ToNewStaged,
                    ..
                }
            )
        })
        .count();
    assert!(sets > 300 && stages > 300, "{sets} SETs, {stages} stagings");
}

/// The invariants can fail: with a readiness model that calls everything safe, an EP11 SET
/// without staging (the key dies at once) is caught, shrunk and reported.
#[test]
fn a_forged_safe_verdict_before_an_unstaged_set_is_caught() {
    let actions = vec![
        Action::Generate {
            key: 0,
            key_type: KeyType::AesData,
            xts: false,
            apqns: Apqns::Group(Group::Cca),
            volume: VolumeKind::None,
            data: 0,
            kms_bound: false,
        },
        Action::Generate {
            key: 1,
            key_type: KeyType::Ep11Aes,
            xts: false,
            apqns: Apqns::Group(Group::Ep11),
            volume: VolumeKind::None,
            data: 0,
            kms_bound: false,
        },
        Action::ValidateAll,
        Action::LoadNew {
            apqns: Apqns::Group(Group::Ep11),
            mktype: MkType::Ep11,
            load: Load::Random,
        },
        Action::Commit {
            apqns: Apqns::Group(Group::Ep11),
        },
        Action::Set {
            apqns: Apqns::Group(Group::Ep11),
            mktype: MkType::Ep11,
            complete: false,
        },
    ];
    // The real model reports the key at risk: no failure.
    let (f, st, _) = run(&actions, false, Sabotage::None);
    assert!(f.is_none(), "{f:?}");
    assert_eq!(st.sets, 1);
    // The forged one is caught at the SET, and the report is a runnable script.
    let (f, _, _) = run(&actions, false, Sabotage::ForgeSafeVerdicts);
    let f = f.expect("the forged verdict is caught");
    assert!(f.invariant.starts_with("a: a SET lost a key"), "{f:?}");
    assert_eq!(f.step, 5);
    let cfg = Config {
        shrink_seconds: 60,
        ..Config::from_env()
    };
    let r = report(7, actions, f, &cfg, Sabotage::ForgeSafeVerdicts);
    assert!(r.contains("shrunk to 4 actions"), "{r}");
    assert!(
        r.contains("ap-sim tke set -a 0a.002f,0b.002f -t ep11 --yes"),
        "{r}"
    );
    assert!(r.contains("export W=$(mktemp -d)"), "{r}");
    println!("{r}");
}

fn gen_key(key: usize, key_type: KeyType, apqns: Apqns, volume: VolumeKind) -> Action {
    Action::Generate {
        key,
        key_type,
        xts: volume != VolumeKind::None,
        apqns,
        volume,
        data: key as u64,
        kms_bound: false,
    }
}

/// The known bugs, each as the minimal sequence the model found: they fail with nothing
/// excused and pass with the exclusions. When one of them is fixed this test fails: drop its
/// exclusion constant then.
#[test]
fn fixed_bugs_stay_fixed() {
    use Action::*;
    let ep11 = Apqns::Group(Group::Ep11);
    let cca = Apqns::Group(Group::Cca);
    let load = |apqns, mktype| LoadNew {
        apqns,
        mktype,
        load: Load::Random,
    };
    let cases: Vec<(&str, Vec<Action>, &str)> = vec![
        (
            "KNOWN_BUG_VOLUME_VERDICT_FOLLOWS_REPOSITORY_KEY",
            vec![
                gen_key(0, KeyType::Ep11Aes, ep11, VolumeKind::Dummy),
                load(ep11, MkType::Ep11),
                Commit { apqns: ep11 },
                VolumeReencipher {
                    key: 0,
                    how: VolRenc::Staged,
                },
                Set {
                    apqns: ep11,
                    mktype: MkType::Ep11,
                    complete: true,
                },
                load(ep11, MkType::Ep11),
                Commit { apqns: ep11 },
                Set {
                    apqns: ep11,
                    mktype: MkType::Ep11,
                    complete: false,
                },
            ],
            "a: a SET lost a volume that readiness did not report at risk",
        ),
        (
            "KNOWN_BUG_STALE_VOLUME_STAGE_IS_STAGED (NEW replaced)",
            vec![
                gen_key(2, KeyType::Ep11Aes, ep11, VolumeKind::Dummy),
                load(ep11, MkType::Ep11),
                Commit { apqns: ep11 },
                VolumeReencipher {
                    key: 2,
                    how: VolRenc::Staged,
                },
                ClearNew {
                    apqns: ep11,
                    mktype: MkType::Ep11,
                },
                load(ep11, MkType::Ep11),
                Commit { apqns: ep11 },
                Set {
                    apqns: ep11,
                    mktype: MkType::Ep11,
                    complete: true,
                },
            ],
            "a: a SET lost a volume that readiness did not report at risk",
        ),
        (
            "KNOWN_BUG_STALE_VOLUME_STAGE_IS_STAGED (staged from OLD)",
            vec![
                gen_key(
                    0,
                    KeyType::AesCipher,
                    Apqns::One(Group::Cca, 0),
                    VolumeKind::Dummy,
                ),
                load(cca, MkType::Aes),
                Reencipher {
                    filter: Filter::Name(0),
                    how: Renc::ToNewStaged,
                },
                Set {
                    apqns: cca,
                    mktype: MkType::Aes,
                    complete: true,
                },
                load(cca, MkType::Aes),
                Reencipher {
                    filter: Filter::All,
                    how: Renc::ToNewStaged,
                },
                VolumeReencipher {
                    key: 0,
                    how: VolRenc::Staged,
                },
                Set {
                    apqns: cca,
                    mktype: MkType::Aes,
                    complete: true,
                },
            ],
            "b: a volume is not whole after a safe SET and its complete steps",
        ),
        (
            "KNOWN_BUG_OFFLINE_KEY_IS_LOST",
            vec![
                gen_key(
                    0,
                    KeyType::AesData,
                    Apqns::One(Group::Cca, 0),
                    VolumeKind::None,
                ),
                Offline(Target::Card(Group::Cca, 0)),
            ],
            "a lost verdict for a key the registers still hold",
        ),
        (
            "KNOWN_BUG_UNRELATED_OBJECTS_BLOCK_SAFE_TO_SET",
            vec![
                gen_key(2, KeyType::AesData, cca, VolumeKind::Typed),
                load(ep11, MkType::Ep11),
                Commit { apqns: ep11 },
                MkchangeStart {
                    group: Group::Ep11,
                    types: "ep11",
                },
            ],
            "c: zkey mkchange start succeeded but readiness is not safe_to_set",
        ),
        (
            "KNOWN_BUG_STAGED_UNDER_OLD_IS_LOST",
            vec![
                gen_key(3, KeyType::AesCipher, cca, VolumeKind::None),
                load(cca, MkType::Aes),
                Reencipher {
                    filter: Filter::Name(3),
                    how: Renc::ToNewStaged,
                },
                Set {
                    apqns: cca,
                    mktype: MkType::Aes,
                    complete: false,
                },
                load(cca, MkType::Aes),
                Set {
                    apqns: cca,
                    mktype: MkType::Aes,
                    complete: true,
                },
            ],
            "a lost verdict for a key the registers still hold",
        ),
    ];
    for (bug, actions, invariant) in cases {
        let (f, _, log) = run_with(&actions, false, Sabotage::None, NONE_EXCUSED);
        assert!(
            f.is_none(),
            "{bug}: the fixed bug is back ({invariant}): {f:?}\n{}",
            log.join("\n")
        );
        println!("{bug}: fixed, its sequence passes with nothing excused");
    }
}
