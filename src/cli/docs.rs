//! Documentation generated from the clap definitions: shell completions and man pages (the
//! Debian package ships both; `scripts/package` writes them).

use super::*;
use clap::CommandFactory;

pub(crate) fn run_completions(a: CompletionsArgs) -> anyhow::Result<()> {
    use clap_complete::Shell;
    let shell = match a.shell.as_str() {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => {
            return Err(bad(format!(
                "command line: completions {other}: expected bash, zsh or fish"
            )));
        }
    };
    clap_complete::generate(shell, &mut Cli::command(), "stringban", &mut io::stdout());
    Ok(())
}

/// `stringban.1`, and `stringban-COMMAND.1` for every visible command.
pub(crate) fn run_man_pages(a: ManPagesArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&a.dir).with_context(|| a.dir.display().to_string())?;
    let top = Cli::command();
    let write = |cmd: clap::Command, name: &str| -> anyhow::Result<()> {
        let path = a.dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.to_uppercase())
            .render(&mut out)?;
        fs::write(&path, out).with_context(|| path.display().to_string())
    };
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("stringban-{}", sub.get_name());
        let shown = format!("stringban {}", sub.get_name());
        write(
            sub.clone()
                .bin_name(shown.clone())
                .display_name(name.clone()),
            &name,
        )?;
    }
    write(top, "stringban")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command's arguments are consistent (no duplicate flag, …): clap's own check.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
