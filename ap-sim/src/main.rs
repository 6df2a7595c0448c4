//! `ap-sim`: the administrator's and security officer's view of the simulated AP bus.
//! Parsing, output and exit codes only; everything else is in the library.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use ap_sim::adapter::CardType;
use ap_sim::apqn::{self, Apqn, ApqnList};
use ap_sim::registers::{self, KeyPart, MkType, RegView};
use ap_sim::sim::{Layout, Simulator, Target, TypeRegisters};
use ap_sim::sysfs::SysfsTree;
use ap_sim::table::Table;
use ap_sim::{lszcrypt, MasterKey};

/// A simulated IBM Z AP bus: crypto adapters, master key registers and a TKE.
#[derive(Parser)]
#[command(name = "ap-sim", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {
    /// The simulator directory [default: $AP_SIM_DIR, else /var/lib/ap-sim]
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    docs: infra::docs::DocsArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the adapters and domains, with random CURRENT master keys
    Init(InitArgs),
    /// Trusted Key Entry: load, commit, set and clear master keys; show the registers
    #[command(subcommand)]
    Tke(TkeCmd),
    /// List cards and APQNs in lszcrypt's layout (read from the sysfs tree)
    Lszcrypt {
        /// Also show PENDING, HWTYPE, QDEPTH, FUNCTIONS and DRIVER
        #[arg(short = 'V', long)]
        verbose: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set cards or APQNs online/offline, or (de)configure cards, as chzcrypt does
    Chzcrypt(ChzcryptArgs),
    /// Inject or clear a hardware fault (check-stop) on a card or APQN
    #[command(subcommand)]
    Fault(FaultCmd),
    /// Print shell assignments that point tools at this simulator (AP_SIM_DIR, SYSFS_ROOT)
    Env,
}

#[derive(Args)]
struct InitArgs {
    /// A card as ID=TYPE, e.g. 08=CEX8C (CCA), 0a=CEX8P (EP11), 0c=CEX8A (accelerator); repeatable
    #[arg(long = "card", value_name = "ID=TYPE")]
    cards: Vec<String>,
    /// A usage domain in hex, e.g. 2f; repeatable [default: 2f]
    #[arg(long = "domain", value_name = "HEX")]
    domains: Vec<String>,
    /// Give every APQN its own master keys instead of one set per mode and domain
    #[arg(long)]
    independent_keys: bool,
    /// Replace an existing simulator (its master keys and all keys made with them are lost)
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ApqnsArg {
    /// The domain group: APQNs as CARD.DOMAIN, comma-separated, e.g. 08.002f,09.002f
    #[arg(short = 'a', long, value_name = "APQNS")]
    apqns: ApqnList,
}

#[derive(Subcommand)]
enum TkeCmd {
    /// Load a new master key into the NEW register: a random one, or key parts
    LoadNew {
        #[command(flatten)]
        apqns: ApqnsArg,
        /// aes or apka (CCA), ep11 (wrapping key)
        #[arg(short = 't', long)]
        mktype: MkType,
        /// Generate the whole key randomly inside the TKE
        #[arg(long, conflicts_with_all = ["part", "value", "checksum"])]
        random: bool,
        /// Which key part: first, middle or final
        #[arg(long, required_unless_present = "random")]
        part: Option<KeyPart>,
        /// The part: 64 hex digits, or - to read it from stdin; prompted for (hidden) when omitted
        #[arg(long, value_name = "HEX|-")]
        value: Option<String>,
        /// The part's two-digit checksum, as 'ap-sim tke checksum' printed it
        #[arg(long, value_name = "HH", required_unless_present = "random")]
        checksum: Option<String>,
    },
    /// Compute a key part's checksum and verification pattern (ICSF's CHECKSUM utility)
    Checksum {
        /// The part: 64 hex digits, or - for stdin; prompted for (hidden) when omitted
        #[arg(long, value_name = "HEX|-")]
        value: Option<String>,
    },
    /// EP11: commit an uncommitted NEW wrapping key
    Commit {
        #[command(flatten)]
        apqns: ApqnsArg,
    },
    /// SET: NEW becomes CURRENT, CURRENT becomes OLD (CCA); on all APQNs given or none
    Set {
        #[command(flatten)]
        apqns: ApqnsArg,
        #[arg(short = 't', long)]
        mktype: MkType,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
    /// Empty the NEW register
    ClearNew {
        #[command(flatten)]
        apqns: ApqnsArg,
        #[arg(short = 't', long)]
        mktype: MkType,
    },
    /// Show NEW, CURRENT and OLD registers with states and verification patterns
    Status {
        /// Only these APQNs [default: all APQNs with master keys]
        #[arg(short = 'a', long)]
        apqns: Option<ApqnList>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false, id = "action")]
struct ChzcryptArgs {
    /// Set cards (e.g. 08) or APQNs (e.g. 08.002f) online
    #[arg(short = 'e', long = "enable", num_args = 1.., value_name = "TARGET")]
    enable: Vec<Target>,
    /// Set cards or APQNs offline
    #[arg(short = 'd', long = "disable", num_args = 1.., value_name = "TARGET")]
    disable: Vec<Target>,
    /// Configure cards (brings them back online)
    #[arg(long = "config-on", num_args = 1.., value_name = "CARD")]
    config_on: Vec<Target>,
    /// Deconfigure cards
    #[arg(long = "config-off", num_args = 1.., value_name = "CARD")]
    config_off: Vec<Target>,
}

#[derive(Subcommand)]
enum FaultCmd {
    /// Check-stop a card or APQN: it takes no more requests
    Chkstop { target: Target },
    /// Clear a check-stop
    Clear { target: Target },
}

fn main() -> ExitCode {
    ap_sim::durable::arm_crash_points();
    infra::sys::default_sigpipe();
    let cli = Cli::parse();
    if let Some(code) = cli.docs.run::<Cli>() {
        return code;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ap-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let dir = Simulator::locate(cli.dir.as_deref());
    let Some(cmd) = cli.cmd else {
        bail!("name a command: 'ap-sim --help' lists them");
    };
    match cmd {
        Cmd::Init(a) => init(&dir, a),
        Cmd::Tke(t) => tke(&dir, t),
        Cmd::Lszcrypt { verbose, json } => {
            let sim = Simulator::open(&dir)?;
            sim.bus()?; // repairs a stale tree before it is read
            let tree = SysfsTree::new(sim.sys_root());
            let (cards, queues) = (tree.cards()?, tree.queues()?);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&lszcrypt::json(&cards, &queues))?
                );
            } else {
                print!("{}", lszcrypt::table(&cards, &queues, verbose));
            }
            Ok(())
        }
        Cmd::Chzcrypt(a) => {
            let sim = Simulator::open(&dir)?;
            for t in a.enable {
                sim.set_online(t, true)?;
            }
            for t in a.disable {
                sim.set_online(t, false)?;
            }
            for (list, on) in [(a.config_on, true), (a.config_off, false)] {
                for t in list {
                    let Target::Card(c) = t else {
                        bail!("--config-on/--config-off take a card id (e.g. 08), not an APQN")
                    };
                    sim.set_config(c, on)?;
                }
            }
            Ok(())
        }
        Cmd::Fault(f) => {
            let sim = Simulator::open(&dir)?;
            match f {
                FaultCmd::Chkstop { target } => sim.set_chkstop(target, true)?,
                FaultCmd::Clear { target } => sim.set_chkstop(target, false)?,
            }
            Ok(())
        }
        Cmd::Env => {
            let sim = Simulator::open(&dir)?;
            let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
            println!(
                "export AP_SIM_DIR={}",
                shell_quote(&abs(sim.dir().to_path_buf()).display().to_string())
            );
            println!(
                "export SYSFS_ROOT={}",
                shell_quote(&abs(sim.sys_root()).display().to_string())
            );
            Ok(())
        }
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn init(dir: &std::path::Path, a: InitArgs) -> Result<()> {
    let mut layout = Layout::default();
    if !a.cards.is_empty() {
        layout.cards = a
            .cards
            .iter()
            .map(|s| parse_card(s))
            .collect::<Result<_>>()?;
    }
    if !a.domains.is_empty() {
        layout.domains = a
            .domains
            .iter()
            .map(|d| {
                u16::from_str_radix(d.trim().trim_start_matches("0x"), 16)
                    .with_context(|| format!("'{d}' is not a domain id: give it in hex, e.g. 2f"))
            })
            .collect::<Result<_>>()?;
    }
    layout.shared_keys = !a.independent_keys;
    let sim = Simulator::init(dir, &layout, a.force)?;
    let n = sim.bus()?.apqns().count();
    println!(
        "AP bus simulator created in {} with {} cards and {n} APQNs.",
        sim.dir().display(),
        layout.cards.len()
    );
    println!(
        "Point tools at it with: eval \"$(ap-sim --dir {} env)\"",
        shell_quote(&sim.dir().display().to_string())
    );
    Ok(())
}

fn parse_card(s: &str) -> Result<(u8, CardType)> {
    let (id, ty) = s
        .split_once('=')
        .with_context(|| format!("'{s}' is not a card: write ID=TYPE, e.g. 08=CEX8C"))?;
    let id = u8::from_str_radix(id.trim().trim_start_matches("0x"), 16)
        .with_context(|| format!("'{id}' is not a card id: give it in hex from 00 to ff"))?;
    Ok((id, ty.parse()?))
}

fn require_apqns(a: &ApqnsArg) -> Result<Vec<Apqn>> {
    Ok(a.apqns.as_slice().to_vec())
}

fn tke(dir: &std::path::Path, cmd: TkeCmd) -> Result<()> {
    if let TkeCmd::Checksum { value } = &cmd {
        let part = read_part(value.as_deref())?;
        println!("Checksum     : {:02X}", registers::part_checksum(&part));
        println!("Key part VP  : {}", registers::part_vp(&part));
        return Ok(());
    }
    let sim = Simulator::open(dir)?;
    match cmd {
        TkeCmd::Checksum { .. } => unreachable!("handled above"),
        TkeCmd::LoadNew {
            apqns,
            mktype,
            random,
            part,
            value,
            checksum,
        } => {
            let apqns = require_apqns(&apqns)?;
            let list = apqn::format_list(&apqns);
            if random {
                let mkvp = sim.tke_load_random(&apqns, mktype)?;
                let state = if mktype == MkType::Ep11 {
                    "uncommitted; commit it with 'ap-sim tke commit'"
                } else {
                    "full"
                };
                println!(
                    "New {} master key loaded into the NEW register of {list} ({state}).",
                    mktype_label(mktype)
                );
                println!("New master key verification pattern: {mkvp}");
                return Ok(());
            }
            let part = part.expect("clap requires --part without --random");
            let checksum = checksum.expect("clap requires --checksum without --random");
            let checksum = u8::from_str_radix(checksum.trim(), 16)
                .ok()
                .filter(|_| checksum.trim().len() == 2)
                .with_context(|| format!("'{checksum}' is not a checksum: give the two hex digits 'ap-sim tke checksum' printed"))?;
            let value = read_part(value.as_deref())?;
            let r = sim.tke_load_part(&apqns, mktype, part, &value, checksum)?;
            println!(
                "{} key part loaded into the NEW {} register of {list}.",
                part_label(part),
                mktype_label(mktype)
            );
            println!("Checksum     : {}", r.checksum);
            println!("Key part VP  : {}", r.part_vp);
            match r.new_mkvp {
                Some(m) => println!("New master key verification pattern: {m}"),
                None => println!("The NEW register is partial: load further parts, the last one as --part final."),
            }
            Ok(())
        }
        TkeCmd::Commit { apqns } => {
            let apqns = require_apqns(&apqns)?;
            sim.tke_commit(&apqns)?;
            println!(
                "NEW wrapping key committed on {}.",
                apqn::format_list(&apqns)
            );
            Ok(())
        }
        TkeCmd::Set { apqns, mktype, yes } => {
            let apqns = require_apqns(&apqns)?;
            let list = apqn::format_list(&apqns);
            let lost = if mktype == MkType::Ep11 {
                "CURRENT wrapping key"
            } else {
                "OLD master key"
            };
            let warning = format!(
                "SET makes the NEW {} master key CURRENT on {list}. The {lost} is destroyed: every secure key still enciphered with it becomes unusable.",
                mktype_label(mktype)
            );
            sim.tke_check_set(&apqns, mktype)?;
            if !confirm(&warning, yes)? {
                bail!("SET cancelled; nothing was changed");
            }
            sim.tke_set(&apqns, mktype)?;
            println!(
                "NEW {} master key set: it is now CURRENT on {list}.",
                mktype_label(mktype)
            );
            Ok(())
        }
        TkeCmd::ClearNew { apqns, mktype } => {
            let apqns = require_apqns(&apqns)?;
            sim.tke_clear_new(&apqns, mktype)?;
            println!(
                "NEW {} register cleared on {}.",
                mktype_label(mktype),
                apqn::format_list(&apqns)
            );
            Ok(())
        }
        TkeCmd::Status { apqns, json } => {
            let st = sim.register_status(apqns.as_ref().map(ApqnList::as_slice))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "apqns": st }))?
                );
                return Ok(());
            }
            let mut t = Table::new([
                "CARD.DOMAIN",
                "TYPE",
                "STATUS",
                "MK",
                "NEW",
                "CURRENT",
                "OLD",
            ]);
            for a in &st {
                for r in &a.registers {
                    t.row([
                        a.apqn.to_string(),
                        a.card_type.to_string(),
                        a.status.word().to_string(),
                        mktype_label(r.mktype).to_string(),
                        reg_cell(&r.new),
                        reg_cell(&r.current),
                        old_cell(r),
                    ]);
                }
            }
            print!("{}", t.render());
            Ok(())
        }
    }
}

fn reg_cell(v: &RegView) -> String {
    match v.mkvp {
        Some(m) => format!("{} {}", v.state, short(&m.to_string())),
        None => v.state.to_string(),
    }
}

fn old_cell(r: &TypeRegisters) -> String {
    r.old.as_ref().map(reg_cell).unwrap_or_else(|| "-".into())
}

/// EP11 patterns are 64 hex digits; the table shows the 32 that key blobs carry.
fn short(s: &str) -> &str {
    &s[..s.len().min(32)]
}

fn mktype_label(t: MkType) -> &'static str {
    match t {
        MkType::Aes => "AES",
        MkType::Apka => "APKA",
        MkType::Ep11 => "EP11",
    }
}

fn part_label(p: KeyPart) -> &'static str {
    match p {
        KeyPart::First => "FIRST",
        KeyPart::Middle => "MIDDLE",
        KeyPart::Final => "FINAL",
    }
}

/// Reads a key part without ever keeping it in a plain String: from the option (hex), from
/// stdin (`-`, or no option off a terminal), or from a hidden prompt.
fn read_part(value: Option<&str>) -> Result<MasterKey> {
    let text: Zeroizing<String> = match value {
        Some("-") => read_stdin_line()?,
        Some(v) => {
            eprintln!("ap-sim: warning: a key part on the command line can be seen by other users (ps, shell history); prefer --value - or the prompt");
            Zeroizing::new(v.to_string())
        }
        None if std::io::stdin().is_terminal() => Zeroizing::new(
            rpassword::prompt_password("Key part (64 hex digits): ")
                .context("reading the key part from the terminal")?,
        ),
        None => read_stdin_line()?,
    };
    let hex_digits: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
    let mut bytes = Zeroizing::new([0u8; 32]);
    if hex::decode_to_slice(hex_digits.as_str(), bytes.as_mut()).is_err() {
        bail!("a key part must be 64 hex digits (32 bytes; spaces allowed between groups)");
    }
    Ok(MasterKey::from_bytes(*bytes))
}

fn read_stdin_line() -> Result<Zeroizing<String>> {
    let mut s = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut s)
        .context("reading the key part from stdin")?;
    Ok(s)
}

/// Asks before a destructive step. Off a terminal, only `--yes` proceeds.
fn confirm(warning: &str, yes: bool) -> Result<bool> {
    eprintln!("ap-sim: {warning}");
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("not asking on a non-terminal: add --yes to confirm");
    }
    eprint!("Continue? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}
