//! Cron schedules (placeholder, being written).
