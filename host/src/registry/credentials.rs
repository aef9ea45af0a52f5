//! A registry's credentials, read as `docker` and `wkg` read them: the docker config file
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): a credential helper named for
//! the registry in `credHelpers`, else the `credsStore` helper, else its `auths` entry
//! (`auth` = base64 of `user:password`, or `username`/`password`; an `identitytoken`, a
//! refresh token, is refused naming it); anonymous when none names the registry. A helper is run as `docker-credential-NAME get`
//! with the registry on its stdin.

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The parts of the docker config file that hold credentials.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
}

/// One `auths` entry.
#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// What a credential helper answers.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// Where the docker config file is.
pub fn docker_config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
        }
    }
}

/// The credentials for `registry` (`host[:port]`); the error names the file or helper that
/// failed (never a secret).
pub fn for_registry(registry: &str) -> Result<RegistryAuth> {
    match docker_config_path().filter(|path| path.is_file()) {
        Some(path) => from_docker_config(&path, registry),
        None => Ok(RegistryAuth::Anonymous),
    }
}

/// The credentials the docker config file at `path` gives `registry`.
fn from_docker_config(path: &std::path::Path, registry: &str) -> Result<RegistryAuth> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the docker config {}", path.display()))?;
    let config: DockerConfig = serde_json::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "the docker config {} is not valid JSON ({err}); fix it or point DOCKER_CONFIG elsewhere",
            path.display()
        )
    })?;
    if let Some(helper) = config
        .cred_helpers
        .get(registry)
        .or(config.creds_store.as_ref())
    {
        if let Some(auth) = from_helper(helper, registry)? {
            return Ok(auth);
        }
    }
    let entry = config
        .auths
        .iter()
        .find(|(server, _)| server_host(server) == registry)
        .map(|(_, entry)| entry);
    let Some(entry) = entry else {
        return Ok(RegistryAuth::Anonymous);
    };
    if entry.identitytoken.is_some() {
        bail!(
            "the docker config {}: auths.{registry} holds an identity token (a refresh token), \
             which this worker does not exchange; log in with a user and password or token \
             (docker login -u ... {registry}) or use a credential helper",
            path.display()
        );
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    if let Some(encoded) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|text| text.split_once(':'))
        else {
            bail!(
                "the docker config {}: auths.{registry}.auth is not base64 of user:password; \
                 log in again (docker login {registry})",
                path.display()
            );
        };
        return Ok(RegistryAuth::Basic(user.to_string(), password.to_string()));
    }
    Ok(RegistryAuth::Anonymous)
}

/// The host of an `auths` key (which may be a URL, as docker writes for some registries).
fn server_host(server: &str) -> &str {
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    rest.split('/').next().unwrap_or(rest)
}

/// Asks the helper `docker-credential-NAME` for `registry`'s credentials: `None` if it has
/// none for it.
fn from_helper(name: &str, registry: &str) -> Result<Option<RegistryAuth>> {
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("running the credential helper {program} (named in the docker config); install it or remove it from the config")
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(registry.as_bytes())
        .with_context(|| format!("writing to {program}"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stdout);
        if said.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "the credential helper {program} failed for {registry}: {}",
            said.trim()
        );
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout)
        .map_err(|_| anyhow::anyhow!("{program} answered something other than its JSON"))?;
    if answer.username == "<token>" {
        bail!(
            "{program} gave an identity token (a refresh token) for {registry}, which this \
             worker does not exchange; give it a user and password or token instead"
        );
    }
    Ok(Some(RegistryAuth::Basic(answer.username, answer.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_keys_match_by_host() {
        assert_eq!(
            server_host("https://registry.example.com/v1/"),
            "registry.example.com"
        );
        assert_eq!(server_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    /// What the docker config `json` gives `registry`, or its error.
    fn read(json: &str, registry: &str) -> Result<RegistryAuth> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        from_docker_config(&path, registry)
    }

    #[test]
    fn auths_entries_give_basic_credentials_and_other_registries_none() {
        let config = r#"{"auths": {"r.example:5000": {"auth": "dXNlcjpwYXNz"},
                          "https://other.example/v1/": {"username": "u", "password": "p"}}}"#;
        let basic = |user: &str, password: &str| RegistryAuth::Basic(user.into(), password.into());
        assert_eq!(
            read(config, "r.example:5000").unwrap(),
            basic("user", "pass")
        );
        assert_eq!(read(config, "other.example").unwrap(), basic("u", "p"));
        assert_eq!(
            read(config, "third.example").unwrap(),
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn a_broken_config_is_refused_naming_the_file_and_the_fix() {
        let err = format!("{:#}", read("{not json", "r.example").unwrap_err());
        assert!(
            err.contains("config.json") && err.contains("not valid JSON"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            read(
                r#"{"auths": {"r.example": {"auth": "bm8tY29sb24="}}}"#,
                "r.example"
            )
            .unwrap_err()
        );
        assert!(
            err.contains("auths.r.example.auth") && err.contains("docker login r.example"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            read(
                r#"{"auths": {"r.example": {"identitytoken": "t0ken"}}}"#,
                "r.example"
            )
            .unwrap_err()
        );
        assert!(
            err.contains("identity token") && !err.contains("t0ken"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            read(r#"{"credsStore": "sfn-test-missing"}"#, "r.example").unwrap_err()
        );
        assert!(
            err.contains("docker-credential-sfn-test-missing") && err.contains("install it"),
            "{err}"
        );
    }
}
