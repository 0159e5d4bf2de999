//! Periodic jobs: a cron schedule per job, enqueued exactly once per tick however many
//! workers run. Each worker computes the next tick and races to enqueue it; the tick's row in
//! `periodic_ticks` commits with the job, so only one wins.
//!
//! The schedules are those registered in code (the application's `ScheduleSpec`s) and those
//! of `PERIODIC_JOBS`, read and checked by [`from_source`].

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use deadpool_postgres::Pool;
use engine::config::{ConfigError, Source};
use engine::jobs::{Kinds, ScheduleSpec};
use engine::queue::NewJob;
use engine::queue::maintenance::enqueue_tick;
use tokio_util::sync::CancellationToken;

/// A job enqueued on a cron schedule.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PeriodicJob {
    /// The schedule's name, unique; part of each tick's unique key.
    pub name: String,
    /// A cron expression: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// The job kind.
    pub kind: String,
    /// Its args.
    #[serde(default)]
    pub args: serde_json::Value,
}

/// The schedules a worker runs: `in_code`, each replaced by one of `PERIODIC_JOBS` (a JSON
/// list) of the same name, then the other configured ones. Each must parse and name one of
/// `kinds`.
pub fn from_source(
    src: &(impl Source + ?Sized),
    in_code: &[ScheduleSpec],
    kinds: Kinds,
) -> Result<Vec<PeriodicJob>, ConfigError> {
    let configured = match src.get("PERIODIC_JOBS") {
        None => Vec::new(),
        Some(raw) => serde_json::from_str(&raw).map_err(|e| {
            ConfigError::new(
                "PERIODIC_JOBS",
                format!("expected [{{\"name\", \"cron\", \"kind\", \"args\"}}]: {e}"),
            )
        })?,
    };
    schedules(in_code, configured, kinds)
}

/// Parse a cron expression: 5 fields, or 6 with seconds first.
pub fn parse_cron(expr: &str) -> Result<Cron, croner::errors::CronError> {
    Cron::from_str(expr)
}

/// Enqueue each schedule's ticks until `stop`. A tick missed while no worker ran is not made
/// up for; the next one is.
pub async fn run(pool: Pool, schedules: Vec<PeriodicJob>, kinds: Kinds, stop: CancellationToken) {
    if schedules.is_empty() {
        return;
    }
    let crons: Vec<(PeriodicJob, Cron)> = schedules
        .into_iter()
        .map(|s| {
            let c = parse_cron(&s.cron).expect("validated with the settings");
            (s, c)
        })
        .collect();
    let mut next: Vec<Option<DateTime<Utc>>> = crons
        .iter()
        .map(|(_, c)| c.find_next_occurrence(&Utc::now(), false).ok())
        .collect();
    loop {
        let Some(due) = next.iter().flatten().min().copied() else {
            return;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        for (i, (schedule, cron)) in crons.iter().enumerate() {
            let Some(tick) = next[i].filter(|t| *t <= Utc::now()) else {
                continue;
            };
            if let Err(e) = enqueue(&pool, schedule, kinds, tick).await {
                tracing::warn!(schedule = %schedule.name, error = %e, "cannot enqueue periodic job");
            }
            next[i] = cron.find_next_occurrence(&Utc::now().max(tick), false).ok();
        }
    }
}

/// The schedules a worker runs: those registered in code, each replaced by a configured one
/// of the same name, then the other configured ones. Each must parse and name a known kind.
fn schedules(
    in_code: &[ScheduleSpec],
    configured: Vec<PeriodicJob>,
    kinds: Kinds,
) -> Result<Vec<PeriodicJob>, ConfigError> {
    let mut all = Vec::with_capacity(in_code.len() + configured.len());
    for s in in_code {
        if configured.iter().all(|c| c.name != s.name) {
            let args = serde_json::from_str(s.args).map_err(|e| {
                ConfigError::new(
                    "PERIODIC_JOBS",
                    format!("built-in schedule {:?}: {e}", s.name),
                )
            })?;
            all.push(PeriodicJob {
                name: s.name.into(),
                cron: s.cron.into(),
                kind: s.kind.into(),
                args,
            });
        }
    }
    all.extend(configured);
    for (i, j) in all.iter().enumerate() {
        let bad =
            |e: String| ConfigError::new("PERIODIC_JOBS", format!("schedule {:?}: {e}", j.name));
        if all[..i].iter().any(|o| o.name == j.name) {
            return Err(bad("named twice".into()));
        }
        parse_cron(&j.cron).map_err(|e| bad(e.to_string()))?;
        kinds.get(&j.kind).map_err(|e| bad(e.to_string()))?;
    }
    Ok(all)
}

async fn enqueue(
    pool: &Pool,
    s: &PeriodicJob,
    kinds: Kinds,
    tick: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let mut job = NewJob::from_json(kinds.get(&s.kind)?, s.args.clone())?;
    job.opts.unique_key = Some(format!("cron:{}:{}", s.name, tick.timestamp()));
    job.opts.meta.insert(
        "periodic".into(),
        serde_json::json!({"schedule": s.name, "tick": tick}),
    );
    if let Some(id) = enqueue_tick(&mut conn, &s.name, tick, &job).await? {
        tracing::info!(schedule = %s.name, job.id = id, "enqueued periodic job");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static KINDS: Kinds = Kinds::new(&[engine::jobs::noop::SPEC]);

    #[test]
    fn schedules_registered_in_code_are_run_unless_config_replaces_them() {
        let in_code = [
            ScheduleSpec {
                name: "nightly",
                cron: "0 3 * * *",
                kind: "noop",
                args: r#"{"sleep_ms": 1}"#,
            },
            ScheduleSpec {
                name: "hourly",
                cron: "0 * * * *",
                kind: "noop",
                args: "{}",
            },
        ];
        let configured: Vec<PeriodicJob> = serde_json::from_str(
            r#"[{"name":"hourly","cron":"30 * * * *","kind":"noop"},
                {"name":"extra","cron":"*/5 * * * *","kind":"noop","args":{"result":1}}]"#,
        )
        .unwrap();
        let all = schedules(&in_code, configured, KINDS).unwrap();
        let got: Vec<(&str, &str)> = all
            .iter()
            .map(|j| (j.name.as_str(), j.cron.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("nightly", "0 3 * * *"),
                ("hourly", "30 * * * *"),
                ("extra", "*/5 * * * *")
            ]
        );
        assert_eq!(all[0].args, serde_json::json!({"sleep_ms": 1}));

        // A bad built-in schedule stops the worker like a bad configured one.
        let bad = [ScheduleSpec {
            cron: "never",
            ..in_code[0]
        }];
        assert_eq!(
            schedules(&bad, vec![], KINDS).unwrap_err().name,
            "PERIODIC_JOBS"
        );
        let twice: Vec<PeriodicJob> = serde_json::from_str(
            r#"[{"name":"a","cron":"* * * * *","kind":"noop"},
                {"name":"a","cron":"* * * * *","kind":"noop"}]"#,
        )
        .unwrap();
        assert!(
            schedules(&[], twice, KINDS)
                .unwrap_err()
                .message
                .contains("twice")
        );
    }

    #[test]
    fn bad_configured_schedules_are_named() {
        for raw in [
            r#"[{"name":"t","cron":"nope","kind":"noop"}]"#,
            r#"[{"name":"t","cron":"* * * * *","kind":"nope"}]"#,
            r#"{"name":"t"}"#,
        ] {
            let err = from_source(&[("PERIODIC_JOBS", raw)][..], &[], KINDS).unwrap_err();
            assert_eq!(err.name, "PERIODIC_JOBS", "{raw}: {err}");
            assert!(!err.to_string().contains('\n'));
        }
    }
}
