//! `crypttab` and `cryptsetup`: the commands for the keys' volumes, and `--run`.

use crate::prelude::*;

pub(crate) fn volume_plans(f: &VolumeFilter) -> Result<Vec<VolumePlan>> {
    let repo = open_repo()?;
    let r: Reader<'_> = repo.read(lock_wait())?;
    let vp: Vec<Pattern> = f
        .volumes
        .as_deref()
        .map(|s| s.split(',').map(Pattern::new).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for e in r.entries()?.into_iter().flatten() {
        if f.name.as_ref().is_some_and(|p| !p.matches_name(&e.name)) {
            continue;
        }
        let xts = SecureKey::parse(&e.secure_key)
            .map(|k| k.is_xts())
            .unwrap_or(false);
        for plan in VolumePlan::for_entry(repo.path(), &e, xts) {
            if vp.is_empty() || vp.iter().any(|p| p.matches_volume(&plan.volume)) {
                out.push(plan);
            }
        }
    }
    Ok(out)
}

pub(crate) fn cryptsetup(
    f: &VolumeFilter,
    run: bool,
    format: bool,
    open: bool,
) -> Result<ExitCode> {
    let ad = if run { Some(adapters()?) } else { None };
    for plan in volume_plans(f)? {
        for (action, cmd) in plan.commands(format, open) {
            println!("{}", shell_line(&cmd));
            if let Some(ad) = &ad {
                run_action(ad, &plan, action, &cmd).with_context(|| {
                    format!(
                        "'{}' failed; the commands after it were not run",
                        shell_line(&cmd)
                    )
                })?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zkey cryptsetup --run`: LUKS2 volumes are formatted and opened through the zkey-cryptsetup
/// library; a plain volume's `cryptsetup plainOpen` runs the real cryptsetup.
pub(crate) fn run_action(
    ad: &Adapters,
    plan: &VolumePlan,
    action: Action,
    cmd: &[String],
) -> Result<()> {
    use zkey_cryptsetup::passphrase::{Passphrase, Source, Supplier};
    let device = zkey::crypttab::device_path(plan.volume.device());
    let mut ui = TermUi;
    match action {
        Action::Format => {
            let secure_key = std::fs::read(&plan.skey)
                .with_context(|| format!("reading {}", plan.skey.display()))?;
            let pass = match &plan.passphrase_file {
                Some(p) => read_secret_file(p)?,
                None => new_passphrase(&device)?,
            };
            let opts = zkey_cryptsetup::luks2::FormatOptions {
                sector_size: if plan.sector_size == 0 {
                    4096
                } else {
                    plan.sector_size
                },
                pbkdf: zkey_cryptsetup::luks2::Pbkdf::from_env().map_err(|e| anyhow!(e))?,
                label: None,
            };
            zkey_cryptsetup::volume::format(&ad.hsm, &device, &secure_key, &opts, &pass, &mut ui)?;
        }
        Action::Open => {
            let source = match &plan.passphrase_file {
                Some(p) => Source::Given(Passphrase::new(read_secret_file(p)?.to_vec())),
                None => Source::Prompt { tries: 3 },
            };
            let file = zkey_cryptsetup::volume::open(
                &ad.hsm,
                &device,
                plan.volume.dm_name(),
                &mut Supplier::new(source),
                &mut ui,
            )?;
            println!("Volume {} is open as {}.", plan.volume, file.display());
        }
        Action::PlainOpen => {
            let status = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .status()
                .with_context(|| format!("running {}", cmd[0]))?;
            if !status.success() {
                bail!("{} exited with {status}", cmd[0]);
            }
        }
    }
    Ok(())
}
