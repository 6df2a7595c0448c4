//! Re-enciphering the secure volume key of a LUKS2 volume when a master key changes, as IBM's
//! `zkey-cryptsetup reencipher` does.
//!
//! *Prepare* (`--staged`, `--in-place`, or no option and nothing pending): open a keyslot with the
//! passphrase, write the VP token if absent, re-encipher the secure volume key through the
//! adapters (`--to-new`: CURRENT -> NEW before the SET; `--from-old`: OLD -> CURRENT after it;
//! by default from the register the key is found in), and add the result as an unbound keyslot
//! under the same passphrase. Staged: record it in the `paes-reencipher` token and stop. In-place
//! (the default for a key under OLD): complete at once. A re-encipher to NEW first needs the
//! APQNs that can serve the key to agree on a complete NEW master key ([`require_new`], zkey's
//! cross-check); that and every other check that can refuse is made before the first header
//! write, and before a pending stage is cancelled for a new one.
//!
//! *Complete* (`--complete`, or no option while a token is pending): check the key of the
//! unbound keyslot with the adapters (re-enciphering it again, after asking, if the master key
//! has moved on once more), check that its VP is the token's, make it the volume key
//! (`CRYPT_VOLUME_KEY_SET`), offer to destroy the previous keyslot, and delete the token.
//!
//! # Crash safety
//! Each header step is one libcryptsetup metadata commit (atomic: both header copies carry a
//! sequence number and the newer valid one wins), followed by the `luks2` crash point. The order:
//!
//! | step | state after a crash right after it | what a re-run does |
//! |---|---|---|
//! | P1 VP token written | volume unchanged but for the token | finds the token equal, goes on |
//! | P2 unbound keyslot added | old key bound, an *orphan* unbound keyslot | adopts the orphan (same passphrase, same key type and size, master key of the target register, and the same VP when it can be computed) instead of adding another |
//! | P3 re-encipher token written (staged: done) | staged state | completes (or, with `-s`/`-i`, asks to cancel and re-prepares) |
//! | C1 (twice moved) new unbound keyslot added | token still names the old unbound keyslot | adopts the orphan as in P2 |
//! | C2 token rewritten to the new keyslot | old unbound keyslot is an orphan the token no longer names | completes; the stale orphan is left (its key is under OLD; harmless) |
//! | C3 previous unbound keyslot destroyed | consistent | completes |
//! | C4 unbound key made the volume key | new key bound and opened by the passphrase, token still there | sees the token's keyslot bound and goes straight to clean-up |
//! | C5 previous keyslot destroyed (if agreed) | token still there | clean-up again: nothing left to destroy, removes the token |
//! | C6 token removed | done | nothing pending |
//!
//! In-place runs P1-P3 and then C1-C6: the token is the journal that lets a re-run finish an
//! interrupted in-place run. At every point the passphrase opens a keyslot bound to a key that is
//! the volume's AES key (the VP check before C4 makes sure of that), so the volume opens.
//! Destroying the previous keyslot (C5) happens before the token is removed so that a crash
//! between them is still recognisable as "complete pending" and finished by a re-run; the user
//! is asked first, and in batch mode (`-q`, which answers yes as IBM's tool does) the keyslot is
//! destroyed, but only after the new bound keyslot has been opened with the same passphrase.

use std::path::Path;

use ap_sim::adapter::Status;
use ap_sim::crosscheck::{cross_check, NotReady, Purpose};
use ap_sim::hsm::{Direction, Hsm, HsmError, Register};
use ap_sim::sysfs::{Reading, SysfsTree};
use ap_sim::token::SecureKey;
use ap_sim::Apqn;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::luks2::{Found, ReencipherToken, SlotState, VerificationPattern, Volume, VpToken};
use crate::passphrase::Supplier;
use crate::volume::{offer_destroy, parse_key, unlock, verify, vp_of, Unlocked};
use crate::{Error, Ui};

// How a re-encipher is asked for is the suite's one type: `mode: None` completes when a stage
// is pending, else prepares (in place for a key under OLD, staged otherwise); `way: None` goes
// from the register the key is found in (CURRENT: to NEW; OLD: from OLD).
pub use ap_sim::reencipher::{Mode, Request};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// A staged re-encipher was prepared: the re-enciphered key waits in `unbound_keyslot`.
    Staged { unbound_keyslot: u32 },
    /// The re-enciphered key is the volume key now, in `keyslot`.
    Completed {
        keyslot: u32,
        destroyed_keyslot: Option<u32>,
    },
}

fn register_word(r: Register) -> &'static str {
    r.name()
}

/// Runs `zkey-cryptsetup reencipher` on `device`.
pub fn reencipher(
    hsm: &Hsm,
    device: &Path,
    opts: Request,
    pass: &mut Supplier,
    ui: &mut dyn Ui,
) -> Result<Outcome, Error> {
    let mut vol = Volume::open(device)?;
    let name = vol.name();
    // Read (and strictly check) the token before asking for a passphrase: a malformed header is
    // reported without the user typing anything.
    let pending = vol.reencipher_token()?;
    if opts.mode == Some(Mode::Complete) && pending.is_none() {
        return Err(Error::NoPending { device: name });
    }
    let u = unlock(&mut vol, pass, ui)?;
    match (opts.mode, pending) {
        (None | Some(Mode::Complete), Some(t)) => complete(hsm, &mut vol, &u, t, false, ui),
        (Some(Mode::Staged | Mode::InPlace), Some(t)) => {
            if vol.slot_state(t.token.unbound_keyslot) == Some(SlotState::Bound) {
                // An earlier run made the re-enciphered key the volume key and stopped before
                // it cleaned up: finish that, which is all there is to do.
                ui.info(&format!(
                    "An interrupted re-encipher of device '{name}' is being completed."
                ));
                return complete(hsm, &mut vol, &u, t, false, ui);
            }
            // Everything that can refuse the new stage is checked before the user is asked to
            // cancel the pending one: a refusal leaves the header as it was.
            let plan = plan(hsm, &mut vol, &u, opts, ui)?;
            if !ui.confirm(&format!(
                "A staged re-encipher is pending for device '{name}'. Do you want to cancel it and start a new one?"
            ))? {
                return Err(Error::Declined(format!(
                    "the pending re-encipher of '{name}' is kept"
                )));
            }
            // Token first: a crash in between leaves an orphan that prepare adopts or ignores.
            vol.remove_token(t.id)?;
            vol.destroy_keyslot(t.token.unbound_keyslot)?;
            prepare(hsm, &mut vol, &u, plan, ui)
        }
        (_, None) => {
            let plan = plan(hsm, &mut vol, &u, opts, ui)?;
            prepare(hsm, &mut vol, &u, plan, ui)
        }
    }
}

/// What [`prepare`] will do, decided (and every check that can refuse it made) before the
/// header is touched.
struct Plan {
    key: SecureKey,
    direction: Direction,
    in_place: bool,
    vp: VerificationPattern,
    /// The VP token must be written first (there is none).
    write_vp_token: bool,
}

fn plan(
    hsm: &Hsm,
    vol: &mut Volume,
    u: &Unlocked,
    opts: Request,
    ui: &mut dyn Ui,
) -> Result<Plan, Error> {
    let name = vol.name();
    let key = parse_key(&name, "the volume key", &u.volume_key)?;
    let v = match hsm.verify(&key, None) {
        Err(HsmError::OnlyNew { .. }) => {
            return Err(Error::Invalid(format!(
                "the secure volume key of device '{name}' is already enciphered with the NEW master key, which is not set yet: nothing to re-encipher; it becomes usable after the SET"
            )))
        }
        _ => verify(hsm, &name, "the secure volume key", &key)?,
    };
    let direction = opts
        .one_step()
        .map_err(|e| Error::Invalid(e.to_string()))?
        .unwrap_or(match v.register {
            Register::Old => Direction::FromOld,
            _ => Direction::ToNew,
        });
    let in_place = match opts.mode {
        Some(Mode::InPlace) => true,
        Some(Mode::Staged) => false,
        _ => v.register == Register::Old,
    };
    if v.register == Register::Old {
        ui.warn(&format!(
            "The secure volume key of device '{name}' is enciphered with the OLD master key: it stops working at the next master key change."
        ));
    }
    // VP first: it is what proves, at completion, that the re-enciphered key is the same AES key.
    let vp = vp_of(hsm, &name, "the secure volume key", &key)?;
    let write_vp_token = match vol.vp_token()? {
        Some(t) if t.token.verification_pattern != vp => {
            return Err(Error::VpMismatch {
                device: name,
                what: "the secure volume key".into(),
                found: vp.to_string(),
                expected: t.token.verification_pattern.to_string(),
                expected_from: format!("the verification pattern token {}", t.id),
            })
        }
        Some(_) => false,
        None => true,
    };
    // FromOld on a key under CURRENT would return it unchanged: nothing to do.
    if direction == Direction::FromOld && v.register == Register::Current {
        return Err(Error::Invalid(format!(
            "the secure volume key of device '{name}' is already enciphered with the CURRENT master key: there is nothing to re-encipher from OLD"
        )));
    }
    if direction == Direction::ToNew {
        require_new(hsm, &key)?;
    }
    Ok(Plan {
        key,
        direction,
        in_place,
        vp,
        write_vp_token,
    })
}

fn prepare(
    hsm: &Hsm,
    vol: &mut Volume,
    u: &Unlocked,
    plan: Plan,
    ui: &mut dyn Ui,
) -> Result<Outcome, Error> {
    let name = vol.name();
    let Plan {
        key,
        direction,
        in_place,
        vp,
        write_vp_token,
    } = plan;
    if write_vp_token {
        vol.set_vp_token(&VpToken::new(vp))?;
    }
    let (from, to) = match direction {
        Direction::ToNew => (Register::Current, Register::New),
        Direction::FromOld => (Register::Old, Register::Current),
    };
    ui.info(&format!(
        "The secure volume key of device '{name}' is enciphered with the {} master key and is being re-enciphered with the {} master key.",
        register_word(from),
        register_word(to)
    ));
    let new_key = hsm
        .reencipher(&key, direction, None)
        .map_err(|source| Error::Adapter {
            device: name.clone(),
            what: "the secure volume key".into(),
            source: Box::new(source),
        })?;
    let unbound = add_or_adopt(hsm, vol, u, &new_key, &vp)?;
    let token = ReencipherToken::new(vp, u.slot, unbound, new_key.mkvp());
    let id = vol.add_reencipher_token(&token)?;
    if in_place {
        return complete(hsm, vol, u, Found { id, token }, true, ui);
    }
    ui.info(&format!(
        "Staged re-enciphering is initiated for device '{name}'. After the NEW master key has been set to become the CURRENT master key, run 'zkey-cryptsetup reencipher' with option '--complete' to complete the re-enciphering process."
    ));
    Ok(Outcome::Staged {
        unbound_keyslot: unbound,
    })
}

/// Adds `new_key` as an unbound keyslot under the passphrase, unless an orphan unbound keyslot
/// (left by a crash after an earlier add) already holds an equivalent key: the same key type,
/// size and master key as `new_key` and, when the adapters can compute it, the same VP.
fn add_or_adopt(
    hsm: &Hsm,
    vol: &mut Volume,
    u: &Unlocked,
    new_key: &SecureKey,
    vp: &VerificationPattern,
) -> Result<u32, Error> {
    for slot in vol.orphan_unbound_slots()? {
        let Ok(bytes) = vol.slot_key(slot, u.passphrase.as_bytes()) else {
            continue; // another passphrase, or not ours
        };
        let Ok(k) = SecureKey::parse(&bytes) else {
            continue;
        };
        let same_kind = k.key_type() == new_key.key_type()
            && k.key_bits() == new_key.key_bits()
            && k.is_xts() == new_key.is_xts()
            && k.mkvp() == new_key.mkvp();
        if !same_kind {
            continue;
        }
        let same_vp = match hsm.verification_pattern(&k, None) {
            Ok(kvp) => kvp == *vp,
            // Under a NEW master key that is not set: the VP is checked at completion.
            Err(HsmError::OnlyNew { .. }) => true,
            Err(_) => false,
        };
        if same_vp {
            return Ok(slot);
        }
    }
    vol.reuse_pbkdf_of(u.slot)?;
    let bytes = Zeroizing::new(new_key.to_bytes());
    vol.add_unbound(&bytes, u.passphrase.as_bytes())
}

fn complete(
    hsm: &Hsm,
    vol: &mut Volume,
    u: &Unlocked,
    found: Found<ReencipherToken>,
    in_place: bool,
    ui: &mut dyn Ui,
) -> Result<Outcome, Error> {
    let name = vol.name();
    let Found { id, mut token } = found;
    let pass = u.passphrase.as_bytes();
    if vol.slot_state(token.unbound_keyslot) != Some(SlotState::Bound) {
        let slot = token.unbound_keyslot;
        let what = format!("the re-enciphered secure volume key in keyslot {slot}");
        let bytes = vol.slot_key(slot, pass)?;
        let ukey = parse_key(&name, &what, &bytes)?;
        let check_vp = match hsm.verify(&ukey, None) {
            Err(HsmError::OnlyNew { .. }) if in_place => false,
            Err(HsmError::OnlyNew { .. }) => {
                return Err(Error::NotYetSet {
                    device: name,
                    slot,
                })
            }
            Err(HsmError::Unusable { mkvp, .. }) => {
                return Err(Error::Invalid(format!(
                    "{what} of device '{name}' is enciphered with the master key {mkvp}, which no adapter holds any more: cancel the pending re-encipher and stage a new one with 'zkey-cryptsetup reencipher --staged'"
                )))
            }
            Err(source) => {
                return Err(Error::Adapter {
                    device: name,
                    what,
                    source: Box::new(source),
                })
            }
            Ok(v) if v.register == Register::Old => {
                // Staged to NEW, then the SET, then another SET: the key moved on once more.
                ui.warn(&format!(
                    "The re-enciphered secure volume key of device '{name}' is enciphered with the OLD master key: the master key has changed again since the re-encipher was staged."
                ));
                if !ui.confirm(&format!(
                    "Re-encipher it with the CURRENT master key now and complete the re-enciphering of device '{name}'?"
                ))? {
                    return Err(Error::Declined("the pending re-encipher is kept".into()));
                }
                ui.info(&format!(
                    "The re-enciphered secure volume key of device '{name}' is enciphered with the OLD master key and is being re-enciphered with the CURRENT master key."
                ));
                // Check the VP before adding anything: a wrong key must change nothing.
                check_token_vp(hsm, &name, &what, &ukey, &token.verification_pattern)?;
                let again = hsm
                    .reencipher(&ukey, Direction::FromOld, None)
                    .map_err(|source| Error::Adapter {
                        device: name.clone(),
                        what: what.clone(),
                        source: Box::new(source),
                    })?;
                // C1-C3: new keyslot, token to it, old unbound keyslot away.
                let new_slot = add_or_adopt(hsm, vol, u, &again, &token.verification_pattern)?;
                let old_unbound = token.unbound_keyslot;
                token = ReencipherToken::new(
                    token.verification_pattern,
                    token.original_keyslot,
                    new_slot,
                    again.mkvp(),
                );
                vol.replace_reencipher_token(id, &token)?;
                vol.destroy_keyslot(old_unbound)?;
                true
            }
            Ok(_) => true,
        };
        let slot = token.unbound_keyslot;
        if check_vp {
            let bytes = vol.slot_key(slot, pass)?;
            let what = format!("the re-enciphered secure volume key in keyslot {slot}");
            let ukey = parse_key(&name, &what, &bytes)?;
            check_token_vp(hsm, &name, &what, &ukey, &token.verification_pattern)?;
        }
        let others: Vec<u32> = vol
            .keyslots()
            .into_iter()
            .filter(|(s, st)| *st == SlotState::Bound && *s != token.original_keyslot)
            .map(|(s, _)| s)
            .collect();
        // C4
        vol.activate_unbound(slot, pass)?;
        if !others.is_empty() {
            ui.warn(&format!(
                "Keyslot(s) {} of device '{name}' held the previous volume key under other passphrases and no longer open the volume: add those passphrases again with 'cryptsetup luksAddKey'.",
                others.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    // C5, C6
    let destroyed = offer_destroy(vol, token.original_keyslot, token.unbound_keyslot, pass, ui)?;
    vol.remove_token(id)?;
    ui.info(&format!(
        "Re-enciphering has completed successfully for device '{name}'."
    ));
    Ok(Outcome::Completed {
        keyslot: token.unbound_keyslot,
        destroyed_keyslot: destroyed,
    })
}

fn check_token_vp(
    hsm: &Hsm,
    name: &str,
    what: &str,
    key: &SecureKey,
    expected: &VerificationPattern,
) -> Result<(), Error> {
    let vp = vp_of(hsm, name, what, key)?;
    if &vp != expected {
        return Err(Error::VpMismatch {
            device: name.into(),
            what: what.into(),
            found: vp.to_string(),
            expected: expected.to_string(),
            expected_from: "the re-encipher token".into(),
        });
    }
    Ok(())
}

/// The environment variable that says where sysfs is (as in s390-tools and zkey).
pub const SYSFS_ENV: &str = "SYSFS_ROOT";

/// The kernel's view of the adapters of `hsm`: the sysfs tree at `$SYSFS_ROOT`, else the
/// simulator's own tree, brought up to date with its state first (as zkey finds it).
pub fn sysfs_tree(hsm: &Hsm) -> Result<SysfsTree, Error> {
    let sim = hsm.simulator();
    sim.bus().map_err(|e| Error::Sysfs(e.to_string()))?;
    let root = std::env::var_os(SYSFS_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| sim.sys_root());
    Ok(SysfsTree::new(root))
}

/// Refuses a re-encipher of `key` to NEW unless the APQNs that can serve it agree on a complete
/// NEW master key, with zkey's cross-check and in its words ([`NotReady`]): otherwise the HSM
/// would stage to the NEW key of whichever APQN it picks, and a SET on the others (or of another
/// NEW key) would leave the staged key unusable.
///
/// zkey-cryptsetup binds no APQNs, so these are the APQNs the HSM chooses from: every online
/// APQN of the key's mode, less those that hold the key's master key in none of their registers.
/// Those belong to another domain group and cannot serve the key, and their NEW registers are
/// another master key change's business.
pub fn require_new(hsm: &Hsm, key: &SecureKey) -> Result<(), Error> {
    let tree = sysfs_tree(hsm)?;
    let key_type = key.key_type();
    let mkvp = key.mkvp();
    let sysfs = |e: ap_sim::sysfs::SysfsError| Error::Sysfs(e.to_string());
    let online: Vec<Apqn> = tree
        .queues()
        .map_err(sysfs)?
        .into_iter()
        .filter(|q| q.mode == Some(key_type.mode()) && q.status == Status::Online)
        .map(|q| q.apqn)
        .collect();
    let all = cross_check(&tree, key_type, &online, Some(mkvp), Purpose::ToNew).map_err(sysfs)?;
    let holds = |r: &Option<Reading>| matches!(r, Some(Reading::Known(v)) if v.mkvp.is_some_and(|m| m.matches(&mkvp)));
    let serving: Vec<Apqn> = all
        .apqns
        .iter()
        .filter(|a| a.current.is_none() || holds(&a.current) || holds(&a.old) || holds(&a.new))
        .map(|a| a.apqn)
        .collect();
    let cc = cross_check(&tree, key_type, &serving, Some(mkvp), Purpose::ToNew).map_err(sysfs)?;
    if cc.is_proper() {
        Ok(())
    } else {
        Err(Error::NotReady(NotReady(cc)))
    }
}
