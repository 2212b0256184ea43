//! Builds plugin crates into Wasm components with cargo, for
//! `tollgate plugin test`, the demo and the test harness.
//!
//! Plugins build with `--target wasm32-wasip2`, which makes a component
//! directly, and the `plugin` profile (small, LTO). The artifact path is read
//! from cargo's JSON messages rather than guessed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a plugin build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be started.
    #[error("cannot run cargo: {0}")]
    Spawn(#[from] std::io::Error),
    /// cargo failed; its diagnostics were printed to stderr.
    #[error("cargo build of {0} failed (see the compiler output above)")]
    Failed(PathBuf),
    /// cargo succeeded but produced no `.wasm`.
    #[error("cargo built {0} but produced no .wasm component (is the crate a cdylib?)")]
    NoArtifact(PathBuf),
}

/// Builds the crate at `manifest_dir` for `wasm32-wasip2` with the `plugin`
/// profile into `target_dir` (cargo's default when `None`) and returns the
/// path of the component.
pub fn build(manifest_dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, BuildError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .args(["--target", "wasm32-wasip2", "--profile", "plugin"])
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    let output = cmd.output()?;
    if !output.status.success() {
        return Err(BuildError::Failed(manifest_dir.to_owned()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let artifact = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter(|msg| {
            let crate_manifest = msg["manifest_path"].as_str().map(Path::new);
            crate_manifest.and_then(Path::parent) == Some(manifest_dir)
                || crate_manifest.and_then(Path::parent).map(Path::to_path_buf)
                    == manifest_dir.canonicalize().ok()
        })
        .flat_map(|msg| {
            msg["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"));
    artifact.ok_or_else(|| BuildError::NoArtifact(manifest_dir.to_owned()))
}
