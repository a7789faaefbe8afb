//! Finding (and building) the `demo-app` binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::Error;

/// Returns the path of the demo-app binary to run.
///
/// * `explicit` (a `--demo-app` option), else the `DEMO_APP_BIN` environment
///   variable: used as is; it must exist.
/// * Otherwise `demo-app` in the cargo profile directory of the running
///   executable (`target/<profile>/`, also from `target/<profile>/deps/`).
///   With `build`, `cargo build -p demo-app` for that profile runs first
///   (once per process, a no-op when it is up to date), so a chaos run
///   never tests a stale binary; if cargo cannot be found, an existing
///   binary is used.
///
/// # Errors
///
/// [`Error::DemoAppMissing`] (with how to build it), and
/// [`Error::DemoAppBuild`] when cargo fails.
pub fn demo_app_binary(explicit: Option<&Path>, build: bool) -> Result<PathBuf, Error> {
    let from_env = std::env::var_os("DEMO_APP_BIN")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    if let Some(path) = explicit.map(Path::to_path_buf).or(from_env) {
        return existing(path);
    }
    let profile_dir = profile_dir()?;
    let path = profile_dir.join(format!("demo-app{}", std::env::consts::EXE_SUFFIX));
    if build {
        build_once(&profile_dir, &path)?;
    }
    existing(path)
}

/// Why the one build of this process failed, kept so every caller gets it.
enum BuildFailure {
    Status(String),
    Spawn(String, std::io::ErrorKind, String),
}

/// [`cargo_build`] at most once per process; later calls get its outcome.
fn build_once(profile_dir: &Path, binary: &Path) -> Result<(), Error> {
    static BUILT: OnceLock<Result<(), BuildFailure>> = OnceLock::new();
    let outcome = BUILT.get_or_init(|| {
        cargo_build(profile_dir, binary).map_err(|error| match error {
            Error::DemoAppBuild { status } => BuildFailure::Status(status),
            Error::Spawn { what, source } => BuildFailure::Spawn(what, source.kind(), source.to_string()),
            other => BuildFailure::Status(other.to_string()),
        })
    });
    match outcome {
        Ok(()) => Ok(()),
        Err(BuildFailure::Status(status)) => Err(Error::DemoAppBuild { status: status.clone() }),
        Err(BuildFailure::Spawn(what, kind, message)) => Err(Error::Spawn {
            what: what.clone(),
            source: std::io::Error::new(*kind, message.clone()),
        }),
    }
}

fn existing(path: PathBuf) -> Result<PathBuf, Error> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::DemoAppMissing { path })
    }
}

/// `target/<profile>` of the running executable.
fn profile_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Spawn {
        what: "(cannot locate the running executable)".to_owned(),
        source,
    })?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Runs `cargo build -p demo-app` for the profile of `profile_dir`
/// (nothing when not run from the source tree, or when there is no cargo
/// but a binary: that binary will do).
fn cargo_build(profile_dir: &Path, binary: &Path) -> Result<(), Error> {
    match integration_tests::cargo_build_demo_app(profile_dir) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(Error::DemoAppBuild {
            status: status.to_string(),
        }),
        Ok(None) => Ok(()),
        Err(_) if binary.is_file() => Ok(()),
        Err(source) => Err(Error::Spawn {
            what: "cargo build -p demo-app".to_owned(),
            source,
        }),
    }
}
