//! `zkey-cryptsetup`: the command line of the crate. A thin layer: it parses options (clap),
//! talks to the user (prompts, 80-column messages, yes/no questions) and calls the library.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use ap_sim::exit::Exit;
use ap_sim::hsm::Hsm;
use ap_sim::sim::Simulator;
use clap::{Args, Parser, Subcommand};
use zkey_cryptsetup::luks2::{FormatOptions, Pbkdf, PbkdfKind};
use zkey_cryptsetup::passphrase::{self, Passphrase, Source, Supplier};
use zkey_cryptsetup::reencipher::{self, Outcome};
use zkey_cryptsetup::volume::{self, KeyState, ValidateReport};
use zkey_cryptsetup::Ui;

/// The exit codes, the suite's table (`ap_sim::exit::Exit`), as the long help shows them.
const EXIT_CODES: &str = "\
Exit codes:
  0  done, or nothing to do (reencipher --complete with no re-encipher pending)
  1  failed: the message says what and what to do; validate: the volume key is unusable or
     does not match its verification pattern token
  2  usage: a bad option or argument; nothing was changed
  3  validate: the volume key works but is at risk: it is enciphered with the OLD master key,
     or a staged re-encipher waits for 'reencipher --complete' after the SET";

/// Manages LUKS2 volumes whose volume key is an IBM Z secure key (cipher paes).
#[derive(Parser, Debug)]
#[command(
    name = "zkey-cryptsetup",
    version,
    infer_subcommands = true,
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = EXIT_CODES
)]
struct Cli {
    /// Print the version and exit.
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// Answer yes to every question (batch mode).
    #[arg(short = 'q', long = "batch-mode", global = true)]
    batch: bool,
    /// More messages.
    #[arg(short = 'V', long, global = true)]
    verbose: bool,
    /// libcryptsetup debug messages on stderr (never key material).
    #[arg(short = 'D', long, global = true)]
    debug: bool,
    #[command(flatten)]
    docs: infra::docs::DocsArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How the passphrase is read (as cryptsetup reads it).
#[derive(Args, Debug)]
struct KeyOpts {
    /// Read the passphrase from file F ('-' = stdin) instead of the terminal.
    #[arg(short = 'd', long = "key-file", value_name = "F")]
    key_file: Option<PathBuf>,
    /// Skip N bytes of the key file.
    #[arg(
        short = 'o',
        long = "keyfile-offset",
        value_name = "N",
        default_value_t = 0
    )]
    keyfile_offset: u64,
    /// Read N bytes of the key file (default: all of it, up to 8 MiB).
    #[arg(short = 'l', long = "keyfile-size", value_name = "N")]
    keyfile_size: Option<u64>,
    /// How often to ask for the passphrase on the terminal.
    #[arg(short = 'T', long, value_name = "N", default_value_t = 3)]
    tries: u32,
}

impl KeyOpts {
    fn supplier(&self) -> Supplier {
        Supplier::new(match &self.key_file {
            Some(path) => Source::KeyFile {
                path: path.clone(),
                offset: self.keyfile_offset,
                size: self.keyfile_size,
            },
            None => Source::Prompt { tries: self.tries },
        })
    }
}

/// The PBKDF of the new keyslot. Defaults to libcryptsetup's (argon2id, benchmarked). Tests
/// force a cheap one: `--pbkdf pbkdf2 --pbkdf-force-iterations 1000`, or the environment
/// variables ZKEY_CRYPTSETUP_PBKDF / ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS.
#[derive(Args, Debug)]
struct PbkdfOpts {
    /// PBKDF: pbkdf2, argon2i or argon2id.
    #[arg(long, value_name = "TYPE", env = "ZKEY_CRYPTSETUP_PBKDF")]
    pbkdf: Option<PbkdfKind>,
    /// Fixed iterations (time cost) instead of a benchmark.
    #[arg(long, value_name = "N", env = "ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS")]
    pbkdf_force_iterations: Option<u32>,
    /// argon2 memory cost in KiB.
    #[arg(long, value_name = "KB")]
    pbkdf_memory: Option<u32>,
    /// argon2 threads.
    #[arg(long, value_name = "N")]
    pbkdf_parallel: Option<u32>,
    /// pbkdf2 hash.
    #[arg(long, value_name = "HASH")]
    hash: Option<String>,
}

impl PbkdfOpts {
    fn pbkdf(&self) -> Result<Pbkdf> {
        Ok(match (self.pbkdf, self.pbkdf_force_iterations) {
            (None, None) => Pbkdf::Default,
            (kind, Some(iterations)) => Pbkdf::Forced {
                kind: kind.unwrap_or(PbkdfKind::Argon2id),
                iterations,
                memory_kb: self.pbkdf_memory,
                parallel: self.pbkdf_parallel,
                hash: self.hash.clone(),
            },
            (Some(_), None) => return Err(Usage(
                "--pbkdf needs --pbkdf-force-iterations here (a benchmarked PBKDF other than the default is not offered)".into()
            ).into()),
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Re-enciphers the secure volume key after a master key change: staged (--staged, then
    /// --complete after the SET) or in-place.
    #[command(visible_alias = "re")]
    Reencipher {
        /// The LUKS2 volume: a block device or an image file.
        device: PathBuf,
        /// Prepare a staged re-encipher (complete it after the SET with --complete).
        #[arg(short = 's', long)]
        staged: bool,
        /// Re-encipher and make the result the volume key now.
        #[arg(short = 'i', long)]
        in_place: bool,
        /// Complete a staged re-encipher.
        #[arg(short = 'c', long)]
        complete: bool,
        /// Re-encipher from the CURRENT to the NEW master key (before the SET).
        #[arg(short = 'N', long)]
        to_new: bool,
        /// Re-encipher from the OLD to the CURRENT master key (after the SET).
        #[arg(short = 'O', long)]
        from_old: bool,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Shows the state of the secure volume key.
    #[command(visible_alias = "val")]
    Validate {
        /// The LUKS2 volume: a block device or an image file.
        device: PathBuf,
        /// JSON output (stable schema).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Writes the verification pattern token from the volume key.
    #[command(visible_alias = "setv")]
    Setvp {
        /// The LUKS2 volume: a block device or an image file.
        device: PathBuf,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Sets a secure key file as the volume key (it must be the same AES key).
    #[command(visible_alias = "setk")]
    Setkey {
        /// The LUKS2 volume: a block device or an image file.
        device: PathBuf,
        /// The secure key file.
        #[arg(short = 'm', long = "volume-key-file", value_name = "F")]
        volume_key_file: PathBuf,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Formats a device or image file as a LUKS2 paes volume with the secure key of a key file.
    Format {
        /// The block device or image file to format (everything on it is lost).
        device: PathBuf,
        /// The secure key file (one token, or an XTS pair).
        #[arg(short = 'm', long = "volume-key-file", value_name = "F")]
        volume_key_file: PathBuf,
        /// Encryption sector size in bytes: 512, 1024, 2048 or 4096.
        #[arg(long, default_value_t = 4096, value_parser = parse_sector_size)]
        sector_size: u32,
        /// LUKS2 label.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        pbkdf: PbkdfOpts,
        #[command(flatten)]
        key: KeyOpts,
        /// Format even over an existing LUKS header (destroys that volume). Without it, such a
        /// device is formatted only when the question on a terminal is answered yes; batch mode
        /// does not answer it.
        #[arg(long)]
        force: bool,
    },
    /// Opens the volume through the FUSE data path.
    Open {
        /// The LUKS2 volume: a block device or an image file.
        device: PathBuf,
        /// The name of the mapping: the decrypted volume appears as
        /// $ZKEY_CRYPTSETUP_RUN_DIR/NAME (default /run/zkey-cryptsetup/NAME).
        name: String,
        #[command(flatten)]
        key: KeyOpts,
        /// Open even when the volume key does not match the volume's VP token. Without it, such
        /// a volume opens only when the question on a terminal is answered yes; batch mode does
        /// not answer it.
        #[arg(long)]
        force: bool,
    },
    /// Closes a volume opened with `open`.
    Close {
        /// The name the volume was opened as.
        name: String,
    },
}

/// A bad combination of options that clap cannot express: exit code 2, as clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s.parse() {
        Ok(n @ (512 | 1024 | 2048 | 4096)) => Ok(n),
        _ => Err(format!("'{s}' is not 512, 1024, 2048 or 4096")),
    }
}

/// The terminal conversation: messages wrapped at 80 columns on stdout (warnings on stderr),
/// questions on the terminal, or "yes" in batch mode.
struct Term {
    batch: bool,
    /// `--force`: yes to the questions batch mode does not answer ([`Ui::confirm_risk`]).
    force: bool,
}

impl Ui for Term {
    fn info(&mut self, msg: &str) {
        println!("{}", wrap(msg, 80));
    }
    fn warn(&mut self, msg: &str) {
        eprintln!("{}", wrap(msg, 80));
    }
    fn confirm(&mut self, question: &str) -> Result<bool, zkey_cryptsetup::Error> {
        if self.batch {
            return Ok(true);
        }
        if !io::stdin().is_terminal() {
            return Err(zkey_cryptsetup::Error::Declined(format!(
                "{question} (no terminal to ask on: answer with -q/--batch-mode)"
            )));
        }
        print!("{} [y/N] ", wrap(question, 80));
        io::stdout().flush().ok();
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| zkey_cryptsetup::Error::Declined(e.to_string()))?;
        Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
    }
    fn confirm_risk(&mut self, question: &str) -> Result<bool, zkey_cryptsetup::Error> {
        if self.force {
            return Ok(true);
        }
        // Batch mode's yes is for routine questions, not for this one.
        if self.batch || !io::stdin().is_terminal() {
            return Ok(false);
        }
        self.confirm(question)
    }
}

/// Word-wraps `text` at `width` columns, as IBM's tool prints its messages.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push('\n');
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

fn hsm() -> Result<Hsm> {
    let dir = Simulator::locate(None);
    let sim = Simulator::open(&dir).with_context(|| {
        format!(
            "cannot reach the crypto adapters (simulator directory '{}', set AP_SIM_DIR)",
            dir.display()
        )
    })?;
    Ok(Hsm::new(sim))
}

fn read_key_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    Ok(infra::input::read_bounded(
        path,
        ap_sim::token::SecureKey::FILE,
    )?)
}

/// A new passphrase for format: twice on the terminal, else once from the key file or stdin.
fn new_passphrase(key: &KeyOpts, device: &str) -> Result<Passphrase> {
    if key.key_file.is_none() && io::stdin().is_terminal() {
        let a = zeroize::Zeroizing::new(rpassword::prompt_password(format!(
            "Enter passphrase for '{device}': "
        ))?);
        let b = zeroize::Zeroizing::new(rpassword::prompt_password("Verify passphrase: ")?);
        anyhow::ensure!(*a == *b, "the passphrases do not match");
        anyhow::ensure!(!a.is_empty(), "the passphrase is empty");
        return Ok(Passphrase::new(a.as_bytes().to_vec()));
    }
    key.supplier()
        .next(device)?
        .ok_or_else(|| passphrase::Error::NoMoreTries.into())
}

fn print_validate(r: &ValidateReport) {
    let k = &r.volume_key;
    let state = match k.state {
        KeyState::Current => "CURRENT master key",
        KeyState::Old => "OLD master key",
        KeyState::New => "NEW master key (not set yet)",
        KeyState::Unusable => "a master key no adapter holds (unusable)",
    };
    println!("Validation of secure volume key of device '{}':", r.device);
    println!(
        "  Status:                {}",
        if r.valid { "Valid" } else { "Invalid" }
    );
    println!(
        "  Cipher:                {} ({} bits, sector size {})",
        r.cipher, r.key_size_bits, r.sector_size
    );
    println!("  Key type:              {}", k.key_type);
    println!(
        "  Secure key size:       {} bits{}",
        k.key_bits,
        if k.xts { " (XTS pair)" } else { "" }
    );
    println!("  Enciphered with:       {state}");
    println!("  Master key VP (MKVP):  {}", k.mkvp);
    println!(
        "  Verification pattern:  {}",
        k.verification_pattern
            .as_deref()
            .unwrap_or("(not available)")
    );
    println!(
        "  VP token:              {}",
        match (&r.vp_token, r.vp_token_matches) {
            (None, _) => "none (run 'zkey-cryptsetup setvp')".to_string(),
            (Some(_), Some(false)) => "DOES NOT MATCH the volume key".to_string(),
            (Some(t), _) => t.clone(),
        }
    );
    println!("  Keyslot:               {}", k.keyslot);
    match &r.reencipher_pending {
        None => println!("  Re-encipher pending:   no"),
        Some(p) => println!(
            "  Re-encipher pending:   yes: unbound keyslot {} ({})",
            p.unbound_keyslot,
            p.key
                .as_ref()
                .map(|k| format!("{:?} master key", k.state).to_uppercase())
                .unwrap_or_else(|| "not readable with this passphrase".into())
        ),
    }
    if let Some(p) = &k.problem {
        println!("  Problem:               {p}");
    }
    if let Some(r) = &r.at_risk {
        println!("  At risk:               {r}");
    }
}

fn run(cli: Cli) -> Result<Exit> {
    let mut ui = Term {
        batch: cli.batch,
        force: false,
    };
    if cli.debug {
        libcryptsetup_debug();
    }
    let Some(command) = cli.command else {
        return Err(Usage("name a command: 'zkey-cryptsetup --help' lists them".into()).into());
    };
    match command {
        Command::Reencipher {
            device,
            staged,
            in_place,
            complete,
            to_new,
            from_old,
            key,
        } => {
            let req = ap_sim::reencipher::Flags {
                from_old,
                to_new,
                staged,
                in_place,
                complete,
            }
            .request()
            .map_err(|e| Usage(e.to_string()))?;
            req.one_step().map_err(|e| Usage(e.to_string()))?;
            let out =
                match reencipher::reencipher(&hsm()?, &device, req, &mut key.supplier(), &mut ui) {
                    // Asked to finish what is already finished (a second --complete): nothing to do.
                    Err(zkey_cryptsetup::Error::NoPending { device }) => {
                        println!("nothing to do: no re-encipher is pending for device '{device}'");
                        return Ok(Exit::Done);
                    }
                    r => r,
                }
                .with_context(|| {
                    format!(
                        "re-enciphering the volume key of '{}' failed",
                        device.display()
                    )
                })?;
            if cli.verbose {
                match out {
                    Outcome::Staged { unbound_keyslot } => {
                        println!("The re-enciphered key is in unbound keyslot {unbound_keyslot}.")
                    }
                    Outcome::Completed {
                        keyslot,
                        destroyed_keyslot,
                    } => println!(
                        "The volume key is in keyslot {keyslot}{}.",
                        destroyed_keyslot
                            .map(|s| format!("; keyslot {s} was destroyed"))
                            .unwrap_or_default()
                    ),
                }
            }
        }
        Command::Validate { device, json, key } => {
            let r = volume::validate(&hsm()?, &device, &mut key.supplier(), &mut ui).with_context(
                || format!("validating the volume key of '{}' failed", device.display()),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_validate(&r);
            }
            if !r.valid {
                return Ok(Exit::Failed);
            }
            if r.at_risk.is_some() {
                return Ok(Exit::AtRisk);
            }
        }
        Command::Setvp { device, key } => {
            let vp = volume::setvp(&hsm()?, &device, &mut key.supplier(), &mut ui).with_context(
                || {
                    format!(
                        "setting the verification pattern of '{}' failed",
                        device.display()
                    )
                },
            )?;
            if cli.verbose {
                println!(
                    "Verification pattern {vp} is set for device '{}'.",
                    device.display()
                );
            }
        }
        Command::Setkey {
            device,
            volume_key_file,
            key,
        } => {
            let new_key = read_key_file(&volume_key_file)?;
            let slot = volume::setkey(&hsm()?, &device, &new_key, &mut key.supplier(), &mut ui)
                .with_context(|| {
                    format!("setting the volume key of '{}' failed", device.display())
                })?;
            if cli.verbose {
                println!(
                    "The volume key of device '{}' is in keyslot {slot}.",
                    device.display()
                );
            }
        }
        Command::Format {
            device,
            volume_key_file,
            sector_size,
            label,
            pbkdf,
            key,
            force,
        } => {
            ui.force = force;
            let name = device.display().to_string();
            let secure_key = read_key_file(&volume_key_file)?;
            let opts = FormatOptions {
                sector_size,
                pbkdf: pbkdf.pbkdf()?,
                label,
            };
            let hsm = hsm()?;
            let target = match volume::check_format(&hsm, &device, &secure_key, &mut ui)
                .with_context(|| format!("formatting '{name}' failed"))?
            {
                volume::FormatCheck::Already {
                    verification_pattern,
                } => {
                    println!("Device '{name}' is formatted with this key already (verification pattern {verification_pattern}): nothing to do.");
                    return Ok(Exit::Done);
                }
                volume::FormatCheck::Go(t) => t,
            };
            // Over a header, the operator has just confirmed exactly that.
            if !target.overwrites
                && !ui.confirm(&format!(
                    "This will overwrite data on '{name}' irrevocably. Are you sure?"
                ))?
            {
                anyhow::bail!("formatting '{name}' cancelled");
            }
            let pass = new_passphrase(&key, &name)?;
            let f = volume::format_checked(target, &opts, pass.as_bytes())
                .with_context(|| format!("formatting '{name}' failed"))?;
            if cli.verbose {
                println!("Device '{name}' is formatted: {} ({} bits), keyslot {}, verification pattern {}.", f.cipher, f.key_size_bits, f.keyslot, f.verification_pattern);
            }
        }
        Command::Open {
            device,
            name,
            key,
            force,
        } => {
            ui.force = force;
            let file = volume::open(&hsm()?, &device, &name, &mut key.supplier(), &mut ui)?;
            if cli.verbose {
                println!(
                    "Device '{}' is open as {}.",
                    device.display(),
                    file.display()
                );
            }
        }
        Command::Close { name } => volume::close(&name)?,
    }
    Ok(Exit::Done)
}

fn libcryptsetup_debug() {
    libcryptsetup_rs::set_debug_level(libcryptsetup_rs::consts::vals::CryptDebugLevel::All);
}

fn main() -> ExitCode {
    ap_sim::durable::arm_crash_points();
    infra::sys::default_sigpipe();
    let cli = Cli::parse();
    if let Some(code) = cli.docs.run::<Cli>() {
        return code;
    }
    match run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("zkey-cryptsetup: {}", report(&e).trim_end());
            if e.downcast_ref::<Usage>().is_some() {
                Exit::Usage.into()
            } else {
                Exit::Failed.into()
            }
        }
    }
}

/// The error and its causes on one line, as `{:#}` prints them, but without a cause whose text
/// is already there: the library's errors name their cause in their own message (so that they
/// read whole on their own), and printing it again would say everything twice.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no about"));
            }
            for arg in cmd.get_arguments() {
                // clap's own --help (and the version flag it would add) carry their help.
                if matches!(arg.get_id().as_str(), "help" | "version") && arg.get_help().is_some() {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path}: {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
        let subs: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        for name in [
            "reencipher",
            "validate",
            "setvp",
            "setkey",
            "format",
            "open",
            "close",
        ] {
            assert!(subs.contains(&name), "{name} missing in {subs:?}");
        }
    }

    #[test]
    fn an_error_names_its_cause_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(zkey_cryptsetup::Error::Read {
            what: "the key file",
            path: "/k".into(),
            source: io,
        })
        .context("formatting 'x' failed");
        assert_eq!(
            report(&e),
            "formatting 'x' failed: cannot read the key file '/k': No such file or directory (os error 2)"
        );
    }

    #[test]
    fn wraps_at_80_columns_like_the_seed() {
        let s = "Staged re-enciphering is initiated for device '/dev/mapper/disk1'. After the NEW master key has been set to become the CURRENT master key, run 'zkey-cryptsetup reencipher' with option '--complete' to complete the re-enciphering process.";
        assert_eq!(
            wrap(s, 80),
            "Staged re-enciphering is initiated for device '/dev/mapper/disk1'. After the NEW\nmaster key has been set to become the CURRENT master key, run 'zkey-cryptsetup\nreencipher' with option '--complete' to complete the re-enciphering process."
        );
    }
}
