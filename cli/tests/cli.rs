//! The `strata` operator binary against a fresh database.

mod common;

use std::process::Command;

use common::{run, strata, strata_fails};
use serde_json::json;
use strata_core::error::BoxError;
use strata_core::testing::contract::read_all_settled;
use strata_core::{EventStore, ExpectedVersion, RecordedEvent, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{drop_row_check, fresh_database_url, insert_row, new_event};

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

/// `strata events stream` with `args` added, parsed.
fn stream_events(url: &str, args: &[&str]) -> Result<Vec<RecordedEvent>, BoxError> {
    let lines = strata(
        url,
        &[&["events", "stream", "--stream", "order-9"], args].concat(),
    )?;
    Ok(lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

#[tokio::test]
async fn cli_stream_prints_the_events_up_to_a_version_or_a_time() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    let stream = StreamId::new("order-9")?;
    // One transaction each, apart in time: each gets its own `recorded_at`.
    for (i, event_type) in ["Placed", "Paid", "Shipped"].into_iter().enumerate() {
        let event = new_event(event_type, json!({ "step": i }));
        store
            .append(&stream, ExpectedVersion::Exact(i as u64), vec![event])
            .await?;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let all = stream_events(&url, &[])?;
    assert_eq!(versions(&all), [1, 2, 3]);
    let at: Vec<_> = all.iter().map(|e| e.recorded_at).collect();
    assert!(at[0] < at[1] && at[1] < at[2], "{at:?}");
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);

    assert_eq!(versions(&stream_events(&url, &["--to-version", "2"])?), [1, 2]);
    let one = ["--from-version", "2", "--to-version", "2"];
    assert_eq!(versions(&stream_events(&url, &one)?), [2]);
    assert_eq!(
        versions(&stream_events(&url, &["--to-version", "99"])?),
        [1, 2, 3]
    );

    // An event recorded at the time counts; a time between two events'
    // stops before the later one.
    assert_eq!(
        versions(&stream_events(&url, &["--as-of", &time(at[1])])?),
        [1, 2]
    );
    let between = at[1] + (at[2] - at[1]) / 2;
    assert_eq!(
        versions(&stream_events(&url, &["--as-of", &time(between)])?),
        [1, 2]
    );
    // The same time in another offset.
    let offset = between.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).ok_or("offset")?);
    let in_offset = offset.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    assert_eq!(versions(&stream_events(&url, &["--as-of", &in_offset])?), [1, 2]);
    let both = ["--to-version", "1", "--as-of", &time(at[2])];
    assert_eq!(versions(&stream_events(&url, &both)?), [1]);
    // Before the first event: nothing, and a note why.
    let before = time(at[0] - chrono::Duration::milliseconds(1));
    let out = run(
        &url,
        &["events", "stream", "--stream", "order-9", "--as-of", &before],
    )?;
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let note = String::from_utf8(out.stderr)?;
    assert!(
        note.starts_with("stream `order-9` has no event from version 1 recorded at or before"),
        "{note}"
    );

    let err = strata_fails(
        &url,
        &["events", "stream", "--stream", "order-9", "--as-of", "yesterday"],
    )?;
    assert!(
        err.starts_with("error: invalid value 'yesterday' for '--as-of <TIME>'"),
        "{err}"
    );
    assert!(err.contains("RFC 3339"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = strata_fails(
        &url,
        &[
            "events",
            "stream",
            "--stream",
            "order-9",
            "--from-version",
            "3",
            "--to-version",
            "2",
        ],
    )?;
    assert_eq!(err, "error: --to-version 2 is below --from-version 3\n");
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
