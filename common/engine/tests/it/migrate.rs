//! Migrations: replicas starting together on an empty database migrate it exactly once.

use std::sync::Arc;

use engine::db;
use testkit::TestDb;
use tokio::sync::Barrier;

use testkit::db::{connect, pool_of, url_of_database};

/// The versions of the migration files (`V<version>__<name>.sql`).
fn migration_versions() -> Vec<i32> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
    let mut versions: Vec<i32> = std::fs::read_dir(dir)
        .expect("migrations dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix('V')?.split_once("__")?.0.parse().ok()
        })
        .collect();
    versions.sort();
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_apply_each_version_once() {
    const REPLICAS: usize = 4;
    // TestDb only for its server: the database under test starts empty.
    let test_db = TestDb::new().await;
    let name = format!("{}_fresh", test_db.name);
    let admin = connect(&url_of_database(&test_db.url, "postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = url_of_database(&test_db.url, &name);

    let probe = pool_of(&url, 1);
    assert!(!db::is_migrated(&probe).await.unwrap(), "empty database");

    let barrier = Arc::new(Barrier::new(REPLICAS));
    let tasks: Vec<_> = (0..REPLICAS)
        .map(|_| {
            let url = url.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                // One pool per task, as separate processes would have.
                let pool = pool_of(&url, 2);
                let _warm = pool.get().await.unwrap();
                drop(_warm);
                barrier.wait().await;
                let applied = db::migrate(&pool).await;
                pool.close();
                applied
            })
        })
        .collect();
    let mut applied = Vec::new();
    for t in tasks {
        applied.push(t.await.unwrap().expect("every replica's migrate succeeds"));
    }

    let versions = migration_versions();
    assert!(!versions.is_empty());
    assert_eq!(
        applied.iter().sum::<usize>(),
        versions.len(),
        "each migration applied by exactly one replica: {applied:?}"
    );
    let rows = probe
        .get()
        .await
        .unwrap()
        .query(
            "SELECT version, count(*) FROM refinery_schema_history GROUP BY version ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let history: Vec<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        history,
        versions.iter().map(|&v| (v, 1)).collect::<Vec<_>>(),
        "each version recorded once"
    );
    assert!(db::is_migrated(&probe).await.unwrap());
    // The schema is there.
    let jobs: i64 = probe
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 0);

    // Running it again is a no-op.
    assert_eq!(db::migrate(&probe).await.unwrap(), 0);

    probe.close();
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_migration_recorded_under_another_checksum_is_not_taken_as_applied() {
    let db = TestDb::new().await;
    let pool = pool_of(&db.url, 1);
    assert!(db::is_migrated(&pool).await.unwrap());
    assert_eq!(db::migrate(&pool).await.unwrap(), 0, "the fast path");

    // As if the file had been edited after it was applied: the fast path must not wave it
    // through, and refinery refuses the divergent migration.
    pool.get()
        .await
        .unwrap()
        .execute(
            "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(!db::is_migrated(&pool).await.unwrap());
    let err = db::migrate(&pool).await.unwrap_err();
    assert!(err.to_string().contains("migration"), "{err}");
}
