//! Human and JSON output of the library's typed results: aligned tables, key statuses, the
//! readiness verdicts.

use crate::prelude::*;

/// What the library says about a key it added, besides the key itself.
pub(crate) fn print_added(added: &zkey::ops::Added) {
    show_notices(&added.notices, false);
    if let Some(id) = &added.staged_in {
        println!(
            "Master key change {id} is open on this key's APQNs: the key was staged for it too."
        );
    }
}

/// The readiness table: every object that is not simply safe, with what to do.
pub(crate) fn print_readiness(rd: &zkey::readiness::Readiness) {
    use zkey::readiness::Verdict;
    let mut t = Table::new(["OBJECT", "NAME", "MK", "VERDICT", "WHY", "WHAT TO DO"]);
    for o in rd.objects.iter().filter(|o| o.verdict != Verdict::Safe) {
        t.row([
            o.kind.word().to_string(),
            o.name.clone(),
            o.mktype.map_or_else(|| "-".into(), |m| m.to_string()),
            o.verdict.word().to_string(),
            o.reason.clone(),
            o.action.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if !t.is_empty() {
        print!("{}", t.render());
    }
}

pub(crate) fn register_words(r: Option<Register>) -> &'static str {
    match r {
        Some(Register::Current) => "CURRENT master key",
        Some(Register::Old) => "OLD master key",
        Some(Register::New) => "NEW master key (not set yet)",
        None => "unknown master key",
    }
}

pub(crate) fn print_status(s: &KeyStatus, verdict: zkey::readiness::Verdict) {
    println!("Validation of secure key '{}':", s.name);
    let status = if s.valid { "Valid" } else { "Invalid" };
    println!("  Status:                {status}");
    if let Some(e) = &s.error {
        println!("  Problem:               {e}");
    }
    if let Some(t) = s.key_type {
        println!("  Secure key size:       {} bytes", s.secure_key_size);
        println!("  Key type:              {t}");
        println!(
            "  Clear key size:        {} bits{}",
            s.clear_key_bits.unwrap_or(0),
            if s.xts == Some(true) { " (XTS)" } else { "" }
        );
    }
    if let Some(m) = s.mkvp {
        println!(
            "  Enciphered with:       {} (MKVP: {m})",
            register_words(s.register)
        );
    }
    if let Some(vp) = &s.verification_pattern {
        println!("  Verification pattern:  {vp}");
    }
    if let Some(i) = &s.integrity {
        println!("  Properties:            {i}");
    }
    if !s.apqns.is_empty() {
        println!(
            "  Associated APQNs:      {}",
            ap_sim::apqn::format_list(&s.apqns)
        );
    }
    if let Some(st) = &s.staged {
        println!(
            "  Re-enciphering:        pending: staged key enciphered with the {}",
            register_words(st.register)
        );
    }
    println!("  Readiness:             {verdict}");
    if matches!(
        verdict,
        zkey::readiness::Verdict::AtRisk | zkey::readiness::Verdict::Lost
    ) {
        println!(
            "  *** AT RISK ***:       {}",
            s.advice.as_deref().unwrap_or("")
        );
    } else if let Some(a) = s.advice.as_deref().filter(|_| !s.valid) {
        println!("  What to do:            {a}");
    }
    if let Some(cc) = &s.apqn_check {
        if !cc.findings.is_empty() {
            for line in cc.report().lines() {
                println!("  {line}");
            }
        }
    }
    println!();
}

pub(crate) fn print_result(r: &reencipher::KeyResult) {
    match &r.outcome {
        Outcome::Staged { from, to, .. } => println!(
            "Key '{}': staged re-enciphering from the {} to the {} master key. After the NEW master key is set, run 'zkey reencipher --complete'.",
            r.name,
            from.name(),
            to.name()
        ),
        Outcome::InPlace { from, to, .. } => println!("Key '{}': re-enciphered from the {} to the {} master key.", r.name, from.name(), to.name()),
        Outcome::Completed { .. } => println!("Key '{}': re-enciphering completed: the staged key is now the key.", r.name),
        Outcome::Skipped { reason } => println!("Key '{}': skipped: {reason}.", r.name),
        Outcome::Failed { error } => println!("Key '{}': FAILED: {error}", r.name),
    }
    if !r.luks2_volumes.is_empty() {
        println!(
            "  The LUKS2 volumes of this key hold their own copy of it: also run 'zkey-cryptsetup reencipher' for {}",
            r.luks2_volumes.join(", ")
        );
    }
}

pub(crate) fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

pub(crate) fn state_word(s: &KeyStatus, verdict: zkey::readiness::Verdict) -> String {
    use zkey::readiness::Verdict;
    let base = match (s.valid, s.register) {
        (false, None) if s.unreachable && s.key_type.is_none() => "not verified",
        (true, Some(Register::Current)) => "valid (CURRENT)",
        (true, Some(Register::Old)) => "valid (OLD)",
        (false, Some(Register::New)) => "waiting for SET",
        _ => "INVALID",
    };
    let mut w = base.to_string();
    if s.staged.is_some() {
        w.push_str(", re-enciphering pending");
    }
    match verdict {
        Verdict::AtRisk | Verdict::Lost => w.push_str(", AT RISK"),
        Verdict::Staged if s.staged.is_none() => w.push_str(", staged"),
        _ => {}
    }
    w
}

pub(crate) fn list_json(
    p: &KeyProperties,
    s: &KeyStatus,
    verdict: zkey::readiness::Verdict,
) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "key_type": p.key_type,
        "description": p.description,
        "apqns": p.apqns,
        "volumes": p.volumes.iter().map(Volume::to_string).collect::<Vec<_>>(),
        "volume_type": p.volume_type.to_string(),
        "sector_size": p.sector_size.bytes(),
        "verification_pattern": p.verification_pattern.map(|v| v.to_string()),
        "creation_time": p.creation_time.as_ref().map(|t| t.to_string()),
        "update_time": p.update_time.as_ref().map(|t| t.to_string()),
        "reencipher_time": p.reencipher_time.as_ref().map(|t| t.to_string()),
        "kms": p.kms,
        "status": s,
        "verdict": verdict,
    })
}
