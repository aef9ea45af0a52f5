//! `[activity.large_output]`: outputs over Step Functions' 256 KiB go to S3 (the
//! claim-check pattern AWS advises), and the task succeeds with a pointer to them:
//! `{"s3_uri": "s3://BUCKET/PREFIXTASK_ID.json", "bytes": N, "sha256": "HEX"}`. Written with
//! the activity's `[activity.aws]` credentials (which must grant `s3`); an upload that fails
//! after its retries is `Worker.OutputUploadFailed` with S3's answer as the cause. Without
//! the table a large output stays `Worker.OutputTooLarge`.

use crate::sandbox::capability::{Capability, GrantContext, NoFlags, TaskSetup};
use crate::sandbox::outbound::aws::{with_retries, HostCallFor};
use crate::sandbox::outcome::{Outcome, OUTPUT_UPLOAD_FAILED};
use crate::sandbox::run::Task;
use crate::sandbox::Grants;
use anyhow::{bail, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The large-output capability.
pub struct LargeOutput;

/// `[activity.large_output]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LargeOutputSettings {
    /// The bucket large outputs are written to (required for the table to do anything).
    pub bucket: Option<String>,
    /// Put before each object's key, e.g. `"outputs/"` (default: none).
    #[serde(default)]
    pub prefix: String,
}

/// Where an activity's large outputs go.
#[derive(Debug)]
pub struct LargeOutputGrant {
    bucket: String,
    prefix: String,
}

/// Time one attempt of an upload may take (S3's 5xx and failed connections are tried again).
const ATTEMPT_TIME: Duration = Duration::from_secs(30);

impl Capability for LargeOutput {
    type Settings = LargeOutputSettings;
    type Grant = Option<Arc<LargeOutputGrant>>;
    type TaskState = ();
    type Usage = ();
    type Metrics = ();
    type Flags = NoFlags;

    fn validate(settings: &LargeOutputSettings) -> Result<()> {
        let Some(bucket) = &settings.bucket else {
            if !settings.prefix.is_empty() {
                bail!("key `prefix` needs `bucket` in the same table");
            }
            return Ok(());
        };
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            bail!("key `bucket`: {bucket:?} is not an S3 bucket name (3–63 of a-z, 0-9, '-', '.')");
        }
        Ok(())
    }

    fn grant(settings: &LargeOutputSettings, _: &GrantContext<'_>) -> Self::Grant {
        let bucket = settings.bucket.clone()?;
        Some(Arc::new(LargeOutputGrant {
            bucket,
            prefix: settings.prefix.clone(),
        }))
    }

    fn task_state(_: &Self::Grant, _: &TaskSetup<'_>) -> Result<()> {
        Ok(())
    }
}

/// The outcome of `task`, whose guest returned `output` over Step Functions' limit, with
/// `grants` holding a large-output grant: the output checked as any output is, written to
/// S3, and a pointer to it.
pub async fn claim_check(output: String, task: &Task, grants: &Grants) -> Outcome {
    let (Some(grant), Some(aws)) = (&grants.large_output, &grants.aws) else {
        unreachable!("called only with a large-output grant, which config validation pairs with [activity.aws]");
    };
    if let Some(invalid) = Outcome::invalid_json(&output) {
        return invalid;
    }
    let bytes = output.len();
    let sha256 = format!("{:x}", Sha256::digest(output.as_bytes()));
    let key = format!("{}{}.json", grant.prefix, task.task_id);
    let body = bytes::Bytes::from(output);
    let uploaded = with_retries(ATTEMPT_TIME, |deadline| {
        let on_behalf_of = HostCallFor {
            activity_arn: task.activity_arn.clone(),
            task_id: task.task_id.clone(),
        };
        let put = aws.put_object(
            &grant.bucket,
            &key,
            "application/json",
            body.clone(),
            on_behalf_of,
            deadline,
        );
        async {
            let put = put.await;
            if let Err(failed) = &put {
                tracing::warn!(bucket = %grant.bucket, key, "large output upload failed: {}", failed.why);
            }
            put
        }
    })
    .await;
    match uploaded {
        Ok(()) => {
            let pointer = serde_json::json!({
                "s3_uri": format!("s3://{}/{key}", grant.bucket),
                "bytes": bytes,
                "sha256": sha256,
            });
            Outcome::Succeeded {
                output: pointer.to_string(),
            }
        }
        Err(failure) => Outcome::failed(
            OUTPUT_UPLOAD_FAILED,
            format!(
                "the guest's {bytes}-byte output could not be written to s3://{}/{key} \
                 ([activity.large_output]): {failure}",
                grant.bucket
            ),
        ),
    }
}
