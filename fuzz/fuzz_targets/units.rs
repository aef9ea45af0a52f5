//! Durations, sizes and outbound origins as users write them: parsed or refused, never a
//! panic; what parses prints back to text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfn_wasm_worker::config::units::{ByteSize, HumanDuration};
use sfn_wasm_worker::sandbox::outbound::policy::{AllowedOrigin, Allowlist};

fuzz_target!(|text: &str| {
    if let Ok(duration) = text.parse::<HumanDuration>() {
        assert_eq!(duration.to_string().parse::<HumanDuration>(), Ok(duration));
    }
    if let Ok(size) = text.parse::<ByteSize>() {
        assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
    }
    let _ = text.parse::<AllowedOrigin>();
    let _ = Allowlist::parse(&text.split(',').collect::<Vec<_>>());
});
