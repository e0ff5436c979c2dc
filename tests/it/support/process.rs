//! The one child-process wrapper: the real `keygate` binary, started with a
//! clean environment, its stderr collected line by line, stopped with SIGTERM
//! (or SIGKILL when dropped).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{TOKEN, TestDb};

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// How long a child may take to start serving, or to stop on SIGTERM.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// A `Command` for the keygate binary whose environment does not configure it:
/// the tests' own `KEYGATE_*` and `RUST_LOG` are removed. For one-shot commands
/// (`migrate`, `health`, refused flags); a server is a [`Process`].
pub fn keygate_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYGATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Which stderr lines a [`Process`] keeps.
#[derive(Debug, Clone, Copy)]
enum Keep {
    All,
    /// The first `n` lines (start-up), then only errors: for long runs.
    FirstThenErrors(usize),
}

/// A `keygate` child process whose stderr is collected line by line.
#[derive(Debug)]
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Runs the binary with `args` and `envs` only, keeping every stderr line.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_keeping(args, envs, Keep::All)
    }

    /// Like [`Process::spawn`], but keeps only the first `first` lines and then
    /// the ERROR lines: a soak logs more than a test should hold in memory.
    pub fn spawn_bounded(args: &[&str], envs: &[(&str, &str)], first: usize) -> Self {
        Self::spawn_keeping(args, envs, Keep::FirstThenErrors(first))
    }

    /// Like [`Process::spawn`], under an open-file limit of `nofile` (soft and
    /// hard, set by util-linux's `prlimit`, which then runs the binary itself).
    pub fn spawn_with_open_files(args: &[&str], envs: &[(&str, &str)], nofile: u64) -> Self {
        let limit = format!("--nofile={nofile}:{nofile}");
        let mut prefixed = vec![limit.as_str(), "--", BIN];
        prefixed.extend_from_slice(args);
        let mut cmd = keygate_command();
        // The same clean environment, with prlimit in front of the binary.
        let mut wrapped = Command::new("prlimit");
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        cmd = wrapped;
        cmd.stdin(Stdio::null());
        Self::start(cmd, &prefixed, envs, Keep::All)
    }

    fn spawn_keeping(args: &[&str], envs: &[(&str, &str)], keep: Keep) -> Self {
        Self::start(keygate_command(), args, envs, keep)
    }

    fn start(mut cmd: Command, args: &[&str], envs: &[(&str, &str)], keep: Keep) -> Self {
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .envs(envs.iter().copied());
        let mut child = cmd.spawn().expect("spawn keygate");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let echo = std::env::var_os("TEST_LOG").is_some();
        let pid = child.id();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("keygate[{pid}]: {line}");
                }
                let mut lines = sink.lock().expect("lines lock");
                let kept = match keep {
                    Keep::All => true,
                    Keep::FirstThenErrors(n) => lines.len() < n || line.contains("\"ERROR\""),
                };
                if kept {
                    lines.push(line);
                }
            }
        });
        Self { child, lines }
    }

    /// The stderr lines kept so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// The kept lines of level ERROR (JSON logs).
    pub fn errors(&self) -> Vec<String> {
        self.output()
            .into_iter()
            .filter(|l| l.contains("\"ERROR\""))
            .collect()
    }

    /// Waits for a line satisfying `f` and returns what `f` extracted from it.
    pub fn wait_for<T>(&mut self, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(found) = self.output().iter().find_map(|l| f(l)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "keygate exited ({status}) before {what}:\n{}",
                    self.output().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gRPC address from the JSON "keygate serving" log line.
    pub fn wait_serving(&mut self) -> SocketAddr {
        self.wait_serving_with_metrics().0
    }

    /// The gRPC and the metrics address from the JSON "keygate serving" line
    /// (the metrics address is the gRPC one when metrics are off).
    pub fn wait_serving_with_metrics(&mut self) -> (SocketAddr, SocketAddr) {
        self.wait_for("the serving line", |l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["message"] != "keygate serving" {
                return None;
            }
            let addr: SocketAddr = v["addr"].as_str()?.parse().ok()?;
            let metrics = v["metrics_addr"]
                .as_str()
                .and_then(|m| m.parse().ok())
                .unwrap_or(addr);
            Some((addr, metrics))
        })
    }

    /// The HTTP listener's address from the JSON "keygate serving" line.
    pub fn wait_serving_http(&mut self) -> SocketAddr {
        self.wait_for("the serving line with an HTTP listener", |l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["message"] != "keygate serving" {
                return None;
            }
            v["http_addr"].as_str()?.parse().ok()
        })
    }

    /// Waits (bounded) for the process to exit on its own; its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "keygate did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(VmRSS in KiB, open file descriptors)` of the process.
    pub fn resources(&self) -> (u64, usize) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .count();
        (rss, fds)
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.wait_exit()
    }
}

impl Drop for Process {
    /// SIGKILL and a wait: no shutdown, no flush.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` arguments of a child keygate on `database_url`: ephemeral gRPC and
/// metrics ports, the tests' admin token, JSON logs; `extra` is appended, so it
/// can override any of them.
pub fn serve_argv<'a>(database_url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--admin-tokens",
        TOKEN,
        "--log-format",
        "json",
        "--database-url",
        database_url,
    ];
    args.extend_from_slice(extra);
    args
}

/// A child keygate serving on `database_url`, as [`spawn_process`] starts it.
#[derive(Debug)]
pub struct Served {
    pub process: Process,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

/// The child-process counterpart of `spawn_app`: the real binary on
/// `database_url` with [`serve_argv`]'s flags and `extra`, once it serves.
pub fn spawn_process(database_url: &str, extra: &[&str]) -> Served {
    spawn_process_env(database_url, extra, &[])
}

/// [`spawn_process`] with environment variables for the child (`RUST_LOG`).
pub fn spawn_process_env(database_url: &str, extra: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut process = Process::spawn(&serve_argv(database_url, extra), envs);
    let (addr, metrics_addr) = process.wait_serving_with_metrics();
    Served {
        process,
        addr,
        metrics_addr,
    }
}

/// [`spawn_process`] on a test database.
pub fn spawn_process_on(db: &TestDb, extra: &[&str]) -> Served {
    spawn_process(&db.url, extra)
}
