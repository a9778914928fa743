//! The `stringban` command: a thin shell over the library.
//!
//! Exit codes: 0 success; 2 bad command line, configuration or input file; 1 anything else.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use stringban::daemon::printable::printable;

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
        Command::Count(p) => run_count(p),
        Command::Status(a) => run_status(a),
        Command::Add(a) => run_add(a),
        Command::Del(a) => run_del(a),
        Command::Flush(p) => run_flush(p),
        Command::Stats(c) => run_stats(c),
        Command::Reload(c) => run_reload(c),
        Command::ImportRecent(a) => run_import_recent(a),
        Command::Import(a) => run_import(a),
        Command::Completions(a) => run_completions(a),
        Command::ManPages(a) => run_man_pages(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<BadInput>() {
            // Escaped: a message may quote a file's line, a peer's or a client's text.
            Some(BadInput(msg)) => {
                eprintln!("stringban: {}", printable(msg));
                ExitCode::from(2)
            }
            None => {
                eprintln!("stringban: {}", printable(&format!("{e:#}")));
                ExitCode::from(1)
            }
        },
    }
}
