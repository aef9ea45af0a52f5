//! Test guest: does what the input's `"behaviour"` asks, including the things a hostile or
//! buggy handler would do. The host's tests use it to check every row of the outcome table.
//!
//! Input: `{"behaviour": NAME, ...}`; see `handle` for the names and their extra fields.

use sfn_activity_guest::{bindings, json, Context, LogLevel, TaskError, Value};
use std::io::Write;
use std::time::{Duration, Instant};

/// Tasks this instance has run the `count` behaviour for.
static TASKS_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// What the `hold` behaviour keeps between tasks.
static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn handle(input: Value, ctx: &Context) -> Result<Value, TaskError> {
    let behaviour = input["behaviour"].as_str().unwrap_or("echo").to_string();
    let number = |key: &str, default: u64| input[key].as_u64().unwrap_or(default);
    match behaviour.as_str() {
        // Returns the input unchanged.
        "echo" => Ok(input),
        // Returns `{"error", "cause"}` from the input as a task error.
        "fail" => Err(TaskError::new(
            input["error"].as_str().unwrap_or("Test.Failure"),
            input["cause"].as_str().unwrap_or(""),
        )),
        // Spins forever without yielding.
        "loop" => {
            let mut counter = 0u64;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        // A fixed amount of computation (`iterations` steps of a xorshift, default 10
        // million), however long the CPU it gets makes it take; returns the last value.
        "work" => {
            let mut x = std::hint::black_box(0x9E37_79B9_7F4A_7C15u64);
            for _ in 0..number("iterations", 10_000_000) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            Ok(json!({ "value": x }))
        }
        // Busy-waits for `ms` milliseconds, sleeps `then_sleep_ms` (default 0), then echoes.
        "spin" => {
            let until = Instant::now() + Duration::from_millis(number("ms", 100));
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(number("then_sleep_ms", 0)));
            Ok(input)
        }
        // Sleeps (a WASI poll, the host stays free) for `ms` milliseconds, then echoes.
        "sleep" => {
            std::thread::sleep(Duration::from_millis(number("ms", 100)));
            Ok(input)
        }
        // Allocates 1 MiB blocks until memory runs out.
        "memory-bomb" => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                blocks.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&blocks);
            }
        }
        // Recurses until the wasm stack overflows.
        "recursion" => Ok(json!(recurse(std::hint::black_box(1)))),
        // Writes a line to stderr, then panics.
        "panic" => {
            eprintln!("adversary: about to panic");
            panic!("adversary panicked on purpose");
        }
        // Returns valid JSON of about `bytes` bytes (default 300 000).
        "huge-output" => Ok(json!({ "data": "x".repeat(number("bytes", 300_000) as usize) })),
        // Writes `bytes` bytes (default 10 MiB) to stdout, a marker to stderr, then echoes.
        "stdout-flood" => {
            let chunk = vec![b'y'; 64 * 1024];
            let mut stdout = std::io::stdout();
            for _ in 0..number("bytes", 10 << 20) / chunk.len() as u64 {
                stdout.write_all(&chunk).map_err(|e| TaskError::new("Test.Io", e.to_string()))?;
            }
            println!("\nadversary: flood done");
            eprintln!("adversary: stderr still works");
            Ok(input)
        }
        // Tries to read a host file, list the root dir and read environment variables.
        "escape" => Ok(json!({
            "file": std::fs::read_to_string(input["path"].as_str().unwrap_or("/etc/passwd"))
                .map_err(|e| e.to_string()),
            "root_dir": std::fs::read_dir("/").map(|d| d.count()).map_err(|e| e.to_string()),
            "env": std::env::vars().collect::<Vec<_>>(),
            "args": std::env::args().collect::<Vec<_>>(),
        })),
        // Uses wasi:sockets directly: a TCP connection to 127.0.0.1:`port`, a UDP bind to
        // 127.0.0.1 and a name lookup of `localhost`; reports what each did.
        "sockets" => Ok(sockets(number("port", 80) as u16)),
        // Reads the granted file at `path` (for grant tests).
        "read-file" => {
            let path = input["path"].as_str().unwrap_or("/data/input.txt");
            std::fs::read_to_string(path)
                .map(|text| json!({ "text": text }))
                .map_err(|e| TaskError::new("Test.Io", format!("{path}: {e}")))
        }
        // Calls heartbeat() `count` times; returns how many succeeded and the first error.
        "heartbeat" => {
            let (mut ok, mut first_error) = (0, None);
            for _ in 0..number("count", 1) {
                match ctx.heartbeat() {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Ok(json!({ "ok": ok, "error": first_error }))
        }
        // Logs one line at each level.
        "log" => {
            for level in [LogLevel::Trace, LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error] {
                ctx.log(level, &format!("adversary log at {level:?}"));
            }
            Ok(json!({ "logged": 5 }))
        }
        // Returns its task context.
        "context" => Ok(json!({
            "activity_arn": ctx.activity_arn,
            "worker_name": ctx.worker_name,
            "task_id": ctx.task_id,
            "deadline_ms": ctx.deadline_ms,
        })),
        // Counts the tasks this instance has run (a module global: 1 in a fresh instance),
        // writes the count to stdout and stderr, and returns it with its task context.
        "count" => {
            let count = TASKS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            println!("adversary: task {count} of this instance");
            eprintln!("adversary: stderr of task {count}");
            Ok(json!({
                "count": count,
                "task_id": ctx.task_id,
                "deadline_ms": ctx.deadline_ms,
                "held_mib": HELD.lock().unwrap().len(),
            }))
        }
        // Keeps `mib` more MiB (default 1) in a module global, for later tasks of the same
        // instance; returns the MiB held.
        "hold" => {
            let mut held = HELD.lock().unwrap();
            for _ in 0..number("mib", 1) {
                held.push(vec![1u8; 1 << 20]);
            }
            Ok(json!({ "held_mib": held.len() }))
        }
        other => Err(TaskError::new("Test.UnknownBehaviour", other)),
    }
}

/// What wasi:sockets let the guest do on 127.0.0.1 ("ok" or the error code).
fn sockets(port: u16) -> Value {
    use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasip2::sockets::{instance_network, ip_name_lookup, tcp_create_socket, udp_create_socket};
    let network = instance_network::instance_network();
    let address = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    });
    let tcp = tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4).and_then(|socket| {
        socket.start_connect(&network, address)?;
        socket.subscribe().block();
        socket.finish_connect().map(|_streams| ())
    });
    let udp = udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4).and_then(|socket| {
        let any_port = IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port: 0,
            address: (127, 0, 0, 1),
        });
        socket.start_bind(&network, any_port)?;
        socket.subscribe().block();
        socket.finish_bind()
    });
    let lookup = ip_name_lookup::resolve_addresses(&network, "localhost").and_then(|found| {
        found.subscribe().block();
        found.resolve_next_address().map(|_| ())
    });
    let said = |result: Result<(), wasip2::sockets::network::ErrorCode>| match result {
        Ok(()) => "ok".to_string(),
        Err(code) => code.name().to_string(),
    };
    json!({ "tcp": said(tcp), "udp": said(udp), "lookup": said(lookup) })
}

#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: it ends in a stack-overflow trap
fn recurse(depth: u64) -> u64 {
    // Only wasm locals, no shadow-stack frame: exhausts the wasm call stack itself.
    recurse(depth + 1).wrapping_add(std::hint::black_box(depth))
}

/// Implements the world by hand (not with `export_handler!`) so that it can also return
/// `ok` text the SDK never produces: text that is not JSON (`non-json`), or exactly the
/// input's `"text"` (`raw-output`: JSON the SDK would write otherwise, e.g. a lone surrogate
/// escape or a nesting deeper than serde_json's recursion limit).
struct Adversary;

impl bindings::Guest for Adversary {
    fn handle(input: String, context: bindings::TaskContext) -> Result<String, bindings::TaskError> {
        if input.contains("\"non-json\"") {
            return Ok("this is { not json".to_string());
        }
        if input.contains("\"raw-output\"") {
            if let Ok(request) = sfn_activity_guest::serde_json::from_str::<Value>(&input) {
                return Ok(request["text"].as_str().unwrap_or_default().to_string());
            }
        }
        sfn_activity_guest::run_handler(handle, input, context)
    }
}

sfn_activity_guest::bindings::export_handler_world!(Adversary with_types_in sfn_activity_guest::bindings);
