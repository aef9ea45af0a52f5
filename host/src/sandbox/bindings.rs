//! Host bindings generated from the WIT contract in `wit/` (documented there: the generated
//! items carry no doc comments of their own, hence the lint's exception).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        "sfn:activity/host.heartbeat": async,
    },
    exports: { default: async },
});
