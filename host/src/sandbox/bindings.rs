//! Host bindings generated from the WIT contract in `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        "sfn:activity/host.heartbeat": async,
    },
    exports: { default: async },
});
