//! The real `worker` binary: many processes, kill -9, SIGTERM, database restarts.
