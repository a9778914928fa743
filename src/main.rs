//! The `stringban` command: a thin shell over the library.
//!
//! Exit codes: 0 success; 2 bad command line, configuration or input file; 1 anything else.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use cli::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Gen(args) => run_gen(args),
        Command::Check(args) => run_check(args),
        Command::Run(args) => run_daemon(*args),
        Command::Rules(args) => run_rules(args),
        Command::List(args) => run_list(args),
        Command::Count(p) => ctl_simple(&p.ctl, json!({"cmd": "count", "list": p.list}), |a| {
            a["count"].to_string()
        }),
        Command::Add(a) => run_add(a),
        Command::Del(a) => ctl_simple(
            &a.pick.ctl,
            json!({"cmd": "del", "addr": a.addr, "list": a.pick.list}),
            |r| format!("removed {}", r["removed"]),
        ),
        Command::Flush(p) => ctl_simple(&p.ctl, json!({"cmd": "flush", "list": p.list}), |r| {
            format!("removed {}", r["removed"])
        }),
        Command::Stats(c) => ctl_simple(&c, json!({"cmd": "stats"}), |r| {
            serde_json::to_string_pretty(&r["stats"]).unwrap_or_default()
        }),
        Command::Reload(c) => ctl_simple(&c, json!({"cmd": "reload"}), |_| {
            "reload requested".to_string()
        }),
        Command::ImportRecent(a) => run_import_recent(a),
        Command::Import(a) => run_import(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<BadInput>() {
            Some(BadInput(msg)) => {
                eprintln!("stringban: {msg}");
                ExitCode::from(2)
            }
            None => {
                eprintln!("stringban: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}
