//! Components shipped through an OCI registry: an activity's `component =
//! "oci://REGISTRY/REPO@sha256:DIGEST"` is pulled before anything polls (and on each reload
//! that names it), in the CNCF Wasm OCI artifact layout (oci-wasm: one `application/wasm`
//! layer and a `application/vnd.wasm.config.v0+json` config, what `wkg oci push` writes
//! too); `push` publishes one and prints the digest to put in the configuration.
//!
//! - [`reference`]: the `oci://` reference (a digest, or a tag resolved once per load with
//!   a warning that it is not reproducible);
//! - [`credentials`]: the docker config file and credential helpers, anonymous otherwise.
//!
//! The layer's SHA-256 is checked against the manifest before the file is used, and the
//! manifest's digest against the one asked for. Pulled components are kept under the cache
//! directory by manifest digest (`components/sha256-HEX.wasm`, its layer digest beside it and
//! checked again at each use): a restart, or a second activity with the same digest, pulls
//! nothing; their compiled artefacts are cached as any
//! component's. A registry on loopback is reached over http (as docker does); any other over
//! https unless `[worker] insecure_registries` lists it.

pub mod credentials;
pub mod reference;

use crate::config::Config;
use anyhow::{bail, Context as _, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::Client;
use oci_wasm::{WasmClient, WasmConfig};
use reference::{OciReference, Version};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Pulls and pushes components; keeps what it pulled in its directory.
pub struct ComponentRegistry {
    dir: PathBuf,
    /// The process's own directory when no cache directory was given (removed when dropped).
    _temporary: Option<tempfile::TempDir>,
    insecure: Vec<String>,
}

impl ComponentRegistry {
    /// Keeps pulled components under `cache_dir/components` (or in a directory of this
    /// process's, removed when it ends, without a cache directory); `insecure` lists the
    /// registries (`host:port`) reached over http besides loopback ones.
    /// Fails only if that directory of its own cannot be made.
    pub fn new(cache_dir: Option<&Path>, insecure: &[String]) -> Result<ComponentRegistry> {
        let (dir, temporary) = match cache_dir {
            Some(dir) => (dir.join("components"), None),
            None => {
                let temporary = tempfile::Builder::new()
                    .prefix("sfn-wasm-worker-components-")
                    .tempdir()
                    .context("making a directory for pulled components")?;
                (temporary.path().to_path_buf(), Some(temporary))
            }
        };
        Ok(ComponentRegistry {
            dir,
            _temporary: temporary,
            insecure: insecure.to_vec(),
        })
    }

    /// Pulls every `oci://` component of `config` and makes the activity's `component` the
    /// pulled file; the error names the activity, the reference, the registry's answer and
    /// the fix.
    pub async fn pull_all(&self, config: &mut Config) -> Result<()> {
        for activity in &mut config.activities {
            if !activity.pulls_its_component() {
                continue;
            }
            let text = activity.component.to_string_lossy().into_owned();
            let reference = OciReference::parse(&text).map_err(|why| {
                anyhow::anyhow!("activity {}: key `component`: {why}", activity.arn)
            })?;
            let path = self
                .pull(&reference)
                .await
                .with_context(|| format!("activity {}: key `component`", activity.arn))?;
            activity.component = path;
        }
        Ok(())
    }

    /// The file of the component `reference` names, pulled unless kept already.
    pub async fn pull(&self, reference: &OciReference) -> Result<PathBuf> {
        let client = self.client(&reference.registry);
        let digest = match &reference.version {
            Version::Digest(digest) => digest.clone(),
            Version::Tag(tag) => {
                let auth = credentials::for_registry(&reference.registry)?;
                let digest = client
                    .fetch_manifest_digest(&reference.client_reference(), &auth)
                    .await
                    .map_err(|err| explain(reference, &err))?;
                tracing::warn!(
                    %reference,
                    %digest,
                    "the component is named by its tag {tag:?}, which may move: what runs is \
                     the digest it names now; write the digest in `component` to make it reproducible"
                );
                digest
            }
        };
        let path = self.dir.join(format!("{}.wasm", digest.replace(':', "-")));
        if self.is_cached(&path) {
            tracing::debug!(%reference, path = %path.display(), "component already pulled");
            return Ok(path);
        }
        let auth = credentials::for_registry(&reference.registry)?;
        let pinned = reference.at_digest(&digest);
        let image = WasmClient::new(client)
            .pull(&pinned.client_reference(), &auth)
            .await
            .map_err(|err| match err.downcast_ref::<OciDistributionError>() {
                Some(err) => explain(&pinned, err),
                None => anyhow::anyhow!(
                    "{pinned} is not a Wasm component artefact ({err}); push it with \
                     `sfn-wasm-worker push` (or `wkg oci push`)"
                ),
            })?;
        if image.digest.as_deref() != Some(digest.as_str()) {
            bail!(
                "the registry answered {pinned} with the manifest {}: refused",
                image.digest.as_deref().unwrap_or("without a digest")
            );
        }
        let expected = image
            .manifest
            .as_ref()
            .and_then(|manifest| manifest.layers.first())
            .map(|layer| layer.digest.clone())
            .context("the registry's answer has no layer descriptor")?;
        let layer = &image.layers[0];
        let actual = format!("sha256:{:x}", Sha256::digest(&layer.data));
        if actual != expected {
            bail!("{pinned}: the layer's bytes hash to {actual} but the manifest says {expected}: refused");
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // The layer's digest first, then the file: a file is only used beside its digest.
        self.write_whole(&layer_digest_path(&path), actual.as_bytes())?;
        self.write_whole(&path, &layer.data)?;
        tracing::info!(
            %reference,
            %digest,
            bytes = layer.data.len(),
            "component pulled"
        );
        Ok(path)
    }

    /// Whether `path` holds a pulled component whose bytes still hash to the layer digest
    /// kept beside it (a file that does not is removed, and pulled again).
    fn is_cached(&self, path: &Path) -> bool {
        let (Ok(expected), Ok(bytes)) = (
            std::fs::read_to_string(layer_digest_path(path)),
            std::fs::read(path),
        ) else {
            return false;
        };
        if format!("sha256:{:x}", Sha256::digest(&bytes)) == expected.trim() {
            return true;
        }
        tracing::warn!(
            path = %path.display(),
            "a pulled component no longer matches its digest; pulling it again"
        );
        let _ = std::fs::remove_file(path);
        false
    }

    /// Writes `bytes` as `path` at once: a unique temporary file in the same directory,
    /// renamed into place (removed if that fails), so that concurrent pulls of one digest,
    /// even by processes sharing the directory, never mix.
    fn write_whole(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("creating a file in {}", self.dir.display()))?;
        std::io::Write::write_all(&mut file, bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        file.persist(path)
            .map_err(|err| anyhow::anyhow!("writing {}: {}", path.display(), err.error))?;
        Ok(())
    }

    /// Pushes the component at `file` to `reference` (a tag, or a digest it must match);
    /// returns the reference by digest to put in `component`.
    pub async fn push(&self, file: &Path, reference: &OciReference) -> Result<OciReference> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let (config, layer) = WasmConfig::from_raw_component(bytes, None).map_err(|err| {
            anyhow::anyhow!(
                "{} is not a WebAssembly component ({err:#}); build it as a component (README \
                 \"Building a guest\")",
                file.display()
            )
        })?;
        let auth = credentials::for_registry(&reference.registry)?;
        let client = WasmClient::new(self.client(&reference.registry));
        let pushed = client
            .push(&reference.client_reference(), &auth, layer, config, None)
            .await
            .map_err(|err| match err.downcast_ref::<OciDistributionError>() {
                Some(err) => explain(reference, err),
                None => anyhow::anyhow!("pushing to {reference}: {err:#}"),
            })?;
        // The manifest's location names its digest (what this push wrote, whatever the tag
        // names by now); asked of the registry only if it does not.
        let located = pushed
            .manifest_url
            .rsplit('/')
            .next()
            .filter(|last| last.starts_with("sha256:"))
            .map(str::to_string);
        let digest = match located {
            Some(digest) => digest,
            None => client
                .fetch_manifest_digest(&reference.client_reference(), &auth)
                .await
                .map_err(|err| explain(reference, &err))?,
        };
        Ok(reference.at_digest(&digest))
    }

    /// A client that reaches `registry` over http if it is on loopback or listed insecure.
    fn client(&self, registry: &str) -> Client {
        let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let mut insecure = self.insecure.clone();
        if loopback {
            insecure.push(registry.to_string());
        }
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        })
    }
}

/// What a registry error means for the user.
enum Trouble {
    /// The credentials are missing or refused.
    Credentials,
    /// No such repository, tag or digest.
    Missing,
    /// The registry did not answer.
    Unreachable,
    /// Anything else: the registry's answer says.
    Other,
}

fn trouble(err: &OciDistributionError) -> Trouble {
    match err {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => Trouble::Credentials,
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Trouble::Credentials,
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => Trouble::Missing,
        OciDistributionError::RequestError(request)
            if request.is_connect() || request.is_timeout() =>
        {
            Trouble::Unreachable
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let has =
                |codes: &[OciErrorCode]| envelope.errors.iter().any(|e| codes.contains(&e.code));
            if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                Trouble::Credentials
            } else if has(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::BlobUnknown,
            ]) {
                Trouble::Missing
            } else {
                Trouble::Other
            }
        }
        _ => Trouble::Other,
    }
}

/// A registry error with what it means for `reference` and the fix.
fn explain(reference: &OciReference, err: &OciDistributionError) -> anyhow::Error {
    let registry = &reference.registry;
    let fix = match trouble(err) {
        Trouble::Credentials => format!(
            "the registry refused the credentials: log in (docker login {registry}); the worker \
             reads {} and its credential helpers",
            credentials::docker_config_path().map_or("the docker config".into(), |path| path
                .display()
                .to_string())
        ),
        Trouble::Missing => "no such repository, tag or digest there: push it (sfn-wasm-worker \
                             push) and put the digest it prints in `component`"
            .into(),
        Trouble::Unreachable => format!(
            "the registry {registry} did not answer: is it running and is the address right? \
             (loopback registries are reached over http, others over https unless [worker] \
             insecure_registries lists them)"
        ),
        Trouble::Other => "see the registry's answer".into(),
    };
    anyhow::anyhow!("{reference}: {err}; {fix}")
}

/// Where the layer digest of the pulled component at `path` is kept.
fn layer_digest_path(path: &Path) -> PathBuf {
    path.with_extension("layer-digest")
}
