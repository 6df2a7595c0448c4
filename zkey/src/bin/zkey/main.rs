//! `zkey`: manage the secure keys of encrypted volumes in a repository. Parsing, output and
//! exit codes only; the logic is in the `zkey` library.
//!
//! `cli` holds the clap types, `cmd` one handler per command (parse, one library call, render),
//! `render` the output.

mod cli;
mod cmd;
mod prelude;
mod render;

use crate::prelude::*;

fn main() -> ExitCode {
    durable::arm_crash_points();
    infra::sys::default_sigpipe();
    // As the reference: files zkey creates are private to the repository's group at most.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
    let cli = Cli::parse();
    if let Some(code) = cli.docs.run::<Cli>() {
        return code;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zkey: {e:#}");
            exit_of(&e).into()
        }
    }
}

/// The suite's exit code for an error: a filter that selects nothing is a usage error.
fn exit_of(e: &anyhow::Error) -> Exit {
    if e.downcast_ref::<ap_sim::reencipher::FlagError>().is_some() {
        return Exit::Usage;
    }
    match e.downcast_ref::<zkey::ZkeyError>() {
        Some(zkey::ZkeyError::NoMatch(_)) => Exit::Usage,
        _ => Exit::Failed,
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let Some(cmd) = cli.cmd else {
        bail!("name a command: 'zkey --help' lists them");
    };
    match cmd {
        Cmd::Generate(a) => generate(a).map(|_| ExitCode::SUCCESS),
        Cmd::Validate(a) => validate(a),
        Cmd::Reencipher(a) => reencipher_cmd(a),
        Cmd::Import(a) => import(a).map(|_| ExitCode::SUCCESS),
        Cmd::Export { file, name, force } => {
            let repo = open_repo()?;
            let ad = adapters().ok();
            zkey::ops::export(&repo.read(lock_wait())?, ad.as_ref(), &name, &file, force)?;
            println!("Key '{name}' exported to {}.", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::List(a) => list(a),
        Cmd::Remove { name, force } => remove(&name, force).map(|_| ExitCode::SUCCESS),
        Cmd::Change(a) => change(a).map(|_| ExitCode::SUCCESS),
        Cmd::Rename { name, new_name } => {
            let (repo, ad) = (open_repo()?, adapters()?);
            zkey::ops::rename(&repo.write(lock_wait())?, &ad, &name, &new_name)?;
            println!("Key '{name}' renamed to '{new_name}'.");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Copy {
            name,
            new_name,
            volumes,
        } => {
            let volumes = match volumes {
                Some(v) => parse_volumes(&v, false)?,
                None => Vec::new(),
            };
            let (repo, ad) = (open_repo()?, adapters()?);
            zkey::ops::copy(&repo.write(lock_wait())?, &ad, &name, &new_name, volumes)?;
            println!("Key '{name}' copied to '{new_name}'.");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Crypttab(f) => {
            for p in volume_plans(&f)? {
                println!("{}", p.crypttab_line());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cryptsetup {
            filter,
            run,
            open,
            format,
            force,
        } => cryptsetup(&filter, run, !open, !format, force),
        Cmd::Audit(a) => audit_cmd(a),
        Cmd::Mkchange(m) => mkchange_cmd(m),
        Cmd::Kms(k) => kms_cmd(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for s in c.get_subcommands() {
            if s.get_about().is_none() {
                missing.push(format!("{path} {} (no about)", s.get_name()));
            }
            walk(s, &format!("{path} {}", s.get_name()), missing);
        }
    }

    #[test]
    fn every_option_and_command_has_help() {
        let mut missing = Vec::new();
        walk(&Cli::command(), "zkey", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
