//! Periodic jobs: a cron schedule per job, enqueued exactly once per tick however many
//! workers run. Each worker computes the next tick and races to enqueue it; the tick's row in
//! `periodic_ticks` commits with the job, so only one wins.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use deadpool_postgres::Pool;
use engine::queue::NewJob;
use engine::queue::maintenance::enqueue_tick;
use tokio_util::sync::CancellationToken;

use crate::config::PeriodicJob;

/// Parse a cron expression: 5 fields, or 6 with seconds first.
pub fn parse_cron(expr: &str) -> Result<Cron, croner::errors::CronError> {
    Cron::from_str(expr)
}

/// Enqueue each schedule's ticks until `stop`. A tick missed while no worker ran is not made
/// up for; the next one is.
pub async fn run(pool: Pool, schedules: Vec<PeriodicJob>, stop: CancellationToken) {
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
            if let Err(e) = enqueue(&pool, schedule, tick).await {
                tracing::warn!(schedule = %schedule.name, error = %e, "cannot enqueue periodic job");
            }
            next[i] = cron.find_next_occurrence(&Utc::now().max(tick), false).ok();
        }
    }
}

async fn enqueue(pool: &Pool, s: &PeriodicJob, tick: DateTime<Utc>) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let mut job = NewJob::from_json(domain::jobs::kind(&s.kind)?, s.args.clone())?;
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
