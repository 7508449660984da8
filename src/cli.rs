//! The command line: the commands, the settings each one takes, and the optional TOML file.
//!
//! Each command shows only its own settings (`taskpulse check --help` lists the store, checker
//! and engine settings; `taskpulse migrate --help` only the database). The settings themselves
//! are declared once, in [`crate::settings`] and in each engine's `settings` module; this module
//! only composes them, which is why it is one of the few places that names an engine.
//!
//! # The configuration file
//!
//! `--config FILE` (or `TASKPULSE_CONFIG`) names a TOML file whose keys are the flags' names
//! (`progress-min-interval = "5s"`). Its values are applied as if they were given as flags
//! *before* the command line's own, for every setting whose environment variable is unset, so
//! the precedence is flag > environment > file > default, and every value goes through the same
//! parser and the same error messages as a flag. A key no command knows is an error (a typo);
//! a key another command knows is ignored (one file serves `serve`, `check` and `migrate`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::engines::airflow::AirflowSettings;
use crate::engines::conductor::ConductorSettings;
use crate::engines::kestra::KestraSettings;
use crate::error::Error;
use crate::settings::{
    CheckLoopSettings, CheckerSettings, HttpSettings, MetricsSettings, PipelineSettings,
    RetentionSettings, StoreSettings, ThrottleSettings, WaitSettings,
};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "taskpulse",
    version,
    about = "Monitoring sidecar for workflow engines"
)]
pub struct Cli {
    /// Optional TOML file with settings (keys named like the flags)
    #[arg(long, global = true, env = "TASKPULSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: HTTP API, /metrics, throttled store writes.
    Serve(Box<Settings>),
    /// Apply database migrations and exit.
    Migrate(MigrateArgs),
    /// One consistency pass over the store: exit 0 = clean, 1 = violations found, 2 = error.
    /// Repairs only with --repair.
    Check(Box<CheckArgs>),
}

/// Everything `serve` takes: every core subsystem's settings and every engine's.
#[derive(Debug, Clone, Default, Args)]
pub struct Settings {
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    pub throttle: ThrottleSettings,
    #[command(flatten)]
    pub pipeline: PipelineSettings,
    #[command(flatten)]
    pub metrics: MetricsSettings,
    #[command(flatten)]
    pub wait: WaitSettings,
    #[command(flatten)]
    pub checker: CheckerSettings,
    #[command(flatten)]
    pub check_loop: CheckLoopSettings,
    #[command(flatten)]
    pub retention: RetentionSettings,
    #[command(flatten)]
    pub conductor: ConductorSettings,
    #[command(flatten)]
    pub kestra: KestraSettings,
    #[command(flatten)]
    pub airflow: AirflowSettings,
}

impl Settings {
    /// Ranges and relations, and the token file read.
    pub fn validate(&mut self) -> Result<(), Error> {
        self.http.read_token_file()?;
        self.http.validate()?;
        self.store.validate()?;
        self.throttle.validate()?;
        self.pipeline.validate()?;
        self.metrics.validate()?;
        self.conductor.validate()?;
        self.kestra.validate()?;
        self.airflow.validate()?;
        self.retention_covers_memory()
    }

    /// A finished task stays in memory for `--terminal-retention` and answers late updates
    /// from there; the store must keep its row at least as long, or the history of those
    /// late updates would outlive the task it belongs to.
    fn retention_covers_memory(&self) -> Result<(), Error> {
        let (kept, in_memory) = (self.retention.retention, self.pipeline.terminal_retention);
        if !kept.is_zero() && kept < in_memory {
            return Err(Error::Config(format!(
                "`retention` ({}) must not be shorter than `terminal-retention` ({}): finished tasks still in memory would lose their store rows",
                humantime::format_duration(kept),
                humantime::format_duration(in_memory)
            )));
        }
        Ok(())
    }
}

/// `taskpulse migrate`: only the database.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreSettings,
}

/// `taskpulse check`: the store, what the checker rules depend on, the engines it may ask, and
/// how to print.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    pub throttle: ThrottleSettings,
    #[command(flatten)]
    pub wait: WaitSettings,
    #[command(flatten)]
    pub checker: CheckerSettings,
    #[command(flatten)]
    pub conductor: ConductorSettings,
    #[command(flatten)]
    pub kestra: KestraSettings,
    #[command(flatten)]
    pub airflow: AirflowSettings,
    /// Apply the repairs the rules plan (by default `check` only reports). Never read from the
    /// environment or the file: `TASKPULSE_REPAIR` and `repair` are meant for `serve`
    #[arg(id = "repair-now", long = "repair", help_heading = "Output")]
    pub repair: bool,
    /// Print the findings and the audit of this pass as JSON
    #[arg(long, help_heading = "Output")]
    pub json: bool,
}

/// Why the command line was not taken.
#[derive(Debug)]
pub enum CliError {
    /// Usage errors, `--help` and `--version`: clap prints them and picks the exit code.
    Clap(clap::Error),
    /// A bad setting (from the file, the environment or a check clap can't make): exit 2.
    Config(Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        CliError::Config(e)
    }
}

/// Parses the process's command line, layering the configuration file and validating.
pub fn parse() -> Result<Cli, CliError> {
    parse_from(std::env::args_os().collect(), |k| std::env::var_os(k))
}

/// [`parse`] with the arguments and the environment given (tests use their own).
pub fn parse_from(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Cli, CliError> {
    let first = Cli::try_parse_from(&args).map_err(CliError::Clap)?;
    let Some(file) = first.config.clone() else {
        return validate(first);
    };
    let sub = match &first.command {
        Command::Serve(_) => "serve",
        Command::Migrate(_) => "migrate",
        Command::Check(_) => "check",
    };
    let injected = file_arguments(&file, sub, &env)?;
    let argv = with_file_arguments(&args, sub, &injected);
    let cmd = Cli::command().mut_subcommands(|c| c.args_override_self(true));
    let matches = match cmd.try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => return Err(explain(e, &file, &injected)),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(CliError::Clap)?;
    validate(cli)
}

fn validate(mut cli: Cli) -> Result<Cli, CliError> {
    match &mut cli.command {
        Command::Serve(s) => s.validate()?,
        Command::Migrate(m) => m.store.validate()?,
        Command::Check(c) => {
            c.store.validate()?;
            c.throttle.validate()?;
            c.conductor.validate()?;
            c.kestra.validate()?;
            c.airflow.validate()?;
        }
    }
    Ok(cli)
}

/// The long names of a command's settings (arguments with an environment variable, except
/// `--config` itself), with those variables.
fn layered(cmd: &clap::Command) -> BTreeMap<String, String> {
    cmd.get_arguments()
        .filter(|a| a.get_id() != "config")
        .filter_map(|a| {
            let long = a.get_long()?;
            let env = a.get_env()?.to_string_lossy().into_owned();
            Some((long.to_string(), env))
        })
        .collect()
}

/// The file's settings for command `sub`, as `--key=value` arguments (those whose environment
/// variable is set are left out: the environment beats the file).
fn file_arguments(
    file: &Path,
    sub: &str,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(String, String)>, Error> {
    if !file.is_file() {
        return Err(Error::Config(format!(
            "config file {} does not exist or is not a file",
            file.display()
        )));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Config(format!("config file {}: {e}", file.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::Config(format!("config file {}: {e}", file.display())))?;
    let root = Cli::command();
    let known: BTreeSet<String> = root
        .get_subcommands()
        .flat_map(|c| layered(c).into_keys())
        .collect();
    let here = root.find_subcommand(sub).map(layered).unwrap_or_default();
    let mut out = Vec::new();
    for (key, value) in table {
        if !known.contains(&key) {
            return Err(Error::Config(format!(
                "config file {}: unknown setting `{key}` (keys are named like the flags, e.g. progress-min-interval)",
                file.display()
            )));
        }
        let Some(var) = here.get(&key) else {
            continue; // another command's setting
        };
        if env(var).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(Error::Config(format!(
                    "config file {}: `{key}` must be a single value, not a list or table",
                    file.display()
                )))
            }
        };
        out.push((key, value));
    }
    Ok(out)
}

/// The command line with the file's arguments placed right after the subcommand, so that the
/// command line's own flags, which come later, override them.
fn with_file_arguments(
    args: &[OsString],
    sub: &str,
    injected: &[(String, String)],
) -> Vec<OsString> {
    // The subcommand is the first argument that is neither the global `--config` nor its value.
    let mut at = args.len();
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--config" {
            i += 2;
            continue;
        }
        if a.starts_with("--config=") {
            i += 1;
            continue;
        }
        if a == sub {
            at = i + 1;
        }
        break;
    }
    let mut out: Vec<OsString> = args[..at.min(args.len())].to_vec();
    out.extend(
        injected
            .iter()
            .map(|(k, v)| OsString::from(format!("--{k}={v}"))),
    );
    out.extend_from_slice(&args[at.min(args.len())..]);
    out
}

/// A clap error about a value that came from the file says so, naming the file and the key.
fn explain(e: clap::Error, file: &Path, injected: &[(String, String)]) -> CliError {
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return CliError::Clap(e);
    }
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => return CliError::Clap(e),
    };
    let key = arg
        .trim_start_matches('-')
        .split([' ', '=', '<'])
        .next()
        .unwrap_or_default()
        .to_string();
    let Some((_, value)) = injected.iter().find(|(k, _)| *k == key) else {
        return CliError::Clap(e);
    };
    let why = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.kind().to_string());
    CliError::Config(Error::Config(format!(
        "config file {}: `{key}`: invalid value `{value}`: {why}",
        file.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, CliError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut argv = vec![OsString::from("taskpulse")];
        argv.extend(args.iter().map(OsString::from));
        parse_from(argv, |k| env.get(k).map(OsString::from))
    }

    fn serve(cli: Cli) -> Settings {
        match cli.command {
            Command::Serve(s) => *s,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    fn message(e: CliError) -> String {
        match e {
            CliError::Clap(e) => e.to_string(),
            CliError::Config(e) => e.to_string(),
        }
    }

    // clap reads the process environment for `env` arguments; these tests only use variables
    // no other test sets, and only through the file-layering path, which takes `env` as given.

    #[test]
    fn flag_beats_file_beats_default() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "progress-min-interval = \"1m\"\nstall-after = \"10m\"\nwait-grace = \"45s\"\nmax-body-bytes = \"1MiB\"\nmax-task-series = 7\nrepair = false"
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let s = serve(
            parse_with(&["--config", path, "serve", "--wait-grace", "500ms"], &[])
                .ok()
                .unwrap(),
        );
        assert_eq!(
            s.throttle.progress_min_interval,
            Duration::from_secs(60),
            "file beats default"
        );
        assert_eq!(s.metrics.stall_after, Duration::from_secs(600));
        assert_eq!(
            s.wait.wait_grace,
            Duration::from_millis(500),
            "flag beats file"
        );
        assert_eq!(s.http.max_body_bytes, bytesize::ByteSize::mib(1));
        assert_eq!(s.metrics.max_task_series, 7);
        assert!(!s.check_loop.repair);
        assert_eq!(
            s.check_loop.check_interval,
            Duration::from_secs(30),
            "default stays"
        );

        // `--config` after the subcommand works the same
        let s = serve(parse_with(&["serve", "--config", path], &[]).ok().unwrap());
        assert_eq!(s.throttle.progress_min_interval, Duration::from_secs(60));
    }

    #[test]
    fn a_set_environment_variable_keeps_the_file_out() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "lease-grace = \"10m\"").unwrap();
        let path = file.path().to_str().unwrap();
        // the file's value is not injected when the variable is set (clap then reads the
        // variable itself; here it is not set in the process, so the default shows)
        let s = serve(
            parse_with(
                &["--config", path, "serve"],
                &[("TASKPULSE_LEASE_GRACE", "2h")],
            )
            .ok()
            .unwrap(),
        );
        assert_ne!(s.checker.lease_grace, Duration::from_secs(600));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "stall-aftr = \"5m\"").unwrap();
        let path = file.path().to_str().unwrap();
        let err = message(parse_with(&["--config", path, "serve"], &[]).unwrap_err());
        assert!(err.contains("stall-aftr") && err.contains(path), "{err}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "max-task-series = \"lots\"").unwrap();
        let path = file.path().to_str().unwrap();
        let err = message(parse_with(&["--config", path, "serve"], &[]).unwrap_err());
        assert!(
            err.contains("max-task-series") && err.contains(path),
            "{err}"
        );

        let err = message(
            parse_with(&["--config", "/nonexistent/taskpulse.toml", "serve"], &[]).unwrap_err(),
        );
        assert!(err.contains("/nonexistent/taskpulse.toml"), "{err}");
    }

    #[test]
    fn one_file_serves_every_command() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "listen = \"0.0.0.0:9000\"\ndatabase = \"sqlite://x.db\"\nrepair = true"
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        match parse_with(&["--config", path, "migrate"], &[])
            .ok()
            .unwrap()
            .command
        {
            Command::Migrate(m) => assert_eq!(m.store.database, "sqlite://x.db"),
            other => panic!("{other:?}"),
        }
        match parse_with(&["--config", path, "check"], &[])
            .ok()
            .unwrap()
            .command
        {
            Command::Check(c) => {
                assert_eq!(c.store.database, "sqlite://x.db");
                assert!(!c.repair, "the file's `repair` is serve's, not check's");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_command_offers_only_its_own_settings() {
        let root = Cli::command();
        let longs = |name: &str| -> BTreeSet<String> {
            root.find_subcommand(name)
                .unwrap()
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        };
        let migrate = longs("migrate");
        assert!(migrate.contains("database"));
        for other in ["progress-min-interval", "conductor-url", "listen"] {
            assert!(!migrate.contains(other), "migrate offers --{other}");
        }
        let check = longs("check");
        for own in [
            "database",
            "max-repairs-per-run",
            "lease-grace",
            "wait-grace",
            "conductor-url",
            "json",
            "repair",
        ] {
            assert!(check.contains(own), "check lacks --{own}");
        }
        for other in [
            "listen",
            "max-body-bytes",
            "header-read-timeout",
            "max-tracked-tasks",
        ] {
            assert!(!check.contains(other), "check offers --{other}");
        }
    }

    #[test]
    fn ranges_are_checked_after_parsing() {
        let err = message(parse_with(&["serve", "--progress-min-delta", "150"], &[]).unwrap_err());
        assert!(err.contains("progress-min-delta"), "{err}");
        let err =
            message(parse_with(&["serve", "--progress-min-interval", "soon"], &[]).unwrap_err());
        assert!(err.contains("progress-min-interval"), "{err}");
    }
}
