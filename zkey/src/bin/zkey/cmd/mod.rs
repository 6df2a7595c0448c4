//! The command handlers: each parses what clap gave it, calls one library operation and
//! renders the result. Here: what they share (where the repository and the adapters are, the
//! terminal questions).

mod audit;
mod keys;
mod kms;
mod mkchange;
mod reencipher;
mod validate;
mod volumes;

pub(crate) use audit::*;
pub(crate) use keys::*;
pub(crate) use kms::*;
pub(crate) use mkchange::*;
pub(crate) use reencipher::*;
pub(crate) use validate::*;
pub(crate) use volumes::*;

use crate::prelude::*;

pub(crate) fn lock_wait() -> Duration {
    let secs = std::env::var("ZKEY_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

pub(crate) fn repo_path() -> PathBuf {
    repository::default_path()
}

pub(crate) fn open_repo() -> Result<Repository> {
    Ok(zkey::adapters::authenticated(
        Repository::open(repo_path())?,
    ))
}

/// Commands that add keys create a missing repository (mode 2770, group zkeyadm if it exists).
pub(crate) fn open_or_create_repo() -> Result<Repository> {
    let p = repo_path();
    if p.exists() {
        return open_repo();
    }
    let r = Repository::create(&p)?;
    eprintln!("zkey: created the repository {}", p.display());
    Ok(zkey::adapters::authenticated(r))
}

pub(crate) fn adapters() -> Result<Adapters> {
    Ok(Adapters::from_env()?)
}

pub(crate) fn parse_volumes(s: &str, check: bool) -> Result<Vec<Volume>> {
    let v = zkey::volume::parse_volume_list(s)?;
    if check {
        v.iter().try_for_each(zkey::volume::check_device)?;
    }
    Ok(v)
}

pub(crate) fn new_key_spec(meta: &Meta, key_type: KeyType, bits: u32, xts: bool) -> Result<NewKey> {
    let volumes = match &meta.volumes {
        Some(v) => parse_volumes(v, !meta.no_volume_check)?,
        None => Vec::new(),
    };
    let volume_type = meta.volume_type.unwrap_or(VolumeType::DEFAULT_FOR_NEW_KEYS);
    if (meta.gen_dummy_passphrase || meta.set_dummy_passphrase.is_some())
        && volume_type != VolumeType::Luks2
    {
        bail!("a dummy passphrase is only for LUKS2 volumes: add --volume-type luks2");
    }
    Ok(NewKey {
        key_type,
        bits,
        xts,
        description: meta.description.clone(),
        apqns: meta
            .apqns
            .clone()
            .map(ApqnList::into_vec)
            .unwrap_or_default(),
        volumes,
        volume_type,
        sector_size: meta.sector_size.unwrap_or(SectorSize::DEFAULT),
        apqn_check: !meta.no_apqn_check,
    })
}

pub(crate) fn dummy_pass(meta: &Meta) -> Result<Option<DummyPassphrase>> {
    Ok(if meta.gen_dummy_passphrase {
        Some(DummyPassphrase::Generate)
    } else if let Some(f) = &meta.set_dummy_passphrase {
        Some(DummyPassphrase::Given(zkey::ops::read_passphrase_file(f)?))
    } else {
        None
    })
}

pub(crate) fn exit_if(cond: bool, code: Exit) -> ExitCode {
    if cond {
        code.into()
    } else {
        Exit::Done.into()
    }
}

pub(crate) fn confirm(question: &str, force: bool) -> Result<bool> {
    if force {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} — not asking on a non-terminal: add --force to confirm");
    }
    eprint!("zkey: {question} [y/N] ");
    std::io::stderr().flush()?;
    let mut s = String::new();
    std::io::stdin().lock().read_line(&mut s)?;
    Ok(matches!(s.trim(), "y" | "Y" | "yes"))
}

/// A new passphrase for a volume: asked twice on a terminal, one line of stdin otherwise.
pub(crate) fn new_passphrase(device: &Path) -> Result<Zeroizing<Vec<u8>>> {
    if !std::io::stdin().is_terminal() {
        let mut line = infra::input::read_line_bounded(
            std::io::stdin().lock(),
            Path::new("stdin"),
            infra::input::Bound::new("passphrase", infra::input::PASSPHRASE.max),
        )?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            bail!("no passphrase on stdin for {}: give the key a dummy passphrase (zkey change --gen-dummy-passphrase) or type one", device.display());
        }
        return Ok(line);
    }
    let a = Zeroizing::new(rpassword::prompt_password(format!(
        "Enter a passphrase for {}: ",
        device.display()
    ))?);
    let b = Zeroizing::new(rpassword::prompt_password("Verify the passphrase: ")?);
    if a != b || a.is_empty() {
        bail!("the passphrases differ or are empty; nothing was formatted");
    }
    Ok(Zeroizing::new(a.as_bytes().to_vec()))
}

/// zkey-cryptsetup's questions and messages, on the terminal.
#[derive(Default)]
pub(crate) struct TermUi {
    /// `--force`: yes to the questions that guard against data loss ([`Ui::confirm_risk`]).
    pub(crate) force: bool,
}

impl zkey_cryptsetup::Ui for TermUi {
    fn info(&mut self, msg: &str) {
        println!("{msg}");
    }
    fn warn(&mut self, msg: &str) {
        eprintln!("zkey: WARNING: {msg}");
    }
    fn confirm(&mut self, question: &str) -> std::result::Result<bool, zkey_cryptsetup::Error> {
        confirm(question, false).map_err(|e| zkey_cryptsetup::Error::Declined(e.to_string()))
    }
    fn confirm_risk(
        &mut self,
        question: &str,
    ) -> std::result::Result<bool, zkey_cryptsetup::Error> {
        // Off a terminal nobody can say yes: the library then refuses and names --force.
        if !self.force && !std::io::stdin().is_terminal() {
            return Ok(false);
        }
        confirm(question, self.force).map_err(|e| zkey_cryptsetup::Error::Declined(e.to_string()))
    }
}

/// What a KMS plug-in said: on stdout, or on stderr when stdout is JSON.
pub(crate) fn show_notices(notices: &[String], json: bool) {
    for n in notices {
        if json {
            eprintln!("zkey: KMS plug-in: {n}");
        } else {
            println!("KMS plug-in: {n}");
        }
    }
}
