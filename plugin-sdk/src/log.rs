//! Logging into the gateway's structured logs.
//!
//! The host tags every line with the plugin, its version and the request id,
//! keeps at most 32 lines of at most 1 KiB per call and drops the rest, so
//! logging can never flood the gateway. In native tests the lines are kept
//! in memory instead; read them with [`take_captured`].

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very fine detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Unexpected but handled.
    Warn,
    /// A failure.
    Error,
}

/// Writes one log line.
pub fn log(level: Level, message: &str) {
    crate::__guest::host_log(level, message);
}

/// Writes an info line.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes a warning line.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes a debug line.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Returns and clears the lines logged on this thread (native builds only;
/// always empty inside the gateway).
pub fn take_captured() -> Vec<(Level, String)> {
    crate::__guest::take_captured()
}
