use std::process::ExitCode;

use clap::Parser;
use keygate::{
    app::{self, App},
    config::{Cli, Command, LogFormat},
    logging,
};

/// See `mimalloc` in Cargo.toml: the verify path's small allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    match runtime.block_on(run(cli.command, cli.log_format)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keygate failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, log_format: LogFormat) -> Result<(), app::AppError> {
    match command {
        Command::Migrate(db) => {
            app::open_store(&db).await?.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Health(args) => app::check_health(args).await,
        Command::Serve(args) => {
            let app = App::start(*args).await?;
            if let Some(token) = app.generated_token() {
                announce_generated_token(token, log_format, app.addr());
            }
            app::shutdown_signal().await;
            tracing::info!("shutting down: draining calls and flushing usage");
            app.shutdown().await
        }
    }
}

/// A first run needs no setup: the generated token is printed once, with the
/// metadata every KeyAdmin call needs. With JSON logs it is one JSON log line, so
/// the log stream stays machine-readable.
fn announce_generated_token(token: &str, format: LogFormat, addr: std::net::SocketAddr) {
    const WHY: &str = "no --admin-tokens / KEYGATE_ADMIN_TOKENS configured; \
                       generated a KeyAdmin token for this run only";
    match format {
        LogFormat::Json => tracing::warn!(
            admin_token = token,
            usage = "send metadata `authorization: Bearer <admin_token>`, \
                     `x-actor-id: <user id>`, `x-actor-role: admin|member`",
            "{WHY}"
        ),
        LogFormat::Pretty => eprintln!(
            "WARNING: {WHY}:\n\n    {token}\n\n\
             Every KeyAdmin call sends three metadata headers, for example:\n\n    \
             grpcurl -plaintext -H 'authorization: Bearer {token}' \\\n        \
             -H 'x-actor-id: alice' -H 'x-actor-role: admin' \\\n        \
             -d '{{\"organization_id\": \"acme\"}}' {addr} keygate.v1.KeyAdmin/ListKeys\n"
        ),
    }
}
