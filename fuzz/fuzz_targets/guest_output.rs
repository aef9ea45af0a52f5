//! Whatever a guest returns: its `ok` text becomes a success only when it is JSON within
//! Step Functions' size limit, its error and cause are cut to the service's limits on a
//! character boundary, and every outcome serialises to the JSON the worker reports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfn_wasm_worker::sandbox::outcome::{
    Outcome, MAX_CAUSE_CHARS, MAX_ERROR_CHARS, MAX_OUTPUT_BYTES,
};

fuzz_target!(|input: (String, String, String)| {
    let (output, error, cause) = input;
    match Outcome::from_guest_output(output.clone()) {
        Outcome::Succeeded { output: kept } => {
            assert!(kept.len() <= MAX_OUTPUT_BYTES);
            assert!(
                serde_json::from_str::<serde_json::Value>(&kept).is_ok(),
                "accepted as JSON: {kept:?}"
            );
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
