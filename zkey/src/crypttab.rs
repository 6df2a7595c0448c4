//! What `zkey crypttab` and `zkey cryptsetup` print for the volumes associated with keys: an
//! `/etc/crypttab` line per volume, and the commands that format and open each volume.
//!
//! LUKS2 volumes are formatted and opened with this suite's `zkey-cryptsetup`, whose `format`
//! puts the secure key into the header (where the reference runs `cryptsetup luksFormat
//! --volume-key-file` followed by `zkey-cryptsetup setvp`); plain volumes use the real
//! `cryptsetup plainOpen` with the `paes` cipher, as on IBM Z.

use std::path::{Path, PathBuf};

use crate::repository::KeyEntry;
use crate::volume::{Volume, VolumeType};

/// The cipher spec of a secure key: XTS keys are two tokens.
fn cipher(xts: bool) -> &'static str {
    if xts {
        "paes-xts-plain64"
    } else {
        "paes-cbc-plain64"
    }
}

/// A device as a path for a command: `UUID=...` becomes `/dev/disk/by-uuid/...`.
pub fn device_path(device: &str) -> PathBuf {
    match device.strip_prefix("UUID=") {
        Some(uuid) => Path::new("/dev/disk/by-uuid").join(uuid),
        None => PathBuf::from(device),
    }
}

/// What a printed command does, so that `--run` can do it through the library.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `zkey-cryptsetup format`: a LUKS2 header with the secure key as volume key.
    Format,
    /// `zkey-cryptsetup open`: the FUSE data path.
    Open,
    /// `cryptsetup plainOpen`: the kernel's dm-crypt with `paes` (real hardware only).
    PlainOpen,
}

/// The device path of a `dev:dm-name` association, as a command takes it.
pub fn volume_device(volume: &str) -> PathBuf {
    device_path(volume.rsplit_once(':').map_or(volume, |(d, _)| d))
}

/// What a key's volumes need, for one volume.
#[derive(Clone, Debug)]
pub struct VolumePlan {
    pub key: String,
    pub volume: Volume,
    pub volume_type: VolumeType,
    pub skey: PathBuf,
    /// The dummy passphrase file, for LUKS2 volumes of keys that have one.
    pub passphrase_file: Option<PathBuf>,
    pub key_bits: u32,
    pub xts: bool,
    pub sector_size: u32,
    /// The key's verification pattern and APQNs from its authenticated properties: the `.skey`
    /// read when the plan runs must hold that key ([`crate::keyops::check_key_file`]).
    pub verification_pattern: Option<ap_sim::VerificationPattern>,
    pub apqns: Vec<ap_sim::apqn::Apqn>,
}

impl VolumePlan {
    pub fn for_entry(repo_dir: &Path, e: &KeyEntry, xts: bool) -> Vec<VolumePlan> {
        let name = e.name.as_str();
        e.properties
            .volumes
            .iter()
            .map(|v| VolumePlan {
                key: name.to_string(),
                volume: v.clone(),
                volume_type: e.properties.volume_type,
                skey: repo_dir.join(format!("{name}.skey")),
                passphrase_file: e.has_pass.then(|| repo_dir.join(format!("{name}.pass"))),
                key_bits: e.secure_key.len() as u32 * 8,
                xts,
                sector_size: e.properties.sector_size.bytes(),
                verification_pattern: e.properties.verification_pattern,
                apqns: e.properties.apqns.clone(),
            })
            .collect()
    }

    /// Refuses a `.skey` that holds another key than the plan's properties name.
    fn check_key(
        &self,
        ad: &crate::adapters::Adapters,
        secure_key: &[u8],
    ) -> Result<(), crate::ZkeyError> {
        crate::keyops::check_key_file(
            ad,
            &self.key,
            secure_key,
            self.verification_pattern,
            &self.apqns,
        )
    }

    /// The `/etc/crypttab` line.
    pub fn crypttab_line(&self) -> String {
        let dev = self.volume.device();
        let dm = self.volume.dm_name();
        match self.volume_type {
            VolumeType::Plain => {
                let mut opts = format!("plain,cipher={},size={}", cipher(self.xts), self.key_bits);
                if self.sector_size != 0 {
                    opts.push_str(&format!(",sector-size={}", self.sector_size));
                }
                format!("{dm}\t{dev}\t{}\t{opts}", self.skey.display())
            }
            VolumeType::Luks2 => {
                let key = self
                    .passphrase_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none".into());
                format!("{dm}\t{dev}\t{key}\tluks")
            }
        }
    }

    /// The commands that format the volume (LUKS2 only) and open it, each with what it does.
    pub fn commands(&self, format: bool, open: bool) -> Vec<(Action, Vec<String>)> {
        let dev = device_path(self.volume.device()).display().to_string();
        let dm = self.volume.dm_name().to_string();
        let pass: Vec<String> = self
            .passphrase_file
            .as_ref()
            .map(|p| vec!["--key-file".into(), p.display().to_string()])
            .unwrap_or_default();
        let mut out = Vec::new();
        match self.volume_type {
            VolumeType::Plain => {
                if open {
                    let mut c = vec![
                        "cryptsetup".into(),
                        "plainOpen".into(),
                        "--key-file".into(),
                        self.skey.display().to_string(),
                    ];
                    c.extend([
                        "--key-size".into(),
                        self.key_bits.to_string(),
                        "--cipher".into(),
                        cipher(self.xts).into(),
                    ]);
                    if self.sector_size != 0 {
                        c.extend(["--sector-size".into(), self.sector_size.to_string()]);
                    }
                    c.extend([dev, dm]);
                    out.push((Action::PlainOpen, c));
                }
            }
            VolumeType::Luks2 => {
                if format {
                    let mut c = vec![
                        "zkey-cryptsetup".into(),
                        "format".into(),
                        dev.clone(),
                        "--volume-key-file".into(),
                        self.skey.display().to_string(),
                    ];
                    if self.sector_size != 0 {
                        c.extend(["--sector-size".into(), self.sector_size.to_string()]);
                    }
                    c.extend(pass.clone());
                    out.push((Action::Format, c));
                }
                if open {
                    let mut c = vec!["zkey-cryptsetup".into(), "open".into(), dev, dm];
                    c.extend(pass);
                    out.push((Action::Open, c));
                }
            }
        }
        out
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

pub fn shell_line(cmd: &[String]) -> String {
    cmd.iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plans of the repository's volumes, selected by key name and volume patterns. A filter
/// that selects nothing is an error.
pub fn plans(
    r: &crate::repository::Reader<'_>,
    names: Option<&crate::Pattern>,
    volumes: &[crate::Pattern],
) -> Result<Vec<VolumePlan>, crate::ZkeyError> {
    let resolved = crate::reencipher::resolve_names(names, r)?;
    let mut out = Vec::new();
    for e in r.entries()? {
        let e = match e {
            Ok(e) => e,
            // A key whose properties fail their MAC is not skipped in silence: its volumes
            // would be missing from the crypttab, or formatted with a swapped key.
            Err(d)
                if resolved.as_ref().is_none_or(|p| p.matches_name(&d.name))
                    && d.damage.iter().any(|x| {
                        matches!(x, crate::Damage::BadMac | crate::Damage::MacMissing)
                    }) =>
            {
                return Err(crate::RepoError::Damaged(d).into())
            }
            Err(_) => continue,
        };
        if resolved.as_ref().is_some_and(|p| !p.matches_name(&e.name)) {
            continue;
        }
        let xts = ap_sim::token::SecureKey::parse(&e.secure_key)
            .map(|k| k.is_xts())
            .unwrap_or(false);
        for plan in VolumePlan::for_entry(r.repository().path(), &e, xts) {
            if volumes.is_empty() || volumes.iter().any(|p| p.matches_volume(&plan.volume)) {
                out.push(plan);
            }
        }
    }
    if out.is_empty() && (names.is_some() || !volumes.is_empty()) {
        let mut what = Vec::new();
        if let Some(n) = names {
            what.push(format!("--name '{n}'"));
        }
        if !volumes.is_empty() {
            let v: Vec<&str> = volumes.iter().map(crate::Pattern::as_str).collect();
            what.push(format!("--volumes '{}'", v.join(",")));
        }
        return Err(crate::ZkeyError::NoMatch(format!(
            "{} with volumes",
            what.join(" ")
        )));
    }
    Ok(out)
}

/// Asks for the passphrase of a volume being formatted (a terminal asks twice).
pub type NewPassphrase<'a> =
    dyn FnMut(&Path) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::ZkeyError> + 'a;

/// What `run` did.
#[derive(Debug)]
pub enum Ran {
    Formatted,
    /// The volume is formatted with this key already (its VP token has the key's VP): nothing
    /// was done.
    AlreadyFormatted {
        verification_pattern: String,
    },
    /// The volume is served (decrypted) at this path.
    Opened(PathBuf),
    /// The real cryptsetup ran (a plain volume).
    Cryptsetup,
}

/// Does one command of a plan (`zkey cryptsetup --run`): LUKS2 volumes are formatted and
/// opened through the zkey-cryptsetup library, with the key's dummy passphrase or one that
/// `new_passphrase` asks for (format) or the supplier prompts for (open); a plain volume's
/// `cryptsetup plainOpen` runs the real cryptsetup.
pub fn run(
    ad: &crate::adapters::Adapters,
    plan: &VolumePlan,
    action: Action,
    cmd: &[String],
    new_passphrase: &mut NewPassphrase<'_>,
    ui: &mut dyn zkey_cryptsetup::Ui,
) -> Result<Ran, crate::ZkeyError> {
    use crate::ops::read_passphrase_file;
    use zkey_cryptsetup::passphrase::{Passphrase, Source, Supplier};
    let cs = |e: zkey_cryptsetup::Error| crate::ZkeyError::Invalid(e.to_string());
    let device = device_path(plan.volume.device());
    match action {
        Action::Format => {
            let secure_key = crate::ops::read_key_file(&plan.skey)?;
            plan.check_key(ad, &secure_key)?;
            let pass = match &plan.passphrase_file {
                Some(p) => read_passphrase_file(p)?,
                None => new_passphrase(&device)?,
            };
            let opts = zkey_cryptsetup::luks2::FormatOptions {
                sector_size: if plan.sector_size == 0 {
                    4096
                } else {
                    plan.sector_size
                },
                pbkdf: zkey_cryptsetup::luks2::Pbkdf::from_env()
                    .map_err(crate::ZkeyError::Invalid)?,
                label: None,
            };
            use zkey_cryptsetup::volume::FormatOutcome;
            match zkey_cryptsetup::volume::format(&ad.hsm, &device, &secure_key, &opts, &pass, ui)
                .map_err(cs)?
            {
                FormatOutcome::Formatted(_) => Ok(Ran::Formatted),
                FormatOutcome::AlreadyFormatted {
                    verification_pattern,
                } => Ok(Ran::AlreadyFormatted {
                    verification_pattern,
                }),
            }
        }
        Action::Open => {
            // The server is forked before the passphrase is read, and without the simulator's
            // state this process has cached, so that it has no copy of either.
            ad.hsm.simulator().forget_state();
            let server = zkey_cryptsetup::volume::spawn_server().map_err(cs)?;
            let source = match &plan.passphrase_file {
                Some(p) => Source::Given(Passphrase::new(read_passphrase_file(p)?.to_vec())),
                None => Source::Prompt { tries: 3 },
            };
            let file = zkey_cryptsetup::volume::open_on(
                server,
                &ad.hsm,
                &device,
                plan.volume.dm_name(),
                &mut Supplier::new(source),
                ui,
            )
            .map_err(cs)?;
            Ok(Ran::Opened(file))
        }
        Action::PlainOpen => {
            plan.check_key(ad, &crate::ops::read_key_file(&plan.skey)?)?;
            let status = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .status()
                .map_err(|e| crate::ZkeyError::Invalid(format!("running {}: {e}", cmd[0])))?;
            if !status.success() {
                return Err(crate::ZkeyError::Invalid(format!(
                    "{} exited with {status}",
                    cmd[0]
                )));
            }
            Ok(Ran::Cryptsetup)
        }
    }
}
