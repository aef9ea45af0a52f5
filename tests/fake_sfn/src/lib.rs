//! A fake of the Step Functions activity API for tests and benchmarks.
//!
//! It speaks the real AWS JSON 1.0 protocol (`POST /`, `X-Amz-Target:
//! AWSStepFunctions.<Operation>`, `application/x-amz-json-1.0` bodies and `__type` error
//! codes), so the worker talks to it through the real aws-sdk-sfn client. It holds long polls
//! like the service (for [`FakeSfn::set_poll_hold`], not 60 s), records every task's fate
//! and which credentials signed each call (with an STS AssumeRole of its own), and injects
//! faults: throttling, 5xx, slow responses, connection resets, and the
//! task-over errors on heartbeats and reports.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The activity API operations the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    GetActivityTask,
    SendTaskSuccess,
    SendTaskFailure,
    SendTaskHeartbeat,
}

impl Op {
    fn from_target(target: &str) -> Option<Op> {
        Some(match target.strip_prefix("AWSStepFunctions.")? {
            "GetActivityTask" => Op::GetActivityTask,
            "SendTaskSuccess" => Op::SendTaskSuccess,
            "SendTaskFailure" => Op::SendTaskFailure,
            "SendTaskHeartbeat" => Op::SendTaskHeartbeat,
            _ => return None,
        })
    }
}

/// A fault to inject into the next call(s) of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 400 `ThrottlingException`.
    Throttle,
    /// 500 `InternalFailure`.
    ServerError,
    /// Answer normally, after this delay.
    Slow(Duration),
    /// Close the connection without answering.
    Reset,
    /// 400 with this error code (e.g. `TaskTimedOut`, `InvalidToken`).
    Error(&'static str),
    /// Handle the call (a report lands, a task is handed out), then close the connection
    /// without answering: the client cannot tell whether it landed and may send it again.
    ResetAfter,
    /// For heartbeats and reports: the task's timeout has just passed, as the service would
    /// say: the task becomes `TimedOut` and the call gets `TaskTimedOut`.
    TimeOutTask,
    /// Answer 200 with a body that is not JSON. A report or heartbeat is handled first (a
    /// 200 says it landed); a poll hands out no task (its garbled answer is an empty poll's).
    Malformed,
    /// Answer with this status code and an empty body, without handling the call.
    Status(u16),
    /// For polls: answer 200 with a task that has no `taskToken`, without handing one out.
    MissingToken,
    /// Never answer nor handle the call: a report still on its way when its worker died.
    Stall,
}

/// A small seeded generator (SplitMix64): the fake's fault draws and the tests' own random
/// choices, so that a failing run replays from its seed.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.next_u64() as f64 / (u64::MAX as f64 + 1.0)
    }
}

/// Faults drawn at fixed rates per operation from a seeded generator.
struct FaultRates {
    random: SplitMix64,
    rates: Vec<(Op, Fault, f64)>,
}

impl FaultRates {
    /// The fault for this call of `op`, if one is drawn.
    fn draw(&mut self, op: Op) -> Option<Fault> {
        let roll = self.random.next_f64();
        let mut below = 0.0;
        for (fault_op, fault, rate) in &self.rates {
            if *fault_op == op {
                below += rate;
                if roll < below {
                    return Some(*fault);
                }
            }
        }
        None
    }
}

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for a poll.
    Queued,
    /// Handed to a worker.
    Running,
    /// SendTaskSuccess with this output.
    Succeeded(String),
    /// SendTaskFailure with this error and cause.
    Failed { error: String, cause: String },
    /// Timed out (by the test): heartbeats and reports get `TaskTimedOut`.
    TimedOut,
    /// Closed (by the test) the way LocalStack closes a timed-out state or a stopped
    /// execution's task: heartbeats and reports get `InvalidToken`.
    Closed,
}

/// Everything the fake knows about one task.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub activity_arn: String,
    pub input: String,
    pub state: TaskState,
    pub heartbeats: u32,
    /// SendTaskSuccess/SendTaskFailure calls that reached it (accepted or not).
    pub reports: u32,
    /// The access key ids that signed its reports and heartbeats.
    pub signed_by: Vec<String>,
    /// When it was queued.
    pub queued_at: Instant,
    /// When a poll took it.
    pub handed_out_at: Option<Instant>,
    /// When it reached a final state (succeeded, failed or timed out).
    pub ended_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// Per activity ARN, the access key ids that signed its polls.
    poll_signers: HashMap<String, Vec<String>>,
    /// Roles assumed through the fake STS: (role ARN, external id).
    assumed_roles: Vec<(String, Option<String>)>,
    /// Access key ids whose calls are refused as AWS refuses an unknown key.
    refused_keys: Vec<String>,
    queues: HashMap<String, VecDeque<String>>,
    tasks: HashMap<String, TaskRecord>,
    faults: HashMap<Op, VecDeque<Fault>>,
    /// Faults drawn at rates (after the queued ones).
    fault_rates: Option<FaultRates>,
    /// Faults injected so far, by operation and kind.
    injected: HashMap<(Op, String), u64>,
    calls: HashMap<Op, u64>,
    first_calls: HashMap<Op, Instant>,
    open_polls: HashMap<String, usize>,
    /// The most (open polls + running tasks) seen at once per activity.
    max_busy: HashMap<String, usize>,
    running: HashMap<String, usize>,
    max_running: HashMap<String, usize>,
    worker_names: Vec<String>,
    next_token: u64,
    finished: usize,
}

impl Inner {
    fn note_busy(&mut self, arn: &str) {
        let busy = self.open_polls.get(arn).copied().unwrap_or(0)
            + self.running.get(arn).copied().unwrap_or(0);
        let max = self.max_busy.entry(arn.to_string()).or_default();
        *max = (*max).max(busy);
        let running = self.running.get(arn).copied().unwrap_or(0);
        let max = self.max_running.entry(arn.to_string()).or_default();
        *max = (*max).max(running);
    }

    fn finish(&mut self, token: &str, state: TaskState) {
        if matches!(state, TaskState::Succeeded(_) | TaskState::Failed { .. }) {
            self.finished += 1;
        }
        if let Some(task) = self.tasks.get_mut(token) {
            if task.state == TaskState::Running {
                *self.running.entry(task.activity_arn.clone()).or_default() -= 1;
            }
            task.state = state;
            task.ended_at.get_or_insert_with(Instant::now);
        }
    }
}

struct State {
    inner: Mutex<Inner>,
    task_queued: Notify,
    /// Woken whenever a task reaches a final state.
    task_finished: Notify,
    poll_hold: Mutex<Duration>,
    latency: Mutex<Duration>,
}

/// A running fake Step Functions endpoint on 127.0.0.1.
pub struct FakeSfn {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSfn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An aws-sdk-sfn configuration for a local endpoint (this fake, LocalStack) in us-east-1,
/// with static test credentials.
pub async fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sfn::config::Credentials::new(
            "test", "test", None, None, "local",
        ))
        .load()
        .await
}

/// The account and region of every fake ARN.
pub const ARN_PREFIX: &str = "arn:aws:states:us-east-1:000000000000:activity:";

impl FakeSfn {
    /// Starts the fake on a free loopback port; long polls are held 200 ms.
    pub async fn start() -> FakeSfn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            inner: Mutex::default(),
            task_queued: Notify::new(),
            task_finished: Notify::new(),
            poll_hold: Mutex::new(Duration::from_millis(200)),
            latency: Mutex::new(Duration::ZERO),
        });
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeSfn {
            endpoint,
            state,
            server,
        }
    }

    /// An aws-sdk-sfn configuration pointing at the fake, with static test credentials.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        local_sdk_config(&self.endpoint).await
    }

    /// How long an empty poll is held before it answers "no task".
    pub fn set_poll_hold(&self, hold: Duration) {
        *self.state.poll_hold.lock().unwrap() = hold;
    }

    /// Adds this delay before every answer, like a service's round trip (default: none).
    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap() = latency;
    }

    /// Creates an activity and returns its ARN.
    pub fn create_activity(&self, name: &str) -> String {
        let arn = format!("{ARN_PREFIX}{name}");
        self.state
            .inner
            .lock()
            .unwrap()
            .queues
            .entry(arn.clone())
            .or_default();
        arn
    }

    /// Queues a task with `input` for the activity and returns its token.
    pub fn enqueue(&self, arn: &str, input: &str) -> String {
        let mut inner = self.state.inner.lock().unwrap();
        inner.next_token += 1;
        let token = format!("fake-token-{}-{}", inner.next_token, "x".repeat(64));
        inner.tasks.insert(
            token.clone(),
            TaskRecord {
                activity_arn: arn.to_string(),
                input: input.to_string(),
                state: TaskState::Queued,
                heartbeats: 0,
                reports: 0,
                signed_by: Vec::new(),
                queued_at: Instant::now(),
                handed_out_at: None,
                ended_at: None,
            },
        );
        inner
            .queues
            .get_mut(arn)
            .expect("create_activity first")
            .push_back(token.clone());
        drop(inner);
        self.state.task_queued.notify_waiters();
        token
    }

    /// Makes the next `times` calls of `op` fail with `fault`.
    pub fn inject(&self, op: Op, fault: Fault, times: usize) {
        let mut inner = self.state.inner.lock().unwrap();
        let queue = inner.faults.entry(op).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    /// From now on, fails each call of an operation with one of its faults at the given
    /// rates (fractions of its calls, drawn from a generator seeded with `seed`).
    pub fn set_fault_rates(&self, seed: u64, rates: &[(Op, Fault, f64)]) {
        self.state.inner.lock().unwrap().fault_rates = Some(FaultRates {
            random: SplitMix64(seed),
            rates: rates.to_vec(),
        });
    }

    /// Faults injected so far: (operation, fault) → how many.
    pub fn injected(&self) -> Vec<(String, u64)> {
        let mut injected: Vec<(String, u64)> = self
            .state
            .inner
            .lock()
            .unwrap()
            .injected
            .iter()
            .map(|((op, fault), count)| (format!("{op:?} {fault}"), *count))
            .collect();
        injected.sort();
        injected
    }

    /// Removes every pending fault and every rate.
    pub fn clear_faults(&self) {
        let mut inner = self.state.inner.lock().unwrap();
        inner.faults.clear();
        inner.fault_rates = None;
    }

    /// Times a task out, as Step Functions does when its TimeoutSeconds or
    /// HeartbeatSeconds pass.
    pub fn time_out(&self, token: &str) {
        self.state
            .inner
            .lock()
            .unwrap()
            .finish(token, TaskState::TimedOut);
    }

    /// Closes a task as LocalStack does when its state times out or its execution is
    /// stopped: its token becomes invalid.
    pub fn close(&self, token: &str) {
        self.state
            .inner
            .lock()
            .unwrap()
            .finish(token, TaskState::Closed);
    }

    /// The access key ids that signed the polls of the activity `arn`.
    pub fn poll_signers(&self, arn: &str) -> Vec<String> {
        self.state
            .inner
            .lock()
            .unwrap()
            .poll_signers
            .get(arn)
            .cloned()
            .unwrap_or_default()
    }

    /// From now on, refuses every call signed with `access_key_id` as AWS refuses an unknown
    /// key (400 `UnrecognizedClientException`).
    pub fn refuse_access_key(&self, access_key_id: &str) {
        let mut inner = self.state.inner.lock().unwrap();
        inner.refused_keys.push(access_key_id.to_string());
    }

    /// The roles assumed through the fake's STS: (role ARN, external id).
    pub fn assumed_roles(&self) -> Vec<(String, Option<String>)> {
        self.state.inner.lock().unwrap().assumed_roles.clone()
    }

    /// The access key id of the credentials the fake's STS hands out for `role_arn`.
    pub fn assumed_key_id(role_arn: &str) -> String {
        let name = role_arn.rsplit('/').next().unwrap_or_default();
        format!(
            "ASIAFAKE{}",
            name.to_ascii_uppercase().replace(['-', '_'], "")
        )
    }

    /// The record of one task.
    pub fn task(&self, token: &str) -> TaskRecord {
        self.state.inner.lock().unwrap().tasks[token].clone()
    }

    /// Calls of `op` received so far (faulted ones included).
    pub fn calls(&self, op: Op) -> u64 {
        self.state
            .inner
            .lock()
            .unwrap()
            .calls
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// When the first call of `op` arrived.
    pub fn first_call(&self, op: Op) -> Option<Instant> {
        self.state
            .inner
            .lock()
            .unwrap()
            .first_calls
            .get(&op)
            .copied()
    }

    /// Tasks that reached a final state (succeeded or failed), across activities.
    pub fn finished(&self) -> usize {
        self.state.inner.lock().unwrap().finished
    }

    /// Waits (without polling) until `count` tasks have reached a final state.
    pub async fn wait_finished(&self, count: usize) {
        loop {
            let notified = self.state.task_finished.notified();
            tokio::pin!(notified);
            // Registered before the check, so a task finishing in between still wakes us.
            notified.as_mut().enable();
            if self.finished() >= count {
                return;
            }
            notified.await;
        }
    }

    /// Polls open on the activity now.
    pub fn open_polls(&self, arn: &str) -> usize {
        self.state
            .inner
            .lock()
            .unwrap()
            .open_polls
            .get(arn)
            .copied()
            .unwrap_or(0)
    }

    /// Tasks of the activity handed out and not yet reported, now.
    pub fn running(&self, arn: &str) -> usize {
        self.state
            .inner
            .lock()
            .unwrap()
            .running
            .get(arn)
            .copied()
            .unwrap_or(0)
    }

    /// The most tasks of the activity running at once.
    pub fn max_running(&self, arn: &str) -> usize {
        self.state
            .inner
            .lock()
            .unwrap()
            .max_running
            .get(arn)
            .copied()
            .unwrap_or(0)
    }

    /// The most open polls plus running tasks of the activity at once.
    pub fn max_busy(&self, arn: &str) -> usize {
        self.state
            .inner
            .lock()
            .unwrap()
            .max_busy
            .get(arn)
            .copied()
            .unwrap_or(0)
    }

    /// Every `workerName` sent on GetActivityTask, in order.
    pub fn worker_names(&self) -> Vec<String> {
        self.state.inner.lock().unwrap().worker_names.clone()
    }

    /// Waits until `done(self)` holds, checking every 10 ms; panics after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&FakeSfn) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the task has a final state and returns it.
    pub async fn wait_for_result(&self, token: &str, timeout: Duration) -> TaskState {
        self.wait_until(timeout, "a task result", |fake| {
            matches!(
                fake.task(token).state,
                TaskState::Succeeded(_) | TaskState::Failed { .. }
            )
        })
        .await;
        self.task(token).state
    }
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

fn answer(status: StatusCode, body: Value) -> Answer {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-requestid", "fake-request")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    answer(
        status,
        json!({ "__type": format!("com.amazonaws.swf.service.v2.model#{code}"), "message": message }),
    )
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Answer {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let signer = access_key_id(&request);
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if target.is_empty() && body.starts_with(b"Action=AssumeRole") {
        return assume_role(&state, &body);
    }
    let Some(op) = Op::from_target(&target) else {
        return error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            &target,
        );
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if state.inner.lock().unwrap().refused_keys.contains(&signer) {
        return error(
            StatusCode::BAD_REQUEST,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    record_signer(&state, op, &body, signer);
    let fault = {
        let mut inner = state.inner.lock().unwrap();
        *inner.calls.entry(op).or_default() += 1;
        inner.first_calls.entry(op).or_insert_with(Instant::now);
        let fault = match inner.faults.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(fault) => Some(fault),
            None => inner.fault_rates.as_mut().and_then(|rates| rates.draw(op)),
        };
        if let Some(fault) = fault {
            let kind = format!("{fault:?}");
            let kind = kind.split('(').next().unwrap_or_default().to_string();
            *inner.injected.entry((op, kind)).or_default() += 1;
        }
        fault
    };
    let token = body["taskToken"].as_str().unwrap_or_default().to_string();
    match fault {
        Some(Fault::Throttle) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
            )
        }
        Some(Fault::ServerError) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "injected",
            )
        }
        Some(Fault::Reset) => return Err(std::io::Error::other("injected connection reset")),
        Some(Fault::Error(code)) => return error(StatusCode::BAD_REQUEST, code, "injected"),
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Stall) => std::future::pending::<()>().await,
        Some(Fault::TimeOutTask) if op != Op::GetActivityTask => {
            let mut inner = state.inner.lock().unwrap();
            if inner.tasks.get(&token).map(|task| &task.state) == Some(&TaskState::Running) {
                inner.finish(&token, TaskState::TimedOut);
                if matches!(op, Op::SendTaskSuccess | Op::SendTaskFailure) {
                    inner.tasks.get_mut(&token).unwrap().reports += 1;
                }
                drop(inner);
                state.task_finished.notify_waiters();
            }
            return error(StatusCode::BAD_REQUEST, "TaskTimedOut", "task timed out");
        }
        Some(Fault::Malformed) => {
            if op != Op::GetActivityTask {
                let _ = answer_call(&state, op, &body, &token).await;
            }
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/x-amz-json-1.0")
                .body(Full::new(Bytes::from_static(b"{\"taskToken\": \"trunc")))
                .unwrap());
        }
        Some(Fault::Status(code)) => {
            return Ok(Response::builder()
                .status(StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT))
                .body(Full::new(Bytes::new()))
                .unwrap())
        }
        Some(Fault::MissingToken) if op == Op::GetActivityTask => {
            return answer(StatusCode::OK, json!({"input": "{}"}));
        }
        Some(Fault::ResetAfter) => {
            let _ = answer_call(&state, op, &body, &token).await;
            return Err(std::io::Error::other("injected reset after handling"));
        }
        _ => {}
    }
    let latency = *state.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    answer_call(&state, op, &body, &token).await
}

/// Answers one call of `op` as the service would.
async fn answer_call(state: &State, op: Op, body: &Value, token: &str) -> Answer {
    match op {
        Op::GetActivityTask => get_activity_task(state, body).await,
        Op::SendTaskSuccess => {
            let output = body["output"].as_str().unwrap_or_default().to_string();
            if serde_json::from_str::<Value>(&output).is_err() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidOutput",
                    "output is not JSON",
                );
            }
            report(state, token, TaskState::Succeeded(output))
        }
        Op::SendTaskFailure => {
            let failure = TaskState::Failed {
                error: body["error"].as_str().unwrap_or_default().to_string(),
                cause: body["cause"].as_str().unwrap_or_default().to_string(),
            };
            report(state, token, failure)
        }
        Op::SendTaskHeartbeat => {
            let mut inner = state.inner.lock().unwrap();
            match inner.tasks.get_mut(token) {
                None => error(StatusCode::BAD_REQUEST, "InvalidToken", "unknown token"),
                Some(task) if task.state == TaskState::Running => {
                    task.heartbeats += 1;
                    answer(StatusCode::OK, json!({}))
                }
                Some(task) if task.state == TaskState::Closed => {
                    error(StatusCode::BAD_REQUEST, "InvalidToken", "task is closed")
                }
                Some(_) => error(StatusCode::BAD_REQUEST, "TaskTimedOut", "task is over"),
            }
        }
    }
}

fn report(state: &State, token: &str, result: TaskState) -> Answer {
    let mut inner = state.inner.lock().unwrap();
    let Some(task) = inner.tasks.get_mut(token) else {
        return error(StatusCode::BAD_REQUEST, "InvalidToken", "unknown token");
    };
    task.reports += 1;
    match task.state {
        TaskState::Running => {
            inner.finish(token, result);
            state.task_finished.notify_waiters();
            answer(StatusCode::OK, json!({}))
        }
        TaskState::TimedOut => error(StatusCode::BAD_REQUEST, "TaskTimedOut", "task timed out"),
        TaskState::Closed => error(StatusCode::BAD_REQUEST, "InvalidToken", "task is closed"),
        _ => error(
            StatusCode::BAD_REQUEST,
            "TaskDoesNotExist",
            "task already reported",
        ),
    }
}

/// The access key id of a SigV4 `authorization` header (`... Credential=AKID/date/...`).
fn access_key_id<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split("Credential=").nth(1))
        .and_then(|credential| credential.split('/').next())
        .unwrap_or_default()
        .to_string()
}

fn record_signer(state: &State, op: Op, body: &Value, signer: String) {
    let mut inner = state.inner.lock().unwrap();
    if op == Op::GetActivityTask {
        let arn = body["activityArn"].as_str().unwrap_or_default().to_string();
        inner.poll_signers.entry(arn).or_default().push(signer);
    } else if let Some(task) = inner
        .tasks
        .get_mut(body["taskToken"].as_str().unwrap_or_default())
    {
        task.signed_by.push(signer);
    }
}

/// STS AssumeRole (the query protocol): credentials whose access key id names the role, so
/// a test can tell which calls were signed with them.
fn assume_role(state: &State, body: &[u8]) -> Answer {
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), percent_decode(value)))
        .collect();
    let role = form.get("RoleArn").cloned().unwrap_or_default();
    let external_id = form.get("ExternalId").cloned();
    state
        .inner
        .lock()
        .unwrap()
        .assumed_roles
        .push((role.clone(), external_id));
    let key = FakeSfn::assumed_key_id(&role);
    let expires = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
    let xml = format!(
        "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>{key}</AccessKeyId>\
         <SecretAccessKey>fake-secret</SecretAccessKey><SessionToken>fake-session</SessionToken>\
         <Expiration>{expires}</Expiration></Credentials><AssumedRoleUser>\
         <AssumedRoleId>AROAFAKE:session</AssumedRoleId><Arn>{role}</Arn></AssumedRoleUser>\
         </AssumeRoleResult><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>\
         </AssumeRoleResponse>"
    );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .unwrap())
}

/// Decodes `%XX` escapes and `+` of a form value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[index..index + 3]),
                }
                index += 3;
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decrements the open-poll count when a poll ends, answered or abandoned.
struct OpenPoll<'a> {
    state: &'a State,
    arn: String,
}

impl Drop for OpenPoll<'_> {
    fn drop(&mut self) {
        *self
            .state
            .inner
            .lock()
            .unwrap()
            .open_polls
            .entry(self.arn.clone())
            .or_default() -= 1;
    }
}

async fn get_activity_task(state: &State, body: &Value) -> Answer {
    let arn = body["activityArn"].as_str().unwrap_or_default().to_string();
    {
        let mut inner = state.inner.lock().unwrap();
        if !inner.queues.contains_key(&arn) {
            return error(
                StatusCode::BAD_REQUEST,
                "ActivityDoesNotExist",
                &format!("no activity {arn}"),
            );
        }
        let worker_name = body["workerName"].as_str().unwrap_or_default().to_string();
        inner.worker_names.push(worker_name);
        *inner.open_polls.entry(arn.clone()).or_default() += 1;
        inner.note_busy(&arn);
    }
    let open = OpenPoll {
        state,
        arn: arn.clone(),
    };
    let deadline = tokio::time::Instant::now() + *state.poll_hold.lock().unwrap();
    loop {
        let queued = state.task_queued.notified();
        {
            let mut inner = state.inner.lock().unwrap();
            if let Some(token) = inner.queues.get_mut(&arn).and_then(VecDeque::pop_front) {
                let task = inner.tasks.get_mut(&token).unwrap();
                task.state = TaskState::Running;
                task.handed_out_at = Some(Instant::now());
                let input = task.input.clone();
                *inner.running.entry(arn.clone()).or_default() += 1;
                drop(inner);
                drop(open);
                state.inner.lock().unwrap().note_busy(&arn);
                return answer(
                    StatusCode::OK,
                    json!({ "taskToken": token, "input": input }),
                );
            }
        }
        if tokio::time::timeout_at(deadline, queued).await.is_err() {
            return answer(StatusCode::OK, json!({}));
        }
    }
}
