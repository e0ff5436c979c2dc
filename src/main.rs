use std::process::ExitCode;

use clap::Parser;
use keygate::{
    app::{self, App},
    config::{Cli, Command},
    logging,
};

/// See `mimalloc` in Cargo.toml: the verify path's small allocations.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// See `dhat-heap` in Cargo.toml: a heap profile of a whole run.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    // Written to dhat-heap.json in the working directory when main returns.
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
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
        Command::Health(args) => app::check_health(args).await,
        Command::Serve(args) => {
            let app = App::start(*args).await?;
            let token_file = app
                .generated_token()
                .and_then(|token| announce_generated_token(token, app.addr()));
            app::shutdown_signal().await;
            tracing::info!("shutting down: draining calls and flushing usage");
            if let Some(path) = token_file {
                let _ = std::fs::remove_file(path);
            }
            app.shutdown().await
        }
    }
}

/// A first run needs no setup: the generated token (valid for this run only,
/// and only ever generated with every listener on loopback) is shown where
/// only the person who started keygate sees it, never in a log line, because
/// log lines travel to log pipelines that many can read. On a terminal it is
/// printed there; otherwise it is written to a file only its owner can read,
/// and the file's path is logged. Returns that file, removed at shutdown.
fn announce_generated_token(token: &str, addr: std::net::SocketAddr) -> Option<std::path::PathBuf> {
    use std::io::IsTerminal;
    const WHY: &str = "no --admin-tokens / KEYGATE_ADMIN_TOKENS configured; \
                       generated a KeyAdmin token for this run only";
    if std::io::stderr().is_terminal() {
        eprintln!(
            "WARNING: {WHY}:\n\n    {token}\n\n\
             Every KeyAdmin call sends three metadata headers, for example:\n\n    \
             grpcurl -plaintext -H 'authorization: Bearer {token}' \\\n        \
             -H 'x-actor-id: alice' -H 'x-actor-role: admin' \\\n        \
             -d '{{\"organization_id\": \"acme\"}}' {addr} keygate.v1.KeyAdmin/ListKeys\n"
        );
        return None;
    }
    let path = std::env::temp_dir().join(format!("keygate-admin-token-{}", std::process::id()));
    match write_private(&path, token) {
        Ok(()) => {
            tracing::warn!(
                token_file = %path.display(),
                usage = "send metadata `authorization: Bearer <the file's token>`, \
                         `x-actor-id: <user id>`, `x-actor-role: admin|member`",
                "{WHY}; it is in token_file (mode 0600), removed at shutdown"
            );
            Some(path)
        }
        Err(e) => {
            tracing::error!(
                token_file = %path.display(),
                error = %e,
                "{WHY}, but could not write it to token_file; set --admin-tokens"
            );
            None
        }
    }
}

/// Writes `contents` to a new file that only this user can read.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}
