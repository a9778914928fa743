//! The `stringban` command line: clap arguments (`args`), the offline commands (`offline`:
//! replay, gen, check, import), the control socket's clients (`control`) and the daemon's
//! commands (`daemon`: run, rules).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use stringban::Engine;
use stringban::allow::Cidr;
use stringban::attack::{self, GenConfig, GenError, Kind};
use stringban::config::{Config, Flags};
use stringban::daemon::DaemonConfig;
use stringban::replay::{self, Options, ReplayError};
use stringban::rule::Mode;
use stringban::sys::firewall::{self, Marks, RulesConfig};
use stringban::sys::nfqueue::QueueConfig;
use stringban::verdict::Hook;

mod args;
mod control;
mod daemon;
mod docs;

use stringban::daemon as sbdaemon;
mod offline;

pub(crate) use args::*;
pub(crate) use control::*;
pub(crate) use daemon::*;
pub(crate) use docs::*;
pub(crate) use offline::*;

/// An error that exits with code 2 (bad input), as opposed to 1.
pub(crate) struct BadInput(pub(crate) String);

impl std::fmt::Debug for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

pub(crate) fn bad(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}
