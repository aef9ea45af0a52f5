//! What a guest may reach beyond pure computation, granted per activity: environment
//! variables, read-only directories, outbound HTTP to listed origins, and its share of the
//! CPU. Nothing by default (and no CPU bound); sockets are off.

use crate::sandbox::cpu_share::CpuShare;
use crate::sandbox::outbound::OutboundGrant;
use crate::sandbox::output_capture::TailCapture;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// Capabilities granted to a guest. Nothing by default.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may read: (host path, path inside the guest).
    pub read_only_dirs: Vec<(PathBuf, String)>,
    /// Origins the guest may send HTTP requests to, and the limits on them.
    pub outbound: Arc<OutboundGrant>,
    /// How many of the activity's long-running guests may use a core at once.
    pub cpu: CpuShare,
}

impl Grants {
    /// A WASI context that grants exactly these capabilities, with stdout and stderr
    /// going to the given captures. Fails if a granted directory cannot be opened.
    pub fn wasi_context(
        &self,
        stdout: &TailCapture,
        stderr: &TailCapture,
    ) -> anyhow::Result<WasiCtx> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &self.env {
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
