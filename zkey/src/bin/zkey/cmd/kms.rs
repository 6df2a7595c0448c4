//! `kms plugins/bind/unbind/info/configure/reencipher/list/import/refresh`.

use crate::prelude::*;

pub(crate) fn kms_cmd(cmd: KmsCmd) -> Result<ExitCode> {
    use zkey_kms_protocol::ConfigureStatus;
    if let KmsCmd::Plugins { json } = cmd {
        let (path, list) = zkey::kms::plugins()?;
        if json {
            let v: Vec<_> = list
                .iter()
                .map(|(n, e)| serde_json::json!({ "name": n, "executable": e }))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "conf": path, "plugins": v }))?
            );
            return Ok(ExitCode::SUCCESS);
        }
        if list.is_empty() {
            println!(
                "No KMS plug-ins in {}: add lines NAME=EXECUTABLE, e.g. KMIP=zkey-kms-kmip.",
                path.display()
            );
        }
        let mut t = Table::new(["PLUG-IN", "EXECUTABLE"]);
        for (n, e) in list {
            t.row([n, e.display().to_string()]);
        }
        if !t.is_empty() {
            print!("{}", t.render());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ad = adapters()?;
    let repo = open_or_create_repo()?;
    let w = repo.write(lock_wait())?;
    // What the plug-in reports besides its results (a failover, a wrapping key it replaced)
    // reaches the user on every command; on stderr when stdout is JSON, to keep that parseable.
    let print_outcomes =
        |outs: &[zkey::kms::KeyOutcome], json: bool, what: zkey::kms::Done| -> Result<ExitCode> {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "keys": outs }))?
                );
            } else {
                for o in outs {
                    match (&o.error, &o.note) {
                        (Some(e), _) => println!("Key '{}': FAILED: {e}", o.name),
                        (None, Some(n)) => println!("Key '{}': {}: {n}.", o.name, o.result),
                        (None, None) => println!("Key '{}': {}.", o.name, o.result),
                    }
                }
                let failed = outs.iter().filter(|o| o.error.is_some()).count();
                let done = outs.iter().filter(|o| o.result == what).count();
                println!(
                    "{done} {what}, {} skipped, {failed} failed",
                    outs.len() - done - failed
                );
            }
            Ok(if outs.iter().any(|o| o.error.is_some()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        };
    match cmd {
        KmsCmd::Plugins { .. } => unreachable!("handled above"),
        KmsCmd::Bind { plugin } => {
            let (c, notices) = zkey::ops::kms_bind(&w, &ad, &plugin)?;
            show_notices(&notices, false);
            println!("The repository is bound to the KMS plug-in '{plugin}' ({}). Next: zkey kms configure --apqns ... and the plug-in's options.", c.config.display());
        }
        KmsCmd::Unbind { force } => {
            let (kms, n, notices) = zkey::ops::kms_unbind(&w, &ad, force, &mut TermUi::default())?;
            show_notices(&notices, false);
            println!("The repository is no longer bound to '{kms}'; {n} keys are local keys now.");
        }
        KmsCmd::Info { json } => {
            let (c, info, notices) = zkey::kms::info(&w)?;
            show_notices(&notices, json);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "binding": c, "plugin": info })
                    )?
                );
            } else {
                println!("KMS plug-in:  {} ({})", c.kms, c.config.display());
                println!(
                    "Configured:   {}",
                    if info.configured { "yes" } else { "no" }
                );
                println!(
                    "CCA APQNs:    {}",
                    or_dash(ap_sim::apqn::format_list(&c.cca_apqns))
                );
                println!(
                    "EP11 APQNs:   {}",
                    or_dash(ap_sim::apqn::format_list(&c.ep11_apqns))
                );
                for (k, v) in info.details {
                    println!("{:<13} {v}", format!("{k}:"));
                }
            }
        }
        KmsCmd::Configure {
            apqns,
            servers,
            server_ca,
            gen_csr,
            gen_self_signed_cert,
            client_cert,
            cert_subject,
            plugin_options,
        } => {
            let mut opts = std::collections::BTreeMap::new();
            let mut put = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    opts.insert(k.to_string(), v);
                }
            };
            put("servers", servers);
            put("server-ca", server_ca.map(|p| p.display().to_string()));
            put("gen-csr", gen_csr.map(|p| p.display().to_string()));
            put(
                "gen-self-signed-cert",
                gen_self_signed_cert.map(|p| p.display().to_string()),
            );
            put("client-cert", client_cert.map(|p| p.display().to_string()));
            put("cert-subject", cert_subject);
            for o in plugin_options {
                let (k, v) = o
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--plugin-option '{o}': write NAME=VALUE"))?;
                opts.insert(k.to_string(), v.to_string());
            }
            let (r, notices) =
                zkey::ops::kms_configure(&w, &ad, apqns.map(ApqnList::into_vec), opts)?;
            show_notices(&notices, false);
            match r.status {
                ConfigureStatus::Complete => println!("The KMS plug-in is configured."),
                ConfigureStatus::Incomplete => {
                    println!("The configuration is not complete yet; still needed:");
                    r.missing.iter().for_each(|m| println!("  {m}"));
                }
            }
        }
        KmsCmd::Reencipher { way } => {
            let (mode, direction) = zkey_kms_protocol::wire_request(way.request()?)?;
            let (rep, notices) = zkey::ops::kms_reencipher(&w, &ad, mode, direction)?;
            show_notices(&notices, false);
            for k in &rep.keys {
                match k.mktype {
                    Some(t) => println!(
                        "{} ({}): {}: {}",
                        k.key,
                        t.name().to_uppercase(),
                        k.action,
                        k.detail
                    ),
                    None => println!("{}: {}: {}", k.key, k.action, k.detail),
                }
            }
            let changed = rep.changed();
            if changed.is_empty() {
                println!("Nothing to do: no key of the plug-in is affected.");
            } else {
                let mut counts: Vec<(&str, usize)> = Vec::new();
                for k in &rep.keys {
                    match counts.iter_mut().find(|(a, _)| *a == k.action) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((&k.action, 1)),
                    }
                }
                let line: Vec<String> = counts.iter().map(|(a, n)| format!("{n} {a}")).collect();
                println!("{}", line.join(", "));
            }
        }
        KmsCmd::List { label, json } => {
            let (keys, notices) = zkey::kms::list(&w, label.as_deref())?;
            show_notices(&notices, json);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "keys": keys }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(["LABEL", "ID", "STATE", "NAME", "XTS", "VOLUMES"]);
            for k in &keys {
                let p = |n: &str| k.properties.get(n).cloned().unwrap_or_default();
                t.row([
                    k.label.clone(),
                    k.key_id.clone(),
                    k.state.clone(),
                    or_dash(p("zkey-name")),
                    if p("xts-key").is_empty() {
                        "no".into()
                    } else {
                        "yes".into()
                    },
                    or_dash(p("volumes")),
                ]);
            }
            if t.is_empty() {
                println!("No keys in the KMS.");
            } else {
                print!("{}", t.render());
            }
        }
        KmsCmd::Import {
            label,
            name,
            no_volume_check,
            json,
        } => {
            let (outs, notices) =
                zkey::ops::kms_import(&w, &ad, label.as_deref(), name.as_ref(), !no_volume_check)?;
            show_notices(&notices, json);
            return print_outcomes(&outs, json, zkey::kms::Done::Imported);
        }
        KmsCmd::Refresh {
            name,
            refresh_properties,
            json,
        } => {
            let (outs, notices) =
                zkey::ops::kms_refresh(&w, &ad, name.as_ref(), refresh_properties)?;
            show_notices(&notices, json);
            return print_outcomes(&outs, json, zkey::kms::Done::Refreshed);
        }
    }
    Ok(ExitCode::SUCCESS)
}
