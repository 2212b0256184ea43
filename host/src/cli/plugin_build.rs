//! Builds plugin crates into Wasm components with cargo, for
//! `tollgate plugin test`, the demo and the test harness.
//!
//! Plugins build with `--target wasm32-wasip2`, which makes a component
//! directly, and the `plugin` profile (small, LTO). Artifact paths are read
//! from cargo's JSON messages rather than guessed.

use std::collections::BTreeMap;
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
    /// The `wasm32-wasip2` standard library is missing and could not be added.
    #[error(
        "the wasm32-wasip2 target is not installed and `rustup target add wasm32-wasip2` failed: {0}"
    )]
    Target(String),
    /// cargo succeeded but produced no `.wasm` for a crate.
    #[error("cargo built {0} but produced no .wasm component for it (is the crate a cdylib?)")]
    NoArtifact(String),
}

/// Makes sure the toolchain that builds in `dir` has the `wasm32-wasip2`
/// standard library. rustup installs the targets of `rust-toolchain.toml`
/// only when it installs the toolchain itself, so a machine that already had
/// the pinned toolchain lacks the target; adding it here keeps "clone, then
/// run one command" true.
fn ensure_wasm_target(dir: &Path) -> Result<(), BuildError> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let libdir = Command::new("rustc")
                .current_dir(dir)
                .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
            if libdir.is_some_and(|d| d.is_dir()) {
                return Ok(());
            }
            eprintln!("installing the wasm32-wasip2 target (rustup target add wasm32-wasip2) …");
            match Command::new("rustup")
                .current_dir(dir)
                .args(["target", "add", "wasm32-wasip2"])
                .status()
            {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("rustup exited with {status}")),
                Err(e) => Err(format!("cannot run rustup: {e}")),
            }
        })
        .clone()
        .map_err(BuildError::Target)
}

fn cargo_build(manifest_dir: &Path, packages: &[&str], target_dir: Option<&Path>) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // cargo reads `.cargo/config.toml` (the plugin's shadow-stack size) and
    // `rust-toolchain.toml` from its working directory, not from the
    // manifest's: built from elsewhere, a plugin silently got rustc's 1 MiB
    // stack and every request faulted its heap pages in again.
    cmd.current_dir(manifest_dir)
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .args(["--target", "wasm32-wasip2", "--profile", "plugin"])
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for package in packages {
        cmd.args(["--package", package]);
    }
    if let Some(dir) = target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    cmd
}

/// Runs the build and maps each built library's crate name (`support_desk`)
/// to its component.
fn wasm_artifacts(mut cmd: Command, what: &Path) -> Result<BTreeMap<String, PathBuf>, BuildError> {
    let output = cmd.output()?;
    if !output.status.success() {
        return Err(BuildError::Failed(what.to_owned()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut artifacts = BTreeMap::new();
    for msg in stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
    {
        let Some(name) = msg["target"]["name"].as_str() else {
            continue;
        };
        let wasm = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(PathBuf::from))
            .find(|f| f.extension().is_some_and(|e| e == "wasm"));
        if let Some(wasm) = wasm {
            artifacts.insert(name.to_owned(), wasm);
        }
    }
    Ok(artifacts)
}

/// Builds the plugin crate at `manifest_dir` and returns its component.
pub fn build(manifest_dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, BuildError> {
    ensure_wasm_target(manifest_dir)?;
    let cmd = cargo_build(manifest_dir, &[], target_dir);
    let artifacts = wasm_artifacts(cmd, manifest_dir)?;
    let crate_name = manifest_dir
        .file_name()
        .map(|n| n.to_string_lossy().replace('-', "_"))
        .unwrap_or_default();
    match artifacts.get(&crate_name) {
        Some(path) => Ok(path.clone()),
        // A crate whose folder name differs from its package name.
        None if artifacts.len() == 1 => Ok(artifacts.into_values().next().unwrap_or_default()),
        None => Err(BuildError::NoArtifact(crate_name)),
    }
}

/// Builds several plugin packages of the workspace at `workspace_dir` in one
/// cargo run; returns each package's component, keyed by package name.
pub fn build_packages(
    workspace_dir: &Path,
    packages: &[&str],
    target_dir: Option<&Path>,
) -> Result<BTreeMap<String, PathBuf>, BuildError> {
    ensure_wasm_target(workspace_dir)?;
    let cmd = cargo_build(workspace_dir, packages, target_dir);
    let artifacts = wasm_artifacts(cmd, workspace_dir)?;
    packages
        .iter()
        .map(|package| {
            artifacts
                .get(&package.replace('-', "_"))
                .map(|path| ((*package).to_owned(), path.clone()))
                .ok_or_else(|| BuildError::NoArtifact((*package).to_owned()))
        })
        .collect()
}
