//! What a task ends as, and the rules that turn a guest's result into it.
//!
//! | guest does | outcome |
//! |---|---|
//! | returns `ok(json)` | succeeded, output = json |
//! | returns `ok(text)` that is not JSON | failed [`INVALID_OUTPUT`] |
//! | returns `ok(json)` over [`MAX_OUTPUT_BYTES`] | failed [`OUTPUT_TOO_LARGE`] |
//! | returns `err{error, cause}` | failed with that error and cause, truncated |
//! | traps or panics | failed [`TRAP`] |
//! | runs past its deadline | failed [`TIMEOUT`] |
//! | exceeds its memory cap | failed [`OUT_OF_MEMORY`] |

use serde::Serialize;

/// The guest returned `ok` text that is not valid JSON.
pub const INVALID_OUTPUT: &str = "Worker.InvalidOutput";
/// The guest returned `ok` JSON larger than Step Functions accepts.
pub const OUTPUT_TOO_LARGE: &str = "Worker.OutputTooLarge";
/// The worker stopped the task because it is shutting down; safe to retry at once.
pub const SHUTTING_DOWN: &str = "Worker.ShuttingDown";
/// The component could not be instantiated for this task (e.g. the instance pool is full).
pub const INSTANTIATION_FAILED: &str = "Worker.InstantiationFailed";
/// The guest trapped: a panic, `unreachable`, a stack overflow, a bad memory access...
pub const TRAP: &str = "Wasm.Trap";
/// The guest ran past its deadline (the activity's `timeout`).
pub const TIMEOUT: &str = "Wasm.Timeout";
/// The guest tried to grow its memory past its cap (the activity's `memory_limit`).
pub const OUT_OF_MEMORY: &str = "Wasm.OutOfMemory";

/// Step Functions' limit on a task's output: 256 KiB of UTF-8.
pub const MAX_OUTPUT_BYTES: usize = 262_144;
/// Step Functions' limit on SendTaskFailure's `error`, in characters.
pub const MAX_ERROR_CHARS: usize = 256;
/// Step Functions' limit on SendTaskFailure's `cause`, in characters.
pub const MAX_CAUSE_CHARS: usize = 32_768;

/// How a task ended, as Step Functions is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// SendTaskSuccess with this JSON output.
    Succeeded {
        /// The task's JSON output text.
        #[serde(serialize_with = "serialize_raw_json")]
        output: String,
    },
    /// SendTaskFailure with this error and cause.
    Failed {
        /// The error name a state machine's Retry/Catch matches.
        error: String,
        /// The human-readable explanation.
        cause: String,
    },
}

impl Outcome {
    /// A failure, with `error` and `cause` truncated to Step Functions' limits.
    pub fn failed(error: impl Into<String>, cause: impl Into<String>) -> Outcome {
        Outcome::Failed {
            error: truncate_chars(error.into(), MAX_ERROR_CHARS),
            cause: truncate_chars(cause.into(), MAX_CAUSE_CHARS),
        }
    }

    /// Checks the text a guest returned as `ok`: valid JSON within the size limit succeeds.
    pub fn from_guest_output(output: String) -> Outcome {
        if output.len() > MAX_OUTPUT_BYTES {
            return Outcome::failed(
                OUTPUT_TOO_LARGE,
                format!(
                    "the guest returned {} bytes of output; Step Functions accepts at most {MAX_OUTPUT_BYTES} \
                     (store large results elsewhere, e.g. S3, and return a reference)",
                    output.len()
                ),
            );
        }
        match serde_json::from_str::<serde::de::IgnoredAny>(&output) {
            Ok(_) => Outcome::Succeeded { output },
            Err(err) => Outcome::failed(
                INVALID_OUTPUT,
                format!(
                    "the guest returned output that is not JSON ({err}); it began: {:?}",
                    truncate_chars(output, 200)
                ),
            ),
        }
    }

    /// Whether this is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded { .. })
    }
}

fn serialize_raw_json<S: serde::Serializer>(
    output: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let value: Box<serde_json::value::RawValue> =
        serde_json::from_str(output).map_err(serde::ser::Error::custom)?;
    value.serialize(serializer)
}

/// Cuts `text` to at most `max_chars` characters, on a character boundary, marking the cut.
pub fn truncate_chars(mut text: String, max_chars: usize) -> String {
    const MARK: &str = "…";
    if let Some((cut, _)) = text.char_indices().nth(max_chars) {
        let keep = text[..cut]
            .char_indices()
            .nth(max_chars - MARK.chars().count())
            .map_or(cut, |(index, _)| index);
        text.truncate(keep);
        text.push_str(MARK);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries_and_limits() {
        let long = "é".repeat(300);
        let cut = truncate_chars(long, MAX_ERROR_CHARS);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_chars("short".into(), 10), "short");
        assert_eq!(truncate_chars("exactly10!".into(), 10), "exactly10!");
    }

    #[test]
    fn guest_output_is_checked() {
        assert!(Outcome::from_guest_output(r#"{"a":1}"#.into()).is_success());
        let Outcome::Failed { error, .. } = Outcome::from_guest_output("nope".into()) else {
            panic!("non-JSON output must fail");
        };
        assert_eq!(error, INVALID_OUTPUT);
        let huge = format!("\"{}\"", "x".repeat(MAX_OUTPUT_BYTES));
        let Outcome::Failed { error, .. } = Outcome::from_guest_output(huge) else {
            panic!("huge output must fail");
        };
        assert_eq!(error, OUTPUT_TOO_LARGE);
    }

    #[test]
    fn outcome_serialises_output_as_json_not_as_a_string() {
        let outcome = Outcome::Succeeded {
            output: r#"{"a":[1,2]}"#.into(),
        };
        assert_eq!(
            serde_json::to_string(&outcome).unwrap(),
            r#"{"status":"succeeded","output":{"a":[1,2]}}"#
        );
    }
}
