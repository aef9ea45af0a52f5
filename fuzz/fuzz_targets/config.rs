//! Any text as a configuration file: parsing and validation return errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfn_wasm_worker::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = toml::from_str::<Config>(text) {
        let _ = config.clone().validate();
        let _ = (
            config.pool_tasks(),
            config.pool_memory_limit(),
            config.drain_timeout(),
        );
        for activity in &config.activities {
            let _ = (
                activity.limits(),
                activity.capabilities.outbound.limits(),
                activity.grants(&config.worker),
            );
        }
    }
});
