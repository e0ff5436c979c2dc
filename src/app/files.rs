//! Open files: every connection is one, and a process out of them can accept
//! nothing, so one listener flooded with idle connections would stop the gRPC
//! listener and the store's reconnects too. At start the soft limit is raised to
//! the hard limit (the most an unprivileged process may take), and the HTTP
//! listener's cap must leave room below it for everything else.

use super::AppError;
use crate::config::ServeArgs;

/// What must stay free for new gRPC connections whatever the HTTP listener
/// holds: enough for a fleet of callers to reconnect at once.
const GRPC_RESERVE: u64 = 256;
/// The process's own files beyond its connections: the listeners, the SQLite
/// file and its journal, Redis, webhook clients, the metrics listener, epoll.
const BASE_RESERVE: u64 = 64;

/// The open files keygate needs beside the HTTP listener's connections.
fn reserve(args: &ServeArgs) -> u64 {
    let store = u64::from(args.database.database_max_connections);
    // A replica has a pool of the same size.
    let replica = if args.database_read_url.is_some() {
        store
    } else {
        0
    };
    GRPC_RESERVE + BASE_RESERVE + store + replica
}

/// Raises the open-file soft limit to the hard limit, logs both, and refuses
/// to start when the HTTP listener's cap leaves no room for the rest.
pub fn raise_limit(args: &ServeArgs) -> Result<(), AppError> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().map_err(AppError::OpenFiles)?;
    let raised = rlimit::increase_nofile_limit(hard).map_err(AppError::OpenFiles)?;
    crate::metrics::open_files_limit(raised);
    tracing::info!(soft_before = soft, soft = raised, hard, "open-file limit");
    if args.http_listen.is_some() {
        let http = u64::try_from(args.http_max_connections).unwrap_or(u64::MAX);
        let reserve = reserve(args);
        if http.saturating_add(reserve) > raised {
            return Err(AppError::NoRoom {
                limit: raised,
                http,
                reserve,
            });
        }
    }
    Ok(())
}
