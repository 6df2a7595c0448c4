//! `mkchange plan/start/status/finalize/cancel`.

use crate::prelude::*;

pub(crate) fn mkchange_cmd(cmd: MkchangeCmd) -> Result<ExitCode> {
    use zkey::mkchange::{self, Operation};
    let ad = adapters()?;
    let repo = open_repo()?;
    let list = ap_sim::apqn::format_list;
    let print_json = |v: serde_json::Value| -> Result<()> {
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(())
    };
    let mk_names = |op: &Operation| {
        op.types
            .iter()
            .map(|t| t.mktype.to_string().to_uppercase())
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let next_steps = |op: &Operation, rd: &zkey::readiness::Readiness| {
        println!("{}", rd.headline());
        if rd.safe_to_set {
            println!(
                "Next: the SECURITY OFFICER sets the new {} master key on {} at the TKE",
                mk_names(op),
                list(&op.apqns)
            );
            for t in &op.types {
                println!(
                    "      (here: ap-sim tke set --apqns {} --mktype {}),",
                    list(&op.apqns),
                    t.mktype
                );
            }
            println!(
                "      then the ADMINISTRATOR runs: zkey mkchange finalize -i {}",
                op.id
            );
            return;
        }
        print_readiness(rd);
        let errors: Vec<String> = op
            .keys
            .iter()
            .filter_map(|k| k.error.as_ref().map(|e| format!("  key {}: {e}", k.name)))
            .chain(
                op.plugin_keys
                    .iter()
                    .filter_map(|k| k.error.as_ref().map(|e| format!("  {}: {e}", k.key))),
            )
            .chain(op.volumes.iter().filter_map(|v| {
                v.error
                    .as_ref()
                    .map(|e| format!("  volume {}: {e}", v.volume))
            }))
            .collect();
        if !errors.is_empty() {
            println!("What failed while staging:");
            errors.iter().for_each(|e| println!("{e}"));
        }
    };
    match cmd {
        MkchangeCmd::Plan { spec, json } => {
            let w = repo.write(lock_wait())?;
            let req = spec.request()?;
            let p = mkchange::plan(&w, &ad, &req)?;
            let rd = zkey::readiness::assess(
                &w,
                &ad,
                &zkey::readiness::Scope {
                    change: Some((req.apqns.clone(), req.types.clone())),
                    ..Default::default()
                },
                &zkey::readiness::plugin_facts(&w)?,
            )?;
            if json {
                print_json(serde_json::json!({ "plan": p, "ready": p.ready(), "readiness": rd }))?;
            } else {
                println!(
                    "Master key change of {} on {}:",
                    spec.mktype
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    list(&p.apqns)
                );
                let mut t = Table::new(["CHECK", "VERDICT", "DETAIL"]);
                for c in &p.checks {
                    t.row([
                        c.check.clone(),
                        if c.ok { "ok".into() } else { "FAILED".into() },
                        c.detail.clone(),
                    ]);
                }
                print!("{}", t.render());
                let mut t = Table::new(["KEY", "MK", "ENCIPHERED WITH", "LUKS2 VOLUMES", "NOTE"]);
                for k in &p.keys {
                    let vols = k
                        .luks2_volumes
                        .iter()
                        .map(|v| {
                            format!(
                                "{}{}{}",
                                v.volume,
                                if v.reachable { "" } else { " (unreachable)" },
                                if v.passphrase_known {
                                    ""
                                } else {
                                    " (passphrase: ask)"
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    t.row([
                        k.name.to_string(),
                        k.mktype.to_string(),
                        register_words(k.register).into(),
                        or_dash(vols),
                        k.at_risk.clone().unwrap_or_default(),
                    ]);
                }
                if !t.is_empty() {
                    print!("\n{}", t.render());
                }
                for k in &p.plugin_keys {
                    println!("KMS plug-in key: {}", k.key);
                }
                println!();
                print_readiness(&rd);
                println!("{}", rd.headline());
                println!(
                    "\n{}",
                    if p.ready() {
                        "Ready: 'zkey mkchange start' with the same options stages everything."
                    } else {
                        "NOT READY: fix the FAILED checks first."
                    }
                );
            }
            Ok(if p.ready() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        MkchangeCmd::Start {
            spec,
            dry_run,
            json,
        } => {
            let w = repo.write(lock_wait())?;
            let (op, _) = mkchange::start(&w, &ad, &spec.request()?, dry_run)?;
            let rd = mkchange::readiness(&w, &ad, &op)?;
            if json {
                print_json(
                    serde_json::json!({ "operation": op, "dry_run": dry_run, "safe_to_set": rd.safe_to_set, "readiness": rd }),
                )?;
            } else if dry_run {
                println!(
                    "Would start a master key change on {} staging {} keys and {} volumes:",
                    list(&op.apqns),
                    op.keys.len(),
                    op.volumes.len()
                );
                for k in &op.keys {
                    println!("  key {} ({})", k.name, k.mktype);
                }
                for v in &op.volumes {
                    println!(
                        "  volume {}{}",
                        v.volume,
                        if v.passphrase_known {
                            ""
                        } else {
                            " (the administrator stages it: passphrase not held)"
                        }
                    );
                }
            } else {
                println!("Master key change operation {} is {}.", op.id, op.state);
                next_steps(&op, &rd);
            }
            Ok(if dry_run || rd.safe_to_set {
                Exit::Done.into()
            } else if op.state == mkchange::State::Error {
                Exit::Failed.into()
            } else {
                Exit::AtRisk.into()
            })
        }
        MkchangeCmd::Status { id, json } => {
            let r = repo.read(lock_wait())?;
            let ops: Vec<Operation> = match &id {
                Some(id) => vec![mkchange::load(&r, id)?],
                None => mkchange::list(&r)?,
            };
            let sets: Vec<_> = ops
                .iter()
                .map(|o| mkchange::set_status(&ad, o).unwrap_or_default())
                .collect();
            if json {
                let mut v = Vec::new();
                for (o, s) in ops.iter().zip(&sets) {
                    let rd = mkchange::readiness(&r, &ad, o)?;
                    v.push(serde_json::json!({ "operation": o, "set": s, "safe_to_set": rd.safe_to_set, "readiness": rd }));
                }
                print_json(serde_json::json!({ "operations": v }))?;
                return Ok(ExitCode::SUCCESS);
            }
            if ops.is_empty() {
                println!("No master key change operations.");
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new([
                "ID",
                "STATE",
                "APQNS",
                "MK",
                "KEYS",
                "VOLUMES",
                "SET DONE ON",
                "UPDATED",
            ]);
            for (o, s) in ops.iter().zip(&sets) {
                let done = |k: mkchange::ItemState| o.keys.iter().filter(|i| i.state == k).count();
                t.row([
                    o.id.clone(),
                    o.state.to_string(),
                    list(&o.apqns),
                    o.types
                        .iter()
                        .map(|t| t.mktype.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    format!(
                        "{} ({} staged, {} completed)",
                        o.keys.len(),
                        done(mkchange::ItemState::Staged),
                        done(mkchange::ItemState::Completed)
                    ),
                    o.volumes.len().to_string(),
                    or_dash(
                        s.iter()
                            .map(|x| list(&x.set_on))
                            .filter(|x| !x.is_empty())
                            .collect::<Vec<_>>()
                            .join(";"),
                    ),
                    o.updated.clone(),
                ]);
            }
            print!("{}", t.render());
            if let [o] = ops.as_slice() {
                if let Some(e) = &o.error {
                    println!("Error: {e}");
                }
                if matches!(
                    o.state,
                    mkchange::State::Reenciphered | mkchange::State::Error
                ) {
                    next_steps(o, &mkchange::readiness(&r, &ad, o)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MkchangeCmd::Finalize { id, dry_run, json } => {
            let w = repo.write(lock_wait())?;
            let op = mkchange::finalize(&w, &ad, &id, dry_run)?;
            if json {
                print_json(serde_json::json!({ "operation": op, "dry_run": dry_run }))?;
            } else if dry_run {
                println!("The SET is done on every APQN: finalize would complete {} keys and {} volumes.", op.keys.len(), op.volumes.iter().filter(|v| v.passphrase_known).count());
            } else if op.state == mkchange::State::Done {
                println!("Master key change {} is DONE: {} keys and {} volumes are enciphered with the new {} master key.", op.id, op.keys.len(), op.volumes.iter().filter(|v| v.state == mkchange::ItemState::Completed).count(), mk_names(&op));
                println!(
                    "The previous secure keys are kept in {} until the next change is finalized.",
                    repo.path().join("mkchange").join(&op.id).display()
                );
                let rd = mkchange::readiness(&w, &ad, &op)?;
                for o in rd.not_ready() {
                    println!(
                        "The ADMINISTRATOR checks {} {}: {}{}",
                        o.kind.word(),
                        o.name,
                        o.reason,
                        o.action
                            .as_deref()
                            .map(|a| format!("; run '{a}'"))
                            .unwrap_or_default()
                    );
                }
            } else {
                println!(
                    "Master key change {} is {}: {}",
                    op.id,
                    op.state,
                    op.error.as_deref().unwrap_or("")
                );
                for k in op.keys.iter().filter(|k| k.error.is_some()) {
                    println!("  key {}: {}", k.name, k.error.as_deref().unwrap_or(""));
                }
                for v in op.volumes.iter().filter(|v| v.error.is_some()) {
                    println!(
                        "  volume {}: {}",
                        v.volume,
                        v.error.as_deref().unwrap_or("")
                    );
                }
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        MkchangeCmd::Cancel { id, dry_run, force } => {
            let w = repo.write(lock_wait())?;
            if !dry_run
                && !confirm(
                    &format!("Cancel master key change {id}? Its staged keys are removed"),
                    force,
                )?
            {
                bail!("operation {id} was not cancelled");
            }
            let op = mkchange::cancel(&w, &ad, &id, dry_run)?;
            if dry_run {
                println!(
                    "Cancelling {id} would remove the staged keys of {} keys.",
                    op.keys.len()
                );
            } else {
                println!("Master key change {} is {}.", op.id, op.state);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
