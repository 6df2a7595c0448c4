//! `validate` and `list`: key statuses and readiness verdicts.

use crate::prelude::*;

pub(crate) fn validate(a: ValidateArgs) -> Result<ExitCode> {
    let ad = adapters()?;
    if let Some(f) = &a.file {
        let bytes = zkey::ops::read_key_file(f)?;
        let st = keyops::status(&ad, &f.display().to_string(), &bytes, None, None, false);
        let (verdict, _) = zkey::readiness::key_verdict(&st);
        if a.json {
            let v = serde_json::json!({ "keys": [&st], "summary": { "valid": st.valid as usize, "invalid": !st.valid as usize, "at_risk": st.risk.is_some() as usize } });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_status(&st, verdict);
        }
        return Ok(exit_if(a.all && !verdict.ready(), Exit::AtRisk));
    }
    let repo = open_repo()?;
    let r = repo.read(lock_wait())?;
    let sel = a.keys.selection();
    let plugin = zkey::readiness::plugin_facts(&r)?;
    let scope = zkey::readiness::Scope {
        keys: sel.clone(),
        change: None,
        without_plugin_keys: sel.is_filtered(),
        apqn_check: !a.no_apqn_check,
    };
    let rd = zkey::readiness::assess(&r, &ad, &scope, &plugin)?;
    sel.require_match(rd.keys.len())?;
    let statuses = &rd.keys;
    let valid = statuses.iter().filter(|s| s.valid).count();
    let invalid = statuses.len() - valid;
    let at_risk = rd.summary.at_risk + rd.summary.lost;
    if a.json {
        let v = serde_json::json!({ "keys": statuses, "summary": { "valid": valid, "invalid": invalid, "at_risk": at_risk }, "readiness": &rd });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for s in statuses {
            let verdict = rd
                .object(zkey::readiness::Kind::Key, &s.name)
                .map_or(zkey::readiness::Verdict::Unknown, |o| o.verdict);
            print_status(s, verdict);
        }
        print_readiness(&rd);
        println!(
            "{valid} keys are valid, {invalid} keys are invalid, {at_risk} objects are at risk"
        );
        println!("{}", rd.headline());
    }
    Ok(exit_if(a.all && rd.at_risk, Exit::AtRisk))
}

pub(crate) fn list(a: ListArgs) -> Result<ExitCode> {
    use zkey::readiness::{Kind, Verdict};
    // Listing needs only the files: without adapters the keys are listed "not verified".
    let ad = adapters();
    if let Err(e) = &ad {
        eprintln!("zkey: WARNING: the crypto adapters cannot be reached ({e}): the keys and their properties are not verified");
    }
    let repo = open_repo()?;
    let r = repo.read(lock_wait())?;
    let sel = a.keys.selection().resolve(&r)?;
    let vol_patterns: Vec<Pattern> = a
        .volumes
        .as_deref()
        .map(|s| s.split(',').map(Pattern::new).collect())
        .unwrap_or_default();
    let plugin = zkey::readiness::plugin_facts(&r)?;
    let rd = match &ad {
        Ok(ad) => Some(zkey::readiness::assess(
            &r,
            ad,
            &zkey::readiness::Scope {
                keys: sel.clone(),
                without_plugin_keys: sel.is_filtered(),
                ..Default::default()
            },
            &plugin,
        )?),
        Err(_) => None,
    };
    let mut rows = Vec::new();
    let mut damaged = Vec::new();
    for e in r.entries()? {
        match e {
            Ok(e) => {
                if !sel.matches(&e.name, &e.properties.apqns)
                    || a.volume_type.is_some_and(|t| t != e.properties.volume_type)
                    || a.key_type
                        .is_some_and(|t| t.name() != e.properties.key_type)
                    || (!vol_patterns.is_empty()
                        && !e
                            .properties
                            .volumes
                            .iter()
                            .any(|v| vol_patterns.iter().any(|p| p.matches_volume(v))))
                {
                    continue;
                }
                let Some(rd) = &rd else {
                    let st = zkey::keyops::unverified_status(
                        &e,
                        "the crypto adapters cannot be reached",
                    );
                    rows.push((e.properties.clone(), st, Verdict::Unknown));
                    continue;
                };
                let Some(st) = rd.keys.iter().find(|k| k.name == e.name.as_str()) else {
                    continue;
                };
                let verdict = rd
                    .object(Kind::Key, e.name.as_str())
                    .map_or(Verdict::Unknown, |o| o.verdict);
                rows.push((e.properties.clone(), st.clone(), verdict));
            }
            Err(d) if sel.matches_damaged(&d.name) => damaged.push(d),
            Err(_) => {}
        }
    }
    let filtered = sel.is_filtered()
        || a.volume_type.is_some()
        || a.key_type.is_some()
        || !vol_patterns.is_empty();
    if filtered && rows.is_empty() && damaged.is_empty() {
        let mut what = sel.describe();
        if let Some(v) = &a.volumes {
            what.push_str(&format!(" --volumes '{v}'"));
        }
        if let Some(t) = a.volume_type {
            what.push_str(&format!(" --volume-type {t}"));
        }
        if let Some(t) = a.key_type {
            what.push_str(&format!(" --key-type {t}"));
        }
        return Err(zkey::ZkeyError::NoMatch(what.trim().to_string()).into());
    }
    // Volumes and plug-in keys of the listed keys that are not ready are listed below the table.
    let listed: Vec<&str> = rows.iter().map(|(_, s, _)| s.name.as_str()).collect();
    let below: Vec<&zkey::readiness::Object> = rd
        .iter()
        .flat_map(|rd| rd.not_ready())
        .filter(|o| match o.kind {
            Kind::Key => listed.contains(&o.name.as_str()),
            Kind::Volume => o.key.as_deref().is_some_and(|k| listed.contains(&k)),
            Kind::PluginKey => !filtered,
        })
        .collect();
    if a.json {
        let keys: Vec<_> = rows.iter().map(|(p, s, v)| list_json(p, s, *v)).collect();
        let dmg: Vec<_> = damaged.iter().map(|d| serde_json::json!({ "name": d.name.to_string(), "damage": d.damage.iter().map(|x| x.to_string()).collect::<Vec<_>>() })).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "keys": keys, "damaged": dmg, "not_ready": below })
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new([
        "NAME",
        "KEY TYPE",
        "BITS",
        "XTS",
        "APQNS",
        "VOLUMES",
        "VOLUME TYPE",
        "STATE",
    ]);
    for (p, s, v) in &rows {
        t.row([
            s.name.clone(),
            p.key_type.clone(),
            s.clear_key_bits
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            if s.xts == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            or_dash(ap_sim::apqn::format_list(&p.apqns)),
            or_dash(zkey::volume::format_volume_list(&p.volumes)),
            p.volume_type.to_string(),
            state_word(s, *v),
        ]);
    }
    for d in &damaged {
        t.row([
            d.name.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "DAMAGED".into(),
        ]);
    }
    if t.is_empty() {
        println!("No keys.");
    } else {
        print!("{}", t.render());
    }
    for o in below
        .iter()
        .filter(|o| o.kind != Kind::Key || o.verdict != Verdict::Unknown)
    {
        println!(
            "*** {}: {} '{}': {}{}",
            o.verdict.word().to_uppercase(),
            o.kind.word(),
            o.name,
            o.reason,
            o.action
                .as_deref()
                .map(|a| format!("; run '{a}'"))
                .unwrap_or_default()
        );
    }
    for (_, s, _) in &rows {
        if let Some(i) = s
            .integrity
            .as_ref()
            .filter(|i| **i != zkey::integrity::Integrity::Verified)
        {
            println!("*** properties of key '{}': {i}", s.name);
        }
    }
    for d in &damaged {
        println!("*** DAMAGED: {d}");
    }
    Ok(ExitCode::SUCCESS)
}
