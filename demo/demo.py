"""Drives the demo against a running Step Functions endpoint (LocalStack): creates two
activities and their state machines, runs the worker, starts executions and prints their
results (orders priced in a wasm guest; a guest calling a local HTTP service its activity
allows, and one call it does not), then shows a graceful shutdown. Run through demo/run.sh."""
import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import boto3

ORDERS = [
    {"order_id": "A-100", "items": [{"sku": "pen", "quantity": 3, "unit_price_cents": 250}]},
    {"order_id": "A-101", "items": [{"sku": "ink", "quantity": 1, "unit_price_cents": 1299},
                                    {"sku": "pad", "quantity": 4, "unit_price_cents": 350}],
     "discount_percent": 15},
    {"order_id": "A-102", "items": []},
    {"order_id": "", "items": [{"sku": "pen", "quantity": 1, "unit_price_cents": 250}]},
    {"order_id": "A-104", "items": [{"sku": "cap", "quantity": -2, "unit_price_cents": 90}]},
]


class RatesService(http.server.BaseHTTPRequestHandler):
    """The local HTTP service the fetch guest calls: GET /rates/EUR → {"currency", "rate"}."""

    RATES = {"EUR": 1.08, "GBP": 1.27}

    def do_GET(self):
        currency = self.path.rsplit("/", 1)[-1]
        found = currency in self.RATES
        body = json.dumps({"currency": currency, "rate": self.RATES[currency]} if found
                          else {"error": f"no rate for {currency}"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_rates_service():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RatesService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def state_machine(activity_arn):
    return json.dumps({
        "Comment": "sfn-wasm-worker demo: price an order in a wasm guest",
        "StartAt": "PriceOrder",
        "States": {
            "PriceOrder": {
                "Type": "Task",
                "Resource": activity_arn,
                "TimeoutSeconds": 60,
                "Retry": [{"ErrorEquals": ["Worker.ShuttingDown"], "IntervalSeconds": 1, "MaxAttempts": 3}],
                "Catch": [{"ErrorEquals": ["Wasm.Trap", "Wasm.Timeout", "Wasm.OutOfMemory"],
                           "ResultPath": "$.guest_error", "Next": "Quarantine"}],
                "End": True,
            },
            "Quarantine": {"Type": "Pass", "End": True},
        },
    })


def wait(sfn, execution_arn, timeout=90):
    deadline = time.time() + timeout
    while True:
        execution = sfn.describe_execution(executionArn=execution_arn)
        if execution["status"] != "RUNNING" or time.time() > deadline:
            return execution
        time.sleep(0.25)


def show(label, execution):
    if execution["status"] == "SUCCEEDED":
        detail = execution.get("output", "")
    else:
        detail = f'{execution.get("error", "")}: {execution.get("cause", "")}'
    print(f"  {label:<8} {execution['status']:<10} {detail}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--component", required=True)
    parser.add_argument("--fetch-component", required=True)
    args = parser.parse_args()

    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    sfn = boto3.client("stepfunctions", endpoint_url=args.endpoint)
    name = f"sfn-wasm-worker-demo-{int(time.time())}"
    activity_arn = sfn.create_activity(name=name)["activityArn"]
    machine_arn = sfn.create_state_machine(
        name=name, definition=state_machine(activity_arn),
        roleArn="arn:aws:iam::000000000000:role/sfn-wasm-worker-demo")["stateMachineArn"]
    fetch_activity_arn = sfn.create_activity(name=f"{name}-fetch")["activityArn"]
    fetch_machine_arn = sfn.create_state_machine(
        name=f"{name}-fetch", definition=state_machine(fetch_activity_arn),
        roleArn="arn:aws:iam::000000000000:role/sfn-wasm-worker-demo")["stateMachineArn"]
    print(f"activities:     {activity_arn}\n                {fetch_activity_arn}")
    print(f"state machines: {machine_arn}\n                {fetch_machine_arn}")
    rates, rates_origin = start_rates_service()
    print(f"rates service:  {rates_origin} (the only origin the fetch activity may call)")

    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "worker.toml")
        with open(config, "w") as f:
            f.write(f'[worker]\nregion = "us-east-1"\nendpoint_url = "{args.endpoint}"\n\n'
                    f'[[activity]]\narn = "{activity_arn}"\ncomponent = "{os.path.abspath(args.component)}"\n'
                    'max_concurrency = 4\npollers = 1\ntimeout = "10s"\nmemory_limit = "64MiB"\n\n'
                    f'[[activity]]\narn = "{fetch_activity_arn}"\n'
                    f'component = "{os.path.abspath(args.fetch_component)}"\n'
                    f'timeout = "10s"\n[activity.outbound]\nallowed_hosts = ["{rates_origin}"]\n')
        log_path = os.path.join(work, "worker.log")
        with open(log_path, "w") as log:
            worker = subprocess.Popen([args.worker, "run", "--config", config], stderr=log)
        try:
            print(f"\nworker started (pid {worker.pid}); starting {len(ORDERS)} executions:")
            started = [sfn.start_execution(stateMachineArn=machine_arn, input=json.dumps(order))["executionArn"]
                       for order in ORDERS]
            results = [wait(sfn, arn) for arn in started]
            for order, execution in zip(ORDERS, results):
                show(order["order_id"] or "(empty)", execution)

            calls = [("allowed", f"{rates_origin}/rates/EUR"),
                     ("denied", "http://169.254.169.254/latest/meta-data/")]
            print("\nA guest calling HTTP services: its activity allows only the rates service, so")
            print("the cloud metadata address is refused (the guest gets HTTP-request-denied):")
            fetches = [wait(sfn, sfn.start_execution(stateMachineArn=fetch_machine_arn,
                                                     input=json.dumps({"url": url}))["executionArn"])
                       for _, url in calls]
            for (label, _), execution in zip(calls, fetches):
                show(label, execution)
            with open(log_path) as log:
                denials = [line for line in log.read().splitlines() if "outbound request denied" in line]
            print("  worker log: " + (denials[-1].strip() if denials else "(no denial logged)"))

            print("\nSIGTERM to the worker: it stops polling, but its open long poll still runs what it")
            print("brings. Starting one more execution now:")
            time.sleep(1)
            worker.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            late_order = {"order_id": "LATE-1", "items": [{"sku": "pen", "quantity": 1, "unit_price_cents": 250}]}
            late = sfn.start_execution(stateMachineArn=machine_arn, input=json.dumps(late_order))["executionArn"]
            show("LATE-1", wait(sfn, late))
            code = worker.wait(timeout=75)
            print(f"\nworker exited with code {code}. Its last log lines:")
        finally:
            if worker.poll() is None:
                worker.kill()
        with open(log_path) as log:
            lines = log.read().splitlines()
        print("\n".join("  " + line for line in lines[-6:]))
        rates.shutdown()
        fetched = fetches[0]["status"] == "SUCCEEDED" and fetches[1].get("error") == "Fetch.RequestFailed"
        ok = code == 0 and sum(r["status"] == "SUCCEEDED" for r in results) == 2 and fetched
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
