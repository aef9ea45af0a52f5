//! What a task ends as, and the rules that turn a guest's result into it.
//!
//! | guest does | outcome |
//! |---|---|
//! | returns `ok(json)` | succeeded, output = json |
//! | returns `ok(text)` that is not JSON | failed [`INVALID_OUTPUT`] |
//! | returns `ok(json)` over [`MAX_OUTPUT_BYTES`] | failed [`OUTPUT_TOO_LARGE`]; with `[activity.large_output]`, written to S3 and succeeded with a pointer (or failed [`OUTPUT_UPLOAD_FAILED`]) |
//! | returns `err{error, cause}` | failed with that error and cause, truncated |
//! | traps or panics | failed [`TRAP`] |
//! | runs past its deadline | failed [`TIMEOUT`] |
//! | exceeds its memory cap | failed [`OUT_OF_MEMORY`] |
//! | cannot be instantiated (not a trap) | failed [`INSTANTIATION_FAILED`] |
//! | is stopped by a drain timeout | failed [`SHUTTING_DOWN`] |
//! | is stopped because its task is over | nothing reported ([`TaskEnd::Abandoned`]) |
//!
//! [`TaskEnd::from_stop`] applies these rules to a [`RunStop`] (how the run stopped) and the
//! facts the store gathered ([`RunFacts`]); nothing else decides an outcome.

use crate::sandbox::bindings::sfn::activity::types::TaskError;
use crate::sandbox::host_api::InterruptReason;
use crate::sandbox::limits::TaskLimits;
use serde::Serialize;
use wasmtime::Trap;

/// The guest returned `ok` text that is not valid JSON.
pub const INVALID_OUTPUT: &str = "Worker.InvalidOutput";
/// The guest returned `ok` JSON larger than Step Functions accepts.
pub const OUTPUT_TOO_LARGE: &str = "Worker.OutputTooLarge";
/// The guest's large output could not be written to S3 (`[activity.large_output]`).
pub const OUTPUT_UPLOAD_FAILED: &str = "Worker.OutputUploadFailed";
/// The worker stopped the task because it is shutting down; safe to retry at once.
pub const SHUTTING_DOWN: &str = "Worker.ShuttingDown";
/// A task whose worker was killed before its guest ended, failed by the next worker on the
/// same task journal when it starts ([`crate::worker::journal`]).
pub const RESTARTED: &str = "Worker.Restarted";
/// The component could not be instantiated for this task (e.g. the instance pool is full).
pub const INSTANTIATION_FAILED: &str = "Worker.InstantiationFailed";
/// The guest trapped: a panic, `unreachable`, a stack overflow, a bad memory access...
pub const TRAP: &str = "Wasm.Trap";
/// The guest ran past its deadline (the activity's `timeout`).
pub const TIMEOUT: &str = "Wasm.Timeout";
/// The guest tried to grow its memory past its cap (the activity's `memory_limit`).
pub const OUT_OF_MEMORY: &str = "Wasm.OutOfMemory";

/// Every error name the worker itself reports (the table above); any other is the guest's.
pub const WORKER_ERRORS: [&str; 8] = [
    INVALID_OUTPUT,
    OUTPUT_TOO_LARGE,
    OUTPUT_UPLOAD_FAILED,
    SHUTTING_DOWN,
    INSTANTIATION_FAILED,
    TRAP,
    TIMEOUT,
    OUT_OF_MEMORY,
];

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
        match Outcome::invalid_json(&output) {
            Some(invalid) => invalid,
            None => Outcome::Succeeded { output },
        }
    }

    /// The failure of `output` if it is not JSON Step Functions can hold, whatever its size.
    pub fn invalid_json(output: &str) -> Option<Outcome> {
        // IgnoredAny scans without recursion (any depth the size allows) and, as RFC 8259's
        // grammar does, takes any \u escape, a lone surrogate among them.
        if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(output) {
            return Some(Outcome::failed(
                INVALID_OUTPUT,
                format!(
                    "the guest returned output that is not JSON ({err}); it began: {}",
                    json_quoted(&truncate_chars(output.to_string(), 200))
                ),
            ));
        }
        let number = number_no_double_holds(output)?;
        Some(Outcome::failed(
            INVALID_OUTPUT,
            format!(
                "the guest returned the number {} that no 64-bit float can hold; Step \
                 Functions holds JSON numbers as doubles: return such a value as a string",
                truncate_chars(number.to_string(), 200)
            ),
        ))
    }

    /// Whether this is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded { .. })
    }
}

/// How a task ended: what the worker does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// Report this outcome to Step Functions.
    Report(Outcome),
    /// Report nothing: Step Functions no longer knows the task (the string says why).
    Abandoned(String),
}

/// How a guest's run stopped, before the rules above turn it into a [`TaskEnd`].
#[derive(Debug)]
pub enum RunStop {
    /// The store could not be set up (e.g. a granted directory vanished).
    SetupFailed(anyhow::Error),
    /// Instantiating the component returned an error (a trap in a start function, a full pool...).
    InstantiationError(wasmtime::Error),
    /// `handle` returned a value.
    Returned(Result<String, TaskError>),
    /// `handle` trapped or a host call failed it.
    CallError(wasmtime::Error),
    /// The deadline passed while the guest was blocked in a host call.
    DeadlinePassed,
    /// The worker interrupted the guest while it was blocked in a host call.
    Interrupted(InterruptReason),
}

/// What the sandbox saw of a run, beyond how it stopped.
#[derive(Debug)]
pub struct RunFacts<'a> {
    /// The limits the task ran under.
    pub limits: &'a TaskLimits,
    /// The total linear memory the guest asked for when a grow was refused.
    pub refused_memory: Option<u64>,
    /// Why the worker interrupted the task, if it did.
    pub interrupt: Option<&'a InterruptReason>,
    /// The tail of the guest's stderr (often the panic message or the exception).
    pub stderr_tail: String,
}

impl TaskEnd {
    /// Applies the outcome rules to how a run stopped.
    pub fn from_stop(stop: RunStop, facts: &RunFacts<'_>) -> TaskEnd {
        match stop {
            RunStop::SetupFailed(err) => TaskEnd::Report(Outcome::failed(
                INSTANTIATION_FAILED,
                format!("could not set up the sandbox: {err:#}"),
            )),
            RunStop::Returned(Ok(output)) => TaskEnd::Report(Outcome::from_guest_output(output)),
            RunStop::Returned(Err(task_error)) if task_error.error == OUT_OF_MEMORY => {
                // A kit's name for its language's uncaught out-of-memory error (Python's
                // MemoryError, JavaScript's "out of memory"): the host names the limit.
                TaskEnd::out_of_memory(facts, &task_error.cause)
            }
            RunStop::Returned(Err(task_error)) => {
                TaskEnd::Report(Outcome::failed(task_error.error, task_error.cause))
            }
            RunStop::InstantiationError(err) => TaskEnd::from_wasm_error(err, true, facts),
            RunStop::CallError(err) => TaskEnd::from_wasm_error(err, false, facts),
            RunStop::DeadlinePassed => TaskEnd::timed_out(facts),
            RunStop::Interrupted(reason) => TaskEnd::interrupted(reason),
        }
    }

    /// A trap, an interrupt or a host error, sorted: memory refused first (the trap that
    /// follows a failed allocation is its symptom), then interrupts, then the rest.
    fn from_wasm_error(
        err: wasmtime::Error,
        during_instantiation: bool,
        facts: &RunFacts<'_>,
    ) -> TaskEnd {
        if facts.refused_memory.is_some() {
            return TaskEnd::out_of_memory(facts, &error_chain(&err));
        }
        let trap = err.downcast_ref::<Trap>();
        if trap == Some(&Trap::Interrupt) {
            return match facts.interrupt {
                Some(reason) => TaskEnd::interrupted(reason.clone()),
                None => TaskEnd::timed_out(facts),
            };
        }
        if during_instantiation && trap.is_none() {
            return TaskEnd::Report(Outcome::failed(
                INSTANTIATION_FAILED,
                format!("could not instantiate the component: {}", error_chain(&err)),
            ));
        }
        // What the author wrote first (the panic message, the exception line), then the
        // trap's message (e.g. "wasm trap: call stack exhausted"), the backtrace, the stderr.
        let trap_text = match trap {
            Some(trap) => format!("{trap}\n{}", error_chain(&err)),
            None => error_chain(&err),
        };
        let cause = match stderr_headline(&facts.stderr_tail) {
            Some(headline) => format!("{headline}\n\n{trap_text}"),
            None => trap_text,
        };
        TaskEnd::Report(Outcome::failed(
            TRAP,
            with_stderr(cause, &facts.stderr_tail),
        ))
    }

    /// [`OUT_OF_MEMORY`], the cause naming what the guest wanted (when a grow was refused)
    /// and its limit, then `detail` (the trap, or the kit's exception text).
    fn out_of_memory(facts: &RunFacts<'_>, detail: &str) -> TaskEnd {
        let limit = facts.limits.memory_limit;
        let what = match facts.refused_memory {
            Some(wanted) => format!(
                "the guest needed {wanted} bytes of linear memory; its limit is {limit} bytes"
            ),
            None => format!("the guest ran out of memory within its limit of {limit} bytes"),
        };
        TaskEnd::Report(Outcome::failed(
            OUT_OF_MEMORY,
            with_stderr(
                format!("{what} (raise the activity's memory_limit if this is expected). {detail}"),
                &facts.stderr_tail,
            ),
        ))
    }

    fn timed_out(facts: &RunFacts<'_>) -> TaskEnd {
        TaskEnd::Report(Outcome::failed(
            TIMEOUT,
            with_stderr(
                format!(
                    "the guest ran past its deadline of {} (the activity's timeout) and was stopped",
                    humantime::format_duration(facts.limits.timeout)
                ),
                &facts.stderr_tail,
            ),
        ))
    }

    fn interrupted(reason: InterruptReason) -> TaskEnd {
        match reason {
            InterruptReason::ShuttingDown => TaskEnd::Report(Outcome::failed(
                SHUTTING_DOWN,
                "the worker shut down before the task finished; retry it",
            )),
            InterruptReason::TaskGone(why) => TaskEnd::Abandoned(why),
        }
    }
}

/// The error and its causes, as `{:?}` shows them but without the host's Rust backtrace
/// (which `{:?}` appends when `RUST_BACKTRACE` is set): it says nothing about the guest and
/// would crowd the stderr tail out of a size-limited cause.
fn error_chain(err: &wasmtime::Error) -> String {
    let mut text = err.to_string();
    let causes: Vec<String> = err.chain().skip(1).map(|cause| cause.to_string()).collect();
    if !causes.is_empty() {
        text.push_str("\n\nCaused by:");
        for cause in causes {
            text.push_str("\n    ");
            text.push_str(&cause.replace('\n', "\n    "));
        }
    }
    text
}

/// Lines of a guest's stderr that lead a trap's cause.
const HEADLINE_LINES: usize = 4;
/// The most characters of stderr that lead a trap's cause.
const HEADLINE_CHARS: usize = 1_000;

/// The last lines the guest wrote to stderr before it trapped (a Rust panic's location and
/// message, a Python exception, a JavaScript error), without the runtimes' boilerplate
/// hints; `None` when it wrote nothing.
fn stderr_headline(stderr_tail: &str) -> Option<String> {
    let lines: Vec<&str> = stderr_tail
        .lines()
        .map(str::trim_end)
        .filter(|line| {
            !line.trim().is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE")
        })
        .collect();
    let headline = lines[lines.len().saturating_sub(HEADLINE_LINES)..].join("\n");
    (!headline.is_empty()).then(|| truncate_chars(headline, HEADLINE_CHARS))
}

/// Appends the stderr tail, which usually holds the panic message, to a failure cause.
fn with_stderr(cause: String, stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        cause
    } else {
        format!("{cause}\n--- guest stderr (tail) ---\n{stderr_tail}")
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

/// The first number in the valid JSON text `json` that overflows a 64-bit float, if any.
/// Step Functions' JSON processing (JSONPath, JSONata) holds numbers as doubles, so an
/// output such as `1.9e682` would not survive it as the number the guest meant. One pass,
/// no recursion: outside strings, a number is a maximal run of `-+.eE` and digits.
fn number_no_double_holds(json: &str) -> Option<&str> {
    let bytes = json.as_bytes();
    let (mut at, mut in_string) = (0, false);
    while at < bytes.len() {
        match (in_string, bytes[at]) {
            (true, b'\\') => at += 1, // the escaped byte is never a quote that ends the string
            (_, b'"') => in_string = !in_string,
            (false, b'-' | b'0'..=b'9') => {
                let start = at;
                while at < bytes.len()
                    && matches!(bytes[at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    at += 1;
                }
                let number = &json[start..at];
                if number.parse::<f64>().is_ok_and(f64::is_infinite) {
                    return Some(number);
                }
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// `text` as a JSON string literal: how an excerpt of a guest's output is shown in a cause,
/// as the text it was, with only what JSON must escape escaped.
fn json_quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
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
    fn a_number_no_double_can_hold_is_invalid_output() {
        // Found by the guest_output fuzz target (fuzz/).
        for output in ["1.9e682", "[1, {\"a\": -1e400}]"] {
            match Outcome::from_guest_output(output.to_string()) {
                Outcome::Failed { error, cause } => {
                    assert_eq!(error, INVALID_OUTPUT);
                    assert!(cause.contains("64-bit float"), "{cause}");
                }
                other => panic!("{output}: {other:?}"),
            }
        }
        assert!(
            Outcome::from_guest_output("[1e308, -5, 18446744073709551615]".into()).is_success()
        );
    }

    #[test]
    fn any_depth_the_size_limit_allows_is_valid_output() {
        // The deepest arrays and objects that fit in the limit: no recursion limit, no
        // stack overflow (serde_json's own limit is 128 levels).
        let half = MAX_OUTPUT_BYTES / 2;
        let arrays = format!("{}{}", "[".repeat(half), "]".repeat(half));
        assert_eq!(arrays.len(), MAX_OUTPUT_BYTES);
        assert!(Outcome::from_guest_output(arrays).is_success());
        let levels = (MAX_OUTPUT_BYTES - 1) / 7;
        let objects = format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
        assert!(objects.len() <= MAX_OUTPUT_BYTES);
        assert!(Outcome::from_guest_output(objects).is_success());
        let unclosed = "[".repeat(half);
        let Outcome::Failed { error, .. } = Outcome::from_guest_output(unclosed) else {
            panic!("an unclosed array is not JSON");
        };
        assert_eq!(error, INVALID_OUTPUT);
    }

    #[test]
    fn a_lone_surrogate_escape_is_valid_output() {
        // JavaScript's JSON.stringify writes these for a string holding one.
        for output in [r#""\ud800""#, r#"{"s":"a\udc00b","t":["\ud83d"]}"#] {
            assert!(
                Outcome::from_guest_output(output.into()).is_success(),
                "{output}"
            );
        }
        // A number inside a string is no number: `"1e999"` is a string.
        assert!(Outcome::from_guest_output(r#"["1e999", "\"1e999"]"#.into()).is_success());
    }

    #[test]
    fn a_refused_outputs_excerpt_is_shown_as_json_text() {
        let Outcome::Failed { cause, .. } =
            Outcome::from_guest_output("line\u{2028}sep \"q\" {".into())
        else {
            panic!("not JSON");
        };
        assert!(
            cause.contains("it began: \"line\u{2028}sep \\\"q\\\" {\""),
            "{cause}"
        );
        assert!(!cause.contains("\\u{2028}"), "{cause}");
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
    fn a_trap_cause_leads_with_the_last_lines_of_stderr() {
        let stderr = "starting\nthread '<unnamed>' panicked at src/lib.rs:7:5:\nbad sku\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        let headline = stderr_headline(stderr).unwrap();
        assert!(
            headline.ends_with("panicked at src/lib.rs:7:5:\nbad sku"),
            "{headline}"
        );
        assert_eq!(stderr_headline("\n  \n"), None);
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
