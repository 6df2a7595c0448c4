//! `zkey`: manage the secure keys of encrypted volumes in a repository. Parsing, output and
//! exit codes only; the logic is in the `zkey` library.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use ap_sim::apqn::ApqnList;
use ap_sim::durable;
use ap_sim::exit::Exit;
use ap_sim::hsm::Register;
use ap_sim::table::Table;
use ap_sim::token::{KeyType, SecureKey};

use zkey::adapters::Adapters;
use zkey::crypttab::{shell_line, Action, VolumePlan};
use zkey::keyops::{self, KeyStatus, NewKey};
use zkey::reencipher::{self, Mode, Options, Outcome, Selection, Way};
use zkey::repository::{self, DummyPassphrase, Reader, Repository};
use zkey::volume::{Edit, SectorSize, Volume, VolumeType};
use zkey::{KeyName, KeyProperties, Pattern};

/// Manage secure AES keys of encrypted volumes, bound to crypto adapters (APQNs).
#[derive(Parser)]
#[command(name = "zkey", version, about, long_about = None, infer_subcommands = true, disable_version_flag = true, arg_required_else_help = true)]
struct Cli {
    /// Print version information
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// More output
    #[arg(short = 'V', long, global = true)]
    verbose: bool,
    #[command(flatten)]
    docs: infra::docs::DocsArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a secure key, in a file or in the repository
    #[command(visible_alias = "gen")]
    Generate(GenerateArgs),
    /// Validate secure keys: valid, enciphered with CURRENT or OLD, at risk from the next SET
    #[command(visible_alias = "val")]
    Validate(ValidateArgs),
    /// Re-encipher secure keys around a master key change (staged, in place, complete)
    #[command(visible_alias = "re")]
    Reencipher(ReencipherArgs),
    /// Import a secure key file into the repository
    #[command(visible_alias = "im")]
    Import(ImportArgs),
    /// Export a repository key into a file
    #[command(visible_alias = "ex")]
    Export {
        /// The file to write the secure key to (mode 0600)
        file: PathBuf,
        /// The repository key to export
        #[arg(short = 'N', long)]
        name: KeyName,
        /// Replace FILE if it exists (by rename: a link there is replaced, not followed)
        #[arg(short = 'F', long)]
        force: bool,
    },
    /// List the keys of the repository
    #[command(visible_alias = "li")]
    List(ListArgs),
    /// Remove a key from the repository
    #[command(visible_alias = "rem")]
    Remove {
        /// The key to remove
        #[arg(short = 'N', long)]
        name: KeyName,
        /// Do not ask; also removes a damaged key
        #[arg(short = 'F', long)]
        force: bool,
    },
    /// Change a key's description, APQNs, volumes, sector size, volume type or dummy passphrase
    #[command(visible_alias = "ch")]
    Change(ChangeArgs),
    /// Rename a key
    #[command(visible_alias = "ren")]
    Rename {
        /// The key to rename
        #[arg(short = 'N', long)]
        name: KeyName,
        /// Its new name
        #[arg(short = 'w', long = "new-name")]
        new_name: KeyName,
    },
    /// Copy a key under a new name (without its volumes, unless -l)
    #[command(visible_alias = "co")]
    Copy {
        /// The key to copy
        #[arg(short = 'N', long)]
        name: KeyName,
        /// The name of the copy
        #[arg(short = 'w', long = "new-name")]
        new_name: KeyName,
        /// Volumes of the copy (dev:dm-name, comma-separated)
        #[arg(short = 'l', long)]
        volumes: Option<String>,
    },
    /// Print /etc/crypttab lines for the keys' volumes
    Crypttab(VolumeFilter),
    /// Verify or show the audit trail (the repository's log and the TKE's)
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Master key change operations: plan, start (stage everything), finalize after the SET, cancel
    #[command(subcommand)]
    Mkchange(MkchangeCmd),
    /// Bind the repository to a key management server through a KMS plug-in, and manage it
    #[command(subcommand)]
    Kms(KmsCmd),
    /// Print (or --run) the commands that format and open the keys' volumes
    Cryptsetup {
        #[command(flatten)]
        filter: VolumeFilter,
        /// Run the commands, stopping at the first failure
        #[arg(short = 'r', long)]
        run: bool,
        /// Only the open commands
        #[arg(long, conflicts_with = "format")]
        open: bool,
        /// Only the format commands
        #[arg(long)]
        format: bool,
    },
}

#[derive(Args, Clone)]
struct Meta {
    /// A description of the key
    #[arg(short = 'd', long)]
    description: Option<String>,
    /// Volumes as dev:dm-name, comma-separated
    #[arg(short = 'l', long)]
    volumes: Option<String>,
    /// APQNs as CARD.DOMAIN, comma-separated
    #[arg(short = 'a', long)]
    apqns: Option<ApqnList>,
    /// Do not check the APQNs (online, type, master keys)
    #[arg(long)]
    no_apqn_check: bool,
    /// Do not check that the volumes exist
    #[arg(long)]
    no_volume_check: bool,
    /// Sector size of the volumes: 0 (default) or 512..4096, a power of two
    #[arg(short = 'S', long)]
    sector_size: Option<SectorSize>,
    /// Volume type: luks2 (default) or plain
    #[arg(short = 't', long)]
    volume_type: Option<VolumeType>,
    /// Generate a random dummy passphrase for the LUKS2 volumes
    #[arg(long, conflicts_with = "set_dummy_passphrase")]
    gen_dummy_passphrase: bool,
    /// Use the content of FILE as the dummy passphrase
    #[arg(long, value_name = "FILE")]
    set_dummy_passphrase: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    /// Write the key to this file instead of the repository
    file: Option<PathBuf>,
    /// Name of the key in the repository
    #[arg(short = 'N', long, conflicts_with = "file")]
    name: Option<KeyName>,
    /// Key size in bits: 128, 192 or 256
    #[arg(short = 'k', long, default_value_t = 256)]
    keybits: u32,
    /// An XTS key (two keys, for paes-xts)
    #[arg(short = 'x', long)]
    xts: bool,
    /// Make the secure key from this clear key file instead of a random key
    #[arg(short = 'c', long, value_name = "FILE")]
    clearkey: Option<PathBuf>,
    /// CCA-AESDATA (default), CCA-AESCIPHER or EP11-AES
    #[arg(short = 'K', long, default_value = "CCA-AESDATA")]
    key_type: KeyType,
    /// In a repository bound to a KMS: a local key, not generated in the KMS
    #[arg(short = 'L', long)]
    local: bool,
    #[command(flatten)]
    meta: Meta,
}

#[derive(Args)]
struct ValidateArgs {
    /// A key file instead of repository keys
    file: Option<PathBuf>,
    /// Key names (wildcards allowed)
    #[arg(short = 'N', long, conflicts_with = "file")]
    name: Option<Pattern>,
    /// APQNs (wildcards allowed)
    #[arg(short = 'a', long)]
    apqns: Option<String>,
    /// Do not cross-check the keys' APQNs (online, type, master keys)
    #[arg(long)]
    no_apqn_check: bool,
    /// Exit non-zero if any key is invalid or at risk from the next SET (a "safe to SET" check)
    #[arg(long)]
    all: bool,
    /// JSON output (stable schema: keys, summary, readiness)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReencipherArgs {
    /// A key file instead of repository keys (re-enciphered in place, or to --output)
    file: Option<PathBuf>,
    /// Key names (wildcards allowed; a filter that matches no key is an error)
    #[arg(short = 'N', long, conflicts_with = "file")]
    name: Option<Pattern>,
    /// Keys bound to these APQNs, comma-separated (8.2f is 08.002f; wildcards allowed)
    #[arg(short = 'a', long)]
    apqns: Option<String>,
    /// OLD -> CURRENT
    #[arg(short = 'o', long)]
    from_old: bool,
    /// CURRENT -> NEW
    #[arg(short = 'n', long)]
    to_new: bool,
    /// Replace the key at once
    #[arg(short = 'i', long, conflicts_with_all = ["staged", "complete"])]
    in_place: bool,
    /// Keep the re-enciphered key beside the live one until --complete
    #[arg(short = 's', long, conflicts_with = "complete")]
    staged: bool,
    /// After the SET: install the staged keys
    #[arg(short = 'p', short_alias = 'c', long, conflicts_with_all = ["from_old", "to_new"])]
    complete: bool,
    /// Do not ask before an in-place re-encipher to NEW
    #[arg(short = 'F', long)]
    force: bool,
    /// With a key file: write the result here instead of replacing the file
    #[arg(short = 'f', long = "output", requires = "file")]
    output: Option<PathBuf>,
    /// JSON output: each key's result, the summary and the readiness verdicts
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ImportArgs {
    /// The secure key file to import
    file: PathBuf,
    /// Name of the key in the repository
    #[arg(short = 'N', long)]
    name: KeyName,
    #[command(flatten)]
    meta: Meta,
}

#[derive(Args)]
struct ListArgs {
    /// Key names (wildcards allowed)
    #[arg(short = 'N', long)]
    name: Option<Pattern>,
    /// Keys bound to these APQNs (8.2f is 08.002f; wildcards allowed)
    #[arg(short = 'a', long)]
    apqns: Option<String>,
    /// Volumes (dev or dev:dm-name, wildcards allowed)
    #[arg(short = 'l', long)]
    volumes: Option<String>,
    /// Only keys of this volume type: luks2 or plain
    #[arg(short = 't', long)]
    volume_type: Option<VolumeType>,
    /// Only keys of this type: CCA-AESDATA, CCA-AESCIPHER or EP11-AES
    #[arg(short = 'K', long)]
    key_type: Option<KeyType>,
    /// JSON output (stable schema: keys, damaged, not_ready)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChangeArgs {
    /// The key to change
    #[arg(short = 'N', long)]
    name: KeyName,
    /// A new description (empty removes it)
    #[arg(short = 'd', long)]
    description: Option<String>,
    /// Volumes: +dev:dm adds, -dev:dm removes, a plain list replaces
    #[arg(short = 'l', long, allow_hyphen_values = true)]
    volumes: Option<String>,
    /// APQNs: +APQN adds, -APQN removes, a plain list replaces
    #[arg(short = 'a', long, allow_hyphen_values = true)]
    apqns: Option<String>,
    /// Do not cross-check added APQNs against the key's master key
    #[arg(long)]
    no_apqn_check: bool,
    /// Do not check that added volumes exist
    #[arg(long)]
    no_volume_check: bool,
    /// Sector size of the volumes: 0 or 512..4096, a power of two
    #[arg(short = 'S', long)]
    sector_size: Option<SectorSize>,
    /// Volume type: luks2 or plain
    #[arg(short = 't', long)]
    volume_type: Option<VolumeType>,
    /// Generate a random dummy passphrase for the key's LUKS2 volumes
    #[arg(long, conflicts_with_all = ["set_dummy_passphrase", "remove_dummy_passphrase"])]
    gen_dummy_passphrase: bool,
    /// Use the content of FILE as the dummy passphrase
    #[arg(long, value_name = "FILE", conflicts_with = "remove_dummy_passphrase")]
    set_dummy_passphrase: Option<PathBuf>,
    /// Remove the dummy passphrase (asks first, unless -F)
    #[arg(long)]
    remove_dummy_passphrase: bool,
    /// Do not ask before removing the dummy passphrase
    #[arg(short = 'F', long)]
    force: bool,
}

#[derive(Subcommand)]
#[command(infer_subcommands = true)]
enum KmsCmd {
    /// The plug-ins of kms-plugins.conf ($ZKEY_KMS_PLUGINS)
    Plugins {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Bind the repository to a plug-in
    Bind {
        /// The plug-in's name in kms-plugins.conf (see 'zkey kms plugins'), e.g. KMIP
        plugin: String,
    },
    /// Unbind: the keys stay, as local keys
    Unbind {
        /// Do not ask
        #[arg(short = 'F', long)]
        force: bool,
    },
    /// The binding and what the plug-in reports
    Info {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Configure the plug-in: its APQNs, servers and certificates
    Configure {
        /// APQNs of the plug-in's keys (CCA and EP11), comma-separated
        #[arg(short = 'a', long)]
        apqns: Option<ApqnList>,
        /// KMS servers, host:port, comma-separated, tried in order
        #[arg(long)]
        servers: Option<String>,
        /// The CA certificate (PEM) that the server's certificate must chain to
        #[arg(long, value_name = "FILE")]
        server_ca: Option<PathBuf>,
        /// Write a CSR for the identity key, for the KMS's CA to sign
        #[arg(long, value_name = "FILE")]
        gen_csr: Option<PathBuf>,
        /// Write a self-signed certificate for the identity key
        #[arg(long, value_name = "FILE")]
        gen_self_signed_cert: Option<PathBuf>,
        /// The signed client certificate (PEM) for the identity key
        #[arg(long, value_name = "FILE")]
        client_cert: Option<PathBuf>,
        /// The common name of the CSR or certificate (the client identity the KMS sees), e.g. zkey-host1
        #[arg(long)]
        cert_subject: Option<String>,
        /// Any other plug-in option, NAME=VALUE (repeatable)
        #[arg(short = 'O', long = "plugin-option", value_name = "NAME=VALUE")]
        plugin_options: Vec<String>,
    },
    /// Re-encipher the plug-in's own keys (identity key, wrapping key)
    #[command(visible_alias = "re")]
    Reencipher {
        /// From the OLD to the CURRENT master key (after a SET; in place by default)
        #[arg(short = 'o', long)]
        from_old: bool,
        /// From the CURRENT to the NEW master key (before the SET; staged by default)
        #[arg(short = 'n', long)]
        to_new: bool,
        /// Replace the keys right away (to NEW: unusable until the SET)
        #[arg(short = 'i', long, conflicts_with_all = ["staged", "complete"])]
        in_place: bool,
        /// Write re-enciphered copies beside the keys, to be completed after the SET
        #[arg(short = 's', long, conflicts_with = "complete")]
        staged: bool,
        /// After the SET: install the staged copies
        #[arg(short = 'p', short_alias = 'c', long)]
        complete: bool,
    },
    /// The keys in the KMS
    #[command(visible_alias = "li")]
    List {
        /// KMS labels (wildcards allowed)
        #[arg(short = 'B', long)]
        label: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Rebuild repository keys from the KMS (names and volumes included)
    #[command(visible_alias = "im")]
    Import {
        /// Only KMS keys with these labels (wildcards allowed)
        #[arg(short = 'B', long)]
        label: Option<String>,
        /// Only keys with these zkey names (wildcards allowed)
        #[arg(short = 'N', long)]
        name: Option<Pattern>,
        /// Import keys whose volumes do not exist on this system
        #[arg(long)]
        no_volume_check: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Re-import bound keys under the CURRENT master key (checked against their VP)
    Refresh {
        /// Only keys with these names (wildcards allowed)
        #[arg(short = 'N', long)]
        name: Option<Pattern>,
        /// Also reload the description and volume associations from the KMS
        #[arg(short = 'P', long)]
        refresh_properties: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct ChangeSpec {
    /// The APQNs whose master keys change, e.g. 08.002f,09.002f
    #[arg(short = 'a', long)]
    apqns: ApqnList,
    /// The master key types that change: aes, apka, ep11 (comma-separated)
    #[arg(short = 't', long, value_delimiter = ',', required = true)]
    mktype: Vec<ap_sim::MkType>,
    /// The new master key's verification pattern the security officer announced, as TYPE=HEX
    /// (e.g. aes=1a7dfdeaffeedac4); repeatable. Checked against what is loaded in NEW.
    #[arg(long = "new-mkvp", value_name = "TYPE=HEX")]
    new_mkvp: Vec<String>,
}

impl ChangeSpec {
    fn request(&self) -> Result<zkey::mkchange::Request> {
        let announced = self
            .new_mkvp
            .iter()
            .map(|s| {
                let (t, m) = s.split_once('=').ok_or_else(|| {
                    anyhow!("--new-mkvp '{s}': write TYPE=HEX, e.g. aes=1a7dfdeaffeedac4")
                })?;
                Ok((t.parse::<ap_sim::MkType>()?, m.parse::<ap_sim::Mkvp>()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(zkey::mkchange::Request {
            apqns: self.apqns.as_slice().to_vec(),
            types: self.mktype.clone(),
            announced,
        })
    }
}

#[derive(Subcommand)]
enum MkchangeCmd {
    /// Everything the change touches and the preflight checks, changing nothing
    Plan {
        #[command(flatten)]
        spec: ChangeSpec,
        /// JSON output: the plan, its checks and the readiness verdicts
        #[arg(long)]
        json: bool,
    },
    /// Stage every affected key and volume; ends with "safe to SET" or what is not staged
    Start {
        #[command(flatten)]
        spec: ChangeSpec,
        /// Show what would be staged, change nothing
        #[arg(long)]
        dry_run: bool,
        /// JSON output: the operation, safe_to_set and the readiness verdicts
        #[arg(long)]
        json: bool,
    },
    /// The operations and their state
    #[command(visible_alias = "list")]
    Status {
        /// One operation
        #[arg(short = 'i', long)]
        id: Option<String>,
        /// JSON output: each operation, where its SET stands, and its readiness
        #[arg(long)]
        json: bool,
    },
    /// After the SET: complete every key and volume, keep the previous keys as a backup
    Finalize {
        /// The operation (see zkey mkchange status)
        #[arg(short = 'i', long)]
        id: String,
        /// Check that the SET is done and say what would be completed; change nothing
        #[arg(long)]
        dry_run: bool,
        /// JSON output: the operation
        #[arg(long)]
        json: bool,
    },
    /// While no APQN has the new key set: remove the staged copies
    Cancel {
        /// The operation (see zkey mkchange status)
        #[arg(short = 'i', long)]
        id: String,
        /// Say what would be removed; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Do not ask
        #[arg(short = 'F', long)]
        force: bool,
    },
}

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AuditCmd {
    /// Prove both logs intact, or name the first bad record (exit 1)
    Verify {
        /// JSON output: one entry per log
        #[arg(long)]
        json: bool,
    },
    /// Show records of both logs, oldest first
    Show {
        /// Event names, e.g. tke-set, generate, reencipher-* (wildcards allowed)
        #[arg(long)]
        event: Option<Pattern>,
        /// Key names (wildcards allowed)
        #[arg(short = 'N', long = "name")]
        key: Option<Pattern>,
        /// APQNs (wildcards allowed)
        #[arg(short = 'a', long)]
        apqn: Option<Pattern>,
        /// aes, apka or ep11
        #[arg(short = 't', long)]
        mktype: Option<ap_sim::MkType>,
        /// Records at or after this UTC time (e.g. 2026-11-01 or 2026-11-01T10:00)
        #[arg(long)]
        since: Option<String>,
        /// Only the TKE's log, or only the repository's
        #[arg(long, value_parser = ["zkey", "tke"])]
        source: Option<String>,
        /// Only the last N records
        #[arg(long)]
        last: Option<usize>,
        /// JSON output: the records
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct VolumeFilter {
    /// Key names (wildcards allowed)
    #[arg(short = 'N', long)]
    name: Option<Pattern>,
    /// Volumes (dev or dev:dm-name, wildcards allowed)
    #[arg(short = 'l', long)]
    volumes: Option<String>,
}

fn main() -> ExitCode {
    durable::arm_crash_points();
    durable::default_sigpipe();
    // As the reference: files zkey creates are private to the repository's group at most.
    unsafe_umask();
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
    match e.downcast_ref::<zkey::ZkeyError>() {
        Some(zkey::ZkeyError::NoMatch(_)) => Exit::Usage,
        _ => Exit::Failed,
    }
}

fn unsafe_umask() {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o007);
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
            zkey::ops::export(&repo.read(lock_wait())?, &name, &file, force)?;
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
        } => cryptsetup(&filter, run, !open, !format),
        Cmd::Audit(a) => audit_cmd(a),
        Cmd::Mkchange(m) => mkchange_cmd(m),
        Cmd::Kms(k) => kms_cmd(k),
    }
}

fn lock_wait() -> Duration {
    let secs = std::env::var("ZKEY_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

fn repo_path() -> PathBuf {
    repository::default_path()
}

fn open_repo() -> Result<Repository> {
    Ok(Repository::open(repo_path())?)
}

/// Commands that add keys create a missing repository (mode 2770, group zkeyadm if it exists).
fn open_or_create_repo() -> Result<Repository> {
    let p = repo_path();
    if p.exists() {
        return open_repo();
    }
    let r = Repository::create(&p)?;
    eprintln!("zkey: created the repository {}", p.display());
    Ok(r)
}

fn adapters() -> Result<Adapters> {
    Ok(Adapters::from_env()?)
}

fn parse_volumes(s: &str, check: bool) -> Result<Vec<Volume>> {
    let v = zkey::volume::parse_volume_list(s)?;
    if check {
        v.iter().try_for_each(zkey::volume::check_device)?;
    }
    Ok(v)
}

fn read_secret_file(p: &Path) -> Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
    ))
}

fn new_key_spec(meta: &Meta, key_type: KeyType, bits: u32, xts: bool) -> Result<NewKey> {
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

fn dummy_pass(meta: &Meta) -> Result<Option<DummyPassphrase>> {
    Ok(if meta.gen_dummy_passphrase {
        Some(DummyPassphrase::Generate)
    } else if let Some(f) = &meta.set_dummy_passphrase {
        Some(DummyPassphrase::Given(read_secret_file(f)?))
    } else {
        None
    })
}

fn generate(a: GenerateArgs) -> Result<()> {
    let ad = adapters()?;
    let spec = new_key_spec(&a.meta, a.key_type, a.keybits, a.xts)?;
    let clear = a.clearkey.as_deref().map(read_secret_file).transpose()?;
    let source = clear
        .as_deref()
        .map_or(zkey::ops::Source::Random, |c| zkey::ops::Source::Clear(c));
    match (&a.file, &a.name) {
        (Some(file), None) => {
            if a.meta.volumes.is_some()
                || a.meta.description.is_some()
                || a.meta.gen_dummy_passphrase
                || a.meta.set_dummy_passphrase.is_some()
            {
                bail!("--volumes, --description and dummy passphrases need a repository key: use --name instead of a file");
            }
            let key = zkey::ops::generate_file(&ad, file, &spec, source)?;
            println!(
                "Secure key generated: {} ({}, {} bytes).",
                file.display(),
                key.key_type(),
                key.len()
            );
        }
        (None, Some(name)) => {
            let repo = open_or_create_repo()?;
            let w = repo.write(lock_wait())?;
            let added =
                zkey::ops::generate(&w, &ad, name, &spec, source, a.local, dummy_pass(&a.meta)?)?;
            print_added(&added);
            println!(
                "Secure key '{name}' generated in the repository ({}, {} bytes).",
                added.key.key_type(),
                added.key.len()
            );
        }
        _ => bail!("name the key with --name (repository) or give a FILE"),
    }
    Ok(())
}

/// What the library says about a key it added, besides the key itself.
fn print_added(added: &zkey::ops::Added) {
    show_notices(&added.notices, false);
    if let Some(id) = &added.staged_in {
        println!(
            "Master key change {id} is open on this key's APQNs: the key was staged for it too."
        );
    }
}

fn import(a: ImportArgs) -> Result<()> {
    let ad = adapters()?;
    let bytes = zkey::ops::read_key_file(&a.file)?;
    let key = SecureKey::parse(&bytes).map_err(|e| anyhow!("{}: {e}", a.file.display()))?;
    let spec = new_key_spec(&a.meta, key.key_type(), key.key_bits(), key.is_xts())?;
    let repo = open_or_create_repo()?;
    let w = repo.write(lock_wait())?;
    let added = zkey::ops::import(&w, &ad, &a.name, &key, &spec, dummy_pass(&a.meta)?)?;
    if added.under_old {
        eprintln!("zkey: WARNING: the key is enciphered with the OLD master key: re-encipher it with 'zkey reencipher -N {} --from-old' before the next SET", zkey::keyname::quote(a.name.as_str()));
    }
    print_added(&added);
    println!("Secure key '{}' imported into the repository.", a.name);
    Ok(())
}

fn apqn_patterns(s: &Option<String>) -> Vec<Pattern> {
    s.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(Pattern::new)
                .collect()
        })
        .unwrap_or_default()
}

fn validate(a: ValidateArgs) -> Result<ExitCode> {
    let ad = adapters()?;
    if let Some(f) = &a.file {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let st = keyops::status(&ad, &f.display().to_string(), &bytes, None, None, false);
        let (verdict, _) = zkey::readiness::key_verdict(&st);
        if a.json {
            let v = serde_json::json!({ "keys": [&st], "summary": { "valid": st.valid as usize, "invalid": !st.valid as usize, "at_risk": st.risk.is_some() as usize } });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_status(&st, verdict);
        }
        return Ok(exit_if(a.all && !verdict.ready(), Exit::AtRisk));
    }
    let repo = open_repo()?;
    let r = repo.read(lock_wait())?;
    let sel = Selection {
        names: a.name.clone(),
        apqns: apqn_patterns(&a.apqns),
    };
    let plugin = zkey::readiness::plugin_facts(&r)?;
    let scope = zkey::readiness::Scope {
        keys: sel.clone(),
        change: None,
        without_plugin_keys: sel.is_filtered(),
        apqn_check: !a.no_apqn_check,
    };
    let rd = zkey::readiness::assess(&r, &ad, &scope, &plugin)?;
    sel.require_match(rd.keys.len())?;
    let statuses = &rd.keys;
    let valid = statuses.iter().filter(|s| s.valid).count();
    let invalid = statuses.len() - valid;
    let at_risk = rd.summary.at_risk + rd.summary.lost;
    if a.json {
        let v = serde_json::json!({ "keys": statuses, "summary": { "valid": valid, "invalid": invalid, "at_risk": at_risk }, "readiness": &rd });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for s in statuses {
            let verdict = rd
                .object(zkey::readiness::Kind::Key, &s.name)
                .map_or(zkey::readiness::Verdict::Unknown, |o| o.verdict);
            print_status(s, verdict);
        }
        print_readiness(&rd);
        println!(
            "{valid} keys are valid, {invalid} keys are invalid, {at_risk} objects are at risk"
        );
        println!("{}", rd.headline());
    }
    Ok(exit_if(a.all && rd.at_risk, Exit::AtRisk))
}

/// The readiness table: every object that is not simply safe, with what to do.
fn print_readiness(rd: &zkey::readiness::Readiness) {
    use zkey::readiness::Verdict;
    let mut t = Table::new(["OBJECT", "NAME", "MK", "VERDICT", "WHY", "WHAT TO DO"]);
    for o in rd.objects.iter().filter(|o| o.verdict != Verdict::Safe) {
        t.row([
            o.kind.word().to_string(),
            o.name.clone(),
            o.mktype.map_or_else(|| "-".into(), |m| m.to_string()),
            o.verdict.word().to_string(),
            o.reason.clone(),
            o.action.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if !t.is_empty() {
        print!("{}", t.render());
    }
}

fn exit_if(cond: bool, code: Exit) -> ExitCode {
    if cond {
        code.into()
    } else {
        Exit::Done.into()
    }
}

fn register_words(r: Option<Register>) -> &'static str {
    match r {
        Some(Register::Current) => "CURRENT master key",
        Some(Register::Old) => "OLD master key",
        Some(Register::New) => "NEW master key (not set yet)",
        None => "unknown master key",
    }
}

fn print_status(s: &KeyStatus, verdict: zkey::readiness::Verdict) {
    println!("Validation of secure key '{}':", s.name);
    let status = if s.valid { "Valid" } else { "Invalid" };
    println!("  Status:                {status}");
    if let Some(e) = &s.error {
        println!("  Problem:               {e}");
    }
    if let Some(t) = s.key_type {
        println!("  Secure key size:       {} bytes", s.secure_key_size);
        println!("  Key type:              {t}");
        println!(
            "  Clear key size:        {} bits{}",
            s.clear_key_bits.unwrap_or(0),
            if s.xts == Some(true) { " (XTS)" } else { "" }
        );
    }
    if let Some(m) = s.mkvp {
        println!(
            "  Enciphered with:       {} (MKVP: {m})",
            register_words(s.register)
        );
    }
    if let Some(vp) = &s.verification_pattern {
        println!("  Verification pattern:  {vp}");
    }
    if !s.apqns.is_empty() {
        println!(
            "  Associated APQNs:      {}",
            ap_sim::apqn::format_list(&s.apqns)
        );
    }
    if let Some(st) = &s.staged {
        println!(
            "  Re-enciphering:        pending: staged key enciphered with the {}",
            register_words(st.register)
        );
    }
    println!("  Readiness:             {verdict}");
    if matches!(
        verdict,
        zkey::readiness::Verdict::AtRisk | zkey::readiness::Verdict::Lost
    ) {
        println!(
            "  *** AT RISK ***:       {}",
            s.advice.as_deref().unwrap_or("")
        );
    } else if let Some(a) = s.advice.as_deref().filter(|_| !s.valid) {
        println!("  What to do:            {a}");
    }
    if let Some(cc) = &s.apqn_check {
        if !cc.findings.is_empty() {
            for line in cc.report().lines() {
                println!("  {line}");
            }
        }
    }
    println!();
}

fn reencipher_cmd(a: ReencipherArgs) -> Result<ExitCode> {
    let way = match (a.from_old, a.to_new) {
        (true, true) => Some(Way::FromOldToNew),
        (true, false) => Some(Way::FromOld),
        (false, true) => Some(Way::ToNew),
        (false, false) => None,
    };
    let mode = if a.complete {
        Some(Mode::Complete)
    } else if a.staged {
        Some(Mode::Staged)
    } else if a.in_place {
        Some(Mode::InPlace)
    } else {
        None
    };
    let ad = adapters()?;
    if let Some(file) = &a.file {
        zkey::ops::reencipher_file(&ad, file, a.output.as_deref(), way, mode)?;
        println!(
            "Secure key {} re-enciphered{}.",
            file.display(),
            a.output
                .as_ref()
                .map(|o| format!(" into {}", o.display()))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let repo = open_repo()?;
    let w = repo.write(lock_wait())?;
    let sel = Selection {
        names: a.name.clone(),
        apqns: apqn_patterns(&a.apqns),
    };
    let tty = std::io::stderr().is_terminal() && !a.json;
    let mut n = 0;
    let done = zkey::ops::reencipher(
        &w,
        &ad,
        &sel,
        &Options { way, mode },
        a.force,
        &mut TermUi,
        |r| {
            n += 1;
            if tty {
                eprint!("\r\x1b[2K[{n}] {}", r.name);
            }
            if !a.json {
                if tty {
                    eprint!("\r\x1b[2K");
                }
                print_result(r);
            }
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!("{}", done.report.summary);
        print_readiness(&done.readiness);
        println!("{}", done.readiness.headline());
    }
    Ok(exit_if(done.report.summary.failed > 0, Exit::Failed))
}

fn print_result(r: &reencipher::KeyResult) {
    match &r.outcome {
        Outcome::Staged { from, to, .. } => println!(
            "Key '{}': staged re-enciphering from the {} to the {} master key. After the NEW master key is set, run 'zkey reencipher --complete'.",
            r.name,
            from.name(),
            to.name()
        ),
        Outcome::InPlace { from, to, .. } => println!("Key '{}': re-enciphered from the {} to the {} master key.", r.name, from.name(), to.name()),
        Outcome::Completed { .. } => println!("Key '{}': re-enciphering completed: the staged key is now the key.", r.name),
        Outcome::Skipped { reason } => println!("Key '{}': skipped: {reason}.", r.name),
        Outcome::Failed { error } => println!("Key '{}': FAILED: {error}", r.name),
    }
    if !r.luks2_volumes.is_empty() {
        println!(
            "  The LUKS2 volumes of this key hold their own copy of it: also run 'zkey-cryptsetup reencipher' for {}",
            r.luks2_volumes.join(", ")
        );
    }
}

fn list(a: ListArgs) -> Result<ExitCode> {
    use zkey::readiness::{Kind, Verdict};
    let ad = adapters()?;
    let repo = open_repo()?;
    let r = repo.read(lock_wait())?;
    let sel = Selection {
        names: a.name.clone(),
        apqns: apqn_patterns(&a.apqns),
    };
    let vol_patterns: Vec<Pattern> = a
        .volumes
        .as_deref()
        .map(|s| s.split(',').map(Pattern::new).collect())
        .unwrap_or_default();
    let plugin = zkey::readiness::plugin_facts(&r)?;
    let rd = zkey::readiness::assess(
        &r,
        &ad,
        &zkey::readiness::Scope {
            keys: sel.clone(),
            without_plugin_keys: sel.is_filtered(),
            ..Default::default()
        },
        &plugin,
    )?;
    let mut rows = Vec::new();
    let mut damaged = Vec::new();
    for e in r.entries()? {
        match e {
            Ok(e) => {
                if !sel.matches(&e.name, &e.properties.apqns)
                    || a.volume_type.is_some_and(|t| t != e.properties.volume_type)
                    || a.key_type
                        .is_some_and(|t| t.name() != e.properties.key_type)
                    || (!vol_patterns.is_empty()
                        && !e
                            .properties
                            .volumes
                            .iter()
                            .any(|v| vol_patterns.iter().any(|p| p.matches_volume(v))))
                {
                    continue;
                }
                let Some(st) = rd.keys.iter().find(|k| k.name == e.name.as_str()) else {
                    continue;
                };
                let verdict = rd
                    .object(Kind::Key, e.name.as_str())
                    .map_or(Verdict::Unknown, |o| o.verdict);
                rows.push((e.properties.clone(), st.clone(), verdict));
            }
            Err(d) if sel.matches_damaged(&d.name) => damaged.push(d),
            Err(_) => {}
        }
    }
    let filtered = sel.is_filtered()
        || a.volume_type.is_some()
        || a.key_type.is_some()
        || !vol_patterns.is_empty();
    if filtered && rows.is_empty() && damaged.is_empty() {
        let mut what = sel.describe();
        if let Some(v) = &a.volumes {
            what.push_str(&format!(" --volumes '{v}'"));
        }
        if let Some(t) = a.volume_type {
            what.push_str(&format!(" --volume-type {t}"));
        }
        if let Some(t) = a.key_type {
            what.push_str(&format!(" --key-type {t}"));
        }
        return Err(zkey::ZkeyError::NoMatch(what.trim().to_string()).into());
    }
    // Volumes and plug-in keys of the listed keys that are not ready are listed below the table.
    let listed: Vec<&str> = rows.iter().map(|(_, s, _)| s.name.as_str()).collect();
    let below: Vec<&zkey::readiness::Object> = rd
        .not_ready()
        .into_iter()
        .filter(|o| match o.kind {
            Kind::Key => listed.contains(&o.name.as_str()),
            Kind::Volume => o.key.as_deref().is_some_and(|k| listed.contains(&k)),
            Kind::PluginKey => !filtered,
        })
        .collect();
    if a.json {
        let keys: Vec<_> = rows.iter().map(|(p, s, v)| list_json(p, s, *v)).collect();
        let dmg: Vec<_> = damaged.iter().map(|d| serde_json::json!({ "name": d.name.to_string(), "damage": d.damage.iter().map(|x| x.to_string()).collect::<Vec<_>>() })).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "keys": keys, "damaged": dmg, "not_ready": below })
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new([
        "NAME",
        "KEY TYPE",
        "BITS",
        "XTS",
        "APQNS",
        "VOLUMES",
        "VOLUME TYPE",
        "STATE",
    ]);
    for (p, s, v) in &rows {
        t.row([
            s.name.clone(),
            p.key_type.clone(),
            s.clear_key_bits
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            if s.xts == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            or_dash(ap_sim::apqn::format_list(&p.apqns)),
            or_dash(zkey::volume::format_volume_list(&p.volumes)),
            p.volume_type.to_string(),
            state_word(s, *v),
        ]);
    }
    for d in &damaged {
        t.row([
            d.name.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "DAMAGED".into(),
        ]);
    }
    if t.is_empty() {
        println!("No keys.");
    } else {
        print!("{}", t.render());
    }
    for o in below
        .iter()
        .filter(|o| o.kind != Kind::Key || o.verdict != Verdict::Unknown)
    {
        println!(
            "*** {}: {} '{}': {}{}",
            o.verdict.word().to_uppercase(),
            o.kind.word(),
            o.name,
            o.reason,
            o.action
                .as_deref()
                .map(|a| format!("; run '{a}'"))
                .unwrap_or_default()
        );
    }
    for d in &damaged {
        println!("*** DAMAGED: {d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn state_word(s: &KeyStatus, verdict: zkey::readiness::Verdict) -> String {
    use zkey::readiness::Verdict;
    let base = match (s.valid, s.register) {
        (true, Some(Register::Current)) => "valid (CURRENT)",
        (true, Some(Register::Old)) => "valid (OLD)",
        (false, Some(Register::New)) => "waiting for SET",
        _ => "INVALID",
    };
    let mut w = base.to_string();
    if s.staged.is_some() {
        w.push_str(", re-enciphering pending");
    }
    match verdict {
        Verdict::AtRisk | Verdict::Lost => w.push_str(", AT RISK"),
        Verdict::Staged if s.staged.is_none() => w.push_str(", staged"),
        _ => {}
    }
    w
}

fn list_json(
    p: &KeyProperties,
    s: &KeyStatus,
    verdict: zkey::readiness::Verdict,
) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "key_type": p.key_type,
        "description": p.description,
        "apqns": p.apqns,
        "volumes": p.volumes.iter().map(Volume::to_string).collect::<Vec<_>>(),
        "volume_type": p.volume_type.to_string(),
        "sector_size": p.sector_size.bytes(),
        "verification_pattern": p.verification_pattern.map(|v| v.to_string()),
        "creation_time": p.creation_time.as_ref().map(|t| t.to_string()),
        "update_time": p.update_time.as_ref().map(|t| t.to_string()),
        "reencipher_time": p.reencipher_time.as_ref().map(|t| t.to_string()),
        "kms": p.kms,
        "status": s,
        "verdict": verdict,
    })
}

fn confirm(question: &str, force: bool) -> Result<bool> {
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

fn remove(name: &KeyName, force: bool) -> Result<()> {
    let (repo, ad) = (open_repo()?, adapters()?);
    let notices = zkey::ops::remove(&repo.write(lock_wait())?, &ad, name, force, &mut TermUi)?;
    show_notices(&notices, false);
    println!("Key '{name}' removed.");
    Ok(())
}

fn change(a: ChangeArgs) -> Result<()> {
    use zkey::ops::PassphraseChange;
    let passphrase = if a.gen_dummy_passphrase {
        Some(PassphraseChange::Set(DummyPassphrase::Generate))
    } else if let Some(f) = &a.set_dummy_passphrase {
        Some(PassphraseChange::Set(DummyPassphrase::Given(
            read_secret_file(f)?,
        )))
    } else if a.remove_dummy_passphrase {
        Some(PassphraseChange::Remove)
    } else {
        None
    };
    let c = zkey::ops::Change {
        description: a.description,
        volumes: a.volumes.as_deref().map(Edit::parse).transpose()?,
        volume_check: !a.no_volume_check,
        apqns: a.apqns.as_deref().map(Edit::parse).transpose()?,
        apqn_check: !a.no_apqn_check,
        sector_size: a.sector_size,
        volume_type: a.volume_type,
        passphrase,
        force: a.force,
    };
    let (repo, ad) = (open_repo()?, adapters()?);
    zkey::ops::change(&repo.write(lock_wait())?, &ad, &a.name, c, &mut TermUi)?;
    println!("Key '{}' changed.", a.name);
    Ok(())
}

fn volume_plans(f: &VolumeFilter) -> Result<Vec<VolumePlan>> {
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

fn cryptsetup(f: &VolumeFilter, run: bool, format: bool, open: bool) -> Result<ExitCode> {
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
fn run_action(ad: &Adapters, plan: &VolumePlan, action: Action, cmd: &[String]) -> Result<()> {
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

/// A new passphrase for a volume: asked twice on a terminal, one line of stdin otherwise.
fn new_passphrase(device: &Path) -> Result<Zeroizing<Vec<u8>>> {
    if !std::io::stdin().is_terminal() {
        let mut s = Zeroizing::new(String::new());
        std::io::stdin().lock().read_line(&mut s)?;
        let t = s.trim_end_matches(['\n', '\r']);
        if t.is_empty() {
            bail!("no passphrase on stdin for {}: give the key a dummy passphrase (zkey change --gen-dummy-passphrase) or type one", device.display());
        }
        return Ok(Zeroizing::new(t.as_bytes().to_vec()));
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
struct TermUi;

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
}

fn audit_cmd(a: AuditCmd) -> Result<ExitCode> {
    let ad = adapters()?;
    let repo = open_repo()?;
    let sim = ad.hsm.simulator();
    match a {
        AuditCmd::Verify { json } => {
            let vs = zkey::audit::verify_all(&repo, sim)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "logs": vs }))?
                );
            } else {
                for v in &vs {
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
            let mut entries = zkey::audit::show(&repo, sim, &f)?;
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
                    r.result.clone(),
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

fn mkchange_cmd(cmd: MkchangeCmd) -> Result<ExitCode> {
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
                        k.name.clone(),
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
                    println!("KMS plug-in key: {k}");
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

/// What a KMS plug-in said: on stdout, or on stderr when stdout is JSON.
fn show_notices(notices: &[String], json: bool) {
    for n in notices {
        if json {
            eprintln!("zkey: KMS plug-in: {n}");
        } else {
            println!("KMS plug-in: {n}");
        }
    }
}

fn kms_cmd(cmd: KmsCmd) -> Result<ExitCode> {
    use kms_plugin::plugin::{ConfigureStatus, MkDirection, ReencipherMode};
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
            let (kms, n, notices) = zkey::ops::kms_unbind(&w, &ad, force, &mut TermUi)?;
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
        KmsCmd::Reencipher {
            from_old,
            to_new,
            in_place,
            staged,
            complete,
        } => {
            let direction = match (from_old, to_new) {
                (true, false) => MkDirection::FromOld,
                (false, true) => MkDirection::ToNew,
                (false, false) => MkDirection::Auto,
                (true, true) => bail!("give one direction: --from-old or --to-new"),
            };
            let mode = if complete {
                ReencipherMode::Complete
            } else if staged {
                ReencipherMode::Staged
            } else if in_place {
                ReencipherMode::InPlace
            } else {
                ReencipherMode::Auto
            };
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
            let changed: Vec<String> = rep
                .keys
                .iter()
                .filter(|k| k.changed())
                .map(|k| k.key.clone())
                .collect();
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
