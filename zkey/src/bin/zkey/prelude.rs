//! What every part of the binary uses: the external crates' items and the binary's own
//! modules, so that each file says `use crate::prelude::*` instead of repeating them.

pub(crate) use anyhow::{anyhow, bail, Context, Result};
pub(crate) use ap_sim::apqn::ApqnList;
pub(crate) use ap_sim::durable;
pub(crate) use ap_sim::exit::Exit;
pub(crate) use ap_sim::hsm::Register;
pub(crate) use ap_sim::table::Table;
pub(crate) use ap_sim::token::{KeyType, SecureKey};
pub(crate) use clap::{Args, Parser, Subcommand};
pub(crate) use std::io::{BufRead, IsTerminal, Write};
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::ExitCode;
pub(crate) use std::time::Duration;
pub(crate) use zeroize::Zeroizing;
pub(crate) use zkey::adapters::Adapters;
pub(crate) use zkey::crypttab::{shell_line, VolumePlan};
pub(crate) use zkey::keyops::{self, KeyStatus, NewKey};
pub(crate) use zkey::reencipher::{self, Outcome};
pub(crate) use zkey::repository::{self, DummyPassphrase, Reader, Repository};
pub(crate) use zkey::volume::{Edit, SectorSize, Volume, VolumeType};
pub(crate) use zkey::{KeyName, KeyProperties, Pattern};

pub(crate) use crate::cli::*;
pub(crate) use crate::cmd::*;
pub(crate) use crate::render::*;
