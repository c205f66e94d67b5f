//! The `content` example as a user runs it: the compiled example binary
//! (built by `cargo test` beside the tests), in memory, against
//! PostgreSQL, and as a daemon serving metrics that stops on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_core::error::BoxError;
use strata_store_postgres::testing::fresh_database_url;

/// `target/<profile>/examples/content`, beside this test's own binary
/// (`target/<profile>/deps/content-<hash>`).
fn example() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("the test binary has no profile directory")?;
    let path = profile_dir.join("examples").join("content");
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).map_err(|e| {
        format!(
            "{}: {e}: build it with `cargo build --example content` (`cargo test` builds it; \
             `cargo test --all-targets` and `cargo test --test content` do not)",
            path.display()
        )
    })?;
    // `cargo test --test content` does not rebuild the example: refuse to
    // test an old build of it.
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [manifest.join("content"), manifest.join("../projections/src")] {
        if let Some(newer) = newer_than(&dir, built)? {
            return Err(format!(
                "{} is older than {}: build it again with `cargo build --example content`",
                path.display(),
                newer.display()
            )
            .into());
        }
    }
    Ok(path)
}

/// A file under `dir` modified after `time`, if any.
fn newer_than(dir: &std::path::Path, time: std::time::SystemTime) -> Result<Option<PathBuf>, BoxError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            if let Some(newer) = newer_than(&entry.path(), time)? {
                return Ok(Some(newer));
            }
        } else if meta.modified()? > time {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Run the example to its end (within a minute); its output.
fn run(args: &[&str]) -> Result<Output, BoxError> {
    let mut child = Command::new(example()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        stdout.as_mut().map(|o| o.read_to_end(&mut s));
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        stderr.as_mut().map(|o| o.read_to_end(&mut s));
        s
    });
    let status = wait_exit(&mut child, Duration::from_secs(60))?;
    Ok(Output {
        status,
        stdout: out.join().map_err(|_| "stdout reader panicked")?,
        stderr: err.join().map_err(|_| "stderr reader panicked")?,
    })
}

fn wait_exit(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, BoxError> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("the example did not exit within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout_of(output: &Output) -> Result<String, BoxError> {
    if !output.status.success() {
        return Err(format!(
            "the example failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout.clone())?)
}

/// The query answers: everything after the read-your-writes line.
fn answers(stdout: &str) -> Result<String, BoxError> {
    let at = stdout.find("\nread model ").ok_or("no read-model line")?;
    let rest = &stdout[at + 1..];
    let first_query = rest.find("\n\n").ok_or("no query answers")?;
    Ok(rest[first_query..].to_owned())
}

const RUST_TITLES: &str = "title contains \"rust\":
  async-rust   Async rust in depth          video    failed
  rust-intro   Intro to Rust                video    published
  rust-quiz    Rust Ownership Quiz          quiz     published
";

#[test]
fn the_memory_mode_answers_the_queries_from_the_projection() -> Result<(), BoxError> {
    let stdout = stdout_of(&run(&[])?)?;
    assert!(stdout.contains(RUST_TITLES), "{stdout}");
    assert!(
        stdout.contains("type=video & status=published:\n  rust-intro   Intro to Rust                video    published\n  sql-basics   SQL Basics                   video    published\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused: only processed content can be published, it is uploaded"),
        "{stdout}"
    );
    assert!(stdout.contains("refused: it was never uploaded"), "{stdout}");
    Ok(())
}

#[test]
fn bad_arguments_are_refused_with_a_usage_line() -> Result<(), BoxError> {
    let output = run(&["--daemon"])?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(
        stderr.contains("--daemon needs --database-url") && stderr.contains("usage:"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_mode_answers_as_the_memory_mode_and_can_run_again() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let in_memory = answers(&stdout_of(&run(&[])?)?)?;
    let on_postgres = stdout_of(
        &tokio::task::spawn_blocking({
            let url = url.clone();
            move || run(&["--database-url", &url])
        })
        .await??,
    )?;
    assert_eq!(answers(&on_postgres)?, in_memory, "{on_postgres}");
    assert!(in_memory.contains(RUST_TITLES));
    // Every command carries its own id: a second run changes nothing.
    let again = stdout_of(&tokio::task::spawn_blocking(move || run(&["--database-url", &url])).await??)?;
    assert_eq!(answers(&again)?, in_memory, "{again}");
    Ok(())
}

/// A free port on loopback (free when this returns).
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET /metrics` over plain HTTP; the body, if the server answered.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// An example process in `--daemon` mode, its stdout read line by line.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<std::io::Result<String>>,
    owner: String,
}

impl Daemon {
    /// Start one and wait for its `running` line.
    fn start(url: &str, metrics_addr: Option<&str>) -> Result<Self, BoxError> {
        let mut args = vec!["--database-url", url, "--daemon"];
        if let Some(addr) = metrics_addr {
            args.extend(["--metrics-addr", addr]);
        }
        let mut child = Command::new(example()?)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            lines,
            owner: String::new(),
        };
        let running = daemon.lines.recv_timeout(Duration::from_secs(30))??;
        assert!(running.contains(" running"), "{running}");
        daemon.owner = running.split_whitespace().nth(1).ok_or("no owner")?.to_owned();
        Ok(daemon)
    }

    /// SIGTERM it; it must exit 0 and say it stopped.
    fn terminate(mut self) -> Result<(), BoxError> {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        assert!(killed.success());
        let status = wait_exit(&mut self.child, Duration::from_secs(30))?;
        assert!(status.success(), "{status}");
        let stopped = self.lines.recv_timeout(Duration::from_secs(5))??;
        assert!(stopped.contains("stopped"), "{stopped}");
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only a daemon that was not terminated is still running here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `owner` holds the `content` projection's lease.
async fn wait_for_lease(pool: &sqlx::PgPool, owner: &str) -> Result<(), BoxError> {
    let started = Instant::now();
    loop {
        let held: Option<String> = sqlx::query_scalar(
            "SELECT owner FROM strata.projections WHERE name = 'content' AND stage = 'active'",
        )
        .fetch_optional(pool)
        .await?
        .flatten();
        if held.as_deref() == Some(owner) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{owner} never took the lease (held by {held:?})").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the client mode against `url`; its stdout.
async fn client(url: &str) -> Result<String, BoxError> {
    let url = url.to_owned();
    stdout_of(&tokio::task::spawn_blocking(move || run(&["--database-url", &url])).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_prometheus_metrics_and_stops_on_sigterm() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let daemon = Daemon::start(&url, Some(&addr))?;
    // Let it take the projection's lease before the client's own daemon
    // could, so that this process applies the client's events.
    let pool = sqlx::PgPool::connect(&url).await?;
    wait_for_lease(&pool, &daemon.owner).await?;
    client(&url).await?;

    let started = Instant::now();
    let body = loop {
        let body = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || scrape(&addr)
        })
        .await?;
        if let Some(body) =
            body.filter(|b| b.contains("strata_projection_events_applied_total{projection=\"content\"}"))
        {
            break body;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("no strata_projection_ metrics were served".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("strata_projection_position{projection=\"content\""),
        "{body}"
    );
    daemon.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_takes_over_when_the_first_is_terminated() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let first = Daemon::start(&url, None)?;
    wait_for_lease(&pool, &first.owner).await?;
    let second = Daemon::start(&url, None)?;
    let second_owner = second.owner.clone();

    // The first hands its lease back as it stops; the second takes it.
    first.terminate()?;
    wait_for_lease(&pool, &second_owner).await?;
    let answers_now = answers(&client(&url).await?)?;
    assert!(answers_now.contains(RUST_TITLES), "{answers_now}");
    let applied: i64 = sqlx::query_scalar(
        "SELECT events_applied FROM strata.projections WHERE name = 'content' AND stage = 'active'",
    )
    .fetch_one(&pool)
    .await?;
    assert!(applied > 0);
    wait_for_lease(&pool, &second_owner).await?;
    second.terminate()
}
