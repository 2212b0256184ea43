//! Typed errors of the plugin runtime.
//!
//! [`LoadError`] says why a component cannot be used at all; [`PluginError`]
//! says why one call failed. Every variant's message is safe to show an
//! agency developer; none is shown to a client app verbatim except through
//! the gateway's own wording.

use std::time::Duration;

/// Why a component was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Over the size cap.
    #[error("plugin is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// A core module, or not Wasm at all.
    #[error(
        "not a WebAssembly component: {0}; build the plugin for the `wasm32-wasip2` target, which produces a component"
    )]
    NotAComponent(&'static str),
    /// Compilation failed: the binary is malformed or uses unsupported features.
    #[error("component does not compile: {0}")]
    Invalid(String),
    /// It imports something the sandbox does not provide.
    #[error("component imports `{0}`, which the Tollgate sandbox does not provide")]
    UnsupportedImport(String),
    /// It does not export a supported plugin interface.
    #[error(
        "component does not export `tollgate:plugin/plugin@0.2.x` or `@0.1.x` (it exports: {exports}); implement the plugin with tollgate-plugin-sdk"
    )]
    MissingExport {
        /// What it does export.
        exports: String,
    },
    /// Its imports or exports do not match the contract's types.
    #[error("component does not match the tollgate:plugin world: {0}")]
    Incompatible(String),
    /// `describe` failed.
    #[error("plugin failed while describing itself: {0}")]
    Describe(#[source] Box<PluginError>),
}

/// Why one plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Ran past its deadline.
    #[error("plugin exceeded its {0:?} deadline")]
    Timeout(Duration),
    /// Tried to grow memory past its cap.
    #[error("plugin exceeded its {0}-byte memory limit")]
    MemoryLimit(usize),
    /// Overflowed the Wasm stack.
    #[error("plugin overflowed its stack")]
    StackOverflow,
    /// Trapped (a Rust panic shows as `unreachable`).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// Its inputs were over the input cap.
    #[error("plugin input is {size} bytes, over the {limit}-byte limit")]
    InputTooLarge {
        /// The input size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// Its output was over the output cap.
    #[error("plugin output is {size} bytes, over the {limit}-byte limit")]
    OutputTooLarge {
        /// The output size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// Its output broke the contract.
    #[error("plugin returned invalid output: {0}")]
    InvalidOutput(String),
    /// `meter` or `price` returned an error of its own.
    #[error("plugin reported an error: {0}")]
    Reported(String),
    /// The host could not create an instance (e.g. the instance pool is full).
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

impl PluginError {
    /// A short stable name for metrics labels and records.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Timeout(_) => "timeout",
            PluginError::MemoryLimit(_) => "memory_limit",
            PluginError::StackOverflow => "stack_overflow",
            PluginError::Trap(_) => "trap",
            PluginError::InputTooLarge { .. } => "input_too_large",
            PluginError::OutputTooLarge { .. } => "output_too_large",
            PluginError::InvalidOutput(_) => "invalid_output",
            PluginError::Reported(_) => "reported",
            PluginError::Instantiate(_) => "instantiate",
        }
    }
}
