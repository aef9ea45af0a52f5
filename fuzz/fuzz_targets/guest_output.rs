//! Whatever a guest returns: its `ok` text becomes a success only when it is JSON within
//! Step Functions' size limit, its error and cause are cut to the service's limits on a
//! character boundary, and every outcome serialises to the JSON the worker reports. Nesting
//! deeper than serde_json's recursion limit and lone surrogate escapes (which JavaScript's
//! JSON.stringify writes) change nothing: Step Functions accepts both.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfn_wasm_worker::sandbox::outcome::{
    Outcome, MAX_CAUSE_CHARS, MAX_ERROR_CHARS, MAX_OUTPUT_BYTES,
};

/// Levels of nesting added around an output: past serde_json's recursion limit of 128.
const EXTRA_DEPTH: usize = 200;

fuzz_target!(|input: (String, String, String)| {
    let (output, error, cause) = input;
    let accepted = Outcome::from_guest_output(output.clone()).is_success();
    let deeper = format!(
        "{}{output}{}",
        "[".repeat(EXTRA_DEPTH),
        "]".repeat(EXTRA_DEPTH)
    );
    let with_surrogate = format!(r#"[{output},"\ud800","\udc00"]"#);
    for variant in [deeper, with_surrogate] {
        if variant.len() <= MAX_OUTPUT_BYTES {
            assert_eq!(
                Outcome::from_guest_output(variant.clone()).is_success(),
                accepted,
                "{output:?} and {variant:?}"
            );
        }
    }
    match Outcome::from_guest_output(output.clone()) {
        Outcome::Succeeded { output: kept } => {
            assert!(kept.len() <= MAX_OUTPUT_BYTES);
            if let Err(err) = serde_json::from_str::<serde_json::Value>(&kept) {
                // serde_json's Value refuses only what Step Functions accepts.
                let err = err.to_string();
                assert!(
                    [
                        "recursion limit",
                        "surrogate",
                        "hex escape",
                        "unicode code point"
                    ]
                    .iter()
                    .any(|known| err.contains(known)),
                    "accepted as JSON: {kept:?} ({err})"
                );
            }
            serde_json::to_string(&Outcome::Succeeded { output: kept }).unwrap();
        }
        Outcome::Failed { .. } => {
            assert!(
                output.len() > MAX_OUTPUT_BYTES
                    || serde_json::from_str::<serde_json::Value>(&output).is_err()
            );
        }
    }
    let failed = Outcome::failed(error, cause);
    let Outcome::Failed { error, cause } = &failed else {
        unreachable!()
    };
    assert!(error.chars().count() <= MAX_ERROR_CHARS);
    assert!(cause.chars().count() <= MAX_CAUSE_CHARS);
    serde_json::to_string(&failed).unwrap();
});
