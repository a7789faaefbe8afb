//! The one error type of the benchmark tool.

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// A store process or an app could not be started.
    #[error("setup failed: {0}")]
    Setup(String),
    /// Writing the JSON report failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
