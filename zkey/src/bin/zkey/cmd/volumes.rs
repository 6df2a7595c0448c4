//! `crypttab` and `cryptsetup`: the commands for the keys' volumes, and `--run`.

use crate::prelude::*;

pub(crate) fn volume_plans(f: &VolumeFilter) -> Result<Vec<VolumePlan>> {
    let repo = open_repo()?;
    let r: Reader<'_> = repo.read(lock_wait())?;
    let volumes: Vec<Pattern> = f
        .volumes
        .as_deref()
        .map(|s| s.split(',').map(Pattern::new).collect())
        .unwrap_or_default();
    Ok(zkey::crypttab::plans(&r, f.name.as_ref(), &volumes)?)
}

pub(crate) fn cryptsetup(
    f: &VolumeFilter,
    run: bool,
    format: bool,
    open: bool,
    force: bool,
) -> Result<ExitCode> {
    let ad = if run { Some(adapters()?) } else { None };
    for plan in volume_plans(f)? {
        for (action, cmd) in plan.commands(format, open) {
            println!("{}", shell_line(&cmd));
            if let Some(ad) = &ad {
                let ran = zkey::crypttab::run(
                    ad,
                    &plan,
                    action,
                    &cmd,
                    &mut |d: &Path| {
                        new_passphrase(d).map_err(|e| zkey::ZkeyError::Invalid(format!("{e:#}")))
                    },
                    &mut TermUi { force },
                )
                .with_context(|| {
                    format!(
                        "'{}' failed; the commands after it were not run",
                        shell_line(&cmd)
                    )
                })?;
                match ran {
                    zkey::crypttab::Ran::Opened(file) => {
                        println!("Volume {} is open as {}.", plan.volume, file.display())
                    }
                    zkey::crypttab::Ran::AlreadyFormatted {
                        verification_pattern,
                    } => println!(
                        "Volume {} is formatted with key '{}' already (verification pattern {verification_pattern}): nothing to do.",
                        plan.volume, plan.key
                    ),
                    _ => {}
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
