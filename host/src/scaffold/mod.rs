//! `sfn-wasm-worker new`: a new guest project that builds and runs as it is, in Python,
//! JavaScript, TypeScript, Rust or C: a minimal handler (greets `{"name": ...}`), its build command in a
//! README, a sample input, the contract (`wit/`) and the language's kit or SDK.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

/// The languages a project can be started in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// componentize-py, with the Python kit
    Python,
    /// jco (StarlingMonkey), with the JavaScript kit
    Js,
    /// TypeScript: type-checked by tsc, bundled by esbuild, then as JavaScript
    Ts,
    /// Rust for wasm32-wasip2, with the Rust SDK
    Rust,
    /// C with wasi-libc and wit-bindgen
    C,
}

/// A file of a new project.
enum Content {
    /// Text, with `{{name}}` and `{{crate_file}}` (the name as Rust spells a file) filled in.
    Template(&'static str),
    /// Bytes written as they are.
    Bytes(&'static [u8]),
}

/// The contract, as this worker's `wit/` holds it: (path in the project, text), every file
/// under `wit/` (listed by the build script).
const WIT: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/wit_files.rs"));

/// The sample task input every project's README invokes.
const SAMPLE_INPUT: &str = "{\"name\": \"Ada\"}\n";

/// The Rust SDK, with the contract found in the project's own `wit/`.
const RUST_SDK: &str = include_str!("../../../guest/sdk/src/lib.rs");

fn language_files(language: Language) -> Vec<(&'static str, Content)> {
    use Content::{Bytes, Template};
    match language {
        Language::Python => vec![
            ("app.py", Template(include_str!("templates/python/app.py"))),
            ("sfn_activity.py", Template(include_str!("../../../guest/kits/python/sfn_activity.py"))),
            ("build.sh", Template(include_str!("templates/python/build.sh"))),
            ("README.md", Template(include_str!("templates/python/README.md"))),
        ],
        Language::Js => vec![
            ("app.js", Template(include_str!("templates/js/app.js"))),
            ("sfn-activity.js", Template(include_str!("../../../guest/kits/js/sfn-activity.js"))),
            ("package.json", Template(include_str!("templates/js/package.json"))),
            ("README.md", Template(include_str!("templates/js/README.md"))),
        ],
        Language::Ts => vec![
            ("app.ts", Template(include_str!("templates/ts/app.ts"))),
            ("sfn-activity.js", Template(include_str!("../../../guest/kits/js/sfn-activity.js"))),
            ("sfn-activity.d.ts", Template(include_str!("../../../guest/kits/js/sfn-activity.d.ts"))),
            ("tsconfig.json", Template(include_str!("templates/ts/tsconfig.json"))),
            ("package.json", Template(include_str!("templates/ts/package.json"))),
            ("README.md", Template(include_str!("templates/ts/README.md"))),
        ],
        Language::Rust => vec![
            ("Cargo.toml", Template(include_str!("templates/rust/Cargo.toml"))),
            ("src/lib.rs", Template(include_str!("templates/rust/lib.rs"))),
            ("sdk/Cargo.toml", Template(include_str!("templates/rust/sdk.Cargo.toml"))),
            ("README.md", Template(include_str!("templates/rust/README.md"))),
        ],
        Language::C => vec![
            ("app.c", Template(include_str!("templates/c/app.c"))),
            ("build.sh", Template(include_str!("templates/c/build.sh"))),
            ("README.md", Template(include_str!("templates/c/README.md"))),
            (
                "wasi_snapshot_preview1.reactor.wasm",
                Bytes(wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER),
            ),
        ],
    }
}

/// Writes a new project `name` in `language` into `parent/name`, which must not exist yet;
/// returns its directory.
pub fn create(language: Language, name: &str, parent: &Path) -> Result<PathBuf> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate_file}}", &name.replace('-', "_"))
    };
    let mut files: Vec<(String, Vec<u8>)> = WIT
        .iter()
        .map(|(path, text)| (path.to_string(), text.as_bytes().to_vec()))
        .collect();
    files.push(("input.json".into(), SAMPLE_INPUT.as_bytes().to_vec()));
    for (path, content) in language_files(language) {
        let bytes = match content {
            Content::Template(text) => fill(text).into_bytes(),
            Content::Bytes(bytes) => bytes.to_vec(),
        };
        files.push((path.to_string(), bytes));
    }
    if language == Language::Rust {
        // The SDK reads the contract from the project's `wit/`, one level up from `sdk/`.
        let sdk = RUST_SDK.replace("path: \"../../wit\"", "path: \"../wit\"");
        files.push(("sdk/src/lib.rs".into(), sdk.into_bytes()));
    }
    for (path, bytes) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// Names become directories, crate and file names: lowercase letters, digits, `-` and `_`,
/// starting with a letter.
fn check_name(name: &str) -> Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "{name:?} cannot name a project: use lowercase letters, digits, `-` and `_`, \
             starting with a letter (e.g. `order-pricer`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_has_its_contract_sample_and_filled_templates() {
        let parent = tempfile::tempdir().unwrap();
        let dir = create(Language::Rust, "order-pricer", parent.path()).unwrap();
        let sdk = std::fs::read_to_string(dir.join("sdk/src/lib.rs")).unwrap();
        assert!(sdk.contains("path: \"../wit\""));
        assert!(dir.join("wit/deps/http/package.wit").is_file());
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(readme.contains("order_pricer.wasm") && !readme.contains("{{"));
        assert!(create(Language::Rust, "order-pricer", parent.path())
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        assert!(create(Language::C, "Bad Name", parent.path()).is_err());
    }
}
