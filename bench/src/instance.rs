//! One keygate child process: started on a port picked here, waited for until it
//! is SERVING, reached over tonic channels, and stopped gracefully. The bench
//! measures real keygate processes rather than an in-process server, so that
//! their CPU and memory can be read apart from the load generator's.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{Args, BoxError};

/// The service token both children accept for `KeyAdmin` calls.
pub(crate) const ADMIN_TOKEN: &str = "bench-token";

/// A keygate child process; killed if dropped while still running.
pub(crate) struct Instance {
    child: Child,
    pub(crate) addr: SocketAddr,
    metrics: SocketAddr,
    started: Instant,
}

impl Instance {
    pub(crate) fn spawn(args: &Args, label: &str, extra: &[&str]) -> Result<Self, BoxError> {
        // keygate logs its address but does not report it otherwise: pick a free port
        // ourselves. Another process could grab it in between; unlikely on a bench box.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        // keygate's warnings go to a file: sqlx logs whole slow statements, which
        // would drown the report.
        let log = std::env::temp_dir().join(format!("keygate-bench-{label}.log"));
        eprintln!("keygate {label} logs to {}", log.display());
        let file = std::fs::File::create(&log)?;
        let started = Instant::now();
        let child = Command::new(&args.keygate_bin)
            .arg("serve")
            .args(["--database-url", &args.database_url])
            .args([
                "--database-max-connections",
                &args.database_max_connections.to_string(),
            ])
            .args(["--listen", &addr.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--admin-tokens", ADMIN_TOKEN])
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.keygate_bin.display()))?;
        Ok(Self {
            child,
            addr,
            metrics,
            started,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        // One Endpoint::connect is one HTTP/2 connection; small requests must not
        // wait for Nagle.
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("an http:// URI built from a socket address is valid")
            .tcp_nodelay(true)
            .connect()
            .await
    }

    pub(crate) async fn channels(&self, n: usize) -> Result<Vec<Channel>, BoxError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            out.push(self.channel().await?);
        }
        Ok(out)
    }

    /// Waits until the instance answers health SERVING (it migrates first).
    pub(crate) async fn wait_ready(&mut self) -> Result<(), BoxError> {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("keygate exited before serving: {status}").into());
            }
            if let Ok(ch) = self.channel().await {
                let req = HealthCheckRequest {
                    service: String::new(),
                };
                if let Ok(r) = HealthClient::new(ch).check(req).await
                    && r.get_ref().status == ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if Instant::now() > give_up {
                return Err(format!("keygate on {} not SERVING after 60 s", self.addr).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The values of gauges `names` on `/metrics`, `None` where not (yet) set.
    async fn gauges<const N: usize>(&self, names: [&str; N]) -> Result<[Option<f64>; N], BoxError> {
        let url = format!("http://{}/metrics", self.metrics);
        let text = reqwest::get(&url).await?.text().await?;
        Ok(names.map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        }))
    }

    /// Waits until the forged-key filter holds at least `keys` keys; returns
    /// how long its load took by its own account, and the time from this
    /// process's start until then.
    pub(crate) async fn filter_loaded(
        &self,
        keys: usize,
    ) -> Result<(Duration, Duration), BoxError> {
        let give_up = Instant::now() + Duration::from_secs(600);
        loop {
            let [loaded, took] = self
                .gauges(["keygate_key_filter_keys", "keygate_key_filter_load_seconds"])
                .await?;
            // A keygate older than the load's own gauge reports no time.
            if loaded.is_some_and(|n| n >= keys as f64) {
                let took = Duration::from_secs_f64(took.unwrap_or(0.0).max(0.0));
                return Ok((took, self.started.elapsed()));
            }
            if Instant::now() > give_up {
                return Err("the forged-key filter did not load within 600 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no usage counts wait for the write budget: warming every
    /// key once leaves one usage row per key to write, a few thousand a
    /// second, and the memory they hold meanwhile is not the cache's.
    pub(crate) async fn usage_written(&self) -> Result<Duration, BoxError> {
        let start = Instant::now();
        loop {
            let [pending] = self.gauges(["keygate_usage_pending_keys"]).await?;
            if pending.unwrap_or(0.0) == 0.0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(900) {
                return Err("usage counts still waiting after 900 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM (graceful: keygate flushes usage), then SIGKILL after 15 s.
    pub(crate) async fn stop(mut self) -> Result<(), BoxError> {
        // The child is not reaped before try_wait below sees it exit, so its pid
        // cannot have been reused by another process.
        kill(Pid::from_raw(i32::try_from(self.pid())?), Signal::SIGTERM)?;
        let give_up = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > give_up {
                eprintln!(
                    "keygate {} ignored SIGTERM for 15 s; killing it",
                    self.pid()
                );
                self.child.kill()?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
