//! The `strata` operator binary against a fresh database.

use std::process::{Command, Output};

use serde_json::json;
use strata_core::error::BoxError;
use strata_core::testing::contract::read_all_settled;
use strata_core::{EventStore, ExpectedVersion, RecordedEvent, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{drop_row_check, fresh_database_url, insert_row, new_event};

fn run(url: &str, args: &[&str]) -> Result<Output, BoxError> {
    Ok(Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()?)
}

fn strata(url: &str, args: &[&str]) -> Result<String, BoxError> {
    let out = run(url, args)?;
    if !out.status.success() {
        return Err(format!("strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Run a command that must fail; its standard error.
fn strata_fails(url: &str, args: &[&str]) -> Result<String, BoxError> {
    let out = run(url, args)?;
    assert!(!out.status.success(), "strata {args:?} must fail");
    Ok(String::from_utf8(out.stderr)?)
}

#[tokio::test]
async fn cli_migrates_then_prints_streams_tail_and_horizon() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    // Already migrated by the helper: migrating again is a no-op.
    strata(&url, &["migrate"])?;

    let store = PgEventStore::connect(&url).await?;
    let stream = StreamId::new("order-7")?;
    let batch = vec![
        new_event("Placed", json!({"sku": "a"})),
        new_event("Paid", json!({"eur": 5})),
    ];
    store.append(&stream, ExpectedVersion::NoStream, batch).await?;

    let lines = strata(
        &url,
        &["events", "stream", "--stream", "order-7", "--from-version", "2"],
    )?;
    let events: Vec<RecordedEvent> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].event_type.as_str(), events[0].stream_version),
        ("Paid", 2)
    );

    // The log may lag behind the append (another transaction on the server
    // holds the horizon): wait until it shows both events.
    read_all_settled(&store, 2).await?;
    let lines = strata(&url, &["events", "tail", "--from-position", "0"])?;
    assert_eq!(lines.lines().count(), 2);

    let horizon: serde_json::Value =
        serde_json::from_str(strata(&url, &["events", "horizon", "--json"])?.trim())?;
    assert!(horizon["readable_below"].as_u64().is_some());
    Ok(())
}

#[tokio::test]
async fn cli_errors_say_what_to_do_once() -> Result<(), BoxError> {
    let (url, db) = fresh_database_url().await?;
    let err = strata_fails(&url, &["events", "stream", "--stream", "nope"])?;
    assert_eq!(err, "error: stream `nope` does not exist\n");

    let long = "x".repeat(10_240);
    let err = strata_fails(&url, &["events", "stream", "--stream", &long])?;
    assert!(err.len() < 300 && err.contains("(10240 bytes)"), "{err}");

    let unmigrated = url.replace(&db, "postgres");
    let err = strata_fails(&unmigrated, &["events", "tail"])?;
    assert!(err.contains("run `strata migrate`"), "{err}");
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");

    let unknown_db = url.replace(&db, "no_such_database");
    let err = strata_fails(&unknown_db, &["events", "tail"])?;
    assert_eq!(
        err,
        "error: invalid configuration: database \"no_such_database\" does not exist [SQLSTATE 3D000]\n"
    );

    let err = strata_fails(
        "postgres://postgres@127.0.0.1:1/none",
        &["events", "stream", "--stream", "x", "--connect-timeout", "1"],
    )?;
    assert!(
        err.starts_with("error: connection to the backend failed: no connection to 127.0.0.1:1 within 1"),
        "{err}"
    );
    assert!(err.contains("the last attempt got: Connection refused"), "{err}");
    Ok(())
}

/// `strata events horizon`, asked until it names `holder` (up to 10 s):
/// transactions of tests running beside this one, on the same server, can
/// be the oldest for a moment. The last sentence either way.
async fn horizon_naming(url: &str, holder: &str) -> Result<String, BoxError> {
    let mut sentence = String::new();
    for _ in 0..100 {
        sentence = strata(url, &["events", "horizon"])?;
        if sentence.contains(holder) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(sentence)
}

#[tokio::test]
async fn cli_horizon_names_the_transaction_that_holds_the_log_back() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    let mut older = store.pool().begin().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid() WHERE pg_current_xact_id() IS NOT NULL")
        .fetch_one(&mut *older)
        .await?;
    let stream = StreamId::new("held")?;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
        .await?;
    let sentence = horizon_naming(&url, &format!("pid {pid} ")).await?;
    assert!(
        sentence.starts_with("1 committed event is not readable yet: the transaction of backend pid"),
        "{sentence}"
    );
    assert!(
        sentence.contains(&format!("pg_terminate_backend({pid})")),
        "{sentence}"
    );
    older.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn cli_tail_reports_an_undecodable_row_and_prints_the_rest() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    drop_row_check(&store).await?;
    insert_row(&store, 1, "a", 1, "{}", "{}").await?;
    let bad = insert_row(&store, 2, "b", 1, "{}", r#"{"tenant_id": 7}"#).await?;
    insert_row(&store, 3, "c", 1, "{}", "{}").await?;
    let out = run(&url, &["events", "tail"])?;
    assert!(
        !out.status.success(),
        "a skipped event must show in the exit status"
    );
    let printed: Vec<RecordedEvent> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let streams: Vec<&str> = printed.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["a", "c"]);
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!(
            "warning: skipped: stored event {bad} at position 2 cannot be read"
        )),
        "{err}"
    );
    assert!(
        err.ends_with("error: 1 undecodable events skipped (see the warnings above)\n"),
        "{err}"
    );
    Ok(())
}

/// Lines a child writes to `from`, as they come.
fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn cli_tail_follow_says_why_it_skips_and_goes_on() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    drop_row_check(&store).await?;
    insert_row(&store, 1, "a", 1, "{}", "{}").await?;
    let bad = insert_row(&store, 2, "b", 1, "{}", r#"{"tenant_id": 7}"#).await?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["events", "tail", "--follow"])
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = lines_of(child.stdout.take().ok_or("no stdout")?);
    let stderr = lines_of(child.stderr.take().ok_or("no stderr")?);
    let wait = std::time::Duration::from_secs(20);
    let followed = (|| -> Result<(), BoxError> {
        let first: RecordedEvent = serde_json::from_str(&stdout.recv_timeout(wait)?)?;
        assert_eq!(first.stream_id.as_str(), "a");
        let warning = stderr.recv_timeout(wait)?;
        assert!(
            warning.starts_with(&format!(
                "warning: skipped: stored event {bad} at position 2 cannot be read: cannot decode metadata"
            )),
            "{warning}"
        );
        Ok(())
    })();
    let appended = match followed {
        Ok(()) => {
            let stream = StreamId::new("later")?;
            store
                .append(&stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
                .await?;
            stdout
                .recv_timeout(wait)
                .map_err(BoxError::from)
                .and_then(|line| Ok(serde_json::from_str::<RecordedEvent>(&line)?))
        }
        Err(e) => Err(e),
    };
    child.kill()?;
    child.wait()?;
    assert_eq!(
        appended?.stream_id.as_str(),
        "later",
        "the feed went on past the bad row"
    );
    Ok(())
}

#[tokio::test]
async fn cli_horizon_names_a_prepared_transaction_that_holds_the_log_back() -> Result<(), BoxError> {
    let (url, db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    // Two-phase commit: prepared, it belongs to no backend and outlives
    // its connection.
    let gid = format!("held-{db}");
    let mut conn = store.pool().acquire().await?;
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    sqlx::query("CREATE TABLE side (x int)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("PREPARE TRANSACTION '{gid}'"))
        .execute(&mut *conn)
        .await?;
    drop(conn);
    let stream = StreamId::new("held")?;
    let checked = async {
        store
            .append(&stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
            .await?;
        horizon_naming(&url, &gid).await
    }
    .await;
    sqlx::query(&format!("ROLLBACK PREPARED '{gid}'"))
        .execute(store.pool())
        .await?;
    let sentence = checked?;
    assert!(
        sentence.starts_with(&format!(
            "1 committed event is not readable yet: prepared transaction '{gid}'"
        )),
        "{sentence}"
    );
    assert!(
        sentence.contains(&format!("ROLLBACK PREPARED '{gid}'")),
        "{sentence}"
    );
    Ok(())
}
