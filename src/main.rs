//! The `taskpulse` binary: parse the command line, set up logging, run a subcommand.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use taskpulse::config::{redact_url, Cli, Command};
use taskpulse::{store::Store, Application, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TASKPULSE_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("taskpulse: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::load(cli.config.as_deref(), &args)?;
            tracing::info!(database = %redact_url(&settings.database), "starting");
            let app = Application::build(settings).await?;
            tracing::info!(listen = %app.local_addr(), "taskpulse listening");
            app.run_until(shutdown_signal()).await?;
        }
        Command::Migrate(args) => {
            let settings = Settings::load(cli.config.as_deref(), &args)?;
            let store = Store::connect(&settings.database)
                .await
                .with_context(|| format!("cannot open `{}`", redact_url(&settings.database)))?;
            store.migrate().await?;
            println!("migrations applied to {}", redact_url(&settings.database));
        }
        Command::Loadgen(args) => {
            if let Some(addr) = args.sink {
                taskpulse::loadgen::sink(addr).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let report = taskpulse::loadgen::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Check(args) => {
            let settings = Settings::load(cli.config.as_deref(), &args.settings)?;
            // Only an explicit --repair repairs here; TASKPULSE_REPAIR is meant for `serve`.
            let repair = args.settings.repair == Some(true);
            let report = taskpulse::checker::check_once(&settings, repair)
                .await
                .with_context(|| format!("checking `{}`", redact_url(&settings.database)))?;
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

/// Resolves on the first SIGTERM or SIGINT: drain and flush. A second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: draining (send it again to exit at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without flushing");
        std::process::exit(130);
    });
}
