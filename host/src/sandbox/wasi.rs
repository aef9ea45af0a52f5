//! `[activity.wasi]`: what of WASI p2 an activity grants beyond the defaults: environment
//! variables and host directories, read-only. Clocks, random and stdio are every guest's;
//! sockets are linked but every network operation is denied (outbound HTTP is its own
//! capability, [`crate::sandbox::outbound`]).

use crate::sandbox::capability::{Capability, GrantContext, TaskSetup};
use crate::sandbox::output_capture::TailCapture;
use crate::sandbox::store::TaskState;
use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use wasmtime::component::Linker;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The WASI p2 capability.
pub struct Wasi;

/// `[activity.wasi]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasiSettings {
    /// Environment variables granted to the guest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host directories the guest may read: host path → path inside the guest.
    #[serde(default)]
    pub read_only_dirs: BTreeMap<PathBuf, String>,
}

/// `--env KEY=VALUE` and `--dir HOST_PATH:GUEST_PATH`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct WasiFlags {
    /// Grant an environment variable to the guest (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Grant read-only access to a host directory (repeatable)
    #[arg(long = "dir", value_name = "HOST_PATH:GUEST_PATH", value_parser = parse_dir_grant)]
    dirs: Vec<(PathBuf, String)>,
}

/// `KEY=VALUE` from the command line.
pub(crate) fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

fn parse_dir_grant(text: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = text
        .split_once(':')
        .ok_or_else(|| format!("expected HOST_PATH:GUEST_PATH, got {text:?}"))?;
    let host = PathBuf::from(host);
    if !host.is_dir() {
        return Err(format!("{} is not a directory", host.display()));
    }
    Ok((host, guest.to_string()))
}

/// What of WASI an activity's guests are granted.
#[derive(Debug, Clone, Default)]
pub struct WasiGrant {
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may read: (host path, path inside the guest).
    pub read_only_dirs: Vec<(PathBuf, String)>,
}

impl WasiGrant {
    /// A WASI context that grants exactly this (and the variable `extra_var`, if any), with
    /// stdout and stderr going to the given captures. Fails if a granted directory cannot be
    /// opened.
    pub fn context(
        &self,
        stdout: &TailCapture,
        stderr: &TailCapture,
        extra_var: Option<(&str, &str)>,
    ) -> Result<WasiCtx> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &self.env {
            wasi.env(key, value);
        }
        if let Some((key, value)) = extra_var {
            wasi.env(key, value);
        }
        for (host_path, guest_path) in &self.read_only_dirs {
            wasi.preopened_dir(host_path, guest_path, FsPerms::ReadOnly)
                .map_err(|err| {
                    anyhow::anyhow!("granting {} as {guest_path}: {err:#}", host_path.display())
                })?;
        }
        Ok(wasi.build())
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (capabilities, table) = self.capabilities_and_table();
        WasiCtxView {
            ctx: &mut capabilities.wasi,
            table,
        }
    }
}

impl Capability for Wasi {
    type Settings = WasiSettings;
    type Grant = WasiGrant;
    type TaskState = WasiCtx;
    type Usage = ();
    type Metrics = ();
    type Flags = WasiFlags;

    fn apply_flags(flags: WasiFlags, settings: &mut WasiSettings) {
        settings.env.extend(flags.env);
        settings.read_only_dirs.extend(flags.dirs);
    }

    fn validate(settings: &WasiSettings) -> Result<()> {
        for host in settings.read_only_dirs.keys() {
            if !host.is_dir() {
                bail!(
                    "key `read_only_dirs`: {} is not a directory on this host",
                    host.display()
                );
            }
        }
        Ok(())
    }

    fn grant(settings: &WasiSettings, _: &GrantContext<'_>) -> WasiGrant {
        WasiGrant {
            env: settings.env.clone().into_iter().collect(),
            read_only_dirs: settings.read_only_dirs.clone().into_iter().collect(),
        }
    }

    /// The granted WASI context; with `[activity.aws]`, `AWS_REGION` is the region the
    /// guest's AWS calls must name (as Lambda sets it), unless `env` sets it.
    fn task_state(grant: &WasiGrant, task: &TaskSetup<'_>) -> Result<WasiCtx> {
        let region = task.grants.aws.as_ref().and_then(|aws| aws.region());
        let region = region.filter(|_| !grant.env.iter().any(|(key, _)| key == "AWS_REGION"));
        grant.context(task.stdout, task.stderr, region.map(|r| ("AWS_REGION", r)))
    }

    fn link(linker: &mut Linker<TaskState>) -> Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI p2")
    }

    fn provider(import: &str) -> Option<&'static str> {
        if import.starts_with("wasi:sockets/") {
            Some("WASI p2 (linked, but every network operation is denied)")
        } else if import.starts_with("wasi:filesystem/") {
            Some("WASI p2 (only directories granted by the activity's [activity.wasi] read_only_dirs)")
        } else if import.starts_with("wasi:cli/environment") {
            Some("WASI p2 (only variables granted by the activity's [activity.wasi] env)")
        } else {
            None
        }
    }
}
