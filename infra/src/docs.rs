//! Man pages and shell completions made from a binary's clap definitions, so that they cannot
//! drift from the code (ripgrep's model). Every binary of the suite takes a hidden
//! `--generate KIND` (`man`, `complete-bash`, `complete-zsh`, `complete-fish`); `man` writes one
//! page per command and subcommand (`zkey.1`, `zkey-reencipher.1`, `zkey-kms-refresh.1`...) into
//! the directory given by `--generate-dir` (default `.`), completions go to stdout.
//! `scripts/docs.sh` makes all of them for every binary.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Command, ValueEnum};

/// What `--generate` makes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// Man pages (section 1), one per command and subcommand, into --generate-dir.
    Man,
    /// A bash completion script, to stdout.
    CompleteBash,
    /// A zsh completion script, to stdout.
    CompleteZsh,
    /// A fish completion script, to stdout.
    CompleteFish,
}

/// Makes what `what` names for `cmd` (the binary's whole clap command). Returns the files
/// written (man pages) or nothing (completions, written to `out`).
pub fn generate(
    what: Generate,
    mut cmd: Command,
    dir: &Path,
    out: &mut dyn Write,
) -> io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_string();
    let shell = match what {
        Generate::Man => {
            std::fs::create_dir_all(dir)?;
            cmd.build();
            let mut pages = Vec::new();
            man_pages(&cmd, &name, dir, &mut pages)?;
            return Ok(pages);
        }
        Generate::CompleteBash => clap_complete::Shell::Bash,
        Generate::CompleteZsh => clap_complete::Shell::Zsh,
        Generate::CompleteFish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(Vec::new())
}

fn man_pages(cmd: &Command, page: &str, dir: &Path, pages: &mut Vec<PathBuf>) -> io::Result<()> {
    let named = cmd.clone().name(page.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(named).render(&mut buf)?;
    let path = dir.join(format!("{page}.1"));
    std::fs::write(&path, buf)?;
    pages.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, &format!("{page}-{}", sub.get_name()), dir, pages)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("demo")
            .about("A demo")
            .subcommand(
                Command::new("one")
                    .about("The first")
                    .subcommand(Command::new("deep").about("Deeper")),
            )
            .subcommand(Command::new("two").about("The second"))
    }

    #[test]
    fn a_page_for_every_subcommand_and_completions_for_every_shell() {
        let d = tempfile::tempdir().unwrap();
        let pages = generate(Generate::Man, cli(), d.path(), &mut io::sink()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["demo.1", "demo-one.1", "demo-one-deep.1", "demo-two.1"]
        );
        let page = std::fs::read_to_string(d.path().join("demo-one.1")).unwrap();
        assert!(page.contains(".TH demo-one 1"), "{page}");
        for g in [
            Generate::CompleteBash,
            Generate::CompleteZsh,
            Generate::CompleteFish,
        ] {
            let mut out = Vec::new();
            generate(g, cli(), d.path(), &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("one") && text.contains("two"),
                "{g:?}: {text}"
            );
        }
    }
}

/// The hidden options every binary flattens into its top-level arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct DocsArgs {
    /// Generate man pages (into --generate-dir) or a shell completion script (to stdout)
    #[arg(long, hide = true, value_enum, value_name = "KIND")]
    pub generate: Option<Generate>,
    /// Where --generate man writes the pages
    #[arg(long, hide = true, value_name = "DIR", default_value = ".")]
    pub generate_dir: PathBuf,
}

impl DocsArgs {
    /// Does what `--generate` asks, if it was given, for the binary whose clap command is `C`.
    pub fn run<C: clap::CommandFactory>(&self) -> Option<std::process::ExitCode> {
        let what = self.generate?;
        let code = match generate(what, C::command(), &self.generate_dir, &mut io::stdout()) {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                crate::exit::Exit::Done
            }
            Err(e) => {
                eprintln!("{}: cannot generate: {e}", C::command().get_name());
                crate::exit::Exit::Failed
            }
        };
        Some(code.into())
    }
}
