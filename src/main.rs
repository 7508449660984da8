//! The `taskpulse` binary: parse the command line, set up logging, run a command, and turn
//! signals into the two-phase shutdown (`taskpulse::app`).

use std::process::ExitCode;

use anyhow::Context;
use taskpulse::app::{self, Shutdown};
use taskpulse::cli::{self, CliError, Command};
use taskpulse::settings::redact_url;
use taskpulse::{error::one_line, Application, Error};

fn main() -> ExitCode {
    // before the runtime's threads start: each would take a malloc arena of its own
    taskpulse::alloc::tune();
    // as `#[tokio::main]` did: a runtime that cannot start is not an error input can cause
    let runtime = tokio::runtime::Runtime::new().expect("the async runtime starts");
    runtime.block_on(start())
}

async fn start() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(CliError::Clap(e)) => e.exit(),
        Err(CliError::Config(e)) => {
            eprintln!("taskpulse: error: {e}");
            return ExitCode::from(2);
        }
    };
    app::init_logging();
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) if matches!(e.downcast_ref(), Some(Error::Aborted)) => {
            eprintln!("taskpulse: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("taskpulse: error: {}", one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(settings) => {
            tracing::info!(database = %redact_url(&settings.store.database), "starting");
            let app = Application::build(*settings).await?;
            tracing::info!(listen = %app.local_addr(), "taskpulse listening");
            app.run(signals()?).await?;
        }
        Command::Migrate(args) => {
            let url = redact_url(&args.store.database);
            let converted = app::migrate(&args.store.database)
                .await
                .with_context(|| format!("cannot migrate `{url}`"))?;
            println!("migrations applied to {url}");
            if converted {
                println!("converted to incremental vacuum (retention now shrinks the file)");
            }
        }
        Command::Check(args) => {
            let report = app::check(&args)
                .await
                .with_context(|| format!("checking `{}`", redact_url(&args.store.database)))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.human());
            }
            if !report.violations.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first SIGTERM or SIGINT drains, a second one aborts.
fn signals() -> std::io::Result<Shutdown> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = Shutdown::default();
    let s = shutdown.clone();
    tokio::spawn(async move {
        for phase in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if phase == 0 {
                s.drain();
            } else {
                tracing::warn!("second signal: stopping without flushing");
                s.abort();
            }
        }
    });
    Ok(shutdown)
}
