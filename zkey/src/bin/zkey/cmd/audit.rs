//! `audit verify` and `audit show`.

use crate::prelude::*;

pub(crate) fn audit_cmd(a: AuditCmd) -> Result<ExitCode> {
    let ad = adapters()?;
    let repo = open_repo()?;
    let sim = ad.hsm.simulator();
    match a {
        AuditCmd::Verify { json } => {
            let vs = zkey::audit::verify_all(&repo.read(lock_wait())?, sim)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "logs": vs }))?
                );
            } else {
                for v in &vs {
                    if v.torn_tail {
                        println!(
                            "{} ({}): line {} is incomplete (a write torn by a crash or a full disk); it was never confirmed and the next append removes it",
                            v.log,
                            v.path.display(),
                            v.records + 1
                        );
                    }
                    match &v.first_break {
                        None => println!(
                            "{} ({}): intact, {} records{}",
                            v.log,
                            v.path.display(),
                            v.records,
                            if v.unconfirmed_tail {
                                "; the last one was written but not yet confirmed by the adapter (a crash while it was appended)"
                            } else {
                                ", the last one confirmed by the adapter"
                            }
                        ),
                        Some(b) => println!(
                            "{} ({}): BROKEN at record {} (line {}): {}",
                            v.log,
                            v.path.display(),
                            b.line,
                            b.line,
                            b.why
                        ),
                    }
                    let c = &v.actions;
                    if c.done + c.partly_done + c.not_done + c.unknown > 0 {
                        println!(
                            "  actions: {} done, {} partly done, {} not done (failed), {} unknown",
                            c.done, c.partly_done, c.not_done, c.unknown
                        );
                    }
                    for a in &v.unknown_actions {
                        println!(
                            "  UNKNOWN: {} {} (record {}, {}{}): no result was recorded; the command was interrupted (a crash) or is still running. Check {}",
                            a.event,
                            or_dash(a.keys.join(",")),
                            a.seq,
                            a.time,
                            a.details.as_deref().map(|d| format!(", {d}")).unwrap_or_default(),
                            a.check.as_deref().unwrap_or("what it names")
                        );
                    }
                }
            }
            Ok(if vs.iter().all(|v| v.intact) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCmd::Show {
            event,
            key,
            apqn,
            mktype,
            since,
            source,
            last,
            json,
        } => {
            let f = zkey::audit::Filter {
                event,
                key,
                apqn,
                mktype,
                since,
                source: source.map(|s| {
                    if s == "tke" {
                        zkey::audit::Source::Tke
                    } else {
                        zkey::audit::Source::Zkey
                    }
                }),
            };
            let mut entries = zkey::audit::show(&repo.read(lock_wait())?, sim, &f)?;
            if let Some(n) = last {
                entries.drain(..entries.len().saturating_sub(n));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "records": entries }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new([
                "TIME", "SOURCE", "USER", "EVENT", "APQNS", "MK", "OLD MKVP", "NEW MKVP", "KEYS",
                "RESULT",
            ]);
            for e in &entries {
                let r = &e.record.event;
                t.row([
                    e.record.time.clone(),
                    format!("{:?}", e.source).to_lowercase(),
                    e.record.user.clone(),
                    r.event.clone(),
                    or_dash(ap_sim::apqn::format_list(&r.apqns)),
                    r.mktype
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.old_mkvp
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.new_mkvp
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                    or_dash(r.keys.join(",")),
                    match e.status {
                        Some(zkey::audit::ActionStatus::Unknown) => {
                            "unknown: interrupted, no result recorded".to_string()
                        }
                        _ => r.result.clone(),
                    },
                ]);
            }
            if t.is_empty() {
                println!("No records.");
            } else {
                print!("{}", t.render());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
