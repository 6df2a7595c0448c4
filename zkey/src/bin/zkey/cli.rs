//! The command line: clap types only. Nothing here acts; `cmd` turns them into library calls.

use crate::prelude::*;

/// Manage secure AES keys of encrypted volumes, bound to crypto adapters (APQNs).
#[derive(Parser)]
#[command(name = "zkey", version, about, long_about = None, infer_subcommands = true, disable_version_flag = true, arg_required_else_help = true)]
pub(crate) struct Cli {
    /// Print version information
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    pub(crate) version: Option<bool>,
    /// More output
    #[arg(short = 'V', long, global = true)]
    pub(crate) verbose: bool,
    #[command(flatten)]
    pub(crate) docs: infra::docs::DocsArgs,
    #[command(subcommand)]
    pub(crate) cmd: Option<Cmd>,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
        /// With --run: format even a device that holds a LUKS header already (destroys that
        /// volume); without it, only a yes on a terminal does
        #[arg(short = 'F', long)]
        force: bool,
    },
}

#[derive(Args, Clone)]
pub(crate) struct Meta {
    /// A description of the key
    #[arg(short = 'd', long)]
    pub(crate) description: Option<String>,
    /// Volumes as dev:dm-name, comma-separated
    #[arg(short = 'l', long)]
    pub(crate) volumes: Option<String>,
    /// APQNs as CARD.DOMAIN, comma-separated
    #[arg(short = 'a', long)]
    pub(crate) apqns: Option<ApqnList>,
    /// Do not check the APQNs (online, type, master keys)
    #[arg(long)]
    pub(crate) no_apqn_check: bool,
    /// Do not check that the volumes exist
    #[arg(long)]
    pub(crate) no_volume_check: bool,
    /// Sector size of the volumes: 0 (default) or 512..4096, a power of two
    #[arg(short = 'S', long)]
    pub(crate) sector_size: Option<SectorSize>,
    /// Volume type: luks2 (default) or plain
    #[arg(short = 't', long)]
    pub(crate) volume_type: Option<VolumeType>,
    /// Generate a random dummy passphrase for the LUKS2 volumes
    #[arg(long, conflicts_with = "set_dummy_passphrase")]
    pub(crate) gen_dummy_passphrase: bool,
    /// Use the content of FILE as the dummy passphrase
    #[arg(long, value_name = "FILE")]
    pub(crate) set_dummy_passphrase: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// Write the key to this file instead of the repository
    pub(crate) file: Option<PathBuf>,
    /// Name of the key in the repository
    #[arg(short = 'N', long, conflicts_with = "file")]
    pub(crate) name: Option<KeyName>,
    /// Key size in bits: 128, 192 or 256
    #[arg(short = 'k', long, default_value_t = 256)]
    pub(crate) keybits: u32,
    /// An XTS key (two keys, for paes-xts)
    #[arg(short = 'x', long)]
    pub(crate) xts: bool,
    /// Make the secure key from this clear key file instead of a random key
    #[arg(short = 'c', long, value_name = "FILE")]
    pub(crate) clearkey: Option<PathBuf>,
    /// CCA-AESDATA (default), CCA-AESCIPHER or EP11-AES
    #[arg(short = 'K', long, default_value = "CCA-AESDATA")]
    pub(crate) key_type: KeyType,
    /// In a repository bound to a KMS: a local key, not generated in the KMS
    #[arg(short = 'L', long)]
    pub(crate) local: bool,
    #[command(flatten)]
    pub(crate) meta: Meta,
}

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// A key file instead of repository keys
    #[arg(conflicts_with_all = ["name", "apqns"])]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) keys: KeyFilter,
    /// Do not cross-check the keys' APQNs (online, type, master keys)
    #[arg(long)]
    pub(crate) no_apqn_check: bool,
    /// Exit non-zero if any key is invalid or at risk from the next SET (a "safe to SET" check)
    #[arg(long)]
    pub(crate) all: bool,
    /// JSON output (stable schema: keys, summary, readiness)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct ReencipherArgs {
    /// A key file instead of repository keys (re-enciphered in place, or to --output)
    #[arg(conflicts_with_all = ["name", "apqns"])]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) keys: KeyFilter,
    #[command(flatten)]
    pub(crate) way: WayFlags,
    /// Do not ask before an in-place re-encipher to NEW
    #[arg(short = 'F', long)]
    pub(crate) force: bool,
    /// With a key file: write the result here instead of replacing the file
    #[arg(short = 'f', long = "output", requires = "file")]
    pub(crate) output: Option<PathBuf>,
    /// JSON output: each key's result, the summary and the readiness verdicts
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// The secure key file to import
    pub(crate) file: PathBuf,
    /// Name of the key in the repository
    #[arg(short = 'N', long)]
    pub(crate) name: KeyName,
    #[command(flatten)]
    pub(crate) meta: Meta,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) keys: KeyFilter,
    /// Volumes (dev or dev:dm-name, wildcards allowed)
    #[arg(short = 'l', long)]
    pub(crate) volumes: Option<String>,
    /// Only keys of this volume type: luks2 or plain
    #[arg(short = 't', long)]
    pub(crate) volume_type: Option<VolumeType>,
    /// Only keys of this type: CCA-AESDATA, CCA-AESCIPHER or EP11-AES
    #[arg(short = 'K', long)]
    pub(crate) key_type: Option<KeyType>,
    /// JSON output (stable schema: keys, damaged, not_ready)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct ChangeArgs {
    /// The key to change
    #[arg(short = 'N', long)]
    pub(crate) name: KeyName,
    /// A new description (empty removes it)
    #[arg(short = 'd', long)]
    pub(crate) description: Option<String>,
    /// Volumes: +dev:dm adds, -dev:dm removes, a plain list replaces
    #[arg(short = 'l', long, allow_hyphen_values = true)]
    pub(crate) volumes: Option<String>,
    /// APQNs: +APQN adds, -APQN removes, a plain list replaces
    #[arg(short = 'a', long, allow_hyphen_values = true)]
    pub(crate) apqns: Option<String>,
    /// Do not cross-check added APQNs against the key's master key
    #[arg(long)]
    pub(crate) no_apqn_check: bool,
    /// Do not check that added volumes exist
    #[arg(long)]
    pub(crate) no_volume_check: bool,
    /// Sector size of the volumes: 0 or 512..4096, a power of two
    #[arg(short = 'S', long)]
    pub(crate) sector_size: Option<SectorSize>,
    /// Volume type: luks2 or plain
    #[arg(short = 't', long)]
    pub(crate) volume_type: Option<VolumeType>,
    /// Generate a random dummy passphrase for the key's LUKS2 volumes
    #[arg(long, conflicts_with_all = ["set_dummy_passphrase", "remove_dummy_passphrase"])]
    pub(crate) gen_dummy_passphrase: bool,
    /// Use the content of FILE as the dummy passphrase
    #[arg(long, value_name = "FILE", conflicts_with = "remove_dummy_passphrase")]
    pub(crate) set_dummy_passphrase: Option<PathBuf>,
    /// Remove the dummy passphrase (asks first, unless -F)
    #[arg(long)]
    pub(crate) remove_dummy_passphrase: bool,
    /// Do not ask before removing the dummy passphrase
    #[arg(short = 'F', long)]
    pub(crate) force: bool,
}

#[derive(Subcommand)]
#[command(infer_subcommands = true)]
pub(crate) enum KmsCmd {
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
        #[command(flatten)]
        way: WayFlags,
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
        /// Only keys with these zkey names (wildcards allowed; a key's exact name selects that key alone)
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
        /// Only keys with these names (wildcards allowed; a key's exact name selects that key alone)
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
pub(crate) struct ChangeSpec {
    /// The APQNs whose master keys change, e.g. 08.002f,09.002f
    #[arg(short = 'a', long)]
    pub(crate) apqns: ApqnList,
    /// The master key types that change: aes, apka, ep11 (comma-separated)
    #[arg(short = 't', long, value_delimiter = ',', required = true)]
    pub(crate) mktype: Vec<ap_sim::MkType>,
    /// The new master key's verification pattern the security officer announced, as TYPE=HEX
    /// (e.g. aes=1a7dfdeaffeedac4); repeatable. Checked against what is loaded in NEW.
    #[arg(long = "new-mkvp", value_name = "TYPE=HEX")]
    pub(crate) new_mkvp: Vec<String>,
}

impl ChangeSpec {
    pub(crate) fn request(&self) -> Result<zkey::mkchange::Request> {
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
pub(crate) enum MkchangeCmd {
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
pub(crate) enum AuditCmd {
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
        /// Key names (wildcards allowed; a key's exact name selects that key alone)
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
pub(crate) struct VolumeFilter {
    /// Key names (wildcards allowed; a key's exact name selects that key alone)
    #[arg(short = 'N', long)]
    pub(crate) name: Option<Pattern>,
    /// Volumes (dev or dev:dm-name, wildcards allowed)
    #[arg(short = 'l', long)]
    pub(crate) volumes: Option<String>,
}

/// The five re-encipher flags of `zkey reencipher` and `zkey kms reencipher`; what they mean
/// together is decided once, by `ap_sim::reencipher::Flags::request`.
#[derive(Args, Clone, Copy, Debug)]
pub(crate) struct WayFlags {
    /// From the OLD to the CURRENT master key (after a SET; in place by default)
    #[arg(short = 'o', long)]
    pub(crate) from_old: bool,
    /// From the CURRENT to the NEW master key (before the SET; staged by default)
    #[arg(short = 'n', long)]
    pub(crate) to_new: bool,
    /// Replace the keys right away (to NEW: unusable until the SET)
    #[arg(short = 'i', long)]
    pub(crate) in_place: bool,
    /// Keep re-enciphered copies beside the keys, to be completed after the SET
    #[arg(short = 's', long)]
    pub(crate) staged: bool,
    /// After the SET: install the staged copies
    #[arg(short = 'p', short_alias = 'c', long)]
    pub(crate) complete: bool,
}

impl WayFlags {
    pub(crate) fn request(
        self,
    ) -> Result<ap_sim::reencipher::Request, ap_sim::reencipher::FlagError> {
        ap_sim::reencipher::Flags {
            from_old: self.from_old,
            to_new: self.to_new,
            staged: self.staged,
            in_place: self.in_place,
            complete: self.complete,
        }
        .request()
    }
}

/// `-N` and `-a` of `validate`, `reencipher` and `list`: which repository keys.
#[derive(Args, Clone, Debug)]
pub(crate) struct KeyFilter {
    /// Key names (wildcards allowed; a key's exact name selects that key alone; a filter that matches no key is an error)
    #[arg(short = 'N', long)]
    pub(crate) name: Option<Pattern>,
    /// Keys bound to these APQNs, comma-separated (8.2f is 08.002f; wildcards allowed)
    #[arg(short = 'a', long)]
    pub(crate) apqns: Option<String>,
}

impl KeyFilter {
    pub(crate) fn selection(&self) -> zkey::reencipher::Selection {
        zkey::reencipher::Selection {
            names: self.name.clone(),
            apqns: self
                .apqns
                .as_deref()
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(Pattern::new)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
