use std::process::ExitCode;

use clap::Parser;
use keygate::{
    app::{self, App},
    config::{Cli, Command},
    logging,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let workers = match &cli.command {
        Command::Serve(args) => args.worker_threads,
        Command::Migrate(_) | Command::Health(_) => Some(1),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keygate failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), app::AppError> {
    match command {
        Command::Migrate(db) => {
            app::open_store(&db).await?.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Health(args) => app::check_health(args.addr).await,
        Command::Serve(args) => {
            let app = App::start(*args).await?;
            if let Some(token) = app.generated_token() {
                eprintln!(
                    "WARNING: no --admin-tokens / KEYGATE_ADMIN_TOKENS configured; \
                     generated this KeyAdmin token for this run only:\n\n    {token}\n"
                );
            }
            app::shutdown_signal().await;
            tracing::info!("shutting down: draining calls and flushing usage");
            app.shutdown().await
        }
    }
}
