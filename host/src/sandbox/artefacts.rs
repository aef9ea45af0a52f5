//! Compiled components: compiled once per machine into the cache directory as precompiled
//! artefacts and mapped from there, so their code and memory images are file-backed pages
//! that the kernel shares between the activities and the processes that use them (and can
//! drop under pressure) instead of private anonymous memory per tenant. Identical
//! components (same bytes) are loaded once per process. A `.cwasm` written by
//! `sfn-wasm-worker compile` loads the same way, with no compilation at start-up.

use crate::sandbox::engine::CacheSetting;
use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

/// The components of one engine, by the hash of their bytes.
pub struct Artefacts {
    engine: Engine,
    /// Where precompiled artefacts are kept; `None` compiles into anonymous memory.
    dir: Option<PathBuf>,
    /// Names this engine's artefacts: one built by an incompatible engine is never picked.
    engine_fingerprint: String,
    loaded: Mutex<HashMap<Arc<str>, Component>>,
}

impl Artefacts {
    /// The components of `engine`, cached as `cache` says.
    pub fn new(engine: &Engine, cache: &CacheSetting) -> Artefacts {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Artefacts {
            engine: engine.clone(),
            dir: cache.directory(),
            engine_fingerprint: format!("{:016x}", hasher.finish()),
            loaded: Mutex::default(),
        }
    }

    /// The component at `path` (a component, or a precompiled `.cwasm`): from this process's
    /// loaded components, else mapped from the cache, else compiled (and cached); and the key
    /// it is kept under among the loaded components (none for a `.cwasm`, which is not kept).
    pub fn component(&self, path: &Path) -> Result<(Component, Option<Arc<str>>)> {
        // A `.cwasm` (an ELF image) is mapped, not read into memory first.
        if starts_with_elf_magic(path)? {
            return match Engine::detect_precompiled_file(path).map_err(anyhow::Error::from) {
                Ok(Some(Precompiled::Module)) => bail!(
                    "{} is a precompiled core module, not a component: precompile the \
                     component with `sfn-wasm-worker compile`",
                    path.display()
                ),
                _ => self.precompiled(path).map(|component| (component, None)),
            };
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        check_is_component(path, &bytes)?;
        let key: Arc<str> = format!("{:x}", Sha256::digest(&bytes)).into();
        if let Some(component) = self.loaded.lock().unwrap().get(&key) {
            return Ok((component.clone(), Some(key)));
        }
        let component = match &self.dir {
            Some(dir) => self.cached(dir, &key, &bytes, path)?,
            None => self.compile_in_memory(&bytes, path)?,
        };
        self.loaded
            .lock()
            .unwrap()
            .insert(key.clone(), component.clone());
        Ok((component, Some(key)))
    }

    /// How many distinct components (by their bytes) this process has loaded.
    pub fn loaded(&self) -> usize {
        self.loaded.lock().unwrap().len()
    }

    /// Forgets the loaded components whose key `in_use` rejects (replaced by a reload): they
    /// are freed once the last task running them ends.
    pub fn retain(&self, in_use: impl Fn(&str) -> bool) {
        self.loaded.lock().unwrap().retain(|key, _| in_use(key));
    }

    /// The precompiled artefact of the component at `path` (for `sfn-wasm-worker compile`),
    /// and the component it loads as.
    pub fn precompile(&self, path: &Path) -> Result<(Vec<u8>, Component)> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        if Engine::detect_precompiled(&bytes).is_some() {
            bail!(
                "{} is already precompiled; give the component (.wasm) it came from",
                path.display()
            );
        }
        check_is_component(path, &bytes)?;
        let artefact = self
            .engine
            .precompile_component(&bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| invalid_component(path))?;
        // SAFETY: produced just above by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &artefact) }
            .map_err(anyhow::Error::from)?;
        Ok((artefact, component))
    }

    fn compile_in_memory(&self, bytes: &[u8], path: &Path) -> Result<Component> {
        Component::new(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| invalid_component(path))
    }

    /// Maps the cached artefact of `bytes`, compiling and writing it first if it is missing.
    /// A cache that cannot be written is logged, and the component compiled in memory.
    fn cached(&self, dir: &Path, key: &str, bytes: &[u8], path: &Path) -> Result<Component> {
        let file = dir.join(format!("{key}-{}.cwasm", self.engine_fingerprint));
        if file.is_file() {
            // SAFETY: the file was written below by this same engine configuration (its name
            // carries the engine's compatibility fingerprint), and wasmtime checks the header.
            match unsafe { Component::deserialize_file(&self.engine, &file) } {
                Ok(component) => return Ok(component),
                Err(err) => tracing::warn!(
                    file = %file.display(),
                    error = %format!("{err:#}"),
                    "ignoring an unreadable cached component; compiling it again"
                ),
            }
        }
        let artefact = self
            .engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| invalid_component(path))?;
        if let Err(err) = write_atomically(&file, &artefact) {
            tracing::warn!(
                cache = %dir.display(),
                error = %format!("{err:#}"),
                "the component cache is not writable; compiling in memory (set --cache-dir)"
            );
            return self.compile_in_memory(bytes, path);
        }
        // SAFETY: written just above from `precompile_component` of this engine.
        unsafe { Component::deserialize_file(&self.engine, &file) }
            .map_err(anyhow::Error::from)
            .with_context(|| format!("loading the compiled component {}", file.display()))
    }

    fn precompiled(&self, path: &Path) -> Result<Component> {
        // SAFETY: a `.cwasm` is trusted code, as `sfn-wasm-worker compile` wrote it (README:
        // "precompiled components"); wasmtime refuses one built by another engine version or
        // configuration, which the error below explains.
        unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} was precompiled by an incompatible engine (another sfn-wasm-worker \
                     version or CPU); precompile it again with this one: \
                     `sfn-wasm-worker compile COMPONENT.wasm -o {}`",
                    path.display(),
                    path.display()
                )
            })
    }
}

/// Whether the file at `path` begins like an ELF image (what `sfn-wasm-worker compile` writes).
fn starts_with_elf_magic(path: &Path) -> Result<bool> {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading component {}", path.display()))?;
    let read = file
        .take(4)
        .read(&mut magic)
        .with_context(|| format!("reading component {}", path.display()))?;
    Ok(read == 4 && magic == *b"\x7fELF")
}

fn invalid_component(path: &Path) -> String {
    format!(
        "{} is not a valid WebAssembly component; rebuild it (`wasm-tools validate` says more)",
        path.display()
    )
}

/// Writes `bytes` to `file` through a temporary file and a rename, so that a process reading
/// the cache never maps a half-written artefact.
fn write_atomically(file: &Path, bytes: &[u8]) -> Result<()> {
    let dir = file.parent().context("the cache file has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, file).with_context(|| format!("renaming to {}", file.display()))
}

/// Refuses core modules and non-wasm files with a message that says what to do instead.
fn check_is_component(path: &Path, bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!(
            "{} is not a WebAssembly file (no \\0asm header)",
            path.display()
        );
    }
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    if layer == 0 {
        bail!(
            "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
             or wrap it with `wasm-tools component new` (see README: building a guest)",
            path.display()
        );
    }
    Ok(())
}
